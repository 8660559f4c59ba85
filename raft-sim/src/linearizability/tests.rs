//! The checker's tests: hand-written histories, each checked by both the search and
//! the brute-force reference, and randomized cross-checks between the two.

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
fn execute(rng: &mut TestRng, history: &mut [Operation], points: &[Option<u64>], written: &[u64]) {
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
            .map(|seed| realistic_history(&mut TestRng(seed * 31 + 7), OPS, 20, 8, unknown_percent))
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
