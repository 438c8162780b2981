//! The gRPC codec: prost, with small initial buffers.
//!
//! Tonic's default gives every call an 8 KiB decode buffer and an 8 KiB encode buffer for its
//! whole life. For a unary call that is nothing; for a push stream that stays open for hours it
//! was most of what an idle stream cost (measured by `benches/push.rs`). Buffers still grow to
//! the size of any message, so large pages and bodies are unaffected.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec};
use tonic_prost::ProstCodec;

/// Initial buffer per call and direction; growth is by at least this much.
const INITIAL_BUFFER: usize = 1024;
/// Tonic's default: how much a stream batches before it yields to the writer.
const YIELD_THRESHOLD: usize = 32 * 1024;

fn settings() -> BufferSettings {
    BufferSettings::new(INITIAL_BUFFER, YIELD_THRESHOLD)
}

/// Named by the generated service code (`build.rs`, `codec_path`).
pub struct LeanCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for LeanCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for LeanCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = <ProstCodec<T, U> as Codec>::Encoder;
    type Decoder = <ProstCodec<T, U> as Codec>::Decoder;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(settings())
    }
}
