//! The image step: the exact image the container ran, by ID, loaded into
//! its account's own storage through the account's API, before the
//! container stops (a load is not downtime). Undone by removing it from
//! the account's storage if this step put it there.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::spec::ImageSpec;
use super::step::{Step, StepContext, StepError, from_value};
use crate::container::str_at;
use crate::rootless::image::{self, LoadedImage};
use crate::users;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageIntent {
    pub account: String,
    pub image_id: String,
    /// The name the container was created from.
    pub name: String,
    /// Whether the account's storage held the image before.
    pub present_before: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageOutcome {
    pub image: LoadedImage,
    pub notes: Vec<String>,
}

pub struct ImageStep;

impl Step for ImageStep {
    type Spec = ImageSpec;
    type Intent = ImageIntent;
    type Outcome = ImageOutcome;

    async fn prepare(
        &self,
        cx: &StepContext<'_>,
        spec: &ImageSpec,
    ) -> Result<ImageIntent, StepError> {
        let doc = cx.scoped(&spec.container).await?;
        let account = users::rootless_account(&spec.account, cx.users)?;
        let reached = cx.accounts.reach(&account).await?;
        let conn = reached.engine.connected().await?;
        let image_id = image::image_id(str_at(&doc, "/Image"));
        Ok(ImageIntent {
            account: spec.account.clone(),
            present_before: conn.docker.inspect_image(&image_id).await.is_ok(),
            image_id,
            name: str_at(&doc, "/Config/Image").to_string(),
        })
    }

    async fn act(
        &self,
        cx: &StepContext<'_>,
        intent: ImageIntent,
    ) -> Result<ImageOutcome, StepError> {
        let account = users::rootless_account(&intent.account, cx.users)?;
        let reached = cx.accounts.reach(&account).await?;
        let mut notes: Vec<String> = reached
            .started
            .iter()
            .map(|s| s.describe(&account.name))
            .collect();
        let conn = reached.engine.connected().await?;
        let mut loaded = image::load(cx.conn, conn, &intent.image_id, Some(&intent.name)).await?;
        // After a crash mid-load the image is there, but it is still ours.
        loaded.loaded |= !intent.present_before;
        if let Some(name) = &loaded.name {
            notes.push(format!("loaded as {name} ({})", loaded.id));
        }
        Ok(ImageOutcome {
            image: loaded,
            notes,
        })
    }

    async fn undo(
        &self,
        cx: &StepContext<'_>,
        intent: ImageIntent,
        outcome: Option<&Value>,
    ) -> Result<Value, StepError> {
        if intent.present_before {
            return Ok(json!("the account had the image before: kept"));
        }
        let image = match outcome {
            Some(outcome) => from_value::<ImageOutcome>(outcome)?.image,
            None => LoadedImage {
                id: intent.image_id.clone(),
                name: None,
                loaded: true,
                bytes: 0,
            },
        };
        let Ok(account) = users::rootless_account(&intent.account, cx.users) else {
            return Ok(json!("the account is gone, and its storage with it"));
        };
        let reached = cx.accounts.reach(&account).await?;
        image::unload(reached.engine.connected().await?, &image).await?;
        Ok(json!({ "removed": image.id }))
    }
}
