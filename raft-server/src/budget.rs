//! A byte budget shared by every client connection of a node: request frames being
//! read or answered, and read answers not yet handed to their connection, hold a
//! [`Reservation`] of their size. When the budget is spent a request is refused as
//! busy (before its body is read), so a few clients cannot pin the node's memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes that may be reserved at once.
#[derive(Debug)]
pub struct ByteBudget {
    used: AtomicU64,
    limit: u64,
}

/// Bytes held from a [`ByteBudget`], given back when dropped.
#[derive(Debug)]
#[must_use = "the bytes are given back as soon as the reservation is dropped"]
pub struct Reservation {
    budget: Arc<ByteBudget>,
    bytes: u64,
}

impl ByteBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: u64) -> Arc<ByteBudget> {
        Arc::new(ByteBudget {
            used: AtomicU64::new(0),
            limit,
        })
    }

    /// The budget.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Bytes reserved now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Reserves `bytes`, if that many are free.
    pub fn try_reserve(self: &Arc<Self>, bytes: u64) -> Option<Reservation> {
        self.reserve_up_to(bytes, bytes)
    }

    /// Reserves as many bytes as are free up to `max`, if at least `min` are.
    pub fn reserve_up_to(self: &Arc<Self>, min: u64, max: u64) -> Option<Reservation> {
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            let free = self.limit.saturating_sub(used);
            if free < min {
                return None;
            }
            let bytes = free.min(max);
            match self.used.compare_exchange_weak(
                used,
                used + bytes,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    return Some(Reservation {
                        budget: self.clone(),
                        bytes,
                    });
                }
                Err(now) => used = now,
            }
        }
    }
}

impl Reservation {
    /// The bytes held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Gives back all but `bytes` of what is held (nothing, if it holds less).
    pub fn shrink_to(&mut self, bytes: u64) {
        if bytes < self.bytes {
            self.budget
                .used
                .fetch_sub(self.bytes - bytes, Ordering::AcqRel);
            self.bytes = bytes;
        }
    }
}

/// What one client request holds until its answer is written: its frame's bytes and
/// its answer's (a value or a scan read).
#[derive(Debug, Default)]
pub struct Held {
    /// The request frame's reservation.
    pub request: Option<Reservation>,
    /// The answer's reservation.
    pub answer: Option<Reservation>,
}

impl Held {
    /// What holds a request of `request`'s reservation.
    pub fn request(request: Reservation) -> Held {
        Held {
            request: Some(request),
            answer: None,
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_are_bounded_and_given_back() {
        let b = ByteBudget::new(100);
        let a = b.try_reserve(60).expect("60 of 100");
        assert!(b.try_reserve(41).is_none(), "only 40 are free");
        let c = b.reserve_up_to(10, 1000).expect("the rest");
        assert_eq!(c.bytes(), 40);
        assert!(b.reserve_up_to(1, 10).is_none());
        let mut c = c;
        c.shrink_to(15);
        assert_eq!(b.used(), 75, "25 given back");
        c.shrink_to(100);
        assert_eq!(c.bytes(), 15, "shrinking never grows");
        drop(a);
        drop(c);
        assert_eq!(b.used(), 0);
        assert_eq!(b.try_reserve(100).map(|r| r.bytes()), Some(100));
    }
}
