//! Compiles `proto/airlock/v1/*.proto` with protox (pure Rust: no system `protoc`) and
//! generates prost messages and tonic clients/servers. The encoded descriptor set is
//! kept for gRPC reflection.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "proto/airlock/v1/common.proto",
    "proto/airlock/v1/launcher.proto",
    "proto/airlock/v1/enforcer.proto",
    "proto/airlock/v1/host.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(PROTOS, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("airlock_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
