//! The user step: the dedicated account (user, group, home, and for a
//! rootless target its subordinate ranges and linger) through
//! shadow-utils. What existed before is recorded first, so the undo
//! removes only what the step made, even after a crash mid-step.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::spec::UserSpec;
use super::step::{Step, StepContext, StepError, from_value};
use crate::users::{self, UserError, UserOutcome, UserRequest};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserIntent {
    pub request: UserRequest,
    pub user_existed: bool,
    pub group_existed: bool,
    pub home_existed: bool,
}

pub struct UserStep;

/// Whether `name` is in the host's `db` (passwd, group).
fn exists(db: &str, name: &str) -> bool {
    std::process::Command::new("getent")
        .args([db, name])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

impl Step for UserStep {
    type Spec = UserSpec;
    type Intent = UserIntent;
    type Outcome = UserOutcome;

    async fn prepare(
        &self,
        cx: &StepContext<'_>,
        request: &UserRequest,
    ) -> Result<UserIntent, StepError> {
        users::validate_name(&request.name)?;
        Ok(UserIntent {
            request: request.clone(),
            user_existed: exists("passwd", &request.name),
            group_existed: exists("group", &request.name),
            home_existed: cx.users.home_root.join(&request.name).exists(),
        })
    }

    async fn act(
        &self,
        cx: &StepContext<'_>,
        intent: UserIntent,
    ) -> Result<UserOutcome, StepError> {
        let settings = cx.users.clone();
        let mut outcome = tokio::task::spawn_blocking(move || {
            let mut outcome = users::ensure_user(&intent.request, &settings)?;
            // After a crash the user may exist already, made by this step.
            outcome.created_user |= !intent.user_existed;
            outcome.created_group |= !intent.group_existed;
            outcome.created_home |= !intent.home_existed;
            Ok::<UserOutcome, UserError>(outcome)
        })
        .await
        .map_err(StepError::task)??;
        outcome.notes.sort();
        Ok(outcome)
    }

    async fn undo(
        &self,
        cx: &StepContext<'_>,
        intent: UserIntent,
        outcome: Option<&Value>,
    ) -> Result<Value, StepError> {
        let made = match outcome {
            Some(outcome) => from_value(outcome)?,
            None => made_before_the_crash(cx, &intent),
        };
        if made.created_user
            && intent.request.rootless
            && let Ok(account) = users::rootless_account(&made.name, cx.users)
        {
            // userdel refuses an account with processes: its Podman API
            // service and pause process end first.
            cx.accounts.stop(&account.name, account.ids.uid).await?;
        }
        let settings = cx.users.clone();
        tokio::task::spawn_blocking(move || users::undo_user(&made, &settings))
            .await
            .map_err(StepError::task)??;
        Ok(json!("user removed"))
    }
}

/// Interrupted: what exists now but did not before is the step's.
fn made_before_the_crash(cx: &StepContext<'_>, intent: &UserIntent) -> UserOutcome {
    let name = &intent.request.name;
    let home = cx.users.home_root.join(name);
    UserOutcome {
        name: name.clone(),
        uid: 0,
        gid: 0,
        home: home.display().to_string(),
        created_user: !intent.user_existed && exists("passwd", name),
        created_group: !intent.group_existed && exists("group", name),
        created_home: !intent.home_existed && home.exists(),
        subuids: None,
        subgids: None,
        linger_enabled: false,
        notes: Vec::new(),
    }
}
