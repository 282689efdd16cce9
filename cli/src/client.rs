//! The connection to the controller, and turning its refusals into sentences.

use std::time::Duration;

use fleet_core::role::Role;
use fleet_core::tls::{self, TlsMaterial, explain_connect_error};
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
        let peer = format!("controller at {}", self.address);
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
