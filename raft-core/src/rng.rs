//! The core's own deterministic random number generator (SplitMix64).
//!
//! The core never touches a global RNG: every random choice comes from a seed in
//! [`Config`](crate::Config), so a simulation replays exactly.

/// SplitMix64: small, fast, and good enough to spread election timeouts.
#[derive(Clone, Debug)]
pub(crate) struct Rng {
    state: u64,
}

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng { state: seed }
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value in `[low, high)`; `high` must exceed `low`.
    pub(crate) fn range(&mut self, low: u32, high: u32) -> u32 {
        debug_assert!(high > low);
        let span = u64::from(high - low);
        // The modulo bias is at most span / 2^64: irrelevant for timeouts.
        low + (self.next_u64() % span) as u32
    }
}
