//! The place step: the stopped rootful container is renamed to its
//! checkpoint name with restart policy `no`, and the container is created
//! and started under its account's engine from the old inspect document
//! (`rootless::place`). Undone by removing the account's container and
//! giving the checkpoint back its name and restart policy (the stop
//! step's undo starts it).

use fleet_core::now_ms;
use fleet_core::userns::UsernsMode;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::spec::PlaceSpec;
use super::step::{Step, StepContext, StepError};
use crate::container::{Api, ContainerError, str_at};
use crate::rootless::image::{fully_qualified, image_id};
use crate::rootless::install;
use crate::rootless::place::{self, Differences};
use crate::rootless::unit::{self, UnitFile, UnitSource};
use crate::users;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlaceIntent {
    pub account: String,
    pub old_id: String,
    pub name: String,
    pub checkpoint_name: String,
    pub restart_policy: Value,
    /// The rootful engine cannot change a restart policy after create
    /// (Podman before 5.1): the checkpoint keeps its own, and stays down
    /// because its user stopped it.
    pub checkpoint_keeps_restart_policy: bool,
    pub stop_timeout: Option<i64>,
    pub userns: UsernsMode,
    pub create_body: Value,
    pub changes: Vec<String>,
    /// The unit that brings the container back at boot.
    #[serde(default)]
    pub unit: Option<UnitFile>,
    /// The account's manager lingered before the unit asked it to.
    #[serde(default)]
    pub lingered_before: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlaceOutcome {
    pub new_id: String,
    pub account: String,
    pub started_at_ms: u64,
    pub changes: Vec<String>,
    /// What installing the unit did (or could not, without systemd).
    #[serde(default)]
    pub unit_notes: Vec<String>,
}

pub struct PlaceStep;

impl Step for PlaceStep {
    type Spec = PlaceSpec;
    type Intent = PlaceIntent;
    type Outcome = PlaceOutcome;

    async fn prepare(
        &self,
        cx: &StepContext<'_>,
        spec: &PlaceSpec,
    ) -> Result<PlaceIntent, StepError> {
        let old = cx.scoped(&spec.container).await?;
        let name = str_at(&old, "/Name").trim_start_matches('/').to_string();
        if old.pointer("/State/Running").and_then(|v| v.as_bool()) == Some(true) {
            return Err(StepError::Invalid(format!(
                "{name} is running: the stop step comes first"
            )));
        }
        if old
            .pointer("/HostConfig/AutoRemove")
            .and_then(|v| v.as_bool())
            == Some(true)
        {
            return Err(ContainerError::Refused(vec![format!(
                "{name} has AutoRemove: it vanishes when stopped, and with it the only way back"
            )])
            .into());
        }
        let caps = crate::capabilities::current().await;
        let Differences { blockers, changes } =
            place::differences(&old, place::HostFacts::of(&caps));
        if !blockers.is_empty() {
            return Err(ContainerError::Refused(blockers).into());
        }
        let account = users::rootless_account(&spec.account, cx.users)?;
        let reached = cx.accounts.reach(&account).await?;
        let target = Api::new(reached.engine.connected().await?);
        let id = image_id(str_at(&old, "/Image"));
        // The qualified name when it names the very image, else the ID.
        let image = match fully_qualified(str_at(&old, "/Config/Image")) {
            Some(full) if target.image_id(&full).await.ok().as_deref() == Some(id.as_str()) => full,
            _ => id,
        };
        let user = place::container_user(&old, spec.user);
        let create_body = place::rootless_body(&old, &user, &image, spec.userns, &target);
        let restart_policy = old
            .pointer("/HostConfig/RestartPolicy")
            .cloned()
            .unwrap_or(json!({"Name": "no"}));
        let stop_timeout = old.pointer("/Config/StopTimeout").and_then(|v| v.as_i64());
        let release = caps.podman_release().unwrap_or((0, 0));
        let unit = unit::render(
            unit::flavour(caps.rootless_needs().unit, release),
            &UnitSource {
                name: &name,
                account: &spec.account,
                uid: account.ids.uid,
                podman: &cx.accounts.podman().podman,
                global_args: cx
                    .accounts
                    .podman()
                    .global_args(cx.accounts.manager().is_systemd()),
                body: &create_body,
                restart_policy: str_at(&restart_policy, "/Name"),
                stop_timeout,
                release,
            },
            cx.accounts.unit_dirs(),
        );
        Ok(PlaceIntent {
            account: spec.account.clone(),
            old_id: str_at(&old, "/Id").to_string(),
            checkpoint_name: format!("{name}.fleet-pre-{}", cx.journal.run()),
            restart_policy,
            checkpoint_keeps_restart_policy: !cx.conn.flavour.updates_restart_policy(),
            stop_timeout,
            unit: Some(unit),
            lingered_before: install::lingers(&spec.account),
            userns: spec.userns,
            create_body,
            changes,
            name,
        })
    }

    async fn act(
        &self,
        cx: &StepContext<'_>,
        intent: PlaceIntent,
    ) -> Result<PlaceOutcome, StepError> {
        let account = users::rootless_account(&intent.account, cx.users)?;
        let reached = cx.accounts.reach(&account).await?;
        let target = Api::new(reached.engine.connected().await?);
        let source = cx.api();
        let mut created = None;
        let placed = async {
            source
                .rename(&intent.old_id, &intent.checkpoint_name)
                .await?;
            if !intent.checkpoint_keeps_restart_policy && restarts(&intent.restart_policy) {
                source
                    .set_restart_policy(&intent.old_id, &json!({"Name": "no"}))
                    .await?;
            }
            let new_id = target.create(&intent.name, &intent.create_body).await?;
            created = Some(new_id.clone());
            target.start(&new_id).await?;
            Ok::<_, ContainerError>(new_id)
        }
        .await
        .map_err(StepError::from);
        // The unit, once the container it defines has started: where a user
        // manager runs, its `podman run --replace` is the container now.
        let placed = match placed {
            Ok(new_id) => match &intent.unit {
                None => Ok((new_id, Vec::new())),
                Some(unit) => match install::install(unit, &account, cx.accounts.manager()) {
                    Ok(notes) if cx.accounts.manager().is_systemd() => target
                        .inspect(&intent.name)
                        .await
                        .map(|doc| (str_at(&doc, "/Id").to_string(), notes))
                        .map_err(StepError::from),
                    Ok(notes) => Ok((new_id, notes)),
                    Err(e) => Err(e.into()),
                },
            },
            Err(e) => Err(e),
        };
        match placed {
            Ok((new_id, unit_notes)) => Ok(PlaceOutcome {
                new_id,
                account: intent.account.clone(),
                started_at_ms: now_ms(),
                changes: intent.changes.clone(),
                unit_notes,
            }),
            Err(e) => {
                if let Some(unit) = &intent.unit
                    && let Err(undo) = install::remove(
                        unit,
                        Some(&account),
                        cx.accounts.manager(),
                        intent.lingered_before,
                    )
                {
                    tracing::error!(error = %undo, "removing the unit after a failed place failed too");
                }
                if let Err(undo) = put_back(&source, &target, &intent, created.as_deref()).await {
                    tracing::error!(error = %undo, "putting the rootful container back after a failed place failed too");
                }
                Err(e)
            }
        }
    }

    async fn undo(
        &self,
        cx: &StepContext<'_>,
        intent: PlaceIntent,
        outcome: Option<&Value>,
    ) -> Result<Value, StepError> {
        let new_id = outcome
            .and_then(|o| o.get("new_id"))
            .and_then(|v| v.as_str());
        let source = cx.api();
        let account = users::rootless_account(&intent.account, cx.users).ok();
        if let Some(unit) = &intent.unit {
            install::remove(
                unit,
                account.as_ref(),
                cx.accounts.manager(),
                intent.lingered_before,
            )?;
        }
        match account {
            Some(account) => {
                let reached = cx.accounts.reach(&account).await?;
                let target = Api::new(reached.engine.connected().await?);
                put_back(&source, &target, &intent, new_id).await?;
            }
            // No account, no container under it: only the checkpoint's name is left to give back.
            None => restore_checkpoint(&source, &intent).await?,
        }
        Ok(json!({ "restored": intent.old_id }))
    }
}

/// Removes the account's container (the one this step made: by id, or by
/// name and what it was created with), then restores the checkpoint.
async fn put_back(
    source: &Api<'_>,
    target: &Api<'_>,
    intent: &PlaceIntent,
    new_id: Option<&str>,
) -> Result<(), ContainerError> {
    if let Some(id) = new_id {
        place::remove_placed(target, id, intent.stop_timeout).await?;
    }
    // What holds the name now: the step's own (created, not yet recorded),
    // or one its unit ran since (`podman run --replace`, a new id).
    let unit = intent.unit.as_ref().map(|u| u.service.as_str());
    match target.inspect(&intent.name).await {
        Ok(doc)
            if (new_id.is_none()
                && doc.pointer("/Config/User") == intent.create_body.get("User"))
                || (unit.is_some()
                    && doc
                        .pointer("/Config/Labels/PODMAN_SYSTEMD_UNIT")
                        .and_then(|v| v.as_str())
                        == unit) =>
        {
            place::remove_placed(target, str_at(&doc, "/Id"), intent.stop_timeout).await?
        }
        Ok(doc) if new_id.is_none() => {
            return Err(ContainerError::Refused(vec![format!(
                "the account's container {} ({}) was not made by this step; remove it, then roll back again",
                intent.name,
                str_at(&doc, "/Id")
            )]));
        }
        // The step's own is gone; another of that name is not ours.
        Ok(_) | Err(ContainerError::NotFound(_)) => {}
        Err(e) => return Err(e),
    }
    restore_checkpoint(source, intent).await
}

/// Whether a restart policy brings a container back at all (`""` is
/// Docker's "no"): one that does not is left untouched, both ways.
fn restarts(policy: &Value) -> bool {
    !matches!(str_at(policy, "/Name"), "" | "no")
}

async fn restore_checkpoint(source: &Api<'_>, intent: &PlaceIntent) -> Result<(), ContainerError> {
    let old = source.inspect(&intent.old_id).await?;
    if str_at(&old, "/Name").trim_start_matches('/') != intent.name {
        source.rename(&intent.old_id, &intent.name).await?;
    }
    if !intent.checkpoint_keeps_restart_policy
        && restarts(&intent.restart_policy)
        && old.pointer("/HostConfig/RestartPolicy") != Some(&intent.restart_policy)
    {
        source
            .set_restart_policy(&intent.old_id, &intent.restart_policy)
            .await?;
    }
    Ok(())
}
