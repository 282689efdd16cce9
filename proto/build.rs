//! Generates the gRPC code. `protoc` comes vendored (protoc-bin-vendored) so a
//! fresh machine needs nothing installed; `PROTOC` still wins when set.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "fleet/agent/v1/agent.proto",
        "fleet/controller/v1/controller.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    println!("cargo:rerun-if-env-changed=PROTOC");

    let protoc = match std::env::var_os("PROTOC") {
        Some(path) => PathBuf::from(path),
        None => protoc_bin_vendored::protoc_bin_path()?,
    };
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc);

    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("fleet_descriptor.bin"))
        .compile_with_config(config, &protos, &["."])?;
    Ok(())
}
