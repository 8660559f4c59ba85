//! The simulated network: delay, reordering (through random delays), loss,
//! duplication, and partitions that may be one-way.

use crate::rng::SimRng;

/// Links between `n` nodes.
#[derive(Debug)]
pub struct Network {
    n: usize,
    /// `blocked[from * n + to]`: how many active faults cut this link.
    blocked: Vec<u32>,
    /// One-way delay range in microseconds.
    pub delay_us: (u64, u64),
    /// Probability that a message is lost.
    pub loss: f64,
    /// Probability that a message arrives twice.
    pub duplicate: f64,
    rng: SimRng,
}

impl Network {
    /// A network of `n` nodes with every link up.
    pub fn new(n: usize, delay_us: (u64, u64), loss: f64, duplicate: f64, rng: SimRng) -> Network {
        Network {
            n,
            blocked: vec![0; n * n],
            delay_us,
            loss,
            duplicate,
            rng,
        }
    }

    /// Whether `from` can currently reach `to`.
    pub fn connected(&self, from: usize, to: usize) -> bool {
        self.blocked[from * self.n + to] == 0
    }

    /// Cuts (or, with `up`, restores) the link `from -> to` for one fault.
    pub fn set_link(&mut self, from: usize, to: usize, up: bool) {
        let b = &mut self.blocked[from * self.n + to];
        if up {
            *b = b.saturating_sub(1);
        } else {
            *b += 1;
        }
    }

    /// Restores every link.
    pub fn heal_all(&mut self) {
        self.blocked.iter_mut().for_each(|b| *b = 0);
    }

    /// The delays after which a message sent now arrives: none when it is lost or the
    /// link is cut, two when it is duplicated.
    pub fn deliveries(&mut self, from: usize, to: usize) -> [Option<u64>; 2] {
        if !self.connected(from, to) || self.rng.chance(self.loss) {
            return [None, None];
        }
        let first = self.rng.range(self.delay_us.0, self.delay_us.1);
        let second = self
            .rng
            .chance(self.duplicate)
            .then(|| self.rng.range(self.delay_us.0, 2 * self.delay_us.1));
        [Some(first), second]
    }

    /// A delay for a message between a client and a node (clients are never
    /// partitioned, but their messages are delayed and sometimes lost).
    pub fn client_delay(&mut self) -> Option<u64> {
        if self.rng.chance(self.loss / 2.0) {
            return None;
        }
        Some(self.rng.range(self.delay_us.0, self.delay_us.1))
    }
}
