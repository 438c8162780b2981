//! Generated protobuf types, tonic stubs and canonical-JSON serde impls for `proto/`.

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod timeline {
    pub mod v1 {
        tonic::include_proto!("timeline.v1");
        include!(concat!(env!("OUT_DIR"), "/timeline.v1.serde.rs"));
    }
}

pub use timeline::v1::*;

/// The encoded `FileDescriptorSet` of `proto/` (served by gRPC reflection).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/timeline_descriptor.bin"));
