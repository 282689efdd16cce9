//! Named users resolved without an archive round trip per container
//! (running: the container's own root through /proc; stopped: the image's
//! answer where the layer provably left the user files alone), against the
//! real engine: every answer must be the one the archive path gives.

// Test helpers fail by panicking: an unwrap is the failure report.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bollard::models::{ContainerCreateBody, ContainerInspectResponse, HostConfig};
use fleet_agent::inspect::{InspectOptions, Inspector};
use fleet_agent::user_files;
use fleet_core::CancellationToken;
use fleet_core::audit::{ContainerReport, HostReport};
use fleet_tests::engine::{Scope, body, docker, test_image};
use fleet_tests::pki::TestPki;
use fleet_tests::servers::{AgentOptions, agent_config};
use fleet_tests::unique;

struct Agent {
    inspector: Arc<Inspector>,
    shutdown: CancellationToken,
    _state: tempfile::TempDir,
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A cold inspector (no cache: every answer is computed) that sees only the
/// containers labelled `label`.
fn agent(label: &str) -> Agent {
    let pki = TestPki::new();
    let state = tempfile::tempdir().unwrap();
    let options = AgentOptions {
        inspect_cache: false,
        scope: Some(("fleet.test.host".into(), label.to_string())),
        ..Default::default()
    };
    let config = agent_config(pki.files("agent"), &options, state.path().into());
    let shutdown = CancellationToken::new();
    let inspector = fleet_agent::start_inspector(&config, &shutdown);
    Agent {
        inspector,
        shutdown,
        _state: state,
    }
}

fn labelled(label: &str, user: &str, cmd: &[&str], image: &str) -> ContainerCreateBody {
    ContainerCreateBody {
        user: Some(user.to_string()),
        labels: Some(HashMap::from([(
            "fleet.test.host".to_string(),
            label.to_string(),
        )])),
        ..body(image, cmd)
    }
}

fn find<'a>(report: &'a HostReport, name: &str) -> &'a ContainerReport {
    report
        .containers
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("{name} not in {:?}", report.containers))
}

fn ids(report: &HostReport, name: &str) -> (Option<u32>, Option<u32>) {
    let c = find(report, name);
    (c.identity.uid, c.identity.gid)
}

fn users(report: &HostReport, name: &str) -> Vec<(String, u32, u32)> {
    find(report, name)
        .users
        .iter()
        .map(|u| (u.name.clone(), u.uid, u.gid))
        .collect()
}

async fn inspect(scope: &Scope, id: &str) -> ContainerInspectResponse {
    scope.docker().inspect_container(id, None).await.unwrap()
}

fn graph(doc: &ContainerInspectResponse, key: &str) -> Option<PathBuf> {
    doc.graph_driver
        .as_ref()
        .and_then(|g| g.data.get(key))
        .map(PathBuf::from)
}

fn driver(doc: &ContainerInspectResponse) -> String {
    doc.graph_driver
        .as_ref()
        .map(|g| g.name.clone())
        .unwrap_or_default()
}

/// Writes `files` into the (stopped) container's own layer, as `docker cp`.
async fn upload(scope: &Scope, id: &str, files: &[(&str, &str)]) {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, text) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(text.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(&mut header, path, text.as_bytes())
            .unwrap();
    }
    let tar = builder.into_inner().unwrap();
    scope
        .docker()
        .upload_to_container(
            id,
            Some(bollard::query_parameters::UploadToContainerOptions {
                path: "/".into(),
                ..Default::default()
            }),
            bollard::body_full(tar.into()),
        )
        .await
        .unwrap();
}

async fn wait_for_link(pid: i64, path: &str) {
    let path = format!("/proc/{pid}/root{path}");
    for _ in 0..100 {
        if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{path} never became a symlink");
}

#[tokio::test(flavor = "multi_thread")]
async fn named_users_get_the_archive_answer_running_stopped_rewritten_and_mounted() {
    let docker = docker().await;
    let image = test_image(&docker).await;
    let scope = Scope::new(&docker);
    let label = unique("users");
    let sleep = ["sleep", "1000"];
    let n: HashMap<&str, String> = [
        "run-app",
        "stop-app-staff",
        "stop-svc",
        "stop-nobody",
        "rewritten",
        "bound",
        "ghost",
        "numeric",
    ]
    .into_iter()
    .map(|k| (k, unique(k)))
    .collect();
    let run_app = scope
        .run(&n["run-app"], labelled(&label, "app", &sleep, &image))
        .await;
    let stop_app = scope
        .create(
            &n["stop-app-staff"],
            labelled(&label, "app:staff", &sleep, &image),
        )
        .await;
    scope
        .create(&n["stop-svc"], labelled(&label, "svc", &sleep, &image))
        .await;
    scope
        .create(
            &n["stop-nobody"],
            labelled(&label, "nobody", &sleep, &image),
        )
        .await;
    scope
        .create(&n["numeric"], labelled(&label, "1000", &sleep, &image))
        .await;
    scope
        .create(&n["ghost"], labelled(&label, "ghost", &sleep, &image))
        .await;
    // Same image, but its own layer rewrote /etc/passwd and /etc/group.
    let rewritten = scope
        .create(
            &n["rewritten"],
            labelled(&label, "app:staff", &sleep, &image),
        )
        .await;
    upload(
        &scope,
        &rewritten,
        &[
            ("etc/passwd", "app:x:1234:1234::/:/bin/sh\n"),
            ("etc/group", "staff:x:77:app\n"),
        ],
    )
    .await;
    // Same image, a host file mounted over /etc/passwd (the archive path
    // reads through mounts, stopped or not).
    let host = tempfile::tempdir().unwrap();
    let host_passwd = host.path().join("passwd");
    std::fs::write(&host_passwd, "app:x:2222:2223::/:/bin/sh\n").unwrap();
    scope
        .create(
            &n["bound"],
            ContainerCreateBody {
                host_config: Some(HostConfig {
                    binds: Some(vec![format!("{}:/etc/passwd:ro", host_passwd.display())]),
                    ..Default::default()
                }),
                ..labelled(&label, "app", &sleep, &image)
            },
        )
        .await;

    let a = agent(&label);
    for options in [
        InspectOptions {
            skip_ownership: true,
            ..Default::default()
        },
        InspectOptions {
            skip_ownership: true,
            with_users: true,
            ..Default::default()
        },
    ] {
        let report = a.inspector.inspect(&options).await.unwrap();
        assert_eq!(report.containers.len(), n.len(), "{:?}", report.warnings);
        assert_eq!(ids(&report, &n["run-app"]), (Some(1000), Some(1000)));
        assert_eq!(ids(&report, &n["stop-app-staff"]), (Some(1000), Some(50)));
        assert_eq!(ids(&report, &n["stop-svc"]), (Some(999), Some(999)));
        assert_eq!(ids(&report, &n["stop-nobody"]), (Some(65534), Some(65534)));
        assert_eq!(
            ids(&report, &n["numeric"]),
            (Some(1000), Some(1000)),
            "primary group from passwd"
        );
        assert_eq!(
            ids(&report, &n["rewritten"]),
            (Some(1234), Some(77)),
            "a layer that rewrote the user files gets its own answer"
        );
        assert_eq!(
            ids(&report, &n["bound"]),
            (Some(2222), Some(2223)),
            "a mount over /etc/passwd gets its own answer"
        );
        let ghost = find(&report, &n["ghost"]);
        assert_eq!(ghost.identity.uid, None);
        assert_eq!(
            ghost.errors,
            vec!["user 'ghost' is not in the container's /etc/passwd".to_string()]
        );
        for name in ["run-app", "stop-svc", "rewritten", "bound"] {
            assert!(find(&report, &n[name]).errors.is_empty(), "{name}");
        }
        if options.with_users {
            assert_eq!(
                users(&report, &n["stop-nobody"]),
                [
                    ("svc".to_string(), 999, 999),
                    ("app".to_string(), 1000, 1000)
                ]
            );
            assert_eq!(
                users(&report, &n["rewritten"]),
                [("app".to_string(), 1234, 1234)]
            );
        }
    }

    // The answers above came from the shortcuts where they apply (not from
    // the archive path alone): the running container's root is readable
    // through /proc, and the proof of an untouched layer holds for the
    // untouched container and not for the rewritten one.
    let doc = inspect(&scope, &run_app).await;
    let pid = doc.state.as_ref().unwrap().pid.unwrap() as i32;
    let read = user_files::read_via_proc(
        Path::new("/proc"),
        pid,
        &run_app,
        graph(&doc, "MergedDir").as_deref(),
    )
    .expect("the running container's root is readable through /proc");
    assert!(read.plain);
    assert!(
        read.db
            .passwd
            .unwrap()
            .iter()
            .any(|e| e.name == "app" && e.uid == 1000)
    );
    assert!(
        user_files::read_via_proc(Path::new("/proc"), pid, &stop_app, None).is_none(),
        "a pid that is not the container's is refused"
    );
    let untouched = inspect(&scope, &stop_app).await;
    assert!(user_files::layer_keeps_user_files(
        &driver(&untouched),
        &graph(&untouched, "UpperDir").unwrap()
    ));
    let changed = inspect(&scope, &rewritten).await;
    assert!(!user_files::layer_keeps_user_files(
        &driver(&changed),
        &graph(&changed, "UpperDir").unwrap()
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_running_container_linking_its_passwd_to_a_host_path_never_gets_the_host_file() {
    let docker = docker().await;
    let image = test_image(&docker).await;
    let scope = Scope::new(&docker);
    let label = unique("links");
    // A host file, named by its absolute host path, that the container
    // does not have: resolved in the agent's root it would answer.
    let host = tempfile::tempdir().unwrap();
    let host_file = host.path().join("passwd");
    std::fs::write(
        &host_file,
        "root:x:0:4242::/:/bin/sh\nhostonly:x:4243:4243::/:/bin/sh\n",
    )
    .unwrap();
    let hostile = unique("hostile");
    let script = format!(
        "ln -sf {} /etc/passwd && ln -sf /proc/self/root/etc/group /etc/group && exec sleep 1000",
        host_file.display()
    );
    let hostile_id = scope
        .run(
            &hostile,
            labelled(&label, "0", &["sh", "-c", &script], &image),
        )
        .await;
    // A link inside the container, to a file inside it: followed, like the
    // engine follows it.
    let inside = unique("inside");
    let script = "mkdir -p /data \
                  && printf 'root:x:0:3334::/:/bin/sh\\napp:x:3333:3333::/:/bin/sh\\n' > /data/passwd \
                  && ln -sf /data/passwd /etc/passwd && exec sleep 1000";
    let inside_id = scope
        .run(
            &inside,
            labelled(&label, "0", &["sh", "-c", script], &image),
        )
        .await;
    for id in [&hostile_id, &inside_id] {
        let pid = inspect(&scope, id).await.state.unwrap().pid.unwrap();
        wait_for_link(pid, "/etc/passwd").await;
    }

    let a = agent(&label);
    let report = a
        .inspector
        .inspect(&InspectOptions {
            skip_ownership: true,
            with_users: true,
            ..Default::default()
        })
        .await
        .unwrap();
    // The engine's archive path finds no /etc/passwd in this container (its
    // link points at nothing inside it): uid 0 with gid 0, no users.
    assert_eq!(ids(&report, &hostile), (Some(0), Some(0)));
    assert_eq!(users(&report, &hostile), []);
    assert!(find(&report, &hostile).errors.is_empty());
    // The container's present passwd, through its link, like the engine.
    assert_eq!(ids(&report, &inside), (Some(0), Some(3334)));
    assert_eq!(users(&report, &inside), [("app".to_string(), 3333, 3333)]);

    // Neither was answered through /proc: a symlink on the way is left to
    // the engine (the container's own mounts, which the archive path does
    // not see, could be behind it), and the host file was never read.
    for id in [&hostile_id, &inside_id] {
        let doc = inspect(&scope, id).await;
        let read = user_files::read_via_proc(
            Path::new("/proc"),
            doc.state.as_ref().unwrap().pid.unwrap() as i32,
            id,
            graph(&doc, "MergedDir").as_deref(),
        );
        assert_eq!(read, None);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn stopped_containers_of_one_image_share_one_read_unless_their_layer_differs() {
    let docker = docker().await;
    let image = test_image(&docker).await;
    let scope = Scope::new(&docker);
    let label = unique("stopped");
    let sleep = ["sleep", "1000"];
    // No running container in this agent's view: the image's answer comes
    // from one archive read of one of them.
    let plain: Vec<(String, &str, (u32, u32))> = [
        ("app", (1000, 1000)),
        ("svc", (999, 999)),
        ("nobody:staff", (65534, 50)),
        ("app:1", (1000, 1)),
    ]
    .into_iter()
    .map(|(user, ids)| (unique("plain"), user, ids))
    .collect();
    for (name, user, _) in &plain {
        scope
            .create(name, labelled(&label, user, &sleep, &image))
            .await;
    }
    // Ran once as root and rewrote its passwd in its own layer, then exited.
    let exited = unique("exited");
    let id = scope
        .run(
            &exited,
            labelled(
                &label,
                "0",
                &[
                    "sh",
                    "-c",
                    "echo root:x:0:5:: > /etc/passwd && echo app:x:4444:4445:: >> /etc/passwd",
                ],
                &image,
            ),
        )
        .await;
    let _ = futures::StreamExt::collect::<Vec<_>>(
        docker.wait_container(&id, None::<bollard::query_parameters::WaitContainerOptions>),
    )
    .await;
    // Created, its group file replaced through the archive API.
    let regrouped = unique("regrouped");
    let regrouped_id = scope
        .create(&regrouped, labelled(&label, "app:staff", &sleep, &image))
        .await;
    upload(&scope, &regrouped_id, &[("etc/group", "staff:x:88:\n")]).await;

    let a = agent(&label);
    let report = a
        .inspector
        .inspect(&InspectOptions {
            skip_ownership: true,
            with_users: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(report.containers.len(), plain.len() + 2);
    for (name, user, (uid, gid)) in &plain {
        assert_eq!(ids(&report, name), (Some(*uid), Some(*gid)), "{user}");
        assert_eq!(users(&report, name).len(), 2, "{user}");
    }
    assert_eq!(ids(&report, &exited), (Some(0), Some(5)));
    assert_eq!(users(&report, &exited), [("app".to_string(), 4444, 4445)]);
    assert_eq!(ids(&report, &regrouped), (Some(1000), Some(88)));
}
