//! The wire format of fleet, and the one place that converts it to and from
//! the domain types of `fleet-core`. Packages are versioned (`fleet.agent.v1`,
//! `fleet.controller.v1`); a breaking change is a new package.

pub mod agent {
    pub mod v1 {
        tonic::include_proto!("fleet.agent.v1");
    }
}

pub mod controller {
    pub mod v1 {
        tonic::include_proto!("fleet.controller.v1");
    }
}

mod convert;

/// The compiled descriptors of every fleet proto file (for tests that check
/// each RPC has an authorization rule).
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("fleet_descriptor");

/// The fully qualified gRPC service names.
pub const AGENT_SERVICE: &str = "fleet.agent.v1.Agent";
pub const CONTROLLER_SERVICE: &str = "fleet.controller.v1.Controller";

/// Every method of a service, from the descriptors.
pub fn service_methods(service: &str) -> Vec<String> {
    use prost::Message;
    let Ok(set) = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET) else {
        return Vec::new();
    };
    set.file
        .iter()
        .flat_map(|file| {
            let package = file.package().to_string();
            file.service
                .iter()
                .filter(move |s| format!("{package}.{}", s.name()) == service)
        })
        .flat_map(|s| s.method.iter().map(|m| m.name().to_string()))
        .collect()
}
