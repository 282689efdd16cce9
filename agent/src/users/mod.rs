//! Dedicated service users, made with the host's own tools (groupadd,
//! useradd, usermod, loginctl) so that NSS, locking and logs behave as an
//! administrator expects. Idempotent: an existing user with the same ids is
//! success; a name or id taken with other ids is a conflict, never a silent
//! reuse. The undo removes only what the step created.
//!
//! Names derived from a service follow one documented rule
//! (`derive_name`): `silly-tavern` → `svc-silly-tavern`.
//!
//! The parts: `request` (what is asked, the settings, what was made, the
//! naming rule), `host_files` (passwd, group, subuid, subgid as read to
//! decide, and the host-wide lock), `ids` (choosing and recording ids),
//! `tools` (shadow-utils and loginctl), `account` (a rootless account as
//! the host's files say it is now), `create` (`ensure_user`), `remove`
//! (`undo_user`), `error`.

mod account;
mod create;
mod error;
mod host_files;
mod ids;
mod remove;
mod request;
mod tools;

pub use account::{RootlessAccount, rootless_account};
pub use create::ensure_user;
pub use error::UserError;
pub use remove::undo_user;
pub use request::{UserOutcome, UserRequest, UserSettings, derive_name, validate_name};
