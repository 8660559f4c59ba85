//! The end of a run: acknowledged writes held everywhere, and the client history
//! checked for linearizability.

use crate::checkers::{Check, Violation};
use crate::linearizability::{self, CheckResult, KvOp, Operation, Outcome};
use std::fmt::Write as _;

use super::World;

impl World {
    /// The history the linearizability check sees: definitely failed operations and
    /// reads of unknown outcome (which have no effect) are left out.
    pub(super) fn checked_history(&self) -> Vec<Operation> {
        self.history
            .iter()
            .zip(&self.op_state)
            .filter(|(op, st)| {
                let read_without_answer =
                    op.op == KvOp::Get && !matches!(op.outcome, Outcome::Ok { .. });
                !(st.failed || read_without_answer)
            })
            .map(|(op, _)| op.clone())
            .collect()
    }

    pub(super) fn finish(&mut self) -> Check {
        let config = self
            .stable_leader()
            .map(|l| l.membership().clone())
            .unwrap_or_default();
        self.checkers
            .acked_writes
            .check_everywhere(&self.nodes, &config)?;
        let history = self.checked_history();
        match linearizability::check(&history, self.lin_budget) {
            CheckResult::Linearizable => Ok(()),
            CheckResult::NotLinearizable { key, ops, detail } => {
                let mut text = format!("key {key}: {detail}; operations:");
                for &i in ops.iter().take(40) {
                    let _ = write!(text, "\n    {:?}", history[i]);
                }
                Err(Violation {
                    property: "Linearizability",
                    detail: text,
                })
            }
            CheckResult::Inconclusive {
                key,
                steps,
                memo_bytes,
            } => {
                let on_key: Vec<&Operation> = history.iter().filter(|op| op.key == key).collect();
                let unknown = on_key
                    .iter()
                    .filter(|op| op.outcome == Outcome::Unknown)
                    .count();
                let bounded = on_key
                    .iter()
                    .filter(|op| matches!(op.outcome, Outcome::MaybeBefore { .. }))
                    .count();
                Err(Violation {
                    property: "Linearizability (inconclusive)",
                    detail: format!(
                        "the search for key {key} ({} operations, {unknown} of unknown outcome, {bounded} \
                         that took effect before a known time or never) gave up after {steps} \
                         steps, its memo at {memo_bytes} bytes: neither pass nor fail",
                        on_key.len()
                    ),
                })
            }
        }
    }
}
