//! The reference checker: an exhaustive search over every order of small histories,
//! sharing nothing with the Wing–Gong–Lowe search but the model, to cross-check it.

use super::{CheckResult, Operation, Outcome, group_by_key, malformed};

/// The most operations on one key that [`check_brute_force`] will search: keys with more
/// come back [`CheckResult::Inconclusive`] with `steps: 0`.
pub const BRUTE_FORCE_MAX_OPS_PER_KEY: usize = 10;

/// Exhaustive reference checker for small histories (all orders consistent with real time),
/// used to cross-check `check`. Panics or returns Inconclusive above ~10 ops per key is fine;
/// document the limit.
///
/// It shares nothing with [`check`](super::check) but the grouping by key and the malformed-input rule:
/// for each key and each subset of its [`Outcome::MaybeBefore`] operations taken to have
/// never happened, it tries every order of *all* the other operations (unknown and
/// maybe-before ones included, which accept any output) in which no operation comes
/// after one that returned (or whose window closed) strictly before its invoke, running
/// [`KvOp::apply`](super::KvOp::apply) on real values. Keys with more than [`BRUTE_FORCE_MAX_OPS_PER_KEY`]
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
