//! The agent's one edge to the wire: every conversion between the
//! protobuf types (`fleet_proto`) and the agent's own, and the one mapping
//! from the agent's errors to gRPC statuses. `service.rs` serves the RPCs
//! with these; nothing else in the agent sees a wire type.

use std::collections::{BTreeMap, HashMap};

use fleet_core::audit::HostReport;
use fleet_core::step::Probe;
use fleet_core::userns::UsernsMode;
use fleet_proto::agent::v1 as pb;
use serde_json::Value;
use tonic::Status;

use crate::backup::{BackupError, BackupMeta, MountBackup, VerifyOutcome};
use crate::container::ContainerError;
use crate::engine::EngineError;
use crate::inspect::InspectOptions;
use crate::journal::{JournalError, Record};
use crate::recreate::RecreateError;
use crate::remap::{IdMapping, RemapError};
use crate::rootless::RootlessError;
use crate::steps::{
    BackupSpec, Carry, ImageSpec, OwnershipSpec, PlaceSpec, RecreateSpec, RestoreSpec, StepError,
    StepProgress, StepResult, StepSpec, StopSpec, UserSpec, VerifySpec, VolumesSpec,
};
use crate::users::UserError;

/// A step asked for over the wire: the run and step it is keyed by, and
/// what it asks.
#[derive(Debug)]
pub struct Keyed {
    pub run: String,
    pub step: String,
    pub spec: StepSpec,
}

/// A request of one of the agent's step RPCs.
pub trait StepRequest {
    fn into_step(self) -> Result<Keyed, Status>;
}

/// The (run, step) a request is keyed by.
pub fn key(key: Option<pb::StepKey>) -> Result<(String, String), Status> {
    let key =
        key.ok_or_else(|| Status::invalid_argument("the request names no run id and step id"))?;
    Ok((key.run_id, key.step_id))
}

fn keyed(key_of: Option<pb::StepKey>, spec: StepSpec) -> Result<Keyed, Status> {
    let (run, step) = key(key_of)?;
    Ok(Keyed { run, step, spec })
}

/// A field the wire leaves at 0 for "the default".
fn or_default(value: u32, default: u32) -> u64 {
    u64::from(if value == 0 { default } else { value })
}

impl StepRequest for pb::BackupRequest {
    fn into_step(self) -> Result<Keyed, Status> {
        let spec = BackupSpec {
            container: self.container,
            hooks: self
                .hooks
                .into_iter()
                .map(|h| (h.argv, u64::from(h.timeout_secs.max(1))))
                .collect(),
            retention_days: or_default(self.retention_days, 14),
        };
        keyed(self.key, StepSpec::Backup(spec))
    }
}

impl StepRequest for pb::EnsureUserRequest {
    fn into_step(self) -> Result<Keyed, Status> {
        let spec = UserSpec {
            name: self.name,
            uid: self.uid,
            gid: self.gid,
            rootless: self.rootless,
        };
        keyed(self.key, StepSpec::User(spec))
    }
}

impl StepRequest for pb::StopRequest {
    fn into_step(self) -> Result<Keyed, Status> {
        let spec = StopSpec {
            container: self.container,
        };
        keyed(self.key, StepSpec::Stop(spec))
    }
}

impl StepRequest for pb::ChangeOwnershipRequest {
    fn into_step(self) -> Result<Keyed, Status> {
        let spec = OwnershipSpec {
            container: self.container,
            mapping: mapping(
                self.uids,
                self.gids,
                (self.everything_uid, self.everything_gid),
            ),
            skip_if_root_matches: self.skip_if_root_matches,
            allow_protected_hardlinks: self.allow_protected_hardlinks,
            mounts: self.mounts,
            carry: self.carry.map(|c| Carry {
                account: c.account,
                userns: userns(c.userns),
                inside: c.uid.map(|uid| (uid, c.gid.unwrap_or(uid))),
            }),
        };
        keyed(self.key, StepSpec::Ownership(spec))
    }
}

impl StepRequest for pb::RecreateRequest {
    fn into_step(self) -> Result<Keyed, Status> {
        let (run, step) = key(self.key)?;
        let spec = RecreateSpec {
            container: self.container,
            uid: self.uid,
            gid: self.gid,
            run: run.clone(),
            allow_layer_loss: self.allow_layer_loss,
            together: self.together,
        };
        Ok(Keyed {
            run,
            step,
            spec: StepSpec::Recreate(spec),
        })
    }
}

impl StepRequest for pb::VerifyRequest {
    fn into_step(self) -> Result<Keyed, Status> {
        let spec = VerifySpec {
            container: self.container,
            deadline_secs: or_default(self.deadline_secs, 60),
            min_running_secs: or_default(self.min_running_secs, 5),
            probe: probe(self.probe),
            account: Some(self.account).filter(|a| !a.is_empty()),
        };
        keyed(self.key, StepSpec::Verify(spec))
    }
}

impl StepRequest for pb::LoadImageRequest {
    fn into_step(self) -> Result<Keyed, Status> {
        let spec = ImageSpec {
            container: self.container,
            account: self.account,
        };
        keyed(self.key, StepSpec::Image(spec))
    }
}

impl StepRequest for pb::MoveVolumesRequest {
    fn into_step(self) -> Result<Keyed, Status> {
        let spec = VolumesSpec {
            container: self.container,
            account: self.account,
        };
        keyed(self.key, StepSpec::Volumes(spec))
    }
}

impl StepRequest for pb::PlaceRequest {
    fn into_step(self) -> Result<Keyed, Status> {
        let user = match (self.uid, self.gid) {
            (Some(uid), Some(gid)) => Some((uid, gid)),
            (None, None) => None,
            _ => {
                return Err(Status::invalid_argument(
                    "a place request gives both the uid and the gid inside the container, or neither",
                ));
            }
        };
        let spec = PlaceSpec {
            container: self.container,
            account: self.account,
            userns: userns(self.userns),
            user,
        };
        keyed(self.key, StepSpec::Place(spec))
    }
}

/// No keep-id is the account's own namespace.
fn userns(userns: Option<pb::Userns>) -> UsernsMode {
    match userns.and_then(|u| u.keep_id) {
        Some(keep) => UsernsMode::KeepId {
            uid: keep.uid,
            gid: keep.gid,
        },
        None => UsernsMode::Default,
    }
}

impl StepRequest for pb::RestoreRequest {
    fn into_step(self) -> Result<Keyed, Status> {
        let spec = RestoreSpec {
            backup_id: self.backup_id,
            mounts: self.mounts,
        };
        keyed(self.key, StepSpec::Restore(spec))
    }
}

fn mapping(
    uids: HashMap<u32, u32>,
    gids: HashMap<u32, u32>,
    everything: (Option<u32>, Option<u32>),
) -> IdMapping {
    IdMapping {
        uids: uids.into_iter().collect::<BTreeMap<_, _>>(),
        gids: gids.into_iter().collect::<BTreeMap<_, _>>(),
        everything: match everything {
            (Some(u), Some(g)) => Some((u, g)),
            (Some(u), None) => Some((u, u)),
            _ => None,
        },
    }
}

fn probe(probe: Option<pb::Probe>) -> Option<Probe> {
    match probe?.kind? {
        pb::probe::Kind::TcpAddress(address) => Some(Probe::Tcp { address }),
        pb::probe::Kind::HttpUrl(url) => Some(Probe::Http { url }),
        pb::probe::Kind::Exec(exec) => Some(Probe::Exec { argv: exec.argv }),
    }
}

pub fn inspect_options(request: pb::InspectRequest) -> InspectOptions {
    InspectOptions {
        containers: request.containers,
        skip_ownership: request.skip_ownership,
        with_users: request.with_users,
    }
}

/// The report, converted by `fleet_proto`'s own conversions of the audit model.
pub fn host_report(report: HostReport) -> pb::HostReport {
    report.into()
}

pub fn progress_event(p: StepProgress) -> pb::StepEvent {
    pb::StepEvent {
        event: Some(pb::step_event::Event::Progress(pb::StepProgress {
            step_id: p.step,
            phase: p.phase,
            entries: p.progress.entries,
            changed: p.progress.changed,
            bytes: p.progress.bytes,
        })),
    }
}

/// A step's result; its outcome crosses as the JSON the agent journaled.
pub fn result_event(r: StepResult) -> pb::StepEvent {
    pb::StepEvent {
        event: Some(pb::step_event::Event::Result(pb::StepResult {
            step_id: r.step,
            kind: r.kind.as_str().to_string(),
            replayed: r.replayed,
            outcome_json: r.outcome.to_string(),
            undone: r.undone,
        })),
    }
}

pub fn prune_response(outcome: &Value) -> pb::PruneResponse {
    pb::PruneResponse {
        outcome_json: outcome.to_string(),
    }
}

pub fn verify_backup_response(
    outcome: &[(MountBackup, VerifyOutcome)],
) -> pb::VerifyBackupResponse {
    pb::VerifyBackupResponse {
        ok: outcome.iter().all(|(_, v)| v.problems.is_empty()),
        outcome_json: serde_json::to_string(outcome).unwrap_or_default(),
    }
}

pub fn list_backups_response(backups: &[BackupMeta]) -> pb::ListBackupsResponse {
    pb::ListBackupsResponse {
        backups_json: serde_json::to_string(backups).unwrap_or_default(),
    }
}

pub fn journal_response(records: &[Record]) -> pb::JournalResponse {
    pb::JournalResponse {
        records_json: serde_json::to_string(records).unwrap_or_default(),
    }
}

impl From<EngineError> for Status {
    fn from(error: EngineError) -> Self {
        let message = error.to_string();
        match error {
            EngineError::NoSocket { .. } | EngineError::Unreachable { .. } => {
                Status::unavailable(message)
            }
            EngineError::NoSuchContainer(_) => Status::not_found(message),
            EngineError::Api { .. } => Status::internal(message),
        }
    }
}

impl From<StepError> for Status {
    fn from(error: StepError) -> Self {
        use StepError as E;
        let message = error.to_string();
        match error {
            E::Engine(e) | E::Rootless(RootlessError::Engine(e)) => e.into(),
            E::Recreate(RecreateError::Container(e)) | E::Rootless(RootlessError::Container(e)) => {
                E::Container(e).into()
            }
            E::Rootless(RootlessError::Account(e)) => E::User(e).into(),
            E::Rootless(RootlessError::NoApi { .. }) => Status::unavailable(message),
            E::Rootless(RootlessError::Refused(_)) => Status::failed_precondition(message),
            E::Invalid(_)
            | E::KindMismatch { .. }
            | E::Journal(JournalError::InvalidId { .. })
            | E::Remap(RemapError::InvalidMapping(_))
            | E::User(UserError::InvalidName { .. })
            | E::Recreate(RecreateError::InvalidRequest(_)) => Status::invalid_argument(message),
            E::NoSuchStep { .. }
            | E::Journal(JournalError::NoSuchRun(_))
            | E::Container(ContainerError::NotFound(_))
            | E::Backup(BackupError::NotFound(_)) => Status::not_found(message),
            E::AlreadyUndone { .. }
            | E::Pruned { .. }
            | E::NotSettled { .. }
            | E::Container(ContainerError::Refused(_))
            | E::Container(ContainerError::CreateFailed { .. })
            | E::Container(ContainerError::Verify(_))
            | E::Remap(RemapError::ReadOnly { .. })
            | E::Remap(RemapError::NotPermitted { .. })
            | E::Remap(RemapError::ManifestMismatch { .. })
            | E::User(UserError::Conflict(_))
            | E::User(UserError::RangeExhausted(..)) => Status::failed_precondition(message),
            E::Backup(BackupError::NoSpace { .. }) => Status::resource_exhausted(message),
            E::Container(ContainerError::Unreachable(_)) => Status::unavailable(message),
            _ => Status::internal(message),
        }
    }
}
