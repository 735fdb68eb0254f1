//! The one module that knows how messages become bytes.
//!
//! Encoding: bincode 1.3.3 (pinned exactly), little-endian, variable-length integers, trailing
//! bytes rejected, and a hard size limit equal to [`MAX_FRAME_BYTES`] so that a hostile length
//! inside a payload cannot make the decoder allocate more than one frame's worth.
//!
//! Why bincode 1.3: it is compact, fast, and serde-driven, and its final release is frozen,
//! which is what a wire contract wants. Its maintainers stopped development
//! (RUSTSEC-2025-0141 is an "unmaintained" notice, not a vulnerability). Swapping the codec
//! means changing this file only: every other module calls [`encode`] and [`decode`]. The
//! golden-bytes tests in `protocol/tests/golden.rs` pin the encoding so a swap is deliberate.

use bincode::Options;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The largest frame (and therefore message) either side will encode or accept.
pub const MAX_FRAME_BYTES: usize = 8 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("message does not encode: {0}")]
    Encode(String),
    #[error("message does not decode: {0}")]
    Decode(String),
}

fn options() -> impl Options {
    bincode::DefaultOptions::new()
        .with_limit(MAX_FRAME_BYTES as u64)
        .with_little_endian()
        .with_varint_encoding()
        .reject_trailing_bytes()
}

/// Encodes a message into a payload of at most [`MAX_FRAME_BYTES`].
pub fn encode<T: Serialize>(message: &T) -> Result<Vec<u8>, CodecError> {
    options()
        .serialize(message)
        .map_err(|error| CodecError::Encode(error.to_string()))
}

/// Appends the encoding of `message` to `buffer`.
pub fn encode_into<T: Serialize>(buffer: &mut Vec<u8>, message: &T) -> Result<(), CodecError> {
    options()
        .serialize_into(buffer, message)
        .map_err(|error| CodecError::Encode(error.to_string()))
}

/// Decodes a payload. Garbage yields an error, never a panic or a large allocation.
pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, CodecError> {
    if payload.len() > MAX_FRAME_BYTES {
        return Err(CodecError::Decode(format!(
            "payload of {} bytes exceeds the {MAX_FRAME_BYTES}-byte limit",
            payload.len()
        )));
    }
    options()
        .deserialize(payload)
        .map_err(|error| CodecError::Decode(error.to_string()))
}

/// Whether the codec is human-readable in serde's sense (it is not). Types that render
/// differently for people (TOML/JSON) and for the wire rely on this.
pub const IS_HUMAN_READABLE: bool = false;
