// Compiles proto/ with protox (pure Rust, no system protoc) into prost types, tonic stubs and
// pbjson serde impls for the canonical protobuf JSON mapping of the HTTP surface.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["timeline/v1/timeline.proto"], ["proto"])?;
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);

    let descriptor_path = out_dir.join("timeline_descriptor.bin");
    std::fs::write(&descriptor_path, prost::Message::encode_to_vec(&fds))?;

    // Small initial call buffers: an idle push stream keeps its buffers as long as it is open.
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .codec_path("crate::api::codec::LeanCodec")
        .compile_fds(fds)?;

    let descriptors = std::fs::read(&descriptor_path)?;
    pbjson_build::Builder::new()
        .register_descriptors(&descriptors)?
        .build(&[".timeline.v1"])?;
    Ok(())
}
