pub mod audit;
pub mod audit_render;
pub mod certs;
pub mod docs;
pub mod hosts;
pub mod plan;
pub mod runs;
