//! The in-place migration on real rootful Podman (this machine's Debian
//! package, `runc`, no systemd): migrated, writing as its new user,
//! healthchecked by the agent where the engine runs no healthcheck, its
//! checkpoint never restarted, then rolled back to the same container.

// Test helpers fail by panicking: an unwrap is the failure report.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use fleet_tests::cli::{CliOutput, fleetctl};
use fleet_tests::fleet::{UsersCleanup, run_containers, users_of};
use fleet_tests::pki::TestPki;
use fleet_tests::podman::PodmanService;
use fleet_tests::servers::{
    AgentOptions, RunningAgent, RunningController, start_agent, start_controller,
};
use fleet_tests::unique;
use serde_json::Value;

/// One test at a time: each service's drop removes every test container
/// of the shared rootful storage.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct PodmanFleet {
    podman: PodmanService,
    pki: TestPki,
    agent: RunningAgent,
    controller: RunningController,
    /// Last: fields drop in order, and the service's cleanup is covered.
    _serial: tokio::sync::MutexGuard<'static, ()>,
}

impl PodmanFleet {
    async fn start() -> Self {
        let serial = SERIAL.lock().await;
        let podman = tokio::task::spawn_blocking(PodmanService::rootful)
            .await
            .unwrap();
        let pki = TestPki::new();
        let agent = start_agent(
            pki.files("agent"),
            AgentOptions {
                engine_socket: podman.socket.clone(),
                hostname: "pod-host".into(),
                ..Default::default()
            },
        )
        .await;
        let controller =
            start_controller(pki.files("controller"), &[("pod-host", &agent.address)]).await;
        PodmanFleet {
            podman,
            pki,
            agent,
            controller,
            _serial: serial,
        }
    }

    async fn ctl(&self, args: &[&str]) -> CliOutput {
        fleetctl(&self.controller.address, &self.pki.files("alice"), args).await
    }

    fn inspect(&self, name: &str) -> Value {
        let out = self.podman.podman(&["container", "inspect", name]);
        assert!(
            out.status.success(),
            "podman inspect {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let all: Value = serde_json::from_slice(&out.stdout).unwrap();
        all[0].clone()
    }
}

fn step<'a>(container: &'a Value, kind: &str) -> &'a Value {
    container["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} step in {container}"))
}

/// Every entry under `root` with its owner, by path.
fn owners(root: &Path) -> Vec<(String, u32, u32)> {
    let mut all = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                stack.push(path.clone());
            }
            let shown = path.strip_prefix(root).unwrap().display().to_string();
            all.push((shown, meta.uid(), meta.gid()));
        }
    }
    all.sort();
    all
}

/// Leaves a file named after its uid in each mount, every half second.
const SERVICE: &str =
    "trap 'exit 0' TERM; while true; do touch /data/by-$(id -u) /vol/by-$(id -u); sleep 0.5; done";

#[tokio::test(flavor = "multi_thread")]
async fn a_rootful_podman_service_migrates_writes_as_its_user_and_rolls_back_to_the_same_container()
{
    let f = PodmanFleet::start().await;
    let data = tempfile::tempdir().unwrap();
    std::fs::create_dir(data.path().join("sub")).unwrap();
    std::fs::write(data.path().join("sub/kept"), "x").unwrap();
    let volume = unique("pvol");
    let made = f
        .podman
        .podman(&["volume", "create", "--label", "fleet-test=1", &volume]);
    assert!(made.status.success(), "{made:?}");
    let name = unique("p-svc");
    let bind = format!("{}:/data", data.path().display());
    let vol = format!("{volume}:/vol");
    let id = f.podman.run(
        &name,
        &[
            "-v",
            &bind,
            "-v",
            &vol,
            "--restart",
            "always",
            "--health-cmd",
            "touch /data/.healthy",
            "--health-interval",
            "1s",
            "-e",
            "MODE=production",
            "--label",
            "app=svc",
            "--tmpfs",
            "/scratch:size=1m",
        ],
        &["sh", "-c", SERVICE],
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let volume_dir = std::path::PathBuf::from(
        f.inspect(&name)["Mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["Destination"] == "/vol")
            .unwrap()["Source"]
            .as_str()
            .unwrap(),
    );
    let before = (owners(data.path()), owners(&volume_dir));
    assert!(before.0.iter().any(|(p, u, _)| p == "by-0" && *u == 0));

    // The plan knows before anything moves: nothing of Podman's own is
    // lost content, and what the engine makes the run do differently.
    let planned = f.ctl(&["plan", "--container", &name, "-o", "json"]).await;
    let c = &planned.json()["hosts"][0]["containers"][0];
    assert_eq!(c["action"]["kind"], "migrate", "{c}");
    let notes = c["action"]["engine_notes"].to_string();
    assert!(
        notes.contains("runs no healthcheck") && notes.contains("keeps restart policy always"),
        "{notes}"
    );

    let run = f
        .ctl(&["migrate", "--container", &name, "--yes", "-o", "json"])
        .await;
    let view = run.json();
    let _users = UsersCleanup(users_of(&view));
    assert_eq!(run.code, 0, "the migration succeeds on Podman: {run:?}");
    let record = run_containers(&view)
        .into_iter()
        .find(|c| c["plan"]["name"] == name.as_str())
        .unwrap();

    // The new container runs as the target user and writes as it, and is
    // the old one field by field otherwise (Podman's own documents).
    let new = f.inspect(&name);
    let old_doc = f.inspect(&id);
    // Podman's env order is a map's: compared as a set. It wrote root's
    // HOME into the old one's; the new user's is the engine's to derive.
    let env = |doc: &Value| {
        let mut all: Vec<String> = doc["Config"]["Env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_str().unwrap().to_string())
            .filter(|e| !e.starts_with("HOME="))
            .collect();
        all.sort();
        all
    };
    assert_eq!(env(&new), env(&old_doc));
    assert!(old_doc["Config"]["Env"].to_string().contains("HOME=/root"));
    assert!(
        !new["Config"]["Env"].to_string().contains("HOME=/root"),
        "{}",
        new["Config"]["Env"]
    );
    for pointer in [
        "/Config/Labels",
        "/Config/Healthcheck",
        "/Config/Cmd",
        "/Config/StopSignal",
        "/HostConfig/Ulimits",
        "/HostConfig/Tmpfs",
        "/HostConfig/RestartPolicy",
        "/HostConfig/Binds",
        "/HostConfig/NetworkMode",
        "/ImageName",
    ] {
        assert_eq!(new.pointer(pointer), old_doc.pointer(pointer), "{pointer}");
    }
    assert!(new["Config"]["Env"].to_string().contains("MODE=production"));
    let user = new["Config"]["User"].as_str().unwrap().to_string();
    let uid: u32 = user.split(':').next().unwrap().parse().unwrap();
    assert_ne!(uid, 0);
    assert_ne!(new["Id"], id.as_str(), "a new container holds the name");
    tokio::time::sleep(Duration::from_secs(2)).await;
    for dir in [data.path(), volume_dir.as_path()] {
        let written = dir.join(format!("by-{uid}"));
        assert_eq!(
            std::fs::metadata(&written)
                .unwrap_or_else(|e| panic!("{}: {e}", written.display()))
                .uid(),
            uid
        );
    }
    // Nobody runs healthchecks here but the agent, and it says so.
    let verify = &step(&record, "verify")["outcome"];
    assert_eq!(verify["gate"], "healthy", "{verify}");
    assert_eq!(verify["healthcheck_run_by_agent"], true, "{verify}");
    // The checkpoint keeps `always` (4.3.1 cannot change it) and stays
    // stopped: it was stopped by its user, which Podman never restarts.
    let checkpoint = f.inspect(&id);
    assert_eq!(checkpoint["HostConfig"]["RestartPolicy"]["Name"], "always");
    assert_eq!(checkpoint["State"]["Running"], false, "{checkpoint}");
    assert_eq!(
        step(&record, "recreate")["outcome"]["plan"]["checkpoint_keeps_restart_policy"],
        true
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(f.inspect(&id)["State"]["Running"], false);
    // At boot, podman-restart.service starts every `always` container: its
    // drop-in starts them all but the checkpoint. Run as systemd would.
    let other = unique("p-always");
    f.podman
        .run(&other, &["--restart", "always"], &["sleep", "3600"]);
    let stopped = f.podman.podman(&["stop", "-t", "1", &other]);
    assert!(stopped.status.success(), "{stopped:?}");
    let drop_in = std::fs::read_to_string(fleet_agent::flavour::PODMAN_RESTART_DROP_IN).unwrap();
    let line = drop_in
        .lines()
        .find(|l| l.starts_with("ExecStart=/bin/sh -c \""))
        .unwrap_or_else(|| panic!("{drop_in}"));
    let command = line["ExecStart=/bin/sh -c \"".len()..line.len() - 1].replace("$$", "$");
    let boot = std::process::Command::new("sh")
        .args(["-c", &command])
        .output()
        .unwrap();
    assert!(boot.status.success(), "{boot:?}");
    assert_eq!(
        f.inspect(&other)["State"]["Running"],
        true,
        "the unit still works"
    );
    assert_eq!(
        f.inspect(&id)["State"]["Running"],
        false,
        "the checkpoint is not started at boot"
    );
    let _ = f.podman.podman(&["rm", "-f", &other]);

    // Rollback: the same container, running as root, every entry owned as
    // before, what the migrated service wrote given back to root.
    let run_id = view["run"]["id"].as_str().unwrap();
    let back = f.ctl(&["rollback", run_id, "--yes", "-o", "json"]).await;
    assert_eq!(back.code, 0, "{back:?}");
    let restored = f.inspect(&name);
    assert_eq!(
        restored["Id"],
        id.as_str(),
        "rolled back to the same container"
    );
    assert_eq!(restored["State"]["Running"], true);
    assert_eq!(restored["HostConfig"]["RestartPolicy"]["Name"], "always");
    let after = (owners(data.path()), owners(&volume_dir));
    for (path, u, g) in after.0.iter().chain(after.1.iter()) {
        assert_eq!((*u, *g), (0, 0), "{path} is root's again");
    }
    for (was, is) in [(&before.0, &after.0), (&before.1, &after.1)] {
        for entry in was {
            assert!(is.contains(entry), "{entry:?} kept its owner");
        }
    }
    assert!(
        after.0.iter().any(|(p, _, _)| *p == format!("by-{uid}")),
        "the migrated service wrote here"
    );
}

/// The HTTP status line of `GET /` at `address`, read with plain TCP.
fn http_status(address: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(address) else {
        return "refused".into();
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(3)));
    let _ = stream.write_all(b"GET /index.html HTTP/1.0\r\n\r\n");
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.lines().next().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_static_address_on_a_user_network_and_a_loopback_publish_survive_the_migration_and_the_rollback()
 {
    let f = PodmanFleet::start().await;
    let net = unique("pnet");
    // A subnet of its own per run: the tests of one binary run in parallel.
    let octet = 100 + std::process::id() % 100;
    let subnet = format!("10.89.{octet}.0/24");
    let address = format!("10.89.{octet}.7");
    let made = f.podman.podman(&[
        "network",
        "create",
        "--label",
        "fleet-test=1",
        "--subnet",
        &subnet,
        &net,
    ]);
    assert!(made.status.success(), "{made:?}");
    let site = tempfile::tempdir().unwrap();
    std::fs::write(site.path().join("index.html"), "hello").unwrap();
    let port = 20000 + (std::process::id() % 20000) as u16;
    let publish = format!("127.0.0.1:{port}:8080");
    let bind = format!("{}:/site", site.path().display());
    let name = unique("p-web");
    let id = f.podman.run(
        &name,
        &[
            "--network",
            &net,
            "--ip",
            &address,
            "--network-alias",
            "www",
            "--stop-timeout",
            "1",
            "-p",
            &publish,
            "-v",
            &bind,
        ],
        &["httpd", "-f", "-p", "8080", "-h", "/site"],
    );
    let local = format!("127.0.0.1:{port}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !http_status(&local).contains("200") {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            http_status(&local)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let kept = |doc: &Value| {
        let endpoint = &doc["NetworkSettings"]["Networks"][&net];
        (
            endpoint["IPAddress"].clone(),
            doc["HostConfig"]["PortBindings"]["8080/tcp"].clone(),
            endpoint["Aliases"]
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a == "www"),
        )
    };
    let before = kept(&f.inspect(&name));
    assert_eq!(before.0, address.as_str());
    assert_eq!(before.1[0]["HostIp"], "127.0.0.1");
    assert!(before.2, "the alias is set");

    let run = f
        .ctl(&["migrate", "--container", &name, "--yes", "-o", "json"])
        .await;
    let view = run.json();
    let _users = UsersCleanup(users_of(&view));
    assert_eq!(run.code, 0, "the migration succeeds on Podman: {run:?}");
    let new = f.inspect(&name);
    assert_ne!(new["Id"], id.as_str());
    assert_ne!(new["Config"]["User"], "");
    assert_eq!(
        kept(&new),
        before,
        "the same address and loopback-only publish"
    );
    assert!(
        http_status(&local).contains("200"),
        "it serves as its new user"
    );

    let run_id = view["run"]["id"].as_str().unwrap();
    let back = f.ctl(&["rollback", run_id, "--yes", "-o", "json"]).await;
    assert_eq!(back.code, 0, "{back:?}");
    let restored = f.inspect(&name);
    assert_eq!(
        restored["Id"],
        id.as_str(),
        "rolled back to the same container"
    );
    assert_eq!(
        kept(&restored),
        before,
        "its address and publish given back"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !http_status(&local).contains("200") {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            http_status(&local)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = f.podman.podman(&["rm", "-f", &name, &id]);
    let _ = f.podman.podman(&["network", "rm", "-f", &net]);
}

/// Writes a marker into /data on SIGTERM once it no longer runs as root.
const GRACEFUL: &str = r#"
trap 'if [ "$(id -u)" != 0 ]; then echo bye > /data/sigterm; fi; exit 0' TERM
while true; do sleep 1 & wait $!; done
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_rollback_on_podman_stops_the_migrated_service_with_its_own_stop_signal() {
    let f = PodmanFleet::start().await;
    let data = tempfile::tempdir().unwrap();
    let bind = format!("{}:/data", data.path().display());
    let name = unique("p-graceful");
    let id = f.podman.run(&name, &["-v", &bind], &["sh", "-c", GRACEFUL]);
    let run = f
        .ctl(&["migrate", "--container", &name, "--yes", "-o", "json"])
        .await;
    let view = run.json();
    let _users = UsersCleanup(users_of(&view));
    assert_eq!(run.code, 0, "{run:?}");
    let marker = data.path().join("sigterm");
    assert!(!marker.exists(), "not stopped yet");

    let run_id = view["run"]["id"].as_str().unwrap();
    let back = f.ctl(&["rollback", run_id, "--yes", "-o", "json"]).await;
    assert_eq!(back.code, 0, "{back:?}");
    assert_eq!(
        std::fs::read_to_string(&marker).ok().as_deref(),
        Some("bye\n"),
        "the migrated service got SIGTERM and wrote its marker before it was removed"
    );
    assert_eq!(
        std::fs::metadata(&marker).unwrap().uid(),
        0,
        "what it wrote then is root's again"
    );
    assert_eq!(f.inspect(&name)["Id"], id.as_str());
}

/// Starts as root, gives its runtime directory to `app`, then drops to it
/// (as redis's or postgres's entrypoints do); it cannot start without it.
const ENTRYPOINT: &str = r#"
if [ "$(id -u)" = 0 ]; then
  mkdir -p /run/app && chown app:app /run/app && chmod 750 /run/app
  exec su app -c "$SERVE"
fi
exec sh -c "$SERVE"
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_runtime_directory_the_entrypoint_made_is_the_image_users_in_the_new_podman_container() {
    let f = PodmanFleet::start().await;
    let base = tempfile::tempdir().unwrap();
    let policy = fleet_tests::fleet::write_policy(
        base.path(),
        "[defaults]\nmin_healthy_secs = 2\ndeadline_secs = 30\n\n[[rule]]\nname = \"p-runtime*\"\nstrategy = \"image-user\"\n",
    );
    let policy = policy.to_str().unwrap();
    let name = unique("p-runtime");
    let serve = "SERVE=echo $$ > /run/app/pid || exit 1; exec sleep 3600";
    f.podman
        .run(&name, &["-e", serve], &["sh", "-c", ENTRYPOINT]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let planned = f
        .ctl(&[
            "plan",
            "--policy",
            policy,
            "--container",
            &name,
            "-o",
            "json",
        ])
        .await;
    let c = &planned.json()["hosts"][0]["containers"][0];
    assert_eq!(c["action"]["kind"], "migrate", "{c}");
    assert_eq!(c["action"]["runtime_dirs"][0]["path"], "/run/app", "{c}");

    let run = f
        .ctl(&[
            "migrate",
            "--policy",
            policy,
            "--container",
            &name,
            "--yes",
            "-o",
            "json",
        ])
        .await;
    let view = run.json();
    let _users = UsersCleanup(users_of(&view));
    assert_eq!(
        run.code, 0,
        "the service starts in its own runtime dir: {run:?}"
    );
    let new = f.inspect(&name);
    assert_eq!(new["Config"]["User"], "1000:1000");
    let pid = f.podman.podman(&["exec", &name, "cat", "/run/app/pid"]);
    assert!(pid.status.success(), "{pid:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_that_fails_its_health_gate_on_podman_is_put_back_exactly() {
    let f = PodmanFleet::start().await;
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("file"), "x").unwrap();
    let bind = format!("{}:/data", data.path().display());
    let name = unique("p-rootonly");
    let id = f.podman.run(
        &name,
        &["-v", &bind],
        &[
            "sh",
            "-c",
            "[ \"$(id -u)\" = 0 ] && exec sleep 3600; exit 3",
        ],
    );
    let before = owners(data.path());
    let run = f
        .ctl(&["migrate", "--container", &name, "--yes", "-o", "json"])
        .await;
    let view = run.json();
    let _users = UsersCleanup(users_of(&view));
    assert_ne!(run.code, 0, "verify fails: {run:?}");
    let record = &run_containers(&view)[0];
    assert_eq!(record["state"], "rolled-back", "{record}");
    assert!(
        record["error"]
            .as_str()
            .unwrap()
            .contains("exited (code 3)"),
        "{record}"
    );
    let restored = f.inspect(&name);
    assert_eq!(restored["Id"], id.as_str(), "the same container, put back");
    assert_eq!(restored["State"]["Running"], true);
    assert_eq!(restored["Config"]["User"], "");
    assert_eq!(owners(data.path()), before);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agent_binary_rolls_a_podman_run_back_with_no_controller() {
    let f = PodmanFleet::start().await;
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("file"), "x").unwrap();
    let bind = format!("{}:/data", data.path().display());
    let name = unique("p-breakglass");
    let id = f.podman.run(&name, &["-v", &bind], &["sh", "-c", SERVICE]);
    let run = f
        .ctl(&["migrate", "--container", &name, "--yes", "-o", "json"])
        .await;
    let view = run.json();
    let _users = UsersCleanup(users_of(&view));
    assert_eq!(run.code, 0, "{run:?}");
    let run_id = view["run"]["id"].as_str().unwrap();
    // The served agent is gone; the host's own journal is what is left.
    f.agent.shutdown.cancel();
    let out = std::process::Command::new(fleet_tests::process::workspace_binary("fleet-agent"))
        .args(["rollback", "--run", run_id, "--engine-socket"])
        .arg(&f.podman.socket)
        .arg("--state-dir")
        .arg(f.agent.state.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("undone") && stdout.contains("recreate"),
        "{stdout}"
    );
    let restored = f.inspect(&name);
    assert_eq!(restored["Id"], id.as_str(), "the same container");
    assert_eq!(restored["State"]["Running"], true);
    for (path, u, g) in owners(data.path()) {
        assert_eq!((u, g), (0, 0), "{path} is root's again");
    }
}

/// The network namespace of a running container's main process.
fn net_ns(doc: &Value) -> String {
    let pid = doc["State"]["Pid"].as_i64().unwrap();
    std::fs::read_link(format!("/proc/{pid}/ns/net"))
        .unwrap()
        .display()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_linked_group_on_podman_moves_as_one_and_comes_back_joined_as_before() {
    let f = PodmanFleet::start().await;
    let base = tempfile::tempdir().unwrap();
    let policy = fleet_tests::fleet::write_policy(
        base.path(),
        "[defaults]\nmin_healthy_secs = 1\ndeadline_secs = 30\n\n[[rule]]\nname = \"p-link*\"\nstrategy = \"2002:2002\"\n",
    );
    let policy = policy.to_str().unwrap();
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("file"), "x").unwrap();
    let bind = format!("{}:/data", data.path().display());
    let net = unique("p-link-net");
    let side = unique("p-link-side");
    // The network namespace the side joins must exist: a loopback-only one.
    // `sleep` as PID 1 ignores SIGTERM: a short stop timeout.
    let net_id = f.podman.run(
        &net,
        &["-v", &bind, "--stop-timeout", "1"],
        &["sleep", "3600"],
    );
    let joined = format!("container:{net}");
    let side_id = f.podman.run(
        &side,
        &["--network", &joined, "--stop-timeout", "1"],
        &["sleep", "3600"],
    );
    let planned = f
        .ctl(&[
            "plan",
            "--policy",
            policy,
            "--container",
            "p-link*",
            "-o",
            "json",
        ])
        .await;
    let containers = planned.json()["hosts"][0]["containers"].clone();
    for c in containers.as_array().unwrap() {
        assert_eq!(c["action"]["kind"], "migrate", "{c}");
        assert_eq!(
            c["group"].as_array().unwrap().len(),
            1,
            "the other member: {c}"
        );
    }

    let run = f
        .ctl(&[
            "migrate",
            "--policy",
            policy,
            "--container",
            "p-link*",
            "--yes",
            "-o",
            "json",
        ])
        .await;
    let view = run.json();
    let _users = UsersCleanup(users_of(&view));
    assert_eq!(run.code, 0, "the group migrates on Podman: {run:?}");
    let (new_net, new_side) = (f.inspect(&net), f.inspect(&side));
    assert_eq!(new_net["Config"]["User"], "2002:2002");
    assert_eq!(new_side["Config"]["User"], "2002:2002");
    assert_eq!(
        net_ns(&new_side),
        net_ns(&new_net),
        "the new side joined the new net"
    );

    let run_id = view["run"]["id"].as_str().unwrap();
    let back = f.ctl(&["rollback", run_id, "--yes", "-o", "json"]).await;
    assert_eq!(back.code, 0, "{back:?}");
    let (old_net, old_side) = (f.inspect(&net), f.inspect(&side));
    assert_eq!(old_net["Id"], net_id.as_str());
    assert_eq!(old_side["Id"], side_id.as_str());
    assert_eq!(old_side["State"]["Running"], true);
    assert_eq!(net_ns(&old_side), net_ns(&old_net), "joined as before");
    for (path, u, g) in owners(data.path()) {
        assert_eq!((u, g), (0, 0), "{path} is root's again");
    }
}
