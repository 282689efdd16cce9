//! What kind of service a container is, for the runbook's order: from its
//! image and the ports it exposes (well-known databases, caches and
//! queues), else from whether it keeps data. Having a mount does not make
//! a database: a container with data that is not recognised is `stateful`,
//! ranked with the databases (the careful end of the runbook).

use fleet_core::audit::ContainerReport;

/// The classes the planner ranks, and the policy's `order` may name.
pub const CLASSES: &[&str] = &["stateless", "cache", "queue", "database", "stateful"];

const DATABASES: &[&str] = &[
    "postgres",
    "postgresql",
    "postgis",
    "timescaledb",
    "mysql",
    "mariadb",
    "percona",
    "mongo",
    "mongodb",
    "clickhouse",
    "neo4j",
    "elasticsearch",
    "opensearch",
    "qdrant",
    "influxdb",
    "cassandra",
    "scylla",
    "couchdb",
    "couchbase",
    "etcd",
    "cockroach",
    "arangodb",
    "rethinkdb",
    "mssql",
    "oracle",
    "zookeeper",
    "minio",
];
const CACHES: &[&str] = &[
    "redis",
    "valkey",
    "memcached",
    "keydb",
    "dragonfly",
    "varnish",
];
const QUEUES: &[&str] = &[
    "rabbitmq",
    "nats",
    "kafka",
    "redpanda",
    "mosquitto",
    "activemq",
    "artemis",
    "pulsar",
    "emqx",
];

/// Well-known ports (`Config.ExposedPorts`) and what listens there.
const PORTS: &[(u16, &str)] = &[
    (5432, "database"),  // postgres
    (3306, "database"),  // mysql, mariadb
    (27017, "database"), // mongo
    (9200, "database"),  // elasticsearch, opensearch
    (9042, "database"),  // cassandra
    (5984, "database"),  // couchdb
    (2379, "database"),  // etcd
    (8086, "database"),  // influxdb
    (7687, "database"),  // neo4j
    (8123, "database"),  // clickhouse
    (26257, "database"), // cockroach
    (6333, "database"),  // qdrant
    (1433, "database"),  // mssql
    (1521, "database"),  // oracle
    (2181, "database"),  // zookeeper
    (6379, "cache"),     // redis, valkey, keydb
    (11211, "cache"),    // memcached
    (5672, "queue"),     // rabbitmq
    (4222, "queue"),     // nats
    (9092, "queue"),     // kafka
    (1883, "queue"),     // mqtt
    (61616, "queue"),    // activemq
];

/// Names that make an image a tool *for* a service, not the service:
/// `redis-commander`, `postgres-exporter`, `mongo-express`.
const TOOLS: &[&str] = &[
    "exporter",
    "commander",
    "express",
    "admin",
    "ui",
    "web",
    "gui",
    "dashboard",
    "proxy",
    "operator",
    "cli",
    "client",
    "insight",
    "browser",
    "backup",
];

/// `docker.io/library/postgres:16-alpine` → `postgres`.
pub fn image_base(image: &str) -> String {
    let no_digest = image.split('@').next().unwrap_or(image);
    let last = no_digest.rsplit('/').next().unwrap_or(no_digest);
    last.split(':').next().unwrap_or(last).to_lowercase()
}

pub fn class_rank(class: &str) -> u32 {
    match class {
        "stateless" => 10,
        "cache" | "queue" => 20,
        "database" | "stateful" => 30,
        other => other.parse().unwrap_or(25),
    }
}

/// The service an image name says, if it is one: the name itself, or the
/// name followed by a version or a flavour (`postgres16`, `timescaledb-ha`),
/// never by a tool's name.
fn known(base: &str, names: &[&str]) -> bool {
    names.iter().any(|name| {
        let Some(rest) = base.strip_prefix(name) else {
            return false;
        };
        if rest.is_empty() || rest.starts_with(|c: char| c.is_ascii_digit()) {
            return true;
        }
        rest.starts_with(['-', '_', '.'])
            && !rest
                .split(['-', '_', '.'])
                .any(|word| TOOLS.contains(&word))
    })
}

fn by_port(c: &ContainerReport) -> Option<&'static str> {
    c.exposed_ports.iter().find_map(|p| {
        let port: u16 = p.split('/').next()?.parse().ok()?;
        PORTS
            .iter()
            .find(|(known, _)| *known == port)
            .map(|(_, class)| *class)
    })
}

/// The container's class, when the policy gives none.
pub fn class_of(c: &ContainerReport) -> &'static str {
    let base = image_base(&c.image);
    if known(&base, DATABASES) {
        return "database";
    }
    if known(&base, CACHES) {
        return "cache";
    }
    if known(&base, QUEUES) {
        return "queue";
    }
    if let Some(class) = by_port(c) {
        return class;
    }
    // Data it writes (a read-only mount is configuration).
    if c.mounts
        .iter()
        .any(|m| (m.kind == "bind" || m.kind == "volume") && !m.read_only)
    {
        "stateful"
    } else {
        "stateless"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_core::audit::MountReport;

    fn report(image: &str, ports: &[&str], mount: Option<bool>) -> ContainerReport {
        ContainerReport {
            image: image.into(),
            exposed_ports: ports.iter().map(|p| p.to_string()).collect(),
            mounts: mount
                .map(|read_only| MountReport {
                    kind: "volume".into(),
                    read_only,
                    ..Default::default()
                })
                .into_iter()
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn the_class_comes_from_what_the_container_is_not_from_having_a_mount() {
        let cases = [
            (
                report("docker.io/library/postgres:16-alpine", &[], Some(false)),
                "database",
            ),
            (
                report("timescale/timescaledb-ha:pg16", &[], None),
                "database",
            ),
            (report("bitnami/redis:7", &[], Some(false)), "cache"),
            (report("rabbitmq:3-management", &[], None), "queue"),
            // A tool for a service is not the service.
            (
                report("rediscommander/redis-commander", &["8081/tcp"], None),
                "stateless",
            ),
            (
                report("prometheuscommunity/postgres-exporter", &["9187/tcp"], None),
                "stateless",
            ),
            // An in-house image, known by the port it serves.
            (
                report(
                    "registry.example/acme/orders-db:3",
                    &["5432/tcp"],
                    Some(false),
                ),
                "database",
            ),
            (report("acme/session-store", &["6379/tcp"], None), "cache"),
            (
                report("acme/events", &["5672/tcp", "15672/tcp"], None),
                "queue",
            ),
            // Data not recognised: stateful, with the databases.
            (
                report("acme/uploads", &["8080/tcp"], Some(false)),
                "stateful",
            ),
            // Read-only configuration is not data.
            (report("nginx:1.27", &["80/tcp"], Some(true)), "stateless"),
            (report("busybox", &[], None), "stateless"),
        ];
        for (c, class) in cases {
            assert_eq!(class_of(&c), class, "{} {:?}", c.image, c.exposed_ports);
        }
        assert_eq!(class_rank("stateful"), class_rank("database"));
        assert!(class_rank("stateless") < class_rank("cache"));
        assert!(class_rank("queue") < class_rank("database"));
    }
}
