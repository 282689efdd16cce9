//! mTLS for every fleet connection. There is no plaintext mode.
//!
//! Servers require a client certificate signed by the fleet CA (chain and
//! expiry checked in the handshake); which role may call what is decided per
//! RPC by [`crate::auth`]. Clients check the server's chain, name, and that
//! its certificate carries the role they expect to talk to (a controller only
//! talks to agents, the CLI only to a controller).
//!
//! `material` loads the CA and own identity (and checks our own certificate
//! before a peer does); `server` makes the server configuration and runs the
//! accept loop; `client` makes the client configuration and the connector;
//! `failure` tells from a failed connection's error chain what failed. This
//! file only names them.

mod client;
mod failure;
mod material;
mod server;

pub use client::{channel, split_address};
pub use failure::{ConnectFailure, error_chain, explain_connect_error};
pub use material::{TlsError, TlsFiles, TlsMaterial, crypto_provider, install_crypto_provider};
pub use server::incoming;
