//! The connection to the controller, and turning its refusals into sentences.

use std::time::Duration;

use fleet_core::role::Role;
use fleet_core::tls::{self, ConnectFailure, TlsMaterial, error_chain, explain_connect_error};
use fleet_proto::controller::v1::controller_client::ControllerClient;
use tonic::transport::Channel;

use crate::config::Connection;
use crate::exit::{CliError, ERROR, USAGE};

/// A fleet-wide audit can be large (a thousand hosts).
const MAX_RESPONSE: usize = 1024 * 1024 * 1024;

pub struct Controller {
    pub client: ControllerClient<Channel>,
    pub address: String,
}

pub fn connect(connection: &Connection) -> Result<Controller, CliError> {
    let material =
        TlsMaterial::load(&connection.tls).map_err(|e| CliError::usage(e.to_string()))?;
    material
        .check_own_certificate(&connection.tls)
        .map_err(|e| CliError::error(e.to_string()))?;
    let config = material
        .client_config(Role::Controller)
        .map_err(|e| CliError::error(e.to_string()))?;
    let channel = tls::channel(&connection.controller, config, Duration::from_secs(5))
        .map_err(|e| CliError::usage(e.to_string()))?;
    Ok(Controller {
        client: ControllerClient::new(channel).max_decoding_message_size(MAX_RESPONSE),
        address: connection.controller.clone(),
    })
}

impl Controller {
    /// One sentence for a failed call, with the exit code it deserves.
    pub fn explain(&self, status: tonic::Status) -> CliError {
        use std::error::Error;
        let peer = format!("the controller {}", self.address);
        if let Some(source) = status.source() {
            return CliError::error(explain_connect_error(&peer, source));
        }
        let code = match status.code() {
            tonic::Code::InvalidArgument | tonic::Code::NotFound => USAGE,
            _ => ERROR,
        };
        let prefix = match status.code() {
            tonic::Code::PermissionDenied => "refused: ",
            tonic::Code::Unauthenticated => "not authenticated: ",
            _ => "",
        };
        CliError {
            code,
            message: format!("{prefix}{}", status.message()),
        }
    }
}

/// Whether a failed call may succeed if made again: the controller is
/// down or restarting, or the connection broke. Not when a certificate or
/// the request itself was refused. `streaming`: the call's stream was open
/// (our certificate had been accepted), so any transport error is a break.
pub fn worth_retrying(status: &tonic::Status, streaming: bool) -> bool {
    use std::error::Error;
    if let Some(source) = status.source() {
        return streaming || !ConnectFailure::of(&error_chain(source)).is_refusal();
    }
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::Cancelled => true,
        // A stream cut by the server's death surfaces as an HTTP/2 error
        // without a source; the watch itself never sends one.
        tonic::Code::Internal | tonic::Code::Unknown => streaming,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_controller_going_away_is_worth_retrying_a_refusal_is_not() {
        let io = |kind, text: &str| {
            tonic::Status::from_error(Box::new(std::io::Error::new(kind, text.to_string())))
        };
        let down = io(
            std::io::ErrorKind::ConnectionRefused,
            "Connection refused (os error 111)",
        );
        assert!(worth_retrying(&down, false));
        let alert = io(
            std::io::ErrorKind::InvalidData,
            "received fatal alert: BadCertificate",
        );
        assert!(!worth_retrying(&alert, false), "a refused certificate");
        let cut = io(
            std::io::ErrorKind::ConnectionReset,
            "connection reset by peer",
        );
        assert!(worth_retrying(&cut, true), "a stream cut mid-way");
        assert!(worth_retrying(
            &tonic::Status::unavailable("restarting"),
            false
        ));
        assert!(worth_retrying(
            &tonic::Status::internal("h2 protocol error"),
            true
        ));
        assert!(!worth_retrying(&tonic::Status::internal("store"), false));
        for refusal in [
            tonic::Status::permission_denied("viewers may only read"),
            tonic::Status::unauthenticated("no certificate"),
            tonic::Status::not_found("no run x"),
            tonic::Status::invalid_argument("bad"),
        ] {
            assert!(!worth_retrying(&refusal, true), "{refusal:?}");
        }
    }
}
