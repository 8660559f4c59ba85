//! The versioned frame: one format-version byte, then the postcard encoding.
//!
//! ```text
//! +---------+-------------------------------+
//! | version |  postcard(body)               |
//! |  1 byte |  the rest of the frame        |
//! +---------+-------------------------------+
//! ```
//!
//! Length prefixes belong to the transport; a frame is exactly one message. Decoding
//! untrusted bytes never panics and never allocates more than the input can describe:
//! every malformed input is a [`DecodeError`].

use crate::Message;
use crate::NodeId;
use serde::Deserialize;
use serde::{Serialize, de::DeserializeOwned};

/// The format version this build writes and reads.
///
/// History: 1, the first; 2, memberships carry a record per member
/// ([`NodeRecord`](crate::NodeRecord)). Frames of another version are refused with
/// [`DecodeError::UnsupportedVersion`].
pub const FORMAT_VERSION: u8 = 2;

/// Why a frame could not be encoded.
#[derive(Debug)]
#[non_exhaustive]
pub enum EncodeError {
    /// The serializer refused the value.
    Serialize(postcard::Error),
}

impl core::fmt::Display for EncodeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            EncodeError::Serialize(e) => write!(f, "cannot encode frame: {e}"),
        }
    }
}

impl std::error::Error for EncodeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            EncodeError::Serialize(e) => Some(e),
        }
    }
}

/// Why a frame could not be decoded.
#[derive(Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// The frame has no bytes at all.
    Empty,
    /// The frame was written by a format version this build does not read.
    UnsupportedVersion {
        /// The version byte found.
        found: u8,
    },
    /// The body is not a valid encoding of the expected type.
    Malformed(postcard::Error),
    /// A valid body was followed by this many unexpected bytes.
    TrailingBytes(usize),
}

impl core::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            DecodeError::Empty => f.write_str("empty frame"),
            DecodeError::UnsupportedVersion { found } => write!(
                f,
                "frame format version {found} is not supported (this build reads version \
                 {FORMAT_VERSION}); upgrade or downgrade so all nodes share a format"
            ),
            DecodeError::Malformed(e) => write!(f, "malformed frame: {e}"),
            DecodeError::TrailingBytes(n) => write!(f, "malformed frame: {n} trailing bytes"),
        }
    }
}

impl std::error::Error for DecodeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DecodeError::Malformed(e) => Some(e),
            _ => None,
        }
    }
}

/// Appends the frame of `value` (version byte and body) to `out`.
pub fn encode_frame_into<T: Serialize + ?Sized>(
    value: &T,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    let start = out.len();
    out.push(FORMAT_VERSION);
    match postcard::serialize_with_flavor(value, AppendTo(out)) {
        Ok(()) => Ok(()),
        Err(e) => {
            out.truncate(start);
            Err(EncodeError::Serialize(e))
        }
    }
}

/// A postcard output flavor that appends to a borrowed buffer, so a batch of frames is
/// built in one allocation and a failed encoding leaves the caller's bytes intact.
struct AppendTo<'a>(&'a mut Vec<u8>);

impl postcard::ser_flavors::Flavor for AppendTo<'_> {
    type Output = ();

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// The frame of `value` (version byte and body).
pub fn encode_frame<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::new();
    encode_frame_into(value, &mut out)?;
    Ok(out)
}

/// Decodes one whole frame; any byte beyond the body is an error.
pub fn decode_frame<T: DeserializeOwned>(frame: &[u8]) -> Result<T, DecodeError> {
    let (&version, body) = frame.split_first().ok_or(DecodeError::Empty)?;
    if version != FORMAT_VERSION {
        return Err(DecodeError::UnsupportedVersion { found: version });
    }
    let (value, rest) = postcard::take_from_bytes(body).map_err(DecodeError::Malformed)?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes(rest.len()));
    }
    Ok(value)
}

/// A message with its addressing, as one frame on the wire between nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The sender.
    pub from: NodeId,
    /// The intended receiver; a receiver drops a frame addressed to someone else.
    pub to: NodeId,
    /// The message.
    pub message: Message,
}

impl Envelope {
    /// Appends this envelope's frame to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        encode_frame_into(self, out)
    }

    /// This envelope's frame.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        encode_frame(self)
    }

    /// Decodes an envelope from one whole frame.
    pub fn decode(frame: &[u8]) -> Result<Envelope, DecodeError> {
        decode_frame(frame)
    }
}
