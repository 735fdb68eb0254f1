//! Length-prefixed frames over an async byte stream.
//!
//! A frame is a 4-byte big-endian payload length followed by the payload (see [`crate::codec`]).
//! The length is checked against [`MAX_FRAME_BYTES`] before the payload buffer is allocated.
//! A stream that ends exactly at a frame boundary is a clean end (`Ok(None)`); one that ends
//! inside a frame is an error.

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub use crate::codec::MAX_FRAME_BYTES;
use crate::codec::{self, CodecError};

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {length} bytes exceeds the {MAX_FRAME_BYTES}-byte limit")]
    TooLarge { length: usize },
    #[error("stream ended inside a frame")]
    Truncated,
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("stream error: {0}")]
    Io(#[from] std::io::Error),
}

/// Encodes `message` as one frame (prefix included) and appends it to `buffer`, so several
/// frames can be written with one call.
pub fn append_frame<T: Serialize>(buffer: &mut Vec<u8>, message: &T) -> Result<(), FrameError> {
    let start = buffer.len();
    buffer.extend_from_slice(&[0; 4]);
    if let Err(error) = codec::encode_into(buffer, message) {
        buffer.truncate(start);
        return Err(error.into());
    }
    let length = buffer.len() - start - 4;
    if length > MAX_FRAME_BYTES {
        buffer.truncate(start);
        return Err(FrameError::TooLarge { length });
    }
    buffer[start..start + 4].copy_from_slice(&(length as u32).to_be_bytes());
    Ok(())
}

/// Writes one frame.
pub async fn write_frame<W, T>(writer: &mut W, message: &T) -> Result<(), FrameError>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    let mut buffer = Vec::with_capacity(128);
    append_frame(&mut buffer, message)?;
    writer.write_all(&buffer).await?;
    Ok(())
}

/// Reads one frame; `Ok(None)` when the stream ends cleanly between frames.
pub async fn read_frame<R, T>(reader: &mut R) -> Result<Option<T>, FrameError>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    let mut prefix = [0u8; 4];
    let mut filled = 0;
    while filled < prefix.len() {
        let read = reader.read(&mut prefix[filled..]).await?;
        if read == 0 {
            return if filled == 0 {
                Ok(None)
            } else {
                Err(FrameError::Truncated)
            };
        }
        filled += read;
    }
    let length = u32::from_be_bytes(prefix) as usize;
    if length > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge { length });
    }
    let mut payload = vec![0u8; length];
    reader.read_exact(&mut payload).await.map_err(|error| {
        if error.kind() == std::io::ErrorKind::UnexpectedEof {
            FrameError::Truncated
        } else {
            FrameError::Io(error)
        }
    })?;
    Ok(Some(codec::decode(&payload)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_clean_end_is_none() {
        let mut buffer = Vec::new();
        append_frame(&mut buffer, &"hello".to_string()).expect("encodes");
        append_frame(&mut buffer, &42u64).expect("encodes");
        let mut reader = buffer.as_slice();
        let first: Option<String> = read_frame(&mut reader).await.expect("reads");
        let second: Option<u64> = read_frame(&mut reader).await.expect("reads");
        let end: Option<u64> = read_frame(&mut reader).await.expect("clean end");
        assert_eq!(first.as_deref(), Some("hello"));
        assert_eq!(second, Some(42));
        assert_eq!(end, None);
    }

    #[tokio::test]
    async fn oversized_length_is_refused_before_allocation() {
        let bytes = u32::MAX.to_be_bytes();
        let mut reader = &bytes[..];
        let result: Result<Option<String>, _> = read_frame(&mut reader).await;
        assert!(
            matches!(result, Err(FrameError::TooLarge { length }) if length == u32::MAX as usize)
        );
    }

    #[tokio::test]
    async fn truncated_frames_are_errors() {
        let mut buffer = Vec::new();
        append_frame(&mut buffer, &"truncate me".to_string()).expect("encodes");
        for cut in 1..buffer.len() {
            let mut reader = &buffer[..cut];
            let result: Result<Option<String>, _> = read_frame(&mut reader).await;
            assert!(
                matches!(result, Err(FrameError::Truncated)),
                "cut at {cut}: {result:?}"
            );
        }
    }
}
