//! Linearizability checker for the client history of a key-value store.
//!
//! The simulator records every client operation (invoke time, response time or
//! "unknown", output) and, at the end of a seed, asks [`check`] whether some total
//! order of the operations is consistent both with real time and with a sequential
//! key-value store. The search is the Wing–Gong–Lowe algorithm with memoization
//! (Lowe, "Testing for linearizability", 2017), run separately for each key: every
//! operation touches exactly one key, so the whole history is linearizable if and only
//! if the sub-history of every key is.
//!
//! # The model
//!
//! The value of a key is `Option<Vec<u64>>`: `None` when absent, otherwise a sequence
//! of write ids. [`KvOp::apply`] is the sequential specification.
//!
//! # Time
//!
//! Times are virtual `u64` ticks. Operation `a` *precedes* operation `b` (so `a` must
//! be linearized before `b`) exactly when `a` returned with a known outcome at a time
//! strictly before `b` was invoked: `a.ret < b.invoke`. An operation that returned at
//! `t` and one invoked at `t` are concurrent. In the event list this is the tie rule
//! **at equal timestamps, call events come before return events**.
//!
//! An operation whose outcome is [`Outcome::Unknown`] (the client timed out) returns at
//! "+infinity": it may be linearized anywhere after its invoke, and its output is
//! unconstrained. Placing it after every other operation is the same as "it never took
//! effect", because nothing observes the store afterwards. An unknown `Get` has no effect
//! at all and is ignored by the search; an unknown write is kept.
//!
//! An operation whose outcome is [`Outcome::MaybeBefore`] is *optional* with a bounded
//! window: either it took effect at some point of `[invoke, ret]` (with its model effect
//! and an unconstrained output), or it never took effect at all. Its return event is at
//! `ret` under the same tie rule as a known op, so if it took effect it precedes every
//! operation invoked after `ret`; if it did not, it constrains nothing. A `MaybeBefore`
//! `Get` is equivalent to nothing and is ignored like an unknown one.
//!
//! # Malformed input
//!
//! An [`Outcome::Ok`] or [`Outcome::MaybeBefore`] operation with `ret == invoke` is
//! accepted as instantaneous. One with `ret < invoke` is a bug in whatever recorded the
//! history; [`check`] (and [`check_brute_force`]) report its key as
//! [`CheckResult::NotLinearizable`] with a `detail` starting with `"malformed history"`,
//! rather than guessing what was meant. Nothing in this module panics on any input.
//!
//! # Example
//!
//! ```
//! use raft_sim::linearizability::{check, CheckResult, KvOp, KvOutput, Operation, Outcome};
//!
//! let put = Operation {
//!     client: 1,
//!     key: 7,
//!     op: KvOp::Put { value: 1 },
//!     invoke: 0,
//!     outcome: Outcome::Ok { ret: 10, output: KvOutput::Unit },
//! };
//! // A read invoked after the put returned must see it.
//! let stale_read = Operation {
//!     client: 2,
//!     key: 7,
//!     op: KvOp::Get,
//!     invoke: 11,
//!     outcome: Outcome::Ok { ret: 20, output: KvOutput::Value(None) },
//! };
//! assert!(matches!(
//!     check(&[put.clone(), stale_read], 100_000),
//!     CheckResult::NotLinearizable { key: 7, .. }
//! ));
//! // Invoked at the very time the put returned, the read is concurrent with it.
//! let concurrent_read = Operation {
//!     client: 2,
//!     key: 7,
//!     op: KvOp::Get,
//!     invoke: 10,
//!     outcome: Outcome::Ok { ret: 20, output: KvOutput::Value(None) },
//! };
//! assert_eq!(check(&[put, concurrent_read], 100_000), CheckResult::Linearizable);
//! ```

mod brute_force;
mod fast_hash;
mod search;
#[cfg(test)]
mod tests;

pub use brute_force::{BRUTE_FORCE_MAX_OPS_PER_KEY, check_brute_force};

use search::{KeyVerdict, Search};
use std::collections::BTreeMap;

/// One client operation on one key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum KvOp {
    /// Overwrite the value with `Some(vec![value])`. Output [`KvOutput::Unit`].
    Put {
        /// The (unique) write id stored.
        value: u64,
    },
    /// Append `value` to the sequence (an absent key counts as empty). Output
    /// [`KvOutput::Unit`].
    Append {
        /// The (unique) write id appended.
        value: u64,
    },
    /// Read the value. Output [`KvOutput::Value`] with the current value.
    Get,
    /// Compare-and-swap: if the value equals `expected`, set it to `Some(vec![new])` and
    /// output `Cas(true)`; otherwise leave it and output `Cas(false)`.
    Cas {
        /// The value the key must hold for the swap to happen (`None` = absent).
        expected: Option<Vec<u64>>,
        /// The (unique) write id stored on success.
        new: u64,
    },
    /// Remove the key (the value becomes `None`). Output [`KvOutput::Unit`].
    Delete,
}

/// The output of one [`KvOp`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum KvOutput {
    /// The output of `Put`, `Append` and `Delete`.
    Unit,
    /// The output of `Get`: the value read.
    Value(Option<Vec<u64>>),
    /// The output of `Cas`: whether the swap happened.
    Cas(bool),
}

/// What the client learned about an operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The client saw a response at time `ret` with this output.
    Ok {
        /// The response time; must not be before the operation's `invoke`.
        ret: u64,
        /// The output the client saw.
        output: KvOutput,
    },
    /// The client never learned the outcome (timeout). The op may have taken effect at any
    /// time after its invoke, or never. Its output is unconstrained.
    Unknown,
    /// The client never learned the outcome, but knows the operation can no longer take
    /// effect after `ret`: it either took effect at some point in `[invoke, ret]`, or never.
    /// (The simulator's clients have exactly-once sessions: once a client's next write has
    /// been applied, an older retried write of the same client is ignored forever, so the
    /// older write's window closes when the next write returns.) The output is unconstrained.
    MaybeBefore {
        /// The end of the window (inclusive): the op took effect by then or never. It must
        /// not be before the operation's `invoke`; the same tie rule as [`Outcome::Ok`]'s
        /// `ret` applies.
        ret: u64,
    },
}

/// One operation of the history, as the client saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    /// The client that issued it (only used in reports).
    pub client: u64,
    /// The key it touches.
    pub key: u64,
    /// What it does.
    pub op: KvOp,
    /// When the client invoked it.
    pub invoke: u64,
    /// When and how it completed, if the client knows.
    pub outcome: Outcome,
}

/// The verdict of [`check`] or [`check_brute_force`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckResult {
    /// Every key's sub-history has a linearization.
    Linearizable,
    /// No linearization exists for this key. `ops` are indices (into the input slice) of
    /// the key's operations, for the report; `detail` explains (e.g. the longest
    /// linearizable prefix found / the op that could not be placed).
    NotLinearizable {
        /// The first key (in ascending order) found not linearizable.
        key: u64,
        /// Indices into the input slice of every operation on `key`, ascending.
        ops: Vec<usize>,
        /// A human-readable explanation.
        detail: String,
    },
    /// The search for this key exceeded the budget, in steps or in the memory of its
    /// memo ([`MEMO_BYTE_BUDGET`]): neither pass nor fail. Never report this as a pass.
    Inconclusive {
        /// The first key (in ascending order) whose search ran out of budget.
        key: u64,
        /// The search steps spent on it when the search stopped.
        steps: u64,
        /// The bytes its memo of explored configurations held then (an estimate).
        memo_bytes: u64,
    },
}

impl CheckResult {
    /// Whether this is [`CheckResult::Linearizable`]. `Inconclusive` is not.
    pub fn is_linearizable(&self) -> bool {
        matches!(self, CheckResult::Linearizable)
    }
}

impl KvOp {
    /// The sequential specification: applies `self` to `state` and returns the output.
    pub fn apply(&self, state: &mut Option<Vec<u64>>) -> KvOutput {
        match self {
            KvOp::Put { value } => {
                *state = Some(vec![*value]);
                KvOutput::Unit
            }
            KvOp::Append { value } => {
                state.get_or_insert_with(Vec::new).push(*value);
                KvOutput::Unit
            }
            KvOp::Get => KvOutput::Value(state.clone()),
            KvOp::Cas { expected, new } => {
                if state == expected {
                    *state = Some(vec![*new]);
                    KvOutput::Cas(true)
                } else {
                    KvOutput::Cas(false)
                }
            }
            KvOp::Delete => {
                *state = None;
                KvOutput::Unit
            }
        }
    }
}

/// The most memory the memo of explored configurations may take for one key (an
/// estimate of its heap bytes): 4 GiB. Without it a hard key's search could grow until
/// the machine ran out of memory before its step budget ran out (a fault-suite run
/// reached 24 GB within 20 million steps); with it the search stops with
/// [`CheckResult::Inconclusive`].
pub const MEMO_BYTE_BUDGET: u64 = 4 << 30;

/// Checks the whole history, key by key. `step_budget` bounds the search steps per key,
/// and [`MEMO_BYTE_BUDGET`] the memory of its memo.
/// Returns the first failure (NotLinearizable beats Inconclusive: if any key is not
/// linearizable report that; otherwise if any key was inconclusive report that).
///
/// Keys are searched in ascending order, and "first" means the smallest such key. A
/// step is one visit of an event in the Wing–Gong–Lowe search (trying to linearize one
/// pending operation, skipping a [`Outcome::MaybeBefore`] one at the end of its window,
/// or backtracking); a linearizable per-key history with `n`
/// operations and little concurrency takes roughly `n` to `3n` steps.
pub fn check(history: &[Operation], step_budget: u64) -> CheckResult {
    check_counting_steps(history, step_budget).0
}

/// [`check`], also returning the most search steps any key took (for measurements).
fn check_counting_steps(history: &[Operation], step_budget: u64) -> (CheckResult, u64) {
    check_within(history, step_budget, MEMO_BYTE_BUDGET)
}

/// [`check_counting_steps`] with a memo budget of `memo_budget` bytes per key.
fn check_within(history: &[Operation], step_budget: u64, memo_budget: u64) -> (CheckResult, u64) {
    let mut search = Search::new(memo_budget);
    let mut inconclusive = None;
    let mut most_steps = 0;
    for (key, indices) in group_by_key(history) {
        if let Some(detail) = malformed(history, &indices) {
            let result = CheckResult::NotLinearizable {
                key,
                ops: indices,
                detail,
            };
            return (result, most_steps);
        }
        match search.run(history, &indices, step_budget) {
            KeyVerdict::Linearizable(steps) => most_steps = most_steps.max(steps),
            KeyVerdict::NotLinearizable(detail) => {
                let result = CheckResult::NotLinearizable {
                    key,
                    ops: indices,
                    detail,
                };
                return (result, most_steps);
            }
            KeyVerdict::OutOfBudget { steps, memo_bytes } => {
                most_steps = most_steps.max(steps);
                inconclusive.get_or_insert(CheckResult::Inconclusive {
                    key,
                    steps,
                    memo_bytes,
                });
            }
        }
    }
    (
        inconclusive.unwrap_or(CheckResult::Linearizable),
        most_steps,
    )
}

/// The indices of each key's operations, keys ascending, indices ascending.
fn group_by_key(history: &[Operation]) -> BTreeMap<u64, Vec<usize>> {
    let mut by_key: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    for (i, op) in history.iter().enumerate() {
        by_key.entry(op.key).or_default().push(i);
    }
    by_key
}

/// A description of the first op among `indices` that returned before it was invoked.
fn malformed(history: &[Operation], indices: &[usize]) -> Option<String> {
    indices.iter().find_map(|&i| match history[i].outcome {
        Outcome::Ok { ret, .. } | Outcome::MaybeBefore { ret } if ret < history[i].invoke => {
            Some(format!(
                "malformed history: op #{i} returned at {ret}, before it was invoked at {}: {}",
                history[i].invoke,
                describe(i, &history[i])
            ))
        }
        _ => None,
    })
}

/// One op, for reports.
fn describe(index: usize, op: &Operation) -> String {
    let outcome = match &op.outcome {
        Outcome::Ok { ret, output } => format!("returned {output:?} at {ret}"),
        Outcome::Unknown => "outcome unknown".to_owned(),
        Outcome::MaybeBefore { ret } => {
            format!("outcome unknown, took effect by {ret} or never")
        }
    };
    format!(
        "#{index} (client {}, {:?}, invoked at {}, {outcome})",
        op.client, op.op, op.invoke
    )
}
