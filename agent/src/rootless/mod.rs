//! A rootless target: a container moved from the rootful engine to its own
//! account's rootless Podman (ROOTLESS.md). The parts: the account's engine
//! (`engines`, started by its user manager or by the agent, `manager`), the
//! image carried into the account's storage as the account (`image`), the
//! named volumes handed over by rename (`volumes`), and the container
//! created there with every difference rootless forces said (`place`). The
//! data's ownership is remapped by the ownership step through
//! `fleet_core::userns`, with the same walk and manifest as in place.

pub mod audit;
mod engines;
mod error;
pub mod image;
pub mod install;
pub mod manager;
pub mod place;
pub mod unit;
pub mod volumes;

pub use engines::{AccountEngines, Reached};
pub use error::RootlessError;
pub use manager::{PodmanCommand, Started, UserManager};
