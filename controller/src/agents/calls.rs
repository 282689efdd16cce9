//! The controller's side of the agent's step API: build each request from
//! the plan, consume the step's stream (progress, then one result), and
//! tell an unreachable agent (retry: the step key makes it safe) from an
//! agent that answered with an error (the step failed).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use fleet_proto::agent::v1 as pb;
use serde_json::Value;
use tonic::Streaming;

use crate::agents::{self, AgentPool};
use crate::inventory::Host;
use crate::plan::Migration;
use fleet_core::step::{Probe, Progress, StepKind};
use fleet_core::target::{Ids, Target, TargetUser};
use fleet_core::userns::UsernsMode;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// Nothing answered, or the stream broke: the agent may or may not have
    /// acted; the same call again is safe.
    Unreachable(String),
    /// The agent had answered, then the stream broke: as `Unreachable`, but
    /// the time it was connected does not count against the deadline.
    Lost(String),
    /// The agent answered with an error: the step did not happen (or was
    /// put back by the agent).
    Failed(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Unreachable(m) | CallError::Lost(m) | CallError::Failed(m) => f.write_str(m),
        }
    }
}

/// What one step returned.
#[derive(Debug, Clone)]
pub struct StepReply {
    pub outcome: Value,
    pub replayed: bool,
    /// The ids the user step gave the account it made (or found).
    pub made: Option<Ids>,
}

/// The part of the user step's outcome the run decides from.
#[derive(serde::Deserialize)]
struct UserMade {
    uid: u32,
    gid: u32,
}

/// The request for one migration step; `target` is the container's new
/// uid:gid (known once the user step has run, or from the plan).
#[derive(Debug, Clone)]
pub struct StepCall<'a> {
    pub run: &'a str,
    pub step: &'a str,
    pub kind: StepKind,
    pub container_id: &'a str,
    pub container_name: &'a str,
    pub migration: &'a Migration,
    pub target: Option<Ids>,
    /// The members of the container's unit, by name (itself included).
    pub together: &'a [String],
}

/// A failed call as the run sees it: unanswered (retry) or answered (the
/// step failed).
fn classify(host: &Host, status: &tonic::Status) -> CallError {
    let failure = agents::classify(host, status);
    if failure.unanswered {
        CallError::Unreachable(failure.message)
    } else {
        CallError::Failed(failure.message)
    }
}

fn key(run: &str, step: &str) -> Option<pb::StepKey> {
    Some(pb::StepKey {
        run_id: run.into(),
        step_id: step.into(),
    })
}

fn probe_pb(probe: &Probe) -> pb::Probe {
    use pb::probe::Kind;
    pb::Probe {
        kind: Some(match probe {
            Probe::Tcp { address } => Kind::TcpAddress(address.clone()),
            Probe::Http { url } => Kind::HttpUrl(url.clone()),
            Probe::Exec { argv } => Kind::Exec(pb::ExecProbe { argv: argv.clone() }),
        }),
    }
}

/// Reads a step's stream to its one result. An outcome that does not read
/// is lost, as an unreachable agent's would be: the run retries (the step
/// key makes the replay safe) and then waits, rather than deciding from a
/// default.
async fn drain(
    host: &Host,
    run: &str,
    step: &str,
    stream: Result<tonic::Response<Streaming<pb::StepEvent>>, tonic::Status>,
    on_progress: &(dyn Fn(Progress) + Send + Sync),
) -> Result<StepReply, CallError> {
    let mut stream = stream.map_err(|s| classify(host, &s))?.into_inner();
    loop {
        match stream.message().await {
            Ok(Some(pb::StepEvent {
                event: Some(pb::step_event::Event::Progress(p)),
            })) => on_progress(Progress {
                entries: p.entries,
                changed: p.changed,
                bytes: p.bytes,
            }),
            Ok(Some(pb::StepEvent {
                event: Some(pb::step_event::Event::Result(r)),
            })) => {
                let outcome = read_outcome(host, run, step, &r.outcome_json)?;
                return Ok(StepReply {
                    outcome,
                    replayed: r.replayed,
                    made: None,
                });
            }
            Ok(Some(_)) => {}
            Ok(None) => {
                return Err(CallError::Lost(format!(
                    "agent {} closed the step's stream before its result (it may have restarted)",
                    host.name
                )));
            }
            Err(status) => {
                return Err(match classify(host, &status) {
                    CallError::Unreachable(m) => CallError::Lost(m),
                    other => other,
                });
            }
        }
    }
}

/// One attempt at a migration step.
pub async fn step(
    pool: &AgentPool,
    host: &Host,
    call: &StepCall<'_>,
    on_progress: &(dyn Fn(Progress) + Send + Sync),
) -> Result<StepReply, CallError> {
    let mut client = pool
        .client(host)
        .map_err(|e| CallError::Unreachable(e.to_string()))?;
    let stream = match call.kind {
        StepKind::Backup => client.backup(backup_request(call)).await,
        StepKind::User => client.ensure_user(user_request(call)?).await,
        StepKind::Stop => client.stop(stop_request(call)).await,
        StepKind::Ownership => client.change_ownership(ownership_request(call)?).await,
        StepKind::Recreate => client.recreate(recreate_request(call)?).await,
        StepKind::Verify => client.verify(verify_request(call)).await,
        StepKind::Image => client.load_image(image_request(call)?).await,
        StepKind::Volumes => client.move_volumes(volumes_request(call)?).await,
        StepKind::Place => client.place(place_request(call)?).await,
        StepKind::Restore => {
            return Err(CallError::Failed(format!(
                "a restore is not a step of {}'s migration",
                call.container_name
            )));
        }
    };
    let mut reply = drain(host, call.run, call.step, stream, on_progress).await?;
    if call.kind == StepKind::User {
        reply.made = Some(made_ids(host, call, &reply.outcome)?);
    }
    Ok(reply)
}

/// The container's new uid:gid, which the ownership and recreate steps
/// cannot go without.
fn need_target(call: &StepCall<'_>) -> Result<Ids, CallError> {
    call.target.ok_or_else(|| {
        CallError::Failed(format!(
            "no target identity for {} before its {} step",
            call.container_name,
            call.kind.as_str()
        ))
    })
}

fn backup_request(call: &StepCall<'_>) -> pb::BackupRequest {
    let m = call.migration;
    pb::BackupRequest {
        key: key(call.run, call.step),
        container: call.container_id.into(),
        hooks: m
            .hooks
            .iter()
            .map(|argv| pb::Hook {
                argv: argv.clone(),
                timeout_secs: 300,
            })
            .collect(),
        retention_days: m.retention_days.min(u32::MAX as u64) as u32,
    }
}

fn user_request(call: &StepCall<'_>) -> Result<pb::EnsureUserRequest, CallError> {
    let m = call.migration;
    let TargetUser::Dedicated { name, uid, gid } = m.target.user() else {
        return Err(CallError::Failed(format!(
            "{} has no account to make: its target is {}",
            call.container_name, m.target
        )));
    };
    Ok(pb::EnsureUserRequest {
        key: key(call.run, call.step),
        name: name.clone(),
        uid: uid.map(|id| id.get()),
        gid: gid.map(|id| id.get()),
        rootless: matches!(m.target, Target::Rootless { .. }),
    })
}

/// The rootless account of a rootless step; a step of another target
/// has none to name.
fn need_account<'m>(call: &StepCall<'m>) -> Result<&'m str, CallError> {
    call.migration.target.rootless_account().ok_or_else(|| {
        CallError::Failed(format!(
            "{}'s {} step moves it under a rootless account, but its target is {}",
            call.container_name,
            call.kind.as_str(),
            call.migration.target
        ))
    })
}

fn userns_pb(userns: UsernsMode) -> pb::Userns {
    pb::Userns {
        keep_id: match userns {
            UsernsMode::Default => None,
            UsernsMode::KeepId { uid, gid } => Some(pb::KeepId { uid, gid }),
        },
    }
}

fn image_request(call: &StepCall<'_>) -> Result<pb::LoadImageRequest, CallError> {
    Ok(pb::LoadImageRequest {
        key: key(call.run, call.step),
        container: call.container_id.into(),
        account: need_account(call)?.into(),
    })
}

fn volumes_request(call: &StepCall<'_>) -> Result<pb::MoveVolumesRequest, CallError> {
    Ok(pb::MoveVolumesRequest {
        key: key(call.run, call.step),
        container: call.container_id.into(),
        account: need_account(call)?.into(),
    })
}

fn place_request(call: &StepCall<'_>) -> Result<pb::PlaceRequest, CallError> {
    let account = need_account(call)?;
    let Target::Rootless { userns, inside, .. } = &call.migration.target else {
        return Err(CallError::Failed(format!(
            "{} is not moved rootless",
            call.container_name
        )));
    };
    Ok(pb::PlaceRequest {
        key: key(call.run, call.step),
        container: call.container_id.into(),
        account: account.into(),
        userns: Some(userns_pb(*userns)),
        uid: inside.map(|(uid, _)| uid),
        gid: inside.map(|(_, gid)| gid),
    })
}

fn stop_request(call: &StepCall<'_>) -> pb::StopRequest {
    pb::StopRequest {
        key: key(call.run, call.step),
        container: call.container_id.into(),
    }
}

fn ownership_request(call: &StepCall<'_>) -> Result<pb::ChangeOwnershipRequest, CallError> {
    let m = call.migration;
    if let Target::Rootless { userns, inside, .. } = &m.target {
        // The agent maps every id the data uses into the account's namespace.
        return Ok(pb::ChangeOwnershipRequest {
            key: key(call.run, call.step),
            container: call.container_id.into(),
            mounts: m.mounts.iter().map(|mp| mp.destination.clone()).collect(),
            carry: Some(pb::Carry {
                account: need_account(call)?.into(),
                userns: Some(userns_pb(*userns)),
                uid: inside.map(|(uid, _)| uid),
                gid: inside.map(|(_, gid)| gid),
            }),
            ..Default::default()
        });
    }
    let ids = need_target(call)?;
    let uids = m.from_ids.iter().map(|&from| (from, ids.uid())).collect();
    let gids = m.from_ids.iter().map(|&from| (from, ids.gid())).collect();
    Ok(pb::ChangeOwnershipRequest {
        key: key(call.run, call.step),
        container: call.container_id.into(),
        uids,
        gids,
        mounts: m.mounts.iter().map(|mp| mp.destination.clone()).collect(),
        ..Default::default()
    })
}

fn recreate_request(call: &StepCall<'_>) -> Result<pb::RecreateRequest, CallError> {
    let ids = need_target(call)?;
    Ok(pb::RecreateRequest {
        key: key(call.run, call.step),
        container: call.container_id.into(),
        uid: ids.uid(),
        gid: ids.gid(),
        allow_layer_loss: !call.migration.layer_loss_allowed.is_empty(),
        together: call.together.to_vec(),
    })
}

fn verify_request(call: &StepCall<'_>) -> pb::VerifyRequest {
    let m = call.migration;
    pb::VerifyRequest {
        key: key(call.run, call.step),
        // The recreated container has a new id, the same name.
        container: call.container_name.into(),
        deadline_secs: m.deadline_secs.min(u32::MAX as u64) as u32,
        min_running_secs: m.min_healthy_secs.min(u32::MAX as u64) as u32,
        probe: m.probe.as_ref().map(probe_pb),
        account: m.target.rootless_account().unwrap_or_default().into(),
    }
}

/// The account's ids from the user step's outcome: without them the
/// ownership and recreate steps have no target, so an outcome that lacks
/// them is lost (retried, then waited on), never read as "no ids".
fn made_ids(host: &Host, call: &StepCall<'_>, outcome: &Value) -> Result<Ids, CallError> {
    let unreadable = |why: String| {
        CallError::Lost(format!(
            "agent {} answered step {} of run {} ({} of {}) with an outcome that does not give the account's ids: {why}",
            host.name,
            call.step,
            call.run,
            call.kind.as_str(),
            call.container_name
        ))
    };
    let made: UserMade =
        serde_json::from_value(outcome.clone()).map_err(|e| unreadable(e.to_string()))?;
    Ids::new(made.uid, made.gid).map_err(|e| unreadable(e.to_string()))
}

fn read_outcome(host: &Host, run: &str, step: &str, json: &str) -> Result<Value, CallError> {
    serde_json::from_str(json).map_err(|e| {
        CallError::Lost(format!(
            "agent {} answered step {step} of run {run} with an outcome that does not read: {e}",
            host.name
        ))
    })
}

/// Undoes one step on the agent.
pub async fn undo(
    pool: &AgentPool,
    host: &Host,
    run: &str,
    step: &str,
) -> Result<StepReply, CallError> {
    let mut client = pool
        .client(host)
        .map_err(|e| CallError::Unreachable(e.to_string()))?;
    let stream = client
        .undo(pb::UndoRequest {
            key: key(run, step),
        })
        .await;
    drain(host, run, step, stream, &|_| {}).await
}

/// The step ids the agent's journal holds for `run` (empty if it has none):
/// what the controller reconciles its own in-flight intents against.
pub async fn agent_steps(
    pool: &AgentPool,
    host: &Host,
    run: &str,
) -> Result<HashSet<String>, CallError> {
    let mut client = pool
        .client(host)
        .map_err(|e| CallError::Unreachable(e.to_string()))?;
    match client
        .journal(pb::JournalRequest { run_id: run.into() })
        .await
    {
        // A journal that does not read is not an empty one: the resume and
        // the rollback decide from it which steps the agent took.
        Ok(response) => journal_steps(&response.into_inner().records_json).map_err(|e| {
            CallError::Lost(format!(
                "agent {} sent a journal for run {run} that does not read: {e}",
                host.name
            ))
        }),
        Err(status)
            if status.code() == tonic::Code::NotFound
                && std::error::Error::source(&status).is_none() =>
        {
            Ok(HashSet::new())
        }
        Err(status) => Err(classify(host, &status)),
    }
}

/// A record of the agent's journal, as far as the controller reads it.
#[derive(serde::Deserialize)]
struct JournalRecord {
    step: String,
}

fn journal_steps(records_json: &str) -> Result<HashSet<String>, serde_json::Error> {
    let records: Vec<JournalRecord> = serde_json::from_str(records_json)?;
    Ok(records.into_iter().map(|r| r.step).collect())
}

/// Releases the run's checkpoints on the host.
pub async fn prune(pool: &AgentPool, host: &Host, run: &str) -> Result<Value, CallError> {
    let mut client = pool
        .client(host)
        .map_err(|e| CallError::Unreachable(e.to_string()))?;
    match client.prune(pb::PruneRequest { run_id: run.into() }).await {
        Ok(r) => read_outcome(host, run, "prune", &r.into_inner().outcome_json),
        Err(status) => Err(classify(host, &status)),
    }
}

/// Retries `attempt` while the agent is unreachable, until it has been
/// out of reach for `deadline` in all: time spent connected (a long step
/// whose stream breaks after an hour) does not count, so that step still
/// gets its whole deadline; an agent that accepts and drops every stream
/// at once still runs out of it.
pub async fn with_deadline<T, F, Fut>(deadline: Duration, mut attempt: F) -> Result<T, CallError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, CallError>>,
{
    let mut away = Duration::ZERO;
    let mut pause = Duration::from_millis(200);
    loop {
        let started = Instant::now();
        let result = attempt().await;
        if matches!(result, Err(CallError::Unreachable(_))) {
            away += started.elapsed();
        }
        match result {
            Err(CallError::Unreachable(message) | CallError::Lost(message)) => {
                if away >= deadline {
                    let waited = if deadline.is_zero() {
                        "still out of reach".to_string()
                    } else {
                        format!("gave up after {} s", deadline.as_secs())
                    };
                    return Err(CallError::Unreachable(format!("{message} ({waited})")));
                }
                tracing::warn!(error = %message, "agent unreachable mid-step; retrying the same step");
                tokio::time::sleep(pause).await;
                away += pause;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn a_journal_that_does_not_read_is_an_error_not_an_empty_journal() {
        let steps =
            journal_steps(r#"[{"step":"a.backup","kind":"backup"},{"step":"a.user"}]"#).unwrap();
        assert_eq!(steps.len(), 2);
        assert!(steps.contains("a.user"));
        assert!(journal_steps("[]").unwrap().is_empty());
        for broken in ["", "{", r#"[{"kind":"backup"}]"#, r#"{"step":"a"}"#] {
            assert!(journal_steps(broken).is_err(), "{broken:?}");
        }
    }

    #[test]
    fn an_outcome_that_does_not_read_is_lost_naming_host_run_and_step() {
        let host = Host {
            name: "db1".into(),
            address: "127.0.0.1:1".into(),
            labels: Default::default(),
            source: crate::inventory::HostSource::Config,
        };
        let lost = read_outcome(&host, "r1", "abc.backup", "{not json").unwrap_err();
        assert!(
            matches!(&lost, CallError::Lost(m) if m.contains("agent db1") && m.contains("step abc.backup of run r1")),
            "{lost:?}"
        );
        assert_eq!(
            read_outcome(&host, "r1", "s", r#"{"uid":1}"#).unwrap()["uid"],
            1
        );
        // The user step's outcome is where the target ids come from.
        let migration: Migration = serde_json::from_value(serde_json::json!({
            "target": {"placement": "in-place", "user": {"kind": "dedicated", "name": "svc-web", "uid": null, "gid": null}},
            "from_ids": [0], "mounts": [], "backup_bytes": 0, "hooks": [], "probe": null,
            "min_healthy_secs": 0, "deadline_secs": 0, "retention_days": 0, "expected_downtime_ms": 0
        }))
        .unwrap();
        let call = StepCall {
            run: "r1",
            step: "abc.user",
            kind: StepKind::User,
            container_id: "abc",
            container_name: "web",
            migration: &migration,
            target: None,
            together: &[],
        };
        for outcome in [
            serde_json::json!({}),
            serde_json::json!({"uid": 61000}),
            serde_json::json!({"uid": 0, "gid": 0}),
        ] {
            let lost = made_ids(&host, &call, &outcome).unwrap_err();
            assert!(
                matches!(&lost, CallError::Lost(m) if m.contains("agent db1") && m.contains("step abc.user of run r1") && m.contains("account's ids")),
                "{outcome}: {lost:?}"
            );
        }
        let made = serde_json::json!({"uid": 61000, "gid": 61001, "created": true});
        assert_eq!(
            made_ids(&host, &call, &made).unwrap(),
            Ids::new(61000, 61001).unwrap()
        );
    }

    #[tokio::test]
    async fn the_deadline_counts_only_the_time_out_of_reach() {
        // The first attempt streams for longer than the deadline, then the
        // stream breaks; the agent stays away after that.
        let attempts = AtomicU32::new(0);
        let deadline = Duration::from_millis(300);
        let started = Instant::now();
        let result: Result<(), CallError> = with_deadline(deadline, || {
            let n = attempts.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 0 {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    Err(CallError::Lost("stream broke".into()))
                } else {
                    Err(CallError::Unreachable("connection refused".into()))
                }
            }
        })
        .await;
        assert!(matches!(result, Err(CallError::Unreachable(ref m)) if m.contains("gave up")));
        assert!(
            attempts.load(Ordering::SeqCst) > 1,
            "retried after the loss"
        );
        assert!(started.elapsed() >= Duration::from_millis(800));
        // Away from the start: the deadline counts from the first attempt.
        let attempts = AtomicU32::new(0);
        let started = Instant::now();
        let _ = with_deadline(deadline, || {
            attempts.fetch_add(1, Ordering::SeqCst);
            async { Err::<(), _>(CallError::Unreachable("refused".into())) }
        })
        .await;
        assert!(started.elapsed() < Duration::from_millis(800));
        assert!(attempts.load(Ordering::SeqCst) > 1);
        // An agent that accepts and drops every stream at once runs out too.
        let attempts = AtomicU32::new(0);
        let started = Instant::now();
        let result = with_deadline(deadline, || {
            attempts.fetch_add(1, Ordering::SeqCst);
            async { Err::<(), _>(CallError::Lost("dropped".into())) }
        })
        .await;
        assert!(matches!(result, Err(CallError::Unreachable(ref m)) if m.contains("gave up")));
        assert!(started.elapsed() < Duration::from_secs(3));
        // An agent's own error is final at once.
        let attempts = AtomicU32::new(0);
        let result = with_deadline(deadline, || {
            attempts.fetch_add(1, Ordering::SeqCst);
            async { Err::<(), _>(CallError::Failed("no such container".into())) }
        })
        .await;
        assert_eq!(result, Err(CallError::Failed("no such container".into())));
        assert_eq!(attempts.load(Ordering::SeqCst), 1);
    }
}
