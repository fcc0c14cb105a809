//! Compiles `proto/kiln/v1` with protox, so no system `protoc` is needed.

use std::path::PathBuf;

use prost::Message;

/// Every `.proto` of `proto/kiln/v1`, found at run time like the directory
/// itself: a build script binary reused from another checkout (the target
/// directory is shared, and its hash ignores where the checkout lives) must
/// compile this checkout's protos, new files included.
fn protos(proto_root: &std::path::Path) -> Result<Vec<String>, std::io::Error> {
    let mut names: Vec<String> = std::fs::read_dir(proto_root.join("kiln/v1"))?
        .filter_map(Result::ok)
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".proto"))
        .map(|name| format!("kiln/v1/{name}"))
        .collect();
    names.sort();
    Ok(names)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read at run time: a build script binary reused from another checkout
    // must still compile this checkout's protos.
    let proto_root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    println!("cargo:rerun-if-changed={}", proto_root.display());

    let descriptors = protox::compile(protos(&proto_root)?, [&proto_root])?;
    let descriptor_path = out_dir.join("kiln_descriptor.bin");
    std::fs::write(&descriptor_path, descriptors.encode_to_vec())?;

    tonic_prost_build::configure()
        // Smaller per-call buffers (src/codec.rs).
        .codec_path("crate::codec::LeanCodec")
        // File content as `Bytes`, not `Vec<u8>`: decoding then slices the
        // message out of tonic's buffer instead of copying it, and a chunk
        // read from the store is sent without a copy into a `Vec` first.
        .bytes(".kiln.v1.UploadChunk.data")
        .bytes(".kiln.v1.DownloadChunk.data")
        .file_descriptor_set_path(&descriptor_path)
        .compile_well_known_types(true)
        .extern_path(".google.protobuf", "::pbjson_types")
        .compile_fds(descriptors.clone())?;

    pbjson_build::Builder::new()
        .register_descriptors(&descriptors.encode_to_vec())?
        .build(&[".kiln"])?;
    Ok(())
}
