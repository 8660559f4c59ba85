//! The Wing–Gong–Lowe search with memoization, for the operations on one key.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

use super::fast_hash::FastBuild;
use super::{KvOp, KvOutput, Operation, Outcome, describe};

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
pub(super) enum KeyVerdict {
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
pub(super) struct Search {
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
    /// An empty search whose memo may hold about `memo_budget` bytes per key.
    pub(super) fn new(memo_budget: u64) -> Search {
        Search {
            memo_budget,
            ..Search::default()
        }
    }

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
    pub(super) fn run(
        &mut self,
        history: &[Operation],
        indices: &[usize],
        budget: u64,
    ) -> KeyVerdict {
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
