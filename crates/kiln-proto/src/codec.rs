//! The codec of every generated Kiln client and server: prost's, with a
//! smaller first buffer. tonic allocates its buffer once per call and per
//! direction before a message arrives, 8 KiB by default; a scheduler holds
//! one streaming call per connected worker, both ways, for as long as the
//! worker is connected, so at 10,000 workers the defaults cost 160 MiB of
//! buffers that mostly carry a heartbeat. A buffer still grows to fit any
//! message: decoding reserves a whole message at once, encoding extends the
//! buffer by what it writes, so the asset streams' 1 MiB messages cost one
//! allocation each either way (steps of the first size are only taken with
//! compression, which Kiln does not turn on).

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// First size of each call's encode and decode buffer.
const FIRST_BUFFER: usize = 1024;
/// tonic's default: how much of a stream's ready messages go out in one write.
const YIELD_THRESHOLD: usize = 32 * 1024;

/// [`ProstCodec`] with a [`FIRST_BUFFER`]-byte first buffer.
#[derive(Debug, Clone)]
pub struct LeanCodec<T, U> {
    _messages: PhantomData<(T, U)>,
}

impl<T, U> Default for LeanCodec<T, U> {
    fn default() -> Self {
        Self {
            _messages: PhantomData,
        }
    }
}

fn settings() -> BufferSettings {
    BufferSettings::new(FIRST_BUFFER, YIELD_THRESHOLD)
}

impl<T, U> Codec for LeanCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(settings())
    }
}
