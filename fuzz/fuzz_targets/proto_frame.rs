//! Peer-to-peer frames, as a node reads them from a QUIC stream.
//!
//! Checks, for any bytes:
//! - `raft_proto::Envelope::decode` never panics, and whatever it decodes encodes and
//!   decodes again to the same value;
//! - `raft_net_quic::frame::FrameDecoder` (1 MiB limit), fed the same bytes cut into
//!   chunks chosen by the input, never panics; every frame it yields is exactly the
//!   length its prefix announced, and goes through the envelope check too; after each
//!   drain it holds less than one whole frame (prefix included), and `finish` reports
//!   a cut-off frame exactly when bytes are left;
//! - no unbounded growth: a decoder with a small limit, fed the input over and over
//!   (16 KiB of it), never has more heap than a few frames' worth, however the stream
//!   is cut (a counting allocator measures it).
#![no_main]

use libfuzzer_sys::fuzz_target;
use raft_net_quic::frame::{FrameDecoder, FrameError};
use raft_proto::Envelope;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The frame limit the transport uses for peers' streams.
const MAX_FRAME: usize = 1 << 20;

/// Heap bytes in use, for the growth check.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every method forwards to `System` with the same arguments and only adds
// bookkeeping on the side.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is `System`'s.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as above.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            LIVE.fetch_add(new_size, Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Decoding never panics; a decoded envelope survives a round trip.
fn check_envelope(frame: &[u8]) {
    let Ok(env) = Envelope::decode(frame) else {
        return;
    };
    let again = env.encode().expect("a decoded envelope encodes");
    let back = Envelope::decode(&again).expect("an encoded envelope decodes");
    assert_eq!(back, env, "round trip changed the envelope");
}

/// Chunk lengths in `1..=max_chunk`, chosen by a small generator seeded from the input.
struct Chunks {
    state: u64,
    max_chunk: usize,
}

impl Chunks {
    fn new(data: &[u8], max_chunk: usize) -> Chunks {
        // FNV-1a: any change to the input changes the cuts.
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        for &b in data {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        Chunks {
            state: h | 1,
            max_chunk,
        }
    }

    fn next_len(&mut self) -> usize {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        1 + (self.state % self.max_chunk as u64) as usize
    }
}

/// Feeds `data` to a decoder in chunks and drains it after each; checks the framing.
fn check_stream(data: &[u8]) {
    let mut decoder = FrameDecoder::new(MAX_FRAME);
    let mut chunks = Chunks::new(data, 64);
    let mut consumed = 0usize;
    let mut pos = 0;
    while pos < data.len() {
        let n = chunks.next_len().min(data.len() - pos);
        decoder.push(&data[pos..pos + n]);
        pos += n;
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    let announced = u32::from_le_bytes(
                        data[consumed..consumed + 4].try_into().expect("four bytes"),
                    ) as usize;
                    assert_eq!(frame.len(), announced, "frame length vs its prefix");
                    assert_eq!(frame, &data[consumed + 4..consumed + 4 + announced]);
                    consumed += 4 + announced;
                    check_envelope(frame);
                }
                Ok(None) => break,
                Err(FrameError::TooLarge { len, max }) => {
                    assert!(len > max as u64 && max == MAX_FRAME, "{len} > {max}");
                    return;
                }
                Err(e) => panic!("next_frame: unexpected error {e}"),
            }
        }
        let pending = pos - consumed;
        assert!(
            pending < 4 + MAX_FRAME,
            "{pending} bytes buffered after a drain: more than one frame"
        );
    }
    let pending = data.len() - consumed;
    match decoder.finish() {
        Ok(()) => assert_eq!(pending, 0, "finish missed {pending} left-over bytes"),
        Err(FrameError::Truncated { missing }) => {
            assert!(
                pending > 0 && missing > 0,
                "pending {pending}, missing {missing}"
            )
        }
        Err(e) => panic!("finish: unexpected error {e}"),
    }
}

/// The input as an endless stream through a decoder with a small limit: its heap stays
/// within a few frames plus a chunk, whatever the stream holds.
fn check_growth(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    if rest.is_empty() {
        return;
    }
    const MAX_CHUNK: usize = 256;
    const STREAM_BYTES: usize = 16 << 10;
    let max = 16 + usize::from(first);
    let bound = 4 * (4 + max) + 2 * MAX_CHUNK + 256;
    let mut chunks = Chunks::new(data, MAX_CHUNK);
    let base = LIVE.load(Ordering::Relaxed);
    let mut decoder = FrameDecoder::new(max);
    let mut fed = 0;
    let mut pos = 0;
    while fed < STREAM_BYTES {
        let n = chunks.next_len().min(rest.len() - pos);
        decoder.push(&rest[pos..pos + n]);
        fed += n;
        pos = (pos + n) % rest.len();
        loop {
            match decoder.next_frame() {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => return,
            }
        }
        let held = LIVE.load(Ordering::Relaxed).saturating_sub(base);
        assert!(
            held <= bound,
            "decoder holds {held} heap bytes after {fed} stream bytes (limit {max}, bound {bound})"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    check_envelope(data);
    check_stream(data);
    check_growth(data);
});
