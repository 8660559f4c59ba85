//! Length-prefixed frames on a stream: `len: u32 LE | frame (len bytes)`, where a frame
//! is a raft-proto frame (format version byte + postcard). Writers batch many frames
//! into one write; readers decode whatever chunks arrive.

/// Why a stream's bytes cannot be framed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// A frame announced a length above the limit.
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// The announced length.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// The stream ended inside a frame.
    #[error("stream ended {missing} bytes short of a whole frame")]
    Truncated {
        /// Bytes missing.
        missing: usize,
    },
}

/// Appends one length-prefixed frame to `out`.
pub fn put_frame(out: &mut Vec<u8>, frame: &[u8]) {
    out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
    out.extend_from_slice(frame);
}

/// Reassembles frames from chunks of a stream. Memory stays bounded by the largest
/// allowed frame plus one chunk: a bad length is refused before anything is allocated
/// for it.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    start: usize,
    max: usize,
}

impl FrameDecoder {
    /// A decoder that refuses frames longer than `max` bytes.
    pub fn new(max: usize) -> FrameDecoder {
        FrameDecoder {
            buf: Vec::new(),
            start: 0,
            max,
        }
    }

    /// Adds bytes read from the stream.
    pub fn push(&mut self, chunk: &[u8]) {
        if self.start > 0 && self.start >= self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(chunk);
    }

    /// The next whole frame, if one is buffered.
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, FrameError> {
        let pending = &self.buf[self.start..];
        let Some(len) = pending
            .first_chunk::<4>()
            .map(|b| u32::from_le_bytes(*b) as usize)
        else {
            return Ok(None);
        };
        if len > self.max {
            return Err(FrameError::TooLarge {
                len: len as u64,
                max: self.max,
            });
        }
        if pending.len() < 4 + len {
            return Ok(None);
        }
        let from = self.start + 4;
        self.start = from + len;
        Ok(Some(&self.buf[from..from + len]))
    }

    /// At the end of the stream: an error if a frame was cut off.
    pub fn finish(&self) -> Result<(), FrameError> {
        let pending = self.buf.len() - self.start;
        if pending == 0 {
            return Ok(());
        }
        let want = self.buf[self.start..]
            .first_chunk::<4>()
            .map_or(4, |b| 4 + u32::from_le_bytes(*b) as usize);
        Err(FrameError::Truncated {
            missing: want.saturating_sub(pending),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(input: &[u8], chunk: usize, max: usize) -> Result<Vec<Vec<u8>>, FrameError> {
        let mut d = FrameDecoder::new(max);
        let mut out = Vec::new();
        for c in input.chunks(chunk.max(1)) {
            d.push(c);
            while let Some(f) = d.next_frame()? {
                out.push(f.to_vec());
            }
        }
        d.finish()?;
        Ok(out)
    }

    #[test]
    fn frames_survive_any_chunking() {
        let mut wire = Vec::new();
        let sent: Vec<Vec<u8>> = (0..50).map(|i| vec![i as u8; i * 7]).collect();
        for f in &sent {
            put_frame(&mut wire, f);
        }
        for chunk in [1, 2, 3, 5, 64, 1000, wire.len()] {
            assert_eq!(
                frames(&wire, chunk, 1 << 20).expect("valid"),
                sent,
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn an_oversized_or_cut_frame_is_an_error_not_an_allocation() {
        let huge = u32::MAX.to_le_bytes();
        assert_eq!(
            frames(&huge, 4, 1 << 20),
            Err(FrameError::TooLarge {
                len: u32::MAX as u64,
                max: 1 << 20
            })
        );
        let mut wire = Vec::new();
        put_frame(&mut wire, b"hello");
        assert_eq!(
            frames(&wire[..7], 3, 1 << 20),
            Err(FrameError::Truncated { missing: 2 })
        );
    }

    #[test]
    fn random_bytes_never_panic_the_reader() {
        // A small xorshift: thousands of random streams, random chunkings, small limits.
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..20_000 {
            let len = (next() % 300) as usize;
            let bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let chunk = 1 + (next() % 17) as usize;
            let max = (next() % 512) as usize;
            if let Ok(fs) = frames(&bytes, chunk, max) {
                for f in fs {
                    // Whatever frames come out, decoding them must not panic either.
                    let _ = raft_proto::Envelope::decode(&f);
                }
            }
        }
    }
}
