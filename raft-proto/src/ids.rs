//! Typed identifiers: swapping a term for an index must not compile.

use core::fmt;
use serde::{Deserialize, Serialize};

macro_rules! id_newtype {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(
            Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(pub u64);

        impl $name {
            /// The raw number.
            #[inline]
            pub const fn get(self) -> u64 {
                self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{}"), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl From<u64> for $name {
            fn from(v: u64) -> Self {
                Self(v)
            }
        }
    };
}

id_newtype!(
    /// A cluster member's identity. Node ids are chosen by the operator and never reused.
    NodeId,
    "n"
);
id_newtype!(
    /// A Raft term (paper §5.1). Terms only grow on any one node.
    Term,
    "t"
);
id_newtype!(
    /// The position of an entry in the replicated log; the first entry has index 1,
    /// index 0 means "before the first entry".
    LogIndex,
    "i"
);
id_newtype!(
    /// Identifies one linearizable read request (ReadIndex), chosen by the caller.
    ReadId,
    "r"
);

impl Term {
    /// The term every log starts in, before any election.
    pub const ZERO: Term = Term(0);

    /// The term after this one.
    #[inline]
    pub const fn next(self) -> Term {
        Term(self.0 + 1)
    }
}

impl LogIndex {
    /// "Before the first entry".
    pub const ZERO: LogIndex = LogIndex(0);

    /// The index after this one.
    #[inline]
    pub const fn next(self) -> LogIndex {
        LogIndex(self.0 + 1)
    }

    /// The index before this one, saturating at zero.
    #[inline]
    pub const fn prev(self) -> LogIndex {
        LogIndex(self.0.saturating_sub(1))
    }

    /// `self + n`.
    #[inline]
    pub const fn plus(self, n: u64) -> LogIndex {
        LogIndex(self.0 + n)
    }

    /// Number of indexes in `(from, self]`, or 0 when `from >= self`.
    #[inline]
    pub const fn distance_from(self, from: LogIndex) -> u64 {
        self.0.saturating_sub(from.0)
    }
}

/// The identity of a log entry: by the Log Matching property (paper §5.3), two logs
/// that hold an entry with the same `LogId` are identical up to and including it.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LogId {
    /// The term in which a leader created the entry.
    pub term: Term,
    /// The entry's position in the log.
    pub index: LogIndex,
}

impl LogId {
    /// The id "before the first entry": term 0, index 0.
    pub const ZERO: LogId = LogId {
        term: Term::ZERO,
        index: LogIndex::ZERO,
    };

    /// A log id from its parts.
    #[inline]
    pub const fn new(term: Term, index: LogIndex) -> LogId {
        LogId { term, index }
    }
}

impl fmt::Debug for LogId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.term.0, self.index.0)
    }
}

impl fmt::Display for LogId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_id_orders_by_term_then_index() {
        // Paper §5.4.1: the later term wins; with equal terms the longer log wins.
        let a = LogId::new(Term(2), LogIndex(10));
        let b = LogId::new(Term(3), LogIndex(1));
        let c = LogId::new(Term(3), LogIndex(2));
        assert!(a < b && b < c);
    }

    #[test]
    fn index_arithmetic_saturates() {
        assert_eq!(LogIndex(0).prev(), LogIndex(0));
        assert_eq!(LogIndex(5).distance_from(LogIndex(7)), 0);
        assert_eq!(LogIndex(7).distance_from(LogIndex(5)), 2);
    }
}
