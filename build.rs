use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // No protoc on a fresh machine: use the vendored binary and its well-known types.
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the environment concurrently.
    unsafe { std::env::set_var("PROTOC", protoc) };

    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let mut protos: Vec<PathBuf> =
        std::fs::read_dir("proto/sextant/v1")?.map(|entry| entry.map(|e| e.path())).collect::<Result<_, _>>()?;
    protos.retain(|p| p.extension().is_some_and(|ext| ext == "proto"));
    protos.sort();

    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("sextant_descriptor.bin"))
        .generate_default_stubs(true)
        // Sorted maps: properties arrive in key order, and decoding skips SipHash.
        .btree_map(".")
        // prost's codec, but an undecodable request is INVALID_ARGUMENT (src/grpc/codec.rs).
        .codec_path("crate::grpc::codec::Codec")
        .compile_protos(&protos, &[PathBuf::from("proto")])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
