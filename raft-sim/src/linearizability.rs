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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::hash::{BuildHasherDefault, Hasher};

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
    let mut search = Search {
        memo_budget,
        ..Search::default()
    };
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

/// The most operations on one key that [`check_brute_force`] will search: keys with more
/// come back [`CheckResult::Inconclusive`] with `steps: 0`.
pub const BRUTE_FORCE_MAX_OPS_PER_KEY: usize = 10;

/// Exhaustive reference checker for small histories (all orders consistent with real time),
/// used to cross-check `check`. Panics or returns Inconclusive above ~10 ops per key is fine;
/// document the limit.
///
/// It shares nothing with [`check`] but the grouping by key and the malformed-input rule:
/// for each key and each subset of its [`Outcome::MaybeBefore`] operations taken to have
/// never happened, it tries every order of *all* the other operations (unknown and
/// maybe-before ones included, which accept any output) in which no operation comes
/// after one that returned (or whose window closed) strictly before its invoke, running
/// [`KvOp::apply`] on real values. Keys with more than [`BRUTE_FORCE_MAX_OPS_PER_KEY`]
/// operations are not searched and yield [`CheckResult::Inconclusive`] with `steps: 0`
/// (unless another key fails). It never panics.
pub fn check_brute_force(history: &[Operation]) -> CheckResult {
    let mut inconclusive = None;
    for (key, indices) in group_by_key(history) {
        if let Some(detail) = malformed(history, &indices) {
            return CheckResult::NotLinearizable {
                key,
                ops: indices,
                detail,
            };
        }
        if indices.len() > BRUTE_FORCE_MAX_OPS_PER_KEY {
            inconclusive.get_or_insert(CheckResult::Inconclusive {
                key,
                steps: 0,
                memo_bytes: 0,
            });
            continue;
        }
        let ops: Vec<&Operation> = indices.iter().map(|&i| &history[i]).collect();
        if !brute_force_key_with_omissions(&ops) {
            return CheckResult::NotLinearizable {
                key,
                ops: indices,
                detail: format!(
                    "brute force: no order of the {} operations on key {key} that respects \
                     real time produces the outputs the clients saw",
                    ops.len()
                ),
            };
        }
    }
    inconclusive.unwrap_or(CheckResult::Linearizable)
}

/// Whether, for some subset of the [`Outcome::MaybeBefore`] ops of `ops` left out (they
/// never took effect), some order of the rest passes [`brute_force_key`].
fn brute_force_key_with_omissions(ops: &[&Operation]) -> bool {
    let optional: Vec<usize> = (0..ops.len())
        .filter(|&i| matches!(ops[i].outcome, Outcome::MaybeBefore { .. }))
        .collect();
    (0..1u32 << optional.len()).any(|omitted| {
        let kept: Vec<&Operation> = (0..ops.len())
            .filter(|i| {
                optional
                    .iter()
                    .position(|j| j == i)
                    .is_none_or(|bit| omitted & (1 << bit) == 0)
            })
            .map(|i| ops[i])
            .collect();
        brute_force_key(&kept, 0, &mut None)
    })
}

/// Depth-first search over every real-time-respecting order of the ops not yet in
/// `placed` (a bitmask; at most [`BRUTE_FORCE_MAX_OPS_PER_KEY`] ops). Every op is placed;
/// only [`Outcome::Ok`] ones have their output checked.
fn brute_force_key(ops: &[&Operation], placed: u32, state: &mut Option<Vec<u64>>) -> bool {
    let all = (1u32 << ops.len()) - 1;
    if placed == all {
        return true;
    }
    for (i, candidate) in ops.iter().enumerate() {
        if placed & (1 << i) != 0 {
            continue;
        }
        // `candidate` can go next only if no other unplaced op must precede it.
        let blocked = ops.iter().enumerate().any(|(j, other)| {
            j != i
                && placed & (1 << j) == 0
                && matches!(
                    other.outcome,
                    Outcome::Ok { ret, .. } | Outcome::MaybeBefore { ret }
                        if ret < candidate.invoke
                )
        });
        if blocked {
            continue;
        }
        let mut next = state.clone();
        let output = candidate.op.apply(&mut next);
        if let Outcome::Ok { output: seen, .. } = &candidate.outcome
            && *seen != output
        {
            continue;
        }
        if brute_force_key(ops, placed | (1 << i), &mut next) {
            return true;
        }
    }
    false
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

// ---------------------------------------------------------------------------------------
// The Wing–Gong–Lowe search.
// ---------------------------------------------------------------------------------------

/// A small, fast, non-cryptographic hasher (multiply-rotate, with a final avalanche).
/// The checker's inputs are not adversarial, so HashDoS resistance is not needed.
#[derive(Default, Clone, Copy)]
struct FastHasher {
    hash: u64,
}

const HASH_MULTIPLIER: u64 = 0x9E37_79B9_7F4A_7C15;

impl FastHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(26) ^ word).wrapping_mul(HASH_MULTIPLIER);
    }
}

impl Hasher for FastHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            // Mark the length so that trailing zero bytes still change the hash.
            self.add(u64::from_le_bytes(word) ^ ((rest.len() as u64) << 59));
        }
    }

    #[inline]
    fn write_u64(&mut self, word: u64) {
        self.add(word);
    }

    #[inline]
    fn write_u32(&mut self, word: u32) {
        self.add(u64::from(word));
    }

    #[inline]
    fn write_usize(&mut self, word: usize) {
        self.add(word as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        // MurmurHash3's fmix64, so that every output bit depends on every input bit.
        let mut h = self.hash;
        h ^= h >> 33;
        h = h.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
        h ^= h >> 33;
        h = h.wrapping_mul(0xC4CE_B9FE_1A85_EC53);
        h ^ (h >> 33)
    }
}

type FastBuild = BuildHasherDefault<FastHasher>;

/// The id of the interned value `None`.
const ABSENT: u32 = 0;

/// The model step of one op, with everything that does not depend on the state
/// precomputed. States are ids into [`Search::values`].
#[derive(Clone, Copy, Debug)]
enum Step {
    /// Put or Delete: the next state is fixed.
    Set { next: u32 },
    /// Append `value`; the next state depends on the current one.
    Append { value: u64 },
    /// A Get that returned the value with this id.
    Get { expect: u32 },
    /// A Cas: swaps to `next` when the state is `expected`. `result` is the output the
    /// client saw, `None` if unknown.
    Cas {
        expected: u32,
        next: u32,
        result: Option<bool>,
    },
    /// The output the client saw is of the wrong kind for the op: never linearizable.
    Impossible,
}

/// How the search must treat one op, from its [`Outcome`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// [`Outcome::Ok`]: must be linearized before its return event; output checked.
    Known,
    /// [`Outcome::MaybeBefore`]: linearized before its return event (output unchecked),
    /// or, at its return event, decided never to have taken effect.
    Optional,
    /// [`Outcome::Unknown`]: no return event; may be linearized any time, or never.
    Unknown,
}

/// One op of the key being searched.
#[derive(Clone, Copy, Debug)]
struct SearchOp {
    /// Index into the input history.
    index: usize,
    step: Step,
    kind: Kind,
}

/// One decided op on the backtracking stack: linearized, or (an optional op) skipped.
#[derive(Clone, Copy, Debug)]
struct Frame {
    op: u32,
    /// The state before it.
    previous: u32,
    /// Whether it was taken without trying alternatives after it: a read-only op (see
    /// [`Search::run`]), or an optional op skipped at its return event (the last
    /// alternative of its configuration). If it fails, so does the configuration it was
    /// taken from.
    forced: bool,
    /// Whether this is an optional op decided never to have taken effect.
    skipped: bool,
}

/// Which candidates a sweep of the event list considers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sweep {
    /// Only read-only ops (reads, compare-and-swaps known to have failed) that are
    /// valid here: the first one found is taken.
    ReadOnly,
    /// Every op, in event order (the plain WGL sweep).
    All,
}

/// The bytes one memo entry takes besides its words: the `Vec` (24), its heap
/// allocation's rounding and header (~16), and the hash table's slot and control byte
/// at its load factor (~16).
const MEMO_ENTRY_BYTES: u64 = 56;

/// What the search concluded for one key.
enum KeyVerdict {
    /// With the search steps it took.
    Linearizable(u64),
    NotLinearizable(String),
    /// The steps taken and the memo's bytes when the budget ran out.
    OutOfBudget {
        steps: u64,
        memo_bytes: u64,
    },
}

/// The deepest dead end of a failed search, for the report.
struct DeadEnd {
    /// Search-op ids of the decided prefix, in order, with whether each was skipped.
    prefix: Vec<(u32, bool)>,
    /// The state id after the prefix.
    state: u32,
    /// The search-op id whose return event could not be passed.
    blocker: u32,
}

/// Reusable buffers for the per-key search.
#[derive(Default)]
struct Search {
    ops: Vec<SearchOp>,
    /// Interned values: `values[0]` is `None`.
    values: Vec<Option<Vec<u64>>>,
    value_ids: HashMap<Option<Vec<u64>>, u32, FastBuild>,
    /// Cache of Append transitions: `(state << 32 | op)` to the next state.
    appends: HashMap<u64, u32, FastBuild>,
    /// The event list. Node 0 is the head sentinel, node `len - 1` the tail sentinel;
    /// event nodes are in between.
    next: Vec<u32>,
    prev: Vec<u32>,
    /// Per event node: the search-op id, and whether it is the call event.
    event_op: Vec<u32>,
    is_call: Vec<bool>,
    /// Per search op: its call and return nodes.
    call_node: Vec<u32>,
    return_node: Vec<u32>,
    /// Number of ops with a return event (known and optional ones): they are ops
    /// `0..bounded`, in invoke order; the unknown ones follow.
    bounded: usize,
    /// Number of known ops (those that must be linearized).
    known: usize,
    /// The set of decided ops (linearized, or skipped optional ones): `bounded_words`
    /// words for the bounded ops, then the words for the unknown ones.
    linearized: Vec<u64>,
    bounded_words: usize,
    /// `linearized[..low]` are all ones and `linearized[high..bounded_words]` all zeros,
    /// with `low` as large and `high` as small as possible (`low <= high`).
    low: usize,
    high: usize,
    /// Configurations already explored, in the compact layout of [`Search::memo_key`].
    /// Exact keys, so no false "already seen".
    seen: HashSet<Vec<u64>, FastBuild>,
    /// An estimate of the heap bytes `seen` holds (its keys, their `Vec`s and table
    /// slots), and the most it may hold before the search gives up.
    seen_bytes: u64,
    memo_budget: u64,
    /// Scratch space for the current configuration's key.
    key: Vec<u64>,
    /// Backtracking stack: the ops linearized, in order.
    stack: Vec<Frame>,
}

impl Search {
    /// Interns `value` (cloning only if it is new).
    fn intern(&mut self, value: &Option<Vec<u64>>) -> u32 {
        if let Some(&id) = self.value_ids.get(value) {
            return id;
        }
        self.intern_new(value.clone())
    }

    fn intern_owned(&mut self, value: Option<Vec<u64>>) -> u32 {
        if let Some(&id) = self.value_ids.get(&value) {
            return id;
        }
        self.intern_new(value)
    }

    fn intern_new(&mut self, value: Option<Vec<u64>>) -> u32 {
        let id = self.values.len() as u32;
        self.values.push(value.clone());
        self.value_ids.insert(value, id);
        id
    }

    /// Resets the buffers for a new key.
    fn reset(&mut self) {
        self.ops.clear();
        self.values.clear();
        self.value_ids.clear();
        self.appends.clear();
        self.seen.clear();
        self.seen_bytes = 0;
        self.stack.clear();
        let absent = self.intern_owned(None);
        debug_assert_eq!(absent, ABSENT);
    }

    /// Precomputes the step of one op; `None` for an op the search can ignore (a `Get`
    /// with an unknown or maybe-before outcome).
    fn search_op(&mut self, index: usize, op: &Operation) -> Option<SearchOp> {
        let (output, kind) = match &op.outcome {
            Outcome::Ok { output, .. } => (Some(output), Kind::Known),
            Outcome::MaybeBefore { .. } => (None, Kind::Optional),
            Outcome::Unknown => (None, Kind::Unknown),
        };
        let step = match (&op.op, output) {
            // A Get whose output is unknown neither constrains nor changes anything (a
            // maybe-before one may also be dropped: dropping it is one of its options,
            // and the least constrained one).
            (KvOp::Get, None) => return None,
            (KvOp::Get, Some(KvOutput::Value(value))) => Step::Get {
                expect: self.intern(value),
            },
            (KvOp::Put { value }, None | Some(KvOutput::Unit)) => Step::Set {
                next: self.intern_owned(Some(vec![*value])),
            },
            (KvOp::Append { value }, None | Some(KvOutput::Unit)) => Step::Append { value: *value },
            (KvOp::Delete, None | Some(KvOutput::Unit)) => Step::Set { next: ABSENT },
            (KvOp::Cas { expected, new }, None | Some(KvOutput::Cas(_))) => Step::Cas {
                expected: self.intern(expected),
                next: self.intern_owned(Some(vec![*new])),
                result: match output {
                    Some(KvOutput::Cas(swapped)) => Some(*swapped),
                    _ => None,
                },
            },
            // An output of the wrong kind for the op.
            _ => Step::Impossible,
        };
        Some(SearchOp { index, step, kind })
    }

    /// The state after linearizing op `op` in `state`, or `None` if its output does not
    /// match.
    #[inline]
    fn step(&mut self, state: u32, op: u32) -> Option<u32> {
        match self.ops[op as usize].step {
            Step::Set { next } => Some(next),
            Step::Get { expect } => (state == expect).then_some(state),
            Step::Cas {
                expected,
                next,
                result,
            } => {
                let swaps = state == expected;
                match result {
                    Some(seen) if seen != swaps => None,
                    _ => Some(if swaps { next } else { state }),
                }
            }
            Step::Append { value } => {
                let key = (u64::from(state) << 32) | u64::from(op);
                if let Some(&next) = self.appends.get(&key) {
                    return Some(next);
                }
                let mut grown = self.values[state as usize].clone().unwrap_or_default();
                grown.push(value);
                let next = self.intern_owned(Some(grown));
                self.appends.insert(key, next);
                Some(next)
            }
            Step::Impossible => None,
        }
    }

    /// Builds the doubly-linked event list for the current `ops`.
    fn build_events(&mut self, history: &[Operation]) {
        // (time, class, op): class 0 = call, 1 = return (of a known op, or the end of an
        // optional op's window), 2 = the return of an unknown op (at +infinity). Calls
        // sort before returns at equal times, so an op returning at `t` does not precede
        // an op invoked at `t`.
        let mut events: Vec<(u64, u8, u32)> = Vec::with_capacity(2 * self.ops.len());
        for (id, op) in self.ops.iter().enumerate() {
            let record = &history[op.index];
            events.push((record.invoke, 0, id as u32));
            match record.outcome {
                Outcome::Ok { ret, .. } | Outcome::MaybeBefore { ret } => {
                    events.push((ret, 1, id as u32));
                }
                Outcome::Unknown => events.push((u64::MAX, 2, id as u32)),
            }
        }
        events.sort_unstable();

        let nodes = events.len() + 2;
        let tail = (nodes - 1) as u32;
        self.next.clear();
        self.prev.clear();
        self.event_op.clear();
        self.is_call.clear();
        self.call_node.clear();
        self.call_node.resize(self.ops.len(), 0);
        self.return_node.clear();
        self.return_node.resize(self.ops.len(), 0);
        for node in 0..nodes as u32 {
            self.next.push(if node == tail { tail } else { node + 1 });
            self.prev.push(node.saturating_sub(1));
        }
        self.event_op.push(u32::MAX);
        self.is_call.push(false);
        for (position, &(_, class, id)) in events.iter().enumerate() {
            let node = position as u32 + 1;
            self.event_op.push(id);
            self.is_call.push(class == 0);
            if class == 0 {
                self.call_node[id as usize] = node;
            } else {
                self.return_node[id as usize] = node;
            }
        }
        self.event_op.push(u32::MAX);
        self.is_call.push(false);
    }

    /// Unlinks op `op`'s call and return events.
    #[inline]
    fn lift(&mut self, op: u32) {
        for node in [self.call_node[op as usize], self.return_node[op as usize]] {
            let (p, n) = (self.prev[node as usize], self.next[node as usize]);
            self.next[p as usize] = n;
            self.prev[n as usize] = p;
        }
    }

    /// Relinks op `op`'s events: exactly undoes the matching [`Search::lift`], provided
    /// lifts and unlifts nest like a stack.
    #[inline]
    fn unlift(&mut self, op: u32) {
        for node in [self.return_node[op as usize], self.call_node[op as usize]] {
            let (p, n) = (self.prev[node as usize], self.next[node as usize]);
            self.next[p as usize] = node;
            self.prev[n as usize] = node;
        }
    }

    /// The word and bit of op `op` in `linearized`.
    #[inline]
    fn position(&self, op: u32) -> (usize, u64) {
        let op = op as usize;
        let (word, bit) = if op < self.bounded {
            (op / 64, op % 64)
        } else {
            let unknown = op - self.bounded;
            (self.bounded_words + unknown / 64, unknown % 64)
        };
        (word, 1 << bit)
    }

    /// Adds op `op` to the linearized set.
    #[inline]
    fn set_linearized(&mut self, op: u32) {
        let (word, bit) = self.position(op);
        self.linearized[word] |= bit;
        if word < self.bounded_words {
            self.high = self.high.max(word + 1);
            while self.low < self.bounded_words && self.linearized[self.low] == u64::MAX {
                self.low += 1;
            }
        }
    }

    /// Removes op `op` from the linearized set.
    #[inline]
    fn clear_linearized(&mut self, op: u32) {
        let (word, bit) = self.position(op);
        self.linearized[word] &= !bit;
        if word < self.bounded_words {
            self.low = self.low.min(word);
            while self.high > self.low && self.linearized[self.high - 1] == 0 {
                self.high -= 1;
            }
        }
    }

    /// Writes the memo key of the configuration (decided set, `state`) to `key`: `low`,
    /// the bounded-op words `low..high` (those before are all ones, those after all
    /// zeros), the unknown-op words, and the state id. The key is exact: the
    /// configuration can be read back from it. Since bounded ops are numbered in invoke
    /// order and each is decided by its return event, `high - low` stays around the
    /// concurrency of the history, not its length.
    ///
    /// A skipped optional op and a linearized one share a bit: both are out of the
    /// event list for good, so the configuration's future depends only on the set and
    /// the state, not on which way each op was decided.
    #[inline]
    fn memo_key(&mut self, state: u32) {
        self.key.clear();
        self.key.push(self.low as u64);
        self.key
            .extend_from_slice(&self.linearized[self.low..self.high]);
        self.key
            .extend_from_slice(&self.linearized[self.bounded_words..]);
        self.key.push(u64::from(state));
    }

    /// Whether op `op` leaves the state unchanged wherever it is valid: a `Get`, or a
    /// `Cas` known to have failed. (Not, say, a `Delete` that happens to find the key
    /// absent here: placed elsewhere it could delete something.)
    #[inline]
    fn read_only(&self, op: u32) -> bool {
        matches!(
            self.ops[op as usize].step,
            Step::Get { .. }
                | Step::Cas {
                    result: Some(false),
                    ..
                }
        )
    }

    /// Searches for a linearization of the ops at `indices` (all on one key, already
    /// validated as well-formed).
    ///
    /// This is Lowe's WGL loop over the event list (candidates are the calls before the
    /// first remaining return; linearizing one lifts its call and return; reaching a
    /// return means backtracking; a memo of `(decided set, state)` configurations stops
    /// any configuration from being explored twice), with three refinements:
    ///
    /// - **Unknown ops** have their return at +infinity, so they stay candidates
    ///   forever; the search succeeds as soon as every *known* op is linearized (any
    ///   unknown or optional ops left take effect at the end, or never, which no one
    ///   observes).
    /// - **Optional ops** ([`Outcome::MaybeBefore`]) are candidates like any other until
    ///   their return event. When the sweep of all candidates reaches the return event of
    ///   an optional op (so it is not linearized, and every candidate before the event
    ///   has been tried), the search has one more alternative instead of backtracking:
    ///   *skip* it, i.e. decide it never took effect. A skip adds the op to the decided
    ///   set, lifts its events and leaves the state unchanged. This is sound (an optional
    ///   op may be left out, and it no longer constrains anything once left out) and
    ///   complete (a linearization that leaves the op out can be followed step by step,
    ///   skipping the op exactly when its return event is the first one left: the ops
    ///   still to place are then all invoked after its window closed). Since it is the
    ///   last alternative of its configuration, a skip is pushed as a *forced* frame.
    /// - **Read-only ops first.** At each new configuration a first sweep looks for a
    ///   candidate that never changes the state (a `Get`, or a `Cas` known to have
    ///   failed) and is valid in the current state. If there is one, it is taken and *no
    ///   alternative is tried*: any way to finish from here can be rewritten to place
    ///   that op first (it is a candidate, so nothing undecided must precede it; it is
    ///   valid here; it changes nothing wherever it was, so the ops it jumps over see the
    ///   same states; and skipping an optional op neither changes the state nor depends
    ///   on the read, so the skips it jumps over stay valid). So if the configuration
    ///   after it fails, the current one fails too and the search backtracks past it.
    ///   This removes the branching over where to put reads among concurrent writes,
    ///   which is most of WGL's work on read-heavy histories. Only if there is no such op
    ///   does the plain sweep over all candidates run.
    fn run(&mut self, history: &[Operation], indices: &[usize], budget: u64) -> KeyVerdict {
        self.reset();
        for &index in indices {
            if let Some(op) = self.search_op(index, &history[index]) {
                self.ops.push(op);
            }
        }
        // Number the bounded ops in invoke order, then the unknown ones: the bounded ops
        // are decided roughly in that order, which keeps memo keys short.
        self.ops
            .sort_by_key(|op| (op.kind == Kind::Unknown, history[op.index].invoke, op.index));
        self.bounded = self
            .ops
            .iter()
            .filter(|op| op.kind != Kind::Unknown)
            .count();
        self.known = self.ops.iter().filter(|op| op.kind == Kind::Known).count();
        let mut pending_known = self.known;
        if pending_known == 0 {
            return KeyVerdict::Linearizable(0);
        }
        self.build_events(history);

        self.bounded_words = self.bounded.div_ceil(64);
        self.linearized.clear();
        self.linearized.resize(
            self.bounded_words + (self.ops.len() - self.bounded).div_ceil(64),
            0,
        );
        (self.low, self.high) = (0, 0);
        let head = 0u32;
        let tail = (self.next.len() - 1) as u32;
        let mut state = ABSENT;
        let mut entry = self.next[head as usize];
        let mut sweep = Sweep::ReadOnly;
        let mut steps: u64 = 0;
        let mut deepest: Option<DeadEnd> = None;

        loop {
            steps += 1;
            if steps > budget || self.seen_bytes > self.memo_budget {
                return KeyVerdict::OutOfBudget {
                    steps,
                    memo_bytes: self.seen_bytes,
                };
            }
            let mut dead_end = false;
            if entry != tail && self.is_call[entry as usize] {
                let op = self.event_op[entry as usize];
                let next_state = match sweep {
                    Sweep::ReadOnly if !self.read_only(op) => None,
                    Sweep::ReadOnly | Sweep::All => self.step(state, op),
                };
                if let Some(next_state) = next_state {
                    if self.try_decide(op, next_state) {
                        self.stack.push(Frame {
                            op,
                            previous: state,
                            forced: sweep == Sweep::ReadOnly,
                            skipped: false,
                        });
                        state = next_state;
                        if self.ops[op as usize].kind == Kind::Known {
                            pending_known -= 1;
                            if pending_known == 0 {
                                // Any unknown or optional ops left can go at the end (or
                                // never happen).
                                return KeyVerdict::Linearizable(steps);
                            }
                        }
                        entry = self.next[head as usize];
                        sweep = Sweep::ReadOnly;
                        continue;
                    }
                    // A configuration seen before and not on the current path has failed.
                    // For a forced read-only op, that means the current one fails too.
                    dead_end = sweep == Sweep::ReadOnly;
                }
                if !dead_end {
                    entry = self.next[entry as usize];
                    continue;
                }
            } else if sweep == Sweep::ReadOnly {
                sweep = Sweep::All;
                entry = self.next[head as usize];
                continue;
            } else {
                // The first return event (the tail cannot be reached while a known op is
                // pending, since its return is in the list; it is handled the same way
                // regardless): its op was not linearized in time. Every candidate before
                // it has been tried; an optional op may still be skipped.
                let op = self
                    .event_op
                    .get(entry as usize)
                    .copied()
                    .unwrap_or(u32::MAX);
                if self
                    .ops
                    .get(op as usize)
                    .is_some_and(|search_op| search_op.kind == Kind::Optional)
                {
                    if self.try_decide(op, state) {
                        self.stack.push(Frame {
                            op,
                            previous: state,
                            forced: true,
                            skipped: true,
                        });
                        entry = self.next[head as usize];
                        sweep = Sweep::ReadOnly;
                        continue;
                    }
                } else if deepest
                    .as_ref()
                    .is_none_or(|d| self.stack.len() > d.prefix.len())
                {
                    deepest = Some(DeadEnd {
                        prefix: self
                            .stack
                            .iter()
                            .map(|frame| (frame.op, frame.skipped))
                            .collect(),
                        state,
                        blocker: op,
                    });
                }
            }
            // Backtrack: undo the last op, and keep undoing while the undone op was
            // forced (its failure is its parent configuration's failure).
            loop {
                let Some(frame) = self.stack.pop() else {
                    return KeyVerdict::NotLinearizable(self.report(history, deepest));
                };
                state = frame.previous;
                self.clear_linearized(frame.op);
                self.unlift(frame.op);
                if self.ops[frame.op as usize].kind == Kind::Known {
                    pending_known += 1;
                }
                if !frame.forced {
                    // Carry on with the candidates after it.
                    entry = self.next[self.call_node[frame.op as usize] as usize];
                    sweep = Sweep::All;
                    break;
                }
            }
        }
    }

    /// Decides op `op` (linearized, or skipped if `state` is the current state), leading
    /// to `state`, if that configuration has not been seen: records it in the memo,
    /// marks the op decided and lifts its events. Returns whether it did.
    #[inline]
    fn try_decide(&mut self, op: u32, state: u32) -> bool {
        self.set_linearized(op);
        self.memo_key(state);
        if self.seen.contains(self.key.as_slice()) {
            self.clear_linearized(op);
            return false;
        }
        self.seen.insert(self.key.clone());
        self.seen_bytes += MEMO_ENTRY_BYTES + 8 * self.key.len() as u64;
        self.lift(op);
        true
    }

    /// Explains a failed search.
    fn report(&self, history: &[Operation], deepest: Option<DeadEnd>) -> String {
        let mut detail = format!(
            "no linearization of the {} operations searched ({} with a known outcome)",
            self.ops.len(),
            self.known
        );
        let Some(dead_end) = deepest else {
            return detail;
        };
        const SHOWN: usize = 40;
        let prefix: Vec<u32> = dead_end
            .prefix
            .iter()
            .filter(|&&(_, skipped)| !skipped)
            .map(|&(op, _)| op)
            .collect();
        let _ = write!(
            detail,
            "; the longest linearizable prefix found has {} ops: [",
            prefix.len()
        );
        if prefix.len() > SHOWN {
            detail.push_str("..., ");
        }
        let shown = &prefix[prefix.len().saturating_sub(SHOWN)..];
        for (n, &op) in shown.iter().enumerate() {
            let sep = if n == 0 { "" } else { ", " };
            let _ = write!(detail, "{sep}#{}", self.ops[op as usize].index);
        }
        detail.push(']');
        let skipped: Vec<u32> = dead_end
            .prefix
            .iter()
            .filter(|&&(_, skipped)| skipped)
            .map(|&(op, _)| op)
            .collect();
        if !skipped.is_empty() {
            let _ = write!(
                detail,
                " ({} maybe-before ops taken never to have happened: [",
                skipped.len()
            );
            if skipped.len() > SHOWN {
                detail.push_str("..., ");
            }
            let shown = &skipped[skipped.len().saturating_sub(SHOWN)..];
            for (n, &op) in shown.iter().enumerate() {
                let sep = if n == 0 { "" } else { ", " };
                let _ = write!(detail, "{sep}#{}", self.ops[op as usize].index);
            }
            detail.push_str("])");
        }
        let value = self.values.get(dead_end.state as usize).cloned().flatten();
        let _ = write!(detail, ", after which the value is {value:?}");
        if let Some(blocker) = self.ops.get(dead_end.blocker as usize) {
            let _ = write!(
                detail,
                "; from there the search could not get past the return of op {}",
                describe(blocker.index, &history[blocker.index])
            );
        }
        detail
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    // ---- helpers ---------------------------------------------------------------------

    fn ok(client: u64, key: u64, op: KvOp, invoke: u64, ret: u64, output: KvOutput) -> Operation {
        Operation {
            client,
            key,
            op,
            invoke,
            outcome: Outcome::Ok { ret, output },
        }
    }

    fn unknown(client: u64, key: u64, op: KvOp, invoke: u64) -> Operation {
        Operation {
            client,
            key,
            op,
            invoke,
            outcome: Outcome::Unknown,
        }
    }

    fn maybe(client: u64, key: u64, op: KvOp, invoke: u64, ret: u64) -> Operation {
        Operation {
            client,
            key,
            op,
            invoke,
            outcome: Outcome::MaybeBefore { ret },
        }
    }

    fn maybe_put(c: u64, invoke: u64, ret: u64, value: u64) -> Operation {
        maybe(c, 0, KvOp::Put { value }, invoke, ret)
    }

    fn maybe_cas(c: u64, invoke: u64, ret: u64, expected: Option<&[u64]>, new: u64) -> Operation {
        let op = KvOp::Cas {
            expected: expected.map(<[u64]>::to_vec),
            new,
        };
        maybe(c, 0, op, invoke, ret)
    }

    fn put(c: u64, invoke: u64, ret: u64, value: u64) -> Operation {
        ok(c, 0, KvOp::Put { value }, invoke, ret, KvOutput::Unit)
    }

    fn append(c: u64, invoke: u64, ret: u64, value: u64) -> Operation {
        ok(c, 0, KvOp::Append { value }, invoke, ret, KvOutput::Unit)
    }

    fn delete(c: u64, invoke: u64, ret: u64) -> Operation {
        ok(c, 0, KvOp::Delete, invoke, ret, KvOutput::Unit)
    }

    fn get(c: u64, invoke: u64, ret: u64, seen: Option<&[u64]>) -> Operation {
        ok(
            c,
            0,
            KvOp::Get,
            invoke,
            ret,
            KvOutput::Value(seen.map(<[u64]>::to_vec)),
        )
    }

    fn cas(
        c: u64,
        invoke: u64,
        ret: u64,
        expected: Option<&[u64]>,
        new: u64,
        swapped: bool,
    ) -> Operation {
        ok(
            c,
            0,
            KvOp::Cas {
                expected: expected.map(<[u64]>::to_vec),
                new,
            },
            invoke,
            ret,
            KvOutput::Cas(swapped),
        )
    }

    fn on_key(key: u64, mut op: Operation) -> Operation {
        op.key = key;
        op
    }

    const BUDGET: u64 = 1_000_000;

    /// Checks with both checkers, asserts they agree, and returns the verdict of `check`.
    fn verdict(history: &[Operation]) -> CheckResult {
        let fast = check(history, BUDGET);
        let brute = check_brute_force(history);
        if !matches!(brute, CheckResult::Inconclusive { .. }) {
            assert_eq!(
                fast.is_linearizable(),
                brute.is_linearizable(),
                "check and check_brute_force disagree on {history:#?}: {fast:?} vs {brute:?}"
            );
        }
        fast
    }

    fn assert_pass(history: &[Operation]) {
        let result = verdict(history);
        assert_eq!(result, CheckResult::Linearizable, "{history:#?}");
    }

    fn assert_fail(history: &[Operation]) -> String {
        match verdict(history) {
            CheckResult::NotLinearizable { detail, .. } => detail,
            other => panic!("expected NotLinearizable, got {other:?} for {history:#?}"),
        }
    }

    // ---- hand-written cases ----------------------------------------------------------

    #[test]
    fn empty_history_is_linearizable() {
        assert_pass(&[]);
    }

    #[test]
    fn sequential_valid_history() {
        assert_pass(&[
            get(1, 0, 1, None),
            put(1, 2, 3, 1),
            get(2, 4, 5, Some(&[1])),
            append(1, 6, 7, 2),
            get(2, 8, 9, Some(&[1, 2])),
            delete(1, 10, 11),
            get(2, 12, 13, None),
            cas(1, 14, 15, None, 3, true),
            get(2, 16, 17, Some(&[3])),
            cas(1, 18, 19, Some(&[3]), 4, true),
            cas(1, 20, 21, Some(&[3]), 5, false),
            get(2, 22, 23, Some(&[4])),
        ]);
    }

    #[test]
    fn stale_read_after_completed_write_fails() {
        let detail = assert_fail(&[
            put(1, 0, 10, 1),
            put(1, 20, 30, 2),
            get(2, 40, 50, Some(&[1])),
        ]);
        assert!(detail.contains("#2"), "{detail}");
    }

    #[test]
    fn concurrent_write_and_read_may_go_either_way() {
        for seen in [&[1][..], &[2][..]] {
            assert_pass(&[
                put(1, 0, 10, 1),
                put(1, 20, 40, 2),
                get(2, 25, 35, Some(seen)),
            ]);
        }
        // But not a value that was never written.
        assert_fail(&[
            put(1, 0, 10, 1),
            put(1, 20, 40, 2),
            get(2, 25, 35, Some(&[3])),
        ]);
    }

    #[test]
    fn read_may_overlap_a_write_on_either_side() {
        // The read started before the write and ended after it started.
        assert_pass(&[get(2, 0, 15, Some(&[1])), put(1, 10, 20, 1)]);
        assert_pass(&[get(2, 0, 15, None), put(1, 10, 20, 1)]);
    }

    #[test]
    fn unknown_put_observed_later_passes() {
        assert_pass(&[
            unknown(1, 0, KvOp::Put { value: 1 }, 0),
            get(2, 10, 20, Some(&[1])),
        ]);
    }

    #[test]
    fn unknown_put_never_observed_passes() {
        assert_pass(&[
            unknown(1, 0, KvOp::Put { value: 1 }, 0),
            get(2, 10, 20, None),
            get(2, 30, 40, None),
        ]);
    }

    #[test]
    fn unknown_put_cannot_be_unobserved() {
        // Once a read saw it, a later read cannot miss it (nothing deletes it).
        assert_fail(&[
            unknown(1, 0, KvOp::Put { value: 1 }, 0),
            get(2, 10, 20, Some(&[1])),
            get(2, 30, 40, None),
        ]);
    }

    #[test]
    fn unknown_put_cannot_take_effect_before_its_invoke() {
        assert_fail(&[
            get(2, 0, 10, Some(&[1])),
            unknown(1, 0, KvOp::Put { value: 1 }, 20),
        ]);
    }

    #[test]
    fn unknown_get_is_ignored() {
        assert_pass(&[
            put(1, 0, 10, 1),
            unknown(2, 0, KvOp::Get, 5),
            get(2, 20, 30, Some(&[1])),
        ]);
    }

    #[test]
    fn maybe_before_put_observed_within_its_window_passes() {
        // A read that returned before the window closed saw the put.
        assert_pass(&[maybe_put(1, 0, 50, 1), get(2, 10, 20, Some(&[1]))]);
        // So did a read after the window closed: it took effect within the window.
        assert_pass(&[
            maybe_put(1, 0, 50, 1),
            get(2, 10, 20, Some(&[1])),
            get(2, 60, 70, Some(&[1])),
        ]);
        assert_pass(&[maybe_put(1, 0, 50, 1), get(2, 60, 70, Some(&[1]))]);
        // Having taken effect, it precedes every op invoked after its window.
        assert_fail(&[
            maybe_put(1, 0, 50, 1),
            get(2, 10, 20, Some(&[1])),
            get(2, 60, 70, None),
        ]);
    }

    #[test]
    fn maybe_before_put_cannot_take_effect_after_its_window() {
        // A read after the window saw nothing, so the put had not taken effect by 10;
        // it cannot take effect later, so the last read has no explanation.
        let history = [
            maybe_put(1, 0, 10, 1),
            get(2, 11, 12, None),
            get(3, 20, 30, Some(&[1])),
        ];
        let detail = assert_fail(&history);
        assert!(detail.contains("#2"), "{detail}");
        // With an unknown outcome (no window) the put may take effect at 15.
        let mut unbounded = history.clone();
        unbounded[0].outcome = Outcome::Unknown;
        assert_pass(&unbounded);
        // Likewise, it cannot be ordered after a put that started after its window.
        assert_fail(&[
            maybe_put(1, 0, 10, 1),
            put(2, 11, 12, 2),
            get(3, 20, 30, Some(&[1])),
        ]);
        // But at the very end of its window it is concurrent with an op invoked then.
        assert_pass(&[
            maybe_put(1, 0, 10, 1),
            put(2, 10, 12, 2),
            get(3, 20, 30, Some(&[1])),
        ]);
    }

    #[test]
    fn maybe_before_put_never_observed_passes() {
        assert_pass(&[
            maybe_put(1, 0, 10, 1),
            get(2, 5, 8, None),
            get(2, 20, 30, None),
        ]);
        // A later write hides it either way.
        assert_pass(&[
            maybe_put(1, 0, 10, 1),
            get(2, 5, 8, None),
            put(2, 20, 30, 2),
            get(3, 40, 50, Some(&[2])),
        ]);
        // Several of them, none observed, around known ops.
        assert_pass(&[
            maybe_put(1, 0, 10, 1),
            maybe(2, 0, KvOp::Append { value: 2 }, 5, 25),
            append(3, 0, 30, 3),
            maybe(4, 0, KvOp::Delete, 20, 40),
            get(5, 50, 60, Some(&[3])),
        ]);
    }

    #[test]
    fn maybe_before_cas_effect_needed_to_explain_a_read_passes() {
        assert_pass(&[
            put(1, 0, 1, 1),
            maybe_cas(2, 2, 10, Some(&[1]), 2),
            get(3, 20, 30, Some(&[2])),
        ]);
        // It cannot swap when its expectation holds only after its window.
        assert_fail(&[
            put(1, 0, 1, 5),
            maybe_cas(2, 2, 10, Some(&[1]), 2),
            put(1, 11, 12, 1),
            get(3, 20, 30, Some(&[2])),
        ]);
        // Nor when it never holds.
        assert_fail(&[
            put(1, 0, 1, 5),
            maybe_cas(2, 2, 10, Some(&[1]), 2),
            get(3, 20, 30, Some(&[2])),
        ]);
    }

    #[test]
    fn maybe_before_cas_that_would_contradict_a_read_is_omitted() {
        // Placed anywhere in its window it would swap (the value is [1] throughout), so
        // the read is explained only by its never having taken effect.
        assert_pass(&[
            put(1, 0, 1, 1),
            maybe_cas(2, 2, 10, Some(&[1]), 2),
            get(3, 20, 30, Some(&[1])),
        ]);
        // Also when the read is concurrent with it.
        assert_pass(&[
            put(1, 0, 1, 1),
            maybe_cas(2, 2, 10, Some(&[1]), 2),
            get(3, 5, 30, Some(&[1])),
            get(3, 40, 50, Some(&[1])),
        ]);
    }

    #[test]
    fn maybe_before_ops_and_the_read_first_shortcut() {
        // A read valid now is placed first, before the optional put is decided: it must
        // not matter whether the put then takes effect or not.
        assert_pass(&[
            get(3, 0, 30, None),
            maybe_put(1, 0, 10, 1),
            get(4, 20, 30, Some(&[1])),
        ]);
        assert_pass(&[
            get(3, 0, 30, None),
            maybe_put(1, 0, 10, 1),
            get(4, 20, 30, None),
        ]);
        // A failed cas placed first, then an optional delete that must take effect.
        assert_pass(&[
            put(1, 0, 1, 1),
            cas(3, 2, 30, Some(&[7]), 9, false),
            maybe(2, 0, KvOp::Delete, 2, 10),
            get(4, 20, 30, None),
        ]);
        // A read that must come after an optional put that took effect.
        assert_pass(&[
            maybe_put(1, 0, 10, 1),
            get(3, 5, 30, Some(&[1])),
            get(4, 20, 30, Some(&[1])),
        ]);
        assert_fail(&[
            maybe_put(1, 0, 10, 1),
            get(3, 5, 30, Some(&[1])),
            get(4, 20, 30, None),
        ]);
    }

    #[test]
    fn maybe_before_get_is_ignored() {
        // A maybe-before read "seeing" anything constrains nothing (its output is not
        // recorded), and it has no effect.
        assert_pass(&[
            maybe(2, 0, KvOp::Get, 0, 5),
            put(1, 10, 20, 1),
            get(2, 30, 40, Some(&[1])),
        ]);
        assert_eq!(
            check(&[maybe(2, 0, KvOp::Get, 0, 5)], 0),
            CheckResult::Linearizable
        );
    }

    #[test]
    fn only_maybe_before_ops_need_no_search() {
        assert_eq!(
            check(&[maybe_put(1, 0, 5, 1), maybe_cas(1, 6, 9, None, 2)], 0),
            CheckResult::Linearizable
        );
    }

    #[test]
    fn maybe_before_window_may_be_a_single_instant() {
        assert_pass(&[maybe_put(1, 5, 5, 1), get(2, 5, 6, None)]);
        assert_pass(&[maybe_put(1, 5, 5, 1), get(2, 6, 7, Some(&[1]))]);
        assert_fail(&[maybe_put(1, 5, 5, 1), get(2, 0, 4, Some(&[1]))]);
        assert_fail(&[
            maybe_put(1, 5, 5, 1),
            get(2, 6, 7, None),
            get(2, 8, 9, Some(&[1])),
        ]);
    }

    #[test]
    fn failure_detail_lists_the_maybe_before_ops_left_out() {
        let detail = assert_fail(&[
            put(1, 0, 1, 1),
            maybe_cas(2, 2, 10, Some(&[1]), 2),
            get(3, 20, 30, Some(&[1])),
            get(3, 40, 50, Some(&[2])),
        ]);
        assert!(detail.contains("never to have happened: [#1]"), "{detail}");
        assert!(detail.contains("#3 (client 3, Get"), "{detail}");
    }

    #[test]
    fn read_of_a_write_invoked_after_the_read_returned_fails() {
        assert_fail(&[get(2, 0, 10, Some(&[1])), put(1, 20, 30, 1)]);
    }

    #[test]
    fn cas_success_and_failure_must_match_the_value() {
        assert_pass(&[
            put(1, 0, 1, 1),
            cas(1, 2, 3, Some(&[1]), 2, true),
            cas(2, 4, 5, Some(&[1]), 3, false),
            get(2, 6, 7, Some(&[2])),
        ]);
        // A successful cas whose expectation did not hold.
        assert_fail(&[put(1, 0, 1, 1), cas(1, 2, 3, Some(&[5]), 2, true)]);
        // A failed cas whose expectation held.
        assert_fail(&[put(1, 0, 1, 1), cas(1, 2, 3, Some(&[1]), 2, false)]);
        // A failed cas must not change the value.
        assert_fail(&[
            put(1, 0, 1, 1),
            cas(1, 2, 3, Some(&[7]), 2, false),
            get(1, 4, 5, Some(&[2])),
        ]);
        // Two concurrent cas on the same expectation: only one can win.
        assert_pass(&[
            put(1, 0, 1, 1),
            cas(1, 2, 10, Some(&[1]), 2, true),
            cas(2, 2, 10, Some(&[1]), 3, false),
        ]);
        assert_fail(&[
            put(1, 0, 1, 1),
            cas(1, 2, 10, Some(&[1]), 2, true),
            cas(2, 2, 10, Some(&[1]), 3, true),
        ]);
        // Cas on an absent key.
        assert_pass(&[cas(1, 0, 1, None, 9, true), get(1, 2, 3, Some(&[9]))]);
    }

    #[test]
    fn unknown_cas_may_or_may_not_have_swapped() {
        let unknown_cas = unknown(
            1,
            0,
            KvOp::Cas {
                expected: Some(vec![1]),
                new: 2,
            },
            2,
        );
        assert_pass(&[
            put(1, 0, 1, 1),
            unknown_cas.clone(),
            get(2, 10, 11, Some(&[2])),
        ]);
        assert_pass(&[
            put(1, 0, 1, 1),
            unknown_cas.clone(),
            get(2, 10, 11, Some(&[1])),
        ]);
        // It cannot swap when its expectation does not hold.
        assert_fail(&[put(1, 0, 1, 5), unknown_cas, get(2, 10, 11, Some(&[2]))]);
    }

    #[test]
    fn appends_keep_real_time_order() {
        assert_pass(&[
            append(1, 0, 10, 1),
            append(1, 20, 30, 2),
            get(2, 40, 50, Some(&[1, 2])),
        ]);
        assert_fail(&[
            append(1, 0, 10, 1),
            append(1, 20, 30, 2),
            get(2, 40, 50, Some(&[2, 1])),
        ]);
        // Concurrent appends: either order.
        for seen in [&[1, 2][..], &[2, 1][..]] {
            assert_pass(&[
                append(1, 0, 10, 1),
                append(2, 5, 15, 2),
                get(3, 40, 50, Some(seen)),
            ]);
        }
        // An append onto a put.
        assert_pass(&[
            put(1, 0, 1, 7),
            append(1, 2, 3, 8),
            get(1, 4, 5, Some(&[7, 8])),
        ]);
        // A partial observation followed by a full one.
        assert_pass(&[
            append(1, 0, 10, 1),
            append(2, 0, 30, 2),
            get(3, 11, 12, Some(&[1])),
            get(3, 40, 50, Some(&[1, 2])),
        ]);
        assert_fail(&[
            append(1, 0, 10, 1),
            append(2, 0, 30, 2),
            get(3, 11, 12, Some(&[1])),
            get(3, 40, 50, Some(&[2, 1])),
        ]);
    }

    #[test]
    fn delete_removes_the_value() {
        assert_pass(&[put(1, 0, 1, 1), delete(1, 2, 3), get(2, 4, 5, None)]);
        assert_fail(&[put(1, 0, 1, 1), delete(1, 2, 3), get(2, 4, 5, Some(&[1]))]);
        assert_pass(&[
            put(1, 0, 1, 1),
            delete(1, 2, 3),
            append(1, 4, 5, 2),
            get(2, 6, 7, Some(&[2])),
        ]);
    }

    /// Ops that happen to leave the state unchanged where the search first meets them
    /// are not read-only: only reads and failed compare-and-swaps may be placed first
    /// without trying alternatives.
    #[test]
    fn only_true_reads_are_placed_without_alternatives() {
        // The delete finds the key absent at first, but must come after the put.
        assert_pass(&[put(1, 0, 10, 1), delete(2, 0, 10), get(3, 20, 30, None)]);
        // Likewise an unknown cas that would fail at first but must swap later.
        let unknown_cas = unknown(
            2,
            0,
            KvOp::Cas {
                expected: Some(vec![1]),
                new: 2,
            },
            0,
        );
        assert_pass(&[put(1, 0, 10, 1), unknown_cas, get(3, 20, 30, Some(&[2]))]);
        // A read that matches now and again later may go either way.
        assert_pass(&[
            get(3, 0, 30, None),
            put(1, 0, 10, 1),
            delete(2, 0, 10),
            get(3, 20, 30, None),
        ]);
        // A failed cas is read-only: placing it first is always safe.
        assert_pass(&[
            cas(3, 0, 30, Some(&[1]), 9, false),
            put(1, 0, 10, 1),
            delete(2, 0, 10),
            get(4, 20, 30, None),
        ]);
    }

    #[test]
    fn a_return_and_an_invoke_at_the_same_time_are_concurrent() {
        // The put returned at 10 and the get was invoked at 10: the get may come first.
        assert_pass(&[put(1, 0, 10, 1), get(2, 10, 20, None)]);
        // One tick later it may not.
        assert_fail(&[put(1, 0, 10, 1), get(2, 11, 20, None)]);
        // Instantaneous ops (ret == invoke) are accepted.
        assert_pass(&[
            put(1, 5, 5, 1),
            get(2, 5, 5, None),
            get(2, 6, 6, Some(&[1])),
        ]);
        assert_fail(&[put(1, 5, 5, 1), get(2, 6, 6, None)]);
    }

    #[test]
    fn wrong_kind_of_output_fails() {
        assert_fail(&[ok(1, 0, KvOp::Put { value: 1 }, 0, 1, KvOutput::Cas(true))]);
        assert_fail(&[ok(1, 0, KvOp::Get, 0, 1, KvOutput::Unit)]);
        assert_fail(&[ok(
            1,
            0,
            KvOp::Cas {
                expected: None,
                new: 1,
            },
            0,
            1,
            KvOutput::Unit,
        )]);
    }

    #[test]
    fn multi_key_history_reports_the_failing_key() {
        let history = vec![
            on_key(1, put(1, 0, 10, 1)),
            on_key(7, put(2, 0, 10, 2)),
            on_key(3, put(3, 0, 10, 3)),
            on_key(1, get(1, 20, 30, Some(&[1]))),
            on_key(7, get(2, 20, 30, None)), // stale: key 7 fails
            on_key(3, get(3, 20, 30, Some(&[3]))),
            on_key(7, get(2, 40, 50, Some(&[2]))),
            // Key 1's value must not leak into key 3.
            on_key(3, get(3, 40, 50, Some(&[3]))),
        ];
        match verdict(&history) {
            CheckResult::NotLinearizable { key, ops, detail } => {
                assert_eq!(key, 7);
                assert_eq!(ops, vec![1, 4, 6]);
                assert!(detail.contains("#4"), "{detail}");
            }
            other => panic!("expected key 7 to fail, got {other:?}"),
        }
        // Without the stale read every key passes.
        let mut fixed = history.clone();
        fixed.remove(4);
        assert_pass(&fixed);
        // A value written to one key is not visible on another.
        assert_fail(&[
            on_key(1, put(1, 0, 1, 1)),
            on_key(2, get(1, 2, 3, Some(&[1]))),
        ]);
    }

    #[test]
    fn the_smallest_failing_key_is_reported() {
        let history = vec![
            on_key(9, get(1, 0, 1, Some(&[1]))),
            on_key(4, get(1, 0, 1, Some(&[1]))),
        ];
        assert!(matches!(
            check(&history, BUDGET),
            CheckResult::NotLinearizable { key: 4, .. }
        ));
    }

    /// Many concurrent unknown appends observed in an impossible order: a big search.
    fn expensive_key(key: u64) -> Vec<Operation> {
        let mut history: Vec<Operation> = (0..6)
            .map(|i| on_key(key, unknown(i, 0, KvOp::Append { value: i }, 0)))
            .collect();
        history.push(on_key(key, get(99, 1, 2, Some(&[99]))));
        history
    }

    #[test]
    fn out_of_budget_is_inconclusive_and_a_failure_beats_it() {
        let expensive = expensive_key(5);
        match check(&expensive, 100) {
            CheckResult::Inconclusive { key, steps, .. } => {
                assert_eq!(key, 5);
                assert!(steps > 100);
            }
            other => panic!("expected Inconclusive, got {other:?}"),
        }
        // With a big enough budget the search finishes and fails.
        assert!(matches!(
            check(&expensive, 100_000_000),
            CheckResult::NotLinearizable { key: 5, .. }
        ));
        // A later, cheap, failing key beats the inconclusive one.
        let mut history = expensive.clone();
        history.push(on_key(8, get(1, 0, 1, Some(&[1]))));
        assert!(matches!(
            check(&history, 100),
            CheckResult::NotLinearizable { key: 8, .. }
        ));
        // A passing key does not hide the inconclusive one.
        let mut history = expensive;
        history.push(on_key(8, get(1, 0, 1, None)));
        assert!(matches!(
            check(&history, 100),
            CheckResult::Inconclusive { key: 5, .. }
        ));
    }

    #[test]
    fn malformed_ops_fail_without_panicking() {
        for history in [[put(1, 10, 5, 1)], [maybe_put(1, 10, 5, 1)]] {
            for result in [check(&history, BUDGET), check_brute_force(&history)] {
                match result {
                    CheckResult::NotLinearizable { key, ops, detail } => {
                        assert_eq!((key, ops), (0, vec![0]));
                        assert!(detail.starts_with("malformed history"), "{detail}");
                    }
                    other => panic!("expected NotLinearizable, got {other:?}"),
                }
            }
        }
        // Extreme times do not overflow anything.
        assert_pass(&[
            put(1, u64::MAX - 1, u64::MAX, 1),
            unknown(1, 0, KvOp::Delete, u64::MAX),
            get(2, u64::MAX, u64::MAX, Some(&[1])),
        ]);
        assert_pass(&[
            maybe_put(1, u64::MAX - 1, u64::MAX, 1),
            get(2, u64::MAX, u64::MAX, Some(&[1])),
        ]);
    }

    #[test]
    fn a_search_whose_memo_outgrows_its_memory_budget_is_inconclusive() {
        let expensive = expensive_key(5);
        // Steps to spare, memory for a handful of configurations only.
        match check_within(&expensive, 100_000_000, 1_000).0 {
            CheckResult::Inconclusive {
                key,
                steps,
                memo_bytes,
            } => {
                assert_eq!(key, 5);
                assert!(steps < 100_000_000);
                assert!(memo_bytes > 1_000, "stopped at {memo_bytes} bytes");
            }
            other => panic!("expected Inconclusive, got {other:?}"),
        }
        // The default memory budget lets the same search finish (and fail).
        assert!(matches!(
            check_within(&expensive, 100_000_000, MEMO_BYTE_BUDGET).0,
            CheckResult::NotLinearizable { key: 5, .. }
        ));
    }

    #[test]
    fn zero_budget_is_inconclusive_unless_there_is_nothing_to_search() {
        assert!(matches!(
            check(&[put(1, 0, 1, 1)], 0),
            CheckResult::Inconclusive { key: 0, .. }
        ));
        assert_eq!(
            check(&[unknown(1, 0, KvOp::Put { value: 1 }, 0)], 0),
            CheckResult::Linearizable
        );
        assert_eq!(check(&[], 0), CheckResult::Linearizable);
    }

    #[test]
    fn brute_force_refuses_big_keys() {
        let history: Vec<Operation> = (0..=BRUTE_FORCE_MAX_OPS_PER_KEY as u64)
            .map(|i| put(1, 2 * i, 2 * i + 1, i))
            .collect();
        assert_eq!(
            check_brute_force(&history),
            CheckResult::Inconclusive {
                key: 0,
                steps: 0,
                memo_bytes: 0
            }
        );
        assert_eq!(check(&history, BUDGET), CheckResult::Linearizable);
    }

    #[test]
    fn failure_detail_names_the_prefix_and_the_blocking_op() {
        let detail = assert_fail(&[
            put(1, 0, 10, 1),
            append(1, 20, 30, 2),
            get(2, 40, 50, Some(&[1, 2])),
            get(2, 60, 70, Some(&[1])),
        ]);
        assert!(detail.contains("3 ops: [#0, #1, #2]"), "{detail}");
        assert!(detail.contains("Some([1, 2])"), "{detail}");
        assert!(detail.contains("#3 (client 2, Get"), "{detail}");
    }

    // ---- random histories ------------------------------------------------------------

    /// SplitMix64, for reproducible test histories.
    struct TestRng(u64);

    impl TestRng {
        fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        /// Uniform in `[0, n)`; `n > 0`.
        fn below(&mut self, n: u64) -> u64 {
            self.next_u64() % n
        }

        /// True with probability `percent`%.
        fn chance(&mut self, percent: u64) -> bool {
            self.below(100) < percent
        }
    }

    /// A random op kind; `Cas` gets its expectation later, at execution time.
    fn random_op(rng: &mut TestRng, next_id: &mut u64) -> KvOp {
        *next_id += 1;
        let value = *next_id;
        match rng.below(100) {
            0..40 => KvOp::Get,
            40..58 => KvOp::Put { value },
            58..78 => KvOp::Append { value },
            78..92 => KvOp::Cas {
                expected: None,
                new: value,
            },
            _ => KvOp::Delete,
        }
    }

    /// Runs `ops` sequentially in the order of their linearization points (`points[i]`,
    /// `None` = never took effect), filling in Cas expectations and outputs.
    fn execute(
        rng: &mut TestRng,
        history: &mut [Operation],
        points: &[Option<u64>],
        written: &[u64],
    ) {
        let mut order: Vec<usize> = (0..history.len())
            .filter(|&i| points[i].is_some())
            .collect();
        order.sort_by_key(|&i| (points[i], i));
        let mut state: BTreeMap<u64, Option<Vec<u64>>> = BTreeMap::new();
        for i in order {
            let record = &mut history[i];
            let value = state.entry(record.key).or_default();
            if let KvOp::Cas { expected, .. } = &mut record.op {
                *expected = if rng.chance(50) {
                    value.clone()
                } else {
                    random_value(rng, written)
                };
            }
            let output = record.op.apply(value);
            if let Outcome::Ok { output: seen, .. } = &mut record.outcome {
                *seen = output;
            }
        }
    }

    fn random_value(rng: &mut TestRng, written: &[u64]) -> Option<Vec<u64>> {
        match (rng.below(4), written.is_empty()) {
            (0, _) | (_, true) => None,
            (1, _) => {
                let a = written[rng.below(written.len() as u64) as usize];
                let b = written[rng.below(written.len() as u64) as usize];
                Some(vec![a, b])
            }
            _ => Some(vec![written[rng.below(written.len() as u64) as usize]]),
        }
    }

    /// Changes one thing so that the history is likely (not certainly) not linearizable.
    fn perturb(rng: &mut TestRng, history: &mut [Operation], written: &[u64]) {
        if history.is_empty() {
            return;
        }
        let i = rng.below(history.len() as u64) as usize;
        let choice = rng.below(10);
        let record = &mut history[i];
        match (&mut record.outcome, choice) {
            // Move the op in time, keeping its output.
            (Outcome::Ok { ret, .. }, 0..3) => {
                let length = *ret - record.invoke;
                record.invoke = rng.below(40);
                *ret = record.invoke + length;
            }
            (Outcome::Unknown, 0..3) => record.invoke = rng.below(40),
            (Outcome::MaybeBefore { ret }, 0..3) => {
                let length = *ret - record.invoke;
                record.invoke = rng.below(40);
                *ret = record.invoke + length;
            }
            // Close the window earlier: the op may have taken effect after the new end.
            (Outcome::MaybeBefore { ret }, 3..6) => {
                *ret = record.invoke + rng.below(*ret - record.invoke + 1);
            }
            (Outcome::Ok { output, .. }, _) => match output {
                KvOutput::Value(value) => {
                    let changed = match value {
                        Some(v) if v.len() > 1 && rng.chance(30) => {
                            let mut v = v.clone();
                            if rng.chance(50) {
                                v.pop();
                            } else {
                                v.swap(0, 1);
                            }
                            Some(v)
                        }
                        _ => random_value(rng, written),
                    };
                    *value = changed;
                }
                KvOutput::Cas(swapped) => *swapped = !*swapped,
                KvOutput::Unit => {
                    if rng.chance(10) {
                        *output = KvOutput::Cas(true);
                    } else {
                        // A write that surely completed: pin it to the start.
                        let length = rng.below(3);
                        record.invoke = 0;
                        record.outcome = Outcome::Ok {
                            ret: length,
                            output: KvOutput::Unit,
                        };
                    }
                }
            },
            // An unknown op becomes a known one with a plausible-looking output.
            (Outcome::Unknown | Outcome::MaybeBefore { .. }, _) => {
                let output = match record.op {
                    KvOp::Get => KvOutput::Value(random_value(rng, written)),
                    KvOp::Cas { .. } => KvOutput::Cas(rng.chance(50)),
                    _ => KvOutput::Unit,
                };
                record.outcome = Outcome::Ok {
                    ret: record.invoke + 1 + rng.below(10),
                    output,
                };
            }
        }
    }

    /// A small random history: 1–3 keys, at most 7 ops per key, heavily overlapping
    /// intervals (with many equal timestamps), some unknown and some maybe-before
    /// outcomes (half of each took effect); outputs come from a real sequential
    /// execution, then 80% of the histories get one perturbation.
    fn small_random_history(rng: &mut TestRng) -> Vec<Operation> {
        let keys = 1 + rng.below(3);
        let mut history = Vec::new();
        let mut points = Vec::new();
        let mut next_id = 0;
        for key in 0..keys {
            for _ in 0..1 + rng.below(7) {
                let op = random_op(rng, &mut next_id);
                let invoke = rng.below(30);
                let ret = invoke + rng.below(15);
                let point = invoke + rng.below(ret - invoke + 1);
                let roll = rng.below(100);
                if roll < 15 {
                    points.push(rng.chance(50).then_some(point));
                    history.push(unknown(rng.below(4), key, op, invoke));
                } else if roll < 40 {
                    points.push(rng.chance(50).then_some(point));
                    history.push(maybe(rng.below(4), key, op, invoke, ret));
                } else {
                    points.push(Some(point));
                    history.push(ok(rng.below(4), key, op, invoke, ret, KvOutput::Unit));
                }
            }
        }
        let written: Vec<u64> = (1..=next_id).collect();
        execute(rng, &mut history, &points, &written);
        if rng.chance(80) {
            perturb(rng, &mut history, &written);
        }
        history
    }

    #[test]
    fn check_agrees_with_brute_force_on_random_small_histories() {
        const HISTORIES: usize = 5_000;
        let mut rng = TestRng(0x5EED_0001);
        let (mut linearizable, mut not) = (0usize, 0usize);
        let (mut with_unknown, mut with_maybe, mut with_maybe_write) = (0usize, 0usize, 0usize);
        let (mut maybe_linearizable, mut maybe_not) = (0usize, 0usize);
        for n in 0..HISTORIES {
            let history = small_random_history(&mut rng);
            let fast = check(&history, BUDGET);
            let brute = check_brute_force(&history);
            assert!(
                !matches!(fast, CheckResult::Inconclusive { .. })
                    && !matches!(brute, CheckResult::Inconclusive { .. }),
                "history {n}: {fast:?} / {brute:?}"
            );
            assert_eq!(
                fast.is_linearizable(),
                brute.is_linearizable(),
                "history {n} disagrees: check says {fast:?}, brute force says {brute:?}\n{history:#?}"
            );
            if let (
                CheckResult::NotLinearizable { key: a, ops: x, .. },
                CheckResult::NotLinearizable { key: b, ops: y, .. },
            ) = (&fast, &brute)
            {
                assert_eq!((a, x), (b, y), "history {n} fails on different keys");
            }
            if history.iter().any(|op| op.outcome == Outcome::Unknown) {
                with_unknown += 1;
            }
            let is_maybe = |op: &Operation| matches!(op.outcome, Outcome::MaybeBefore { .. });
            if history.iter().any(is_maybe) {
                with_maybe += 1;
            }
            if history.iter().any(|op| is_maybe(op) && op.op != KvOp::Get) {
                with_maybe_write += 1;
                if fast.is_linearizable() {
                    maybe_linearizable += 1;
                } else {
                    maybe_not += 1;
                }
            }
            if fast.is_linearizable() {
                linearizable += 1;
            } else {
                not += 1;
            }
        }
        eprintln!(
            "cross-check: {HISTORIES} random histories, {linearizable} linearizable, {not} not \
             ({with_unknown} with unknown outcomes, {with_maybe} with maybe-before ones, \
             {with_maybe_write} with a maybe-before write: {maybe_linearizable} linearizable, \
             {maybe_not} not); check and check_brute_force agree on all"
        );
        assert!(
            linearizable * 5 >= HISTORIES,
            "too few linearizable: {linearizable}"
        );
        assert!(not * 5 >= HISTORIES, "too few non-linearizable: {not}");
        assert!(
            maybe_linearizable * 5 >= with_maybe_write && maybe_not * 5 >= with_maybe_write,
            "histories with a maybe-before write: {maybe_linearizable} linearizable, \
             {maybe_not} not"
        );
        assert!(
            with_maybe_write * 3 >= HISTORIES,
            "too few with a maybe-before write: {with_maybe_write}"
        );
    }

    /// A realistic history: `clients` clients each issue ops back to back on random keys;
    /// every op takes effect at a random point after its invoke and responds after a
    /// random delay; `unknown_percent`% of the ops time out (half of those take effect).
    fn realistic_history(
        rng: &mut TestRng,
        ops: usize,
        keys: u64,
        clients: u64,
        unknown_percent: u64,
    ) -> Vec<Operation> {
        realistic_history_with_windows(rng, ops, keys, clients, unknown_percent, 0)
    }

    /// [`realistic_history`], where in addition `maybe_percent`% of the writes (among
    /// those that did not get an unknown outcome) time out with a bounded window: the
    /// client gives up after [`CLIENT_TIMEOUT`] ticks and moves on, and the write's
    /// window closes a little later (as when the client's next write returns). Half of
    /// them take effect, at a random point of their window.
    fn realistic_history_with_windows(
        rng: &mut TestRng,
        ops: usize,
        keys: u64,
        clients: u64,
        unknown_percent: u64,
        maybe_percent: u64,
    ) -> Vec<Operation> {
        let mut history = Vec::with_capacity(ops);
        let mut points = Vec::with_capacity(ops);
        let mut clock = vec![0u64; clients as usize];
        let mut next_id = 0;
        for n in 0..ops {
            let client = (n as u64) % clients;
            let invoke = clock[client as usize] + 1 + rng.below(50);
            let point = invoke + 1 + rng.below(100);
            let ret = point + 1 + rng.below(100);
            let key = rng.below(keys);
            let op = random_op(rng, &mut next_id);
            if rng.chance(unknown_percent) {
                points.push(rng.chance(50).then_some(point));
                history.push(unknown(client, key, op, invoke));
                // The client gives up after a timeout and moves on.
                clock[client as usize] = invoke + 1_000;
            } else if maybe_percent > 0 && op != KvOp::Get && rng.chance(maybe_percent) {
                let end = invoke + CLIENT_TIMEOUT + 1 + rng.below(200);
                let point = invoke + rng.below(end - invoke + 1);
                points.push(rng.chance(50).then_some(point));
                history.push(maybe(client, key, op, invoke, end));
                clock[client as usize] = invoke + CLIENT_TIMEOUT;
            } else {
                points.push(Some(point));
                history.push(ok(client, key, op, invoke, ret, KvOutput::Unit));
                clock[client as usize] = ret;
            }
        }
        let written: Vec<u64> = (1..=next_id).collect();
        execute(rng, &mut history, &points, &written);
        history
    }

    /// How long a client waits for a response before it moves on, in
    /// [`realistic_history_with_windows`]: about two op lengths.
    const CLIENT_TIMEOUT: u64 = 300;

    /// The load the simulator produces: 2,000 ops over 20 keys (about 100 per key) from 8
    /// clients. Each key needs fewer than 600 search steps (measured); the budget of
    /// 2,000 per key, 20 per op, leaves a wide margin and still catches a blow-up.
    #[test]
    fn realistic_histories_check_fast() {
        const OPS: usize = 2_000;
        const RUNS: u64 = 20;
        const BUDGET_PER_KEY: u64 = 2_000;
        for (unknown_percent, label) in [(0, "no timeouts"), (2, "2% timeouts")] {
            let histories: Vec<Vec<Operation>> = (0..RUNS)
                .map(|seed| {
                    realistic_history(&mut TestRng(seed * 31 + 7), OPS, 20, 8, unknown_percent)
                })
                .collect();
            let start = Instant::now();
            for history in &histories {
                assert_eq!(check(history, BUDGET_PER_KEY), CheckResult::Linearizable);
            }
            let elapsed = start.elapsed();
            let ops = OPS as f64 * RUNS as f64;
            eprintln!(
                "performance ({label}): {RUNS} histories of {OPS} ops over 20 keys, 8 clients: \
                 {:.2} ms per history, {:.0} ops/s",
                elapsed.as_secs_f64() * 1e3 / RUNS as f64,
                ops / elapsed.as_secs_f64()
            );
        }
    }

    /// The motivating load: 2,000 ops over 5 keys (about 400 per key) from 8 clients,
    /// where 15% of the writes time out with a window that closes a few ops later
    /// ([`Outcome::MaybeBefore`]) and 2% of the ops time out for good
    /// ([`Outcome::Unknown`]). Every history must pass within 2,000,000 steps per key.
    #[test]
    fn histories_with_maybe_before_writes_check_fast() {
        const OPS: usize = 2_000;
        const KEYS: u64 = 5;
        const RUNS: u64 = 20;
        const BUDGET_PER_KEY: u64 = 2_000_000;
        let histories: Vec<Vec<Operation>> = (0..RUNS)
            .map(|seed| {
                realistic_history_with_windows(&mut TestRng(seed * 17 + 3), OPS, KEYS, 8, 2, 15)
            })
            .collect();
        let start = Instant::now();
        let mut most_steps = 0;
        for history in &histories {
            let (result, steps) = check_counting_steps(history, BUDGET_PER_KEY);
            assert_eq!(result, CheckResult::Linearizable);
            most_steps = most_steps.max(steps);
        }
        let elapsed = start.elapsed();
        let count = |pred: &dyn Fn(&Operation) -> bool| {
            histories.iter().flatten().filter(|op| pred(op)).count() as f64 / RUNS as f64
        };
        let maybe = count(&|op| matches!(op.outcome, Outcome::MaybeBefore { .. }));
        let unknown = count(&|op| op.outcome == Outcome::Unknown && op.op != KvOp::Get);
        eprintln!(
            "performance (maybe-before writes): {RUNS} histories of {OPS} ops over {KEYS} keys, \
             8 clients, on average {maybe:.0} maybe-before and {unknown:.0} unknown writes: \
             at most {most_steps} steps per key, {:.2} ms per history, {:.0} ops/s",
            elapsed.as_secs_f64() * 1e3 / RUNS as f64,
            (OPS as f64 * RUNS as f64) / elapsed.as_secs_f64()
        );
    }

    /// Harder than the simulator's usual load: every client on a handful of keys, more
    /// timeouts. Run with `--ignored` to see the figures.
    #[test]
    #[ignore = "a stress measurement, not a check"]
    fn contended_histories_stress() {
        // (ops, keys, clients, % timeouts)
        for (ops, keys, clients, unknown_percent) in [
            (2_000, 10, 10, 10),
            (2_000, 10, 10, 25),
            (200, 1, 10, 5),
            (200, 1, 10, 20),
            (2_000, 2, 8, 2),
            (2_000, 2, 8, 5),
            (2_000, 1, 8, 5),
            (2_000, 1, 16, 0),
            (2_000, 1, 16, 5),
            (200, 1, 16, 5),
            (2_000, 5, 16, 10),
        ] {
            let (mut pass, mut inconclusive) = (0, 0);
            let start = Instant::now();
            for seed in 0..20 {
                let history =
                    realistic_history(&mut TestRng(seed), ops, keys, clients, unknown_percent);
                match check(&history, 10_000_000) {
                    CheckResult::Linearizable => pass += 1,
                    CheckResult::Inconclusive { .. } => inconclusive += 1,
                    other => panic!("a correct history failed: {other:?}"),
                }
            }
            eprintln!(
                "stress: {ops} ops, {keys} keys, {clients} clients, {unknown_percent}% timeouts: \
                 {pass} pass, {inconclusive} inconclusive, {:.2} ms per history",
                start.elapsed().as_secs_f64() * 1e3 / 20.0
            );
        }
    }

    #[test]
    fn a_perturbed_realistic_history_fails() {
        let mut rng = TestRng(99);
        let mut history = realistic_history(&mut rng, 2_000, 20, 8, 2);
        // Make the last completed read of some key report a value never written.
        let last_get = history
            .iter()
            .rposition(|op| op.op == KvOp::Get && matches!(op.outcome, Outcome::Ok { .. }))
            .expect("a read");
        if let Outcome::Ok { output, .. } = &mut history[last_get].outcome {
            *output = KvOutput::Value(Some(vec![u64::MAX]));
        }
        match check(&history, 100_000) {
            CheckResult::NotLinearizable { key, ops, .. } => {
                assert_eq!(key, history[last_get].key);
                assert!(ops.contains(&last_get));
            }
            other => panic!("expected NotLinearizable, got {other:?}"),
        }
    }
}
