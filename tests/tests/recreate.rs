//! Invariant 6, a faithful recreate, against the real engine: the new
//! container differs from the old only in `User` (and what the engine
//! generates), field by field; and the undo puts the very same old
//! container back.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bollard::models::{
    ContainerCreateBody, EndpointIpamConfig, EndpointSettings, HealthConfig, HostConfig,
    HostConfigLogConfig, Ipam, IpamConfig, NetworkCreateRequest, NetworkingConfig, PortBinding,
    ResourcesUlimits, RestartPolicy, RestartPolicyNameEnum,
};
use fleet_agent::cache::Cache;
use fleet_agent::container::Api;
use fleet_agent::engine::{Engine, EngineChoice};
use fleet_agent::inspect::Inspector;
use fleet_agent::ownership::WalkBounds;
use fleet_agent::recreate::{self, RecreateError, RecreateRequest};
use fleet_agent::steps::{StepError, StepRunner, StepSpec};
use fleet_agent::users::UserSettings;
use fleet_tests::engine::{Scope, body, docker, engine_socket, test_image};
use fleet_tests::fleet::seen;
use fleet_tests::unique;
use serde_json::Value;

async fn network(scope: &Scope, name: &str, subnet: &str) {
    scope
        .docker()
        .create_network(NetworkCreateRequest {
            name: name.to_string(),
            driver: Some("bridge".into()),
            ipam: Some(Ipam {
                config: Some(vec![IpamConfig {
                    subnet: Some(subnet.into()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            labels: Some(HashMap::from([("fleet-test".to_string(), "1".to_string())])),
            ..Default::default()
        })
        .await
        .unwrap();
    scope.track_network(name);
}

/// The inspect document without what the engine generates per container,
/// and without `User`, which the recreate is meant to change.
fn comparable(doc: &Value) -> Value {
    let mut doc = doc.clone();
    let obj = doc.as_object_mut().unwrap();
    for generated in [
        "Id",
        "Created",
        "State",
        "ResolvConfPath",
        "HostnamePath",
        "HostsPath",
        "LogPath",
        "RestartCount",
        "GraphDriver",
        "ExecIDs",
        "SizeRw",
        "SizeRootFs",
        "NetworkSettings",
        "Mounts",
    ] {
        obj.remove(generated);
    }
    let config = obj.get_mut("Config").unwrap().as_object_mut().unwrap();
    config.remove("User");
    config.remove("Hostname");
    doc
}

fn endpoint_settings(doc: &Value, net: &str) -> (Value, Vec<String>) {
    let endpoint = doc
        .pointer(&format!("/NetworkSettings/Networks/{net}"))
        .unwrap();
    let short = &doc["Id"].as_str().unwrap()[..12];
    let mut aliases: Vec<String> = endpoint["Aliases"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str())
        .filter(|a| *a != short)
        .map(String::from)
        .collect();
    aliases.sort();
    (endpoint["IPAMConfig"].clone(), aliases)
}

#[tokio::test(flavor = "multi_thread")]
async fn recreate_preserves_every_field_but_user_and_undo_brings_back_the_same_container() {
    let docker = docker().await;
    let image = test_image(&docker).await;
    let scope = Scope::new(&docker);
    let n = std::process::id() % 200 + 20;
    let (net_a, net_b) = (unique("net-a"), unique("net-b"));
    network(&scope, &net_a, &format!("10.{n}.1.0/24")).await;
    network(&scope, &net_b, &format!("10.{n}.2.0/24")).await;
    let static_ip = format!("10.{n}.1.77");
    let host_port = (20000 + std::process::id() % 20000).to_string();
    let name = unique("faithful");
    let mut config = body(&image, &["sleep", "3600"]);
    config = ContainerCreateBody {
        env: Some(vec!["APP_MODE=prod".into(), "FLAVOUR=vanilla".into()]),
        labels: Some(HashMap::from([(
            "com.example.tier".to_string(),
            "backend".to_string(),
        )])),
        exposed_ports: Some(vec!["8080/tcp".into()]),
        healthcheck: Some(HealthConfig {
            test: Some(vec!["CMD".into(), "true".into()]),
            interval: Some(1_000_000_000),
            retries: Some(3),
            ..Default::default()
        }),
        host_config: Some(HostConfig {
            network_mode: Some(net_a.clone()),
            port_bindings: Some(HashMap::from([(
                "8080/tcp".to_string(),
                Some(vec![PortBinding {
                    host_ip: Some("127.0.0.1".into()),
                    host_port: Some(host_port.clone()),
                }]),
            )])),
            ulimits: Some(vec![ResourcesUlimits {
                name: Some("nofile".into()),
                soft: Some(1024),
                hard: Some(2048),
            }]),
            tmpfs: Some(HashMap::from([(
                "/scratch".to_string(),
                "size=16m".to_string(),
            )])),
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
                maximum_retry_count: None,
            }),
            cap_add: Some(vec!["NET_ADMIN".into()]),
            log_config: Some(HostConfigLogConfig {
                typ: Some("json-file".into()),
                config: Some(HashMap::from([("max-size".to_string(), "1m".to_string())])),
            }),
            ..Default::default()
        }),
        networking_config: Some(NetworkingConfig {
            endpoints_config: Some(HashMap::from([(
                net_a.clone(),
                EndpointSettings {
                    ipam_config: Some(EndpointIpamConfig {
                        ipv4_address: Some(static_ip.clone()),
                        ..Default::default()
                    }),
                    aliases: Some(vec!["db".into(), "primary".into()]),
                    ..Default::default()
                },
            )])),
        }),
        ..config
    };
    let old_id = scope.create(&name, config).await;
    docker
        .connect_network(
            &net_b,
            bollard::models::NetworkConnectRequest {
                container: old_id.clone(),
                endpoint_config: Some(EndpointSettings {
                    aliases: Some(vec!["replica".into()]),
                    ..Default::default()
                }),
            },
        )
        .await
        .unwrap();
    docker.start_container(&old_id, None).await.unwrap();

    let engine = Engine::new(EngineChoice::Auto, Some(engine_socket()));
    let conn = engine.connected().await.unwrap();
    let api = Api::new(conn);
    let before = api.inspect(&old_id).await.unwrap();
    let request = RecreateRequest {
        container: name.clone(),
        uid: 1000,
        gid: 1000,
        run: "run-faithful".into(),
        allow_layer_loss: false,
        together: Vec::new(),
    };
    let plan = recreate::plan(&api, &request).await.unwrap();
    let outcome = recreate::execute(&api, &plan).await.unwrap();
    scope_track(&scope, &outcome.new_id);
    let after = api.inspect(&outcome.new_id).await.unwrap();

    assert_eq!(after["Config"]["User"], "1000:1000");
    assert_eq!(
        after["Image"], before["Image"],
        "the same image ID, not a tag"
    );
    let (a, b) = (comparable(&before), comparable(&after));
    for (key, value) in a.as_object().unwrap() {
        assert_eq!(Some(value), b.get(key), "field {key} changed");
    }
    for (key, value) in b.as_object().unwrap() {
        assert_eq!(Some(value), a.get(key), "field {key} appeared");
    }
    for net in [&net_a, &net_b] {
        assert_eq!(
            endpoint_settings(&after, net),
            endpoint_settings(&before, net),
            "endpoint on {net}"
        );
    }
    assert_eq!(
        after
            .pointer(&format!("/NetworkSettings/Networks/{net_a}/IPAddress"))
            .unwrap(),
        static_ip.as_str()
    );
    let old_now = api.inspect(&old_id).await.unwrap();
    assert_eq!(old_now["Name"], format!("/{name}.fleet-pre-run-faithful"));
    assert_eq!(
        old_now["HostConfig"]["RestartPolicy"]["Name"], "no",
        "the checkpoint never comes back by itself"
    );

    recreate::undo(&api, &plan, Some(&outcome.new_id))
        .await
        .unwrap();
    let restored = api.inspect(&name).await.unwrap();
    assert_eq!(
        restored["Id"],
        old_id.as_str(),
        "the very same container is back"
    );
    assert_eq!(restored["State"]["Running"], true);
    assert_eq!(
        restored["HostConfig"]["RestartPolicy"],
        before["HostConfig"]["RestartPolicy"]
    );
    assert_eq!(
        restored
            .pointer(&format!("/NetworkSettings/Networks/{net_a}/IPAddress"))
            .unwrap(),
        static_ip.as_str()
    );
    assert!(
        api.inspect(&outcome.new_id).await.is_err(),
        "the new container is gone"
    );
    // Undo is safe to repeat.
    recreate::undo(&api, &plan, Some(&outcome.new_id))
        .await
        .unwrap();

    // A crash right after create leaves no new id in the journal: the undo
    // then removes the container holding the name only if it is the one
    // the plan made, never one someone else created since.
    let again = recreate::execute(&api, &plan).await.unwrap();
    scope
        .docker()
        .remove_container(
            &again.new_id,
            Some(bollard::query_parameters::RemoveContainerOptions {
                force: true,
                ..Default::default()
            }),
        )
        .await
        .unwrap();
    let foreign = scope.create(&name, body(&image, &["sleep", "3600"])).await;
    let err = recreate::undo(&api, &plan, None).await.unwrap_err();
    assert!(
        err.to_string().contains("which this recreate did not make"),
        "{err}"
    );
    assert!(
        api.inspect(&foreign).await.is_ok(),
        "the foreign container is untouched"
    );
    scope
        .docker()
        .remove_container(
            &foreign,
            Some(bollard::query_parameters::RemoveContainerOptions {
                force: true,
                ..Default::default()
            }),
        )
        .await
        .unwrap();
    recreate::undo(&api, &plan, None).await.unwrap();
    assert_eq!(api.inspect(&name).await.unwrap()["Id"], old_id.as_str());
}

fn scope_track(_scope: &Scope, _id: &str) {
    // The new container carries the old one's labels, including fleet-test,
    // so scripts/test.sh removes it even if this test fails midway.
}

#[tokio::test(flavor = "multi_thread")]
async fn what_cannot_be_recreated_faithfully_is_refused_before_anything_changes() {
    let docker = docker().await;
    let image = test_image(&docker).await;
    let scope = Scope::new(&docker);
    let engine = Engine::new(EngineChoice::Auto, Some(engine_socket()));
    let api = Api::new(engine.connected().await.unwrap());

    let auto = unique("autoremove");
    scope
        .run(
            &auto,
            ContainerCreateBody {
                host_config: Some(HostConfig {
                    auto_remove: Some(true),
                    ..Default::default()
                }),
                ..body(&image, &["sleep", "3600"])
            },
        )
        .await;
    let err = recreate::plan(
        &api,
        &RecreateRequest {
            container: auto,
            uid: 1000,
            gid: 1000,
            run: "r".into(),
            allow_layer_loss: false,
            together: Vec::new(),
        },
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("AutoRemove"), "{err}");

    let base = unique("base");
    let base_id = scope.run(&base, body(&image, &["sleep", "3600"])).await;
    let sidecar = unique("sidecar");
    scope
        .run(
            &sidecar,
            ContainerCreateBody {
                host_config: Some(HostConfig {
                    network_mode: Some(format!("container:{base_id}")),
                    ..Default::default()
                }),
                ..body(&image, &["sleep", "3600"])
            },
        )
        .await;
    let err = recreate::plan(
        &api,
        &RecreateRequest {
            container: base.clone(),
            uid: 1000,
            gid: 1000,
            run: "r".into(),
            allow_layer_loss: false,
            together: Vec::new(),
        },
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains(&format!(
            "{sidecar} uses {base} through NetworkMode=container:"
        )),
        "{err}"
    );

    let shared = unique("shared");
    scope
        .run(
            &shared,
            ContainerCreateBody {
                host_config: Some(HostConfig {
                    volumes_from: Some(vec![format!("{base}:ro")]),
                    ..Default::default()
                }),
                ..body(&image, &["sleep", "3600"])
            },
        )
        .await;
    let err = recreate::plan(
        &api,
        &RecreateRequest {
            container: base.clone(),
            uid: 1000,
            gid: 1000,
            run: "r".into(),
            allow_layer_loss: false,
            together: Vec::new(),
        },
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains(&format!(
            "{shared} mounts the volumes of {base} (VolumesFrom)"
        )),
        "{err}"
    );

    let layered = unique("layered");
    let layered_id = scope
        .run(
            &layered,
            body(
                &image,
                &["sh", "-c", "echo data > /home/app/state && sleep 3600"],
            ),
        )
        .await;
    fleet_tests::wait_for(
        "the file to be written",
        std::time::Duration::from_secs(10),
        || async {
            api.changes(&layered_id)
                .await
                .ok()
                .filter(|c| c.iter().any(|(p, _)| p == "/home/app/state"))
                .map(|_| ())
        },
    )
    .await;
    let err = recreate::plan(
        &api,
        &RecreateRequest {
            container: layered.clone(),
            uid: 1000,
            gid: 1000,
            run: "r".into(),
            allow_layer_loss: false,
            together: Vec::new(),
        },
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("/home/app/state"), "{err}");
    let allowed = recreate::plan(
        &api,
        &RecreateRequest {
            container: layered,
            uid: 1000,
            gid: 1000,
            run: "r".into(),
            allow_layer_loss: true,
            together: Vec::new(),
        },
    )
    .await;
    assert!(allowed.is_ok());
    // Nothing was touched.
    assert_eq!(
        api.inspect(&base_id).await.unwrap()["State"]["Running"],
        true
    );
}

/// The refusal of a root target is the recreate's own planning, not the
/// gRPC edge's: a caller of the step runner meets it too, before anything
/// is journaled or touched.
#[tokio::test(flavor = "multi_thread")]
async fn the_step_runner_itself_refuses_a_target_uid_or_gid_of_zero() {
    let docker = docker().await;
    let image = test_image(&docker).await;
    let scope = Scope::new(&docker);
    let name = unique("root-target");
    scope.run(&name, body(&image, &["sleep", "3600"])).await;
    let before = seen(&docker, &name).await;
    let state = tempfile::tempdir().unwrap();
    let engine = Arc::new(Engine::new(EngineChoice::Auto, Some(engine_socket())));
    let inspector = Arc::new(Inspector::new(
        engine.clone(),
        Arc::new(Cache::new(false, Duration::from_secs(60))),
        WalkBounds::default(),
        "t".into(),
        None,
    ));
    let steps = StepRunner::new(
        state.path(),
        engine.clone(),
        inspector,
        UserSettings::default(),
    );
    let run = "recreate-root-target";
    for (step, uid, gid) in [("gid0", 61500, 0), ("uid0", 0, 61500), ("both", 0, 0)] {
        let request = RecreateRequest {
            container: name.clone(),
            uid,
            gid,
            run: run.into(),
            allow_layer_loss: false,
            together: Vec::new(),
        };
        let refused = steps
            .run(run, step, StepSpec::Recreate(request.clone()), None)
            .await
            .unwrap_err();
        assert!(
            matches!(
                refused,
                StepError::Recreate(RecreateError::InvalidRequest(_))
            ),
            "{refused:?}"
        );
        assert!(
            refused.to_string().contains(&format!(
                "never sets uid 0 or gid 0 (asked for {uid}:{gid})"
            )),
            "{refused}"
        );
        assert_eq!(
            tonic::Status::from(refused).code(),
            tonic::Code::InvalidArgument
        );
        // The plan itself refuses first, for any caller of it.
        let api = Api::new(engine.connected().await.unwrap());
        assert!(matches!(
            recreate::plan(&api, &request).await,
            Err(RecreateError::InvalidRequest(_))
        ));
        assert_eq!(seen(&docker, &name).await, before, "{step}");
    }
    // Refused before its intent: nothing journaled, no checkpoint made.
    assert_eq!(steps.journal(run).await.unwrap(), Vec::new());
    let checkpoint = format!("{name}.fleet-pre-{run}");
    assert!(
        docker.inspect_container(&checkpoint, None).await.is_err(),
        "no checkpoint {checkpoint}"
    );
}
