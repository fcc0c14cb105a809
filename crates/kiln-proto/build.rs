//! Compiles `proto/kiln/v1` with protox, so no system `protoc` is needed.

use std::path::PathBuf;

use prost::Message;

const PROTOS: &[&str] = &[
    "kiln/v1/jobs.proto",
    "kiln/v1/worker.proto",
    "kiln/v1/assets.proto",
    "kiln/v1/auth.proto",
    "kiln/v1/farm.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read at run time: a build script binary reused from another checkout
    // must still compile this checkout's protos.
    let proto_root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    println!("cargo:rerun-if-changed={}", proto_root.display());

    let descriptors = protox::compile(PROTOS, [&proto_root])?;
    let descriptor_path = out_dir.join("kiln_descriptor.bin");
    std::fs::write(&descriptor_path, descriptors.encode_to_vec())?;

    tonic_prost_build::configure()
        .file_descriptor_set_path(&descriptor_path)
        .compile_well_known_types(true)
        .extern_path(".google.protobuf", "::pbjson_types")
        .compile_fds(descriptors.clone())?;

    pbjson_build::Builder::new()
        .register_descriptors(&descriptors.encode_to_vec())?
        .build(&[".kiln"])?;
    Ok(())
}
