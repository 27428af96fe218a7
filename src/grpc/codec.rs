//! The protobuf codec of every service: prost's, except that an undecodable request is the
//! client's fault — INVALID_ARGUMENT, logged at debug — not tonic's default INTERNAL.

use std::marker::PhantomData;

use bytes::Buf;
use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, DecodeBuf, Decoder};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Metadata the codec puts on an undecodable request's status, so the guard knows the handler
/// never ran (rather than ran without checking the project); the guard removes it.
pub const UNDECODABLE: &str = "sextant-undecodable";

/// `tonic_prost::ProstCodec` with decode errors mapped to INVALID_ARGUMENT (build.rs points the
/// generated code here).
#[derive(Debug, Clone)]
pub struct Codec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Codec(PhantomData)
    }
}

impl<T, U> tonic::codec::Codec for Codec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = CheckedDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        CheckedDecoder(ProstCodec::<T, U>::raw_decoder(BufferSettings::default()))
    }
}

/// prost's decoder, answering INVALID_ARGUMENT for bytes that are not a valid message.
#[derive(Debug)]
pub struct CheckedDecoder<U>(ProstDecoder<U>);

impl<U: Message + Default> Decoder for CheckedDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        // The message's bytes, taken out of tonic's buffer without a copy, decode as one
        // slice: reading through `DecodeBuf` re-checked the buffer at every field (a tenth of
        // a Track call's decoding in a profile, BENCHMARKS.md session 28).
        let message = buf.copy_to_bytes(buf.remaining());
        U::decode(message.as_ref()).map(Some).map_err(|error| {
            tracing::debug!(%error, "undecodable request body");
            let mut status = Status::invalid_argument(format!("request body is not a valid message: {error}"));
            status.metadata_mut().insert(UNDECODABLE, tonic::metadata::MetadataValue::from_static("1"));
            status
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}
