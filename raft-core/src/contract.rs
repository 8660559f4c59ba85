//! The ordering contract between the core and its driver, as code.
//!
//! [`Action::schedule`] says, for each action, how a driver may carry it out relative
//! to the others: at once, as a storage step the later actions wait for, as a job for
//! the state machine (which carries its jobs out in order, while the driver goes on),
//! or in the background. [`Action::may_go_ahead`] says which actions may pass a storage
//! step in flight.
//!
//! [`ContractCheck`] watches a driver keep that contract, and the core keep its side
//! (a read is answered only once the state machine has applied its index). The
//! shipped [`Node`](crate::node::Node) driver runs it in debug builds, and the
//! deterministic simulator runs it on every node, so both are checked against the
//! same description. A driver of your own can run it in its tests the same way: call
//! [`ContractCheck::polled`] for every action taken from the core, then
//! [`ContractCheck::started`] when carrying it out, and report completions.

use crate::action::Action;
use raft_proto::{HardState, LogId, LogIndex, Message, NodeId};
use std::collections::VecDeque;

/// How a driver may carry out an action relative to the others (see [`Action`]'s
/// ordering contract, of which this is the executable form).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    /// Done at once, in order: a send, a read's answer.
    Now,
    /// A storage step ([`Action::Persist`], [`Action::PurgeLog`]): later actions wait
    /// until it is durable, except those [`Action::may_go_ahead`] lets pass.
    Storage,
    /// A job for the state machine ([`Action::Apply`], the capture of
    /// [`Action::BuildSnapshot`], [`Action::WriteSnapshotChunk`]): the state machine
    /// carries its jobs out one at a time in the order given, and later actions do not
    /// wait for it. The core hears back through [`Raft::applied`](crate::Raft::applied)
    /// and [`Raft::snapshot_built`](crate::Raft::snapshot_built), whenever that is.
    StateMachine,
    /// A job for the state machine that later actions also wait for
    /// ([`Action::InstallSnapshot`]: in order behind the jobs before it, and durable,
    /// with the log fixed behind it, before anything after it).
    StateMachineThenWait,
    /// Independent work that may finish at any time, in any order
    /// ([`Action::ReadSnapshotChunk`]).
    Background,
}

impl Schedule {
    /// Whether later actions wait for this one to finish (apart from the sends that
    /// may go ahead).
    pub fn later_actions_wait(self) -> bool {
        matches!(self, Schedule::Storage | Schedule::StateMachineThenWait)
    }

    /// Whether it is a job for the state machine, carried out in order with the others.
    pub fn is_state_machine_job(self) -> bool {
        matches!(
            self,
            Schedule::StateMachine | Schedule::StateMachineThenWait
        )
    }
}

impl Action {
    /// How a driver may carry this action out relative to the others.
    pub fn schedule(&self) -> Schedule {
        match self {
            Action::Send { .. } | Action::ReadReady { .. } | Action::ReadFailed { .. } => {
                Schedule::Now
            }
            Action::Persist(_) | Action::PurgeLog { .. } => Schedule::Storage,
            Action::Apply(_) | Action::BuildSnapshot { .. } | Action::WriteSnapshotChunk { .. } => {
                Schedule::StateMachine
            }
            Action::InstallSnapshot { .. } => Schedule::StateMachineThenWait,
            Action::ReadSnapshotChunk { .. } => Schedule::Background,
        }
    }
}

/// A driver or core that broke the ordering contract: what it did.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("ordering contract broken: {0}")]
pub struct ContractViolation(pub String);

/// A `Persist` taken from the core and not yet durable.
#[derive(Debug, Clone)]
struct PendingWrite {
    seq: u64,
    last: Option<LogId>,
    hard_state: Option<HardState>,
    truncate_from: Option<LogIndex>,
    /// Started as (part of) the storage step in flight.
    writing: bool,
}

impl PendingWrite {
    /// Whether the write `started` holds this one (merged writes hold each part's last
    /// entry, hard state and a truncation at least as low).
    fn held_by(&self, started: &crate::action::Persist) -> bool {
        let last = started.entries.last().map(|e| e.log_id);
        let empty =
            self.last.is_none() && self.hard_state.is_none() && self.truncate_from.is_none();
        !empty
            && self.last.is_none_or(|l| Some(l) == last)
            && self
                .hard_state
                .is_none_or(|h| Some(h) == started.hard_state)
            && self
                .truncate_from
                .is_none_or(|t| started.truncate_from.is_some_and(|s| s <= t))
    }
}

/// What identifies a leader's append among the others taken from the core.
type AppendKey = (NodeId, u64, LogId, usize, LogIndex, u64);

fn append_key(to: NodeId, message: &Message) -> Option<AppendKey> {
    match message {
        Message::AppendEntries(m) => Some((
            to,
            m.term.0,
            m.prev_log_id,
            m.entries.len(),
            m.leader_commit,
            m.round,
        )),
        _ => None,
    }
}

/// Watches one node's driver carry out the core's actions (see the module docs).
///
/// What it checks:
/// - no action starts before every `Persist` taken before it is durable, except a
///   leader's append, which waits only for writes of a term or vote
///   ([`Action::may_go_ahead`]);
/// - nothing but such an append starts while a storage step is in flight, and one
///   storage step runs at a time;
/// - the actions other than appends and writes start in the order taken;
/// - the state machine's jobs come in log order: each `Apply` continues from the last
///   index handed to it, a snapshot is built at that index;
/// - a `ReadReady` is carried out only once the state machine has applied its index
///   (as reported with [`ContractCheck::applied`] or an install).
#[derive(Debug, Clone)]
pub struct ContractCheck {
    seq: u64,
    writes: VecDeque<PendingWrite>,
    /// Appends taken and not yet sent.
    appends: Vec<(u64, AppendKey)>,
    /// Every other action taken and not yet started, in order: its number and kind.
    others: VecDeque<(u64, &'static str)>,
    /// The storage step in flight, and whether it writes a term or vote.
    in_flight: Option<bool>,
    /// The last index handed to the state machine (applies and installs).
    handed: LogIndex,
    /// What the state machine has applied, as reported.
    machine_applied: LogIndex,
}

fn kind(action: &Action) -> &'static str {
    match action {
        Action::Send { .. } => "Send",
        Action::Persist(_) => "Persist",
        Action::Apply(_) => "Apply",
        Action::ReadReady { .. } => "ReadReady",
        Action::ReadFailed { .. } => "ReadFailed",
        Action::BuildSnapshot { .. } => "BuildSnapshot",
        Action::PurgeLog { .. } => "PurgeLog",
        Action::ReadSnapshotChunk { .. } => "ReadSnapshotChunk",
        Action::WriteSnapshotChunk { .. } => "WriteSnapshotChunk",
        Action::InstallSnapshot { .. } => "InstallSnapshot",
    }
}

impl ContractCheck {
    /// A check for a node (re)started with its state machine at `applied`.
    pub fn new(applied: LogIndex) -> ContractCheck {
        ContractCheck {
            seq: 0,
            writes: VecDeque::new(),
            appends: Vec::new(),
            others: VecDeque::new(),
            in_flight: None,
            handed: applied,
            machine_applied: applied,
        }
    }

    /// The driver took `action` from [`Raft::poll_action`](crate::Raft::poll_action).
    pub fn polled(&mut self, action: &Action) {
        self.seq += 1;
        let seq = self.seq;
        match action {
            Action::Persist(p) => self.writes.push_back(PendingWrite {
                seq,
                last: p.entries.last().map(|e| e.log_id),
                hard_state: p.hard_state,
                truncate_from: p.truncate_from,
                writing: false,
            }),
            Action::Send { to, message } if append_key(*to, message).is_some() => {
                if let Some(key) = append_key(*to, message) {
                    self.appends.push((seq, key));
                }
            }
            other => self.others.push_back((seq, kind(other))),
        }
    }

    /// The driver starts carrying out `action`: sends it, starts the write, hands it
    /// to the state machine. A `Persist` may be several taken from the core, merged
    /// as [`Action::enqueue`] does.
    pub fn started(&mut self, action: &Action) -> Result<(), ContractViolation> {
        let name = kind(action);
        let seq = match action {
            Action::Persist(p) => {
                let Some(k) = self.writes.iter().rposition(|w| w.held_by(p)) else {
                    return Err(ContractViolation(format!(
                        "a write of {:?} (hard state {:?}) that matches no Persist taken from the core",
                        p.entries.last().map(|e| e.log_id),
                        p.hard_state
                    )));
                };
                if self.writes.iter().take(k + 1).any(|w| w.writing) {
                    return Err(ContractViolation(
                        "a Persist started twice, or two writes at once".into(),
                    ));
                }
                if let Some(w) = self.writes.front()
                    && self.in_flight.is_some()
                {
                    return Err(ContractViolation(format!(
                        "a write of {:?} started while a storage step is in flight",
                        w.last
                    )));
                }
                self.writes
                    .iter_mut()
                    .take(k + 1)
                    .for_each(|w| w.writing = true);
                self.writes[0].seq
            }
            Action::Send { to, message } if append_key(*to, message).is_some() => {
                let key = append_key(*to, message);
                let Some(pos) = self.appends.iter().position(|(_, k)| Some(*k) == key) else {
                    return Err(ContractViolation(format!(
                        "an append to {to} that was not taken from the core"
                    )));
                };
                let (seq, _) = self.appends.remove(pos);
                if self.in_flight == Some(true) {
                    return Err(ContractViolation(format!(
                        "an append to {to} sent while a term or vote is being written"
                    )));
                }
                if let Some(w) = self
                    .writes
                    .iter()
                    .find(|w| w.seq < seq && w.hard_state.is_some())
                {
                    return Err(ContractViolation(format!(
                        "an append to {to} sent before the term or vote {:?} taken before it is durable",
                        w.hard_state
                    )));
                }
                return Ok(());
            }
            _ => {
                let Some(&(seq, expected)) = self.others.front() else {
                    return Err(ContractViolation(format!(
                        "a {name} that was not taken from the core"
                    )));
                };
                if expected != name {
                    return Err(ContractViolation(format!(
                        "a {name} started where the next action taken was a {expected}"
                    )));
                }
                seq
            }
        };
        if let Some(w) = self.writes.iter().find(|w| w.seq < seq && !w.writing) {
            return Err(ContractViolation(format!(
                "a {name} started before the write of {:?} (hard state {:?}) taken before it",
                w.last, w.hard_state
            )));
        }
        if self.in_flight.is_some() {
            return Err(ContractViolation(format!(
                "a {name} started while a storage step is in flight"
            )));
        }
        self.check_state_machine_order(action)?;
        if !matches!(action, Action::Persist(_)) {
            self.others.pop_front();
        }
        if action.schedule().later_actions_wait() {
            let hard_state = matches!(action, Action::Persist(p) if p.hard_state.is_some());
            self.in_flight = Some(hard_state);
        }
        Ok(())
    }

    fn check_state_machine_order(&mut self, action: &Action) -> Result<(), ContractViolation> {
        match action {
            Action::Apply(entries) => {
                let Some(first) = entries.first() else {
                    return Ok(());
                };
                if first.log_id.index != self.handed.next() {
                    return Err(ContractViolation(format!(
                        "an Apply from {:?} after the state machine was handed up to {:?}",
                        first.log_id.index, self.handed
                    )));
                }
                if let Some(last) = entries.last() {
                    self.handed = last.log_id.index;
                }
            }
            Action::BuildSnapshot { meta } if meta.last_log_id.index != self.handed => {
                return Err(ContractViolation(format!(
                    "a snapshot at {:?} asked of a state machine handed up to {:?}",
                    meta.last_log_id.index, self.handed
                )));
            }
            Action::InstallSnapshot { meta, .. } => {
                self.handed = self.handed.max(meta.last_log_id.index);
            }
            Action::ReadReady { index, .. } if *index > self.machine_applied => {
                return Err(ContractViolation(format!(
                    "a read at {index:?} answered with the state machine at {:?}",
                    self.machine_applied
                )));
            }
            _ => {}
        }
        Ok(())
    }

    /// The storage step in flight is durable (for an install: the state machine holds
    /// the snapshot and the log is fixed behind it).
    pub fn finished(&mut self, action_was_install: Option<LogIndex>) {
        self.in_flight = None;
        while self.writes.front().is_some_and(|w| w.writing) {
            self.writes.pop_front();
        }
        if let Some(index) = action_was_install {
            self.machine_applied = self.machine_applied.max(index);
        }
    }

    /// The state machine applied everything up to `index`.
    pub fn applied(&mut self, index: LogIndex) {
        self.machine_applied = self.machine_applied.max(index);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::action::Persist;
    use crate::error::ReadError;
    use raft_proto::{
        AppendEntries, AppendResponse, AppendResult, Entry, EntryPayload, ReadId, Term,
    };

    fn entry(index: u64) -> Entry {
        Entry {
            log_id: LogId::new(Term(1), LogIndex(index)),
            payload: EntryPayload::Blank,
        }
    }

    fn write(indexes: std::ops::RangeInclusive<u64>, vote: bool) -> Action {
        Action::Persist(Persist {
            hard_state: vote.then_some(HardState {
                term: Term(1),
                voted_for: Some(NodeId(2)),
            }),
            truncate_from: None,
            entries: indexes.map(entry).collect(),
        })
    }

    fn answer() -> Action {
        Action::Send {
            to: NodeId(2),
            message: Message::AppendResponse(AppendResponse {
                term: Term(1),
                round: 0,
                result: AppendResult::Success {
                    match_index: LogIndex(1),
                },
            }),
        }
    }

    fn append(round: u64) -> Action {
        Action::Send {
            to: NodeId(3),
            message: Message::AppendEntries(AppendEntries {
                term: Term(1),
                prev_log_id: LogId::default(),
                entries: Vec::new(),
                leader_commit: LogIndex::ZERO,
                round,
            }),
        }
    }

    fn take(check: &mut ContractCheck, actions: &[Action]) {
        actions.iter().for_each(|a| check.polled(a));
    }

    #[test]
    fn strictly_in_order_with_each_write_durable_first_keeps_the_contract() {
        let mut c = ContractCheck::new(LogIndex::ZERO);
        let actions = [write(1..=2, true), answer(), Action::Apply(vec![entry(1)])];
        take(&mut c, &actions);
        c.started(&actions[0]).expect("the write");
        c.finished(None);
        c.started(&actions[1]).expect("the answer, after the write");
        c.started(&actions[2]).expect("the apply");
    }

    #[test]
    fn an_answer_before_the_write_it_follows_is_durable_breaks_it() {
        // Paper Figure 2: respond to RPCs only after updating stable storage.
        let mut c = ContractCheck::new(LogIndex::ZERO);
        let actions = [write(1..=1, false), answer()];
        take(&mut c, &actions);
        c.started(&actions[0]).expect("the write");
        assert!(c.started(&actions[1]).is_err(), "the write is in flight");
        let mut c = ContractCheck::new(LogIndex::ZERO);
        take(&mut c, &actions);
        assert!(c.started(&actions[1]).is_err(), "the write has not started");
    }

    #[test]
    fn an_append_may_pass_a_log_write_but_not_a_vote() {
        let mut c = ContractCheck::new(LogIndex::ZERO);
        let actions = [write(1..=1, false), append(1)];
        take(&mut c, &actions);
        c.started(&actions[0]).expect("the write");
        c.started(&actions[1])
            .expect("an append passes a log write");
        let mut c = ContractCheck::new(LogIndex::ZERO);
        let actions = [write(1..=1, true), append(1)];
        take(&mut c, &actions);
        c.started(&actions[0]).expect("the write");
        assert!(c.started(&actions[1]).is_err(), "not a vote in flight");
    }

    #[test]
    fn merged_writes_are_one_write_and_the_answers_between_wait_for_it() {
        let mut c = ContractCheck::new(LogIndex::ZERO);
        let actions = [write(1..=1, false), answer(), write(2..=3, false)];
        take(&mut c, &actions);
        c.started(&write(1..=3, false))
            .expect("both writes, merged");
        assert!(c.started(&actions[1]).is_err(), "in flight");
        c.finished(None);
        c.started(&actions[1]).expect("after the merged write");
        assert!(
            c.started(&write(4..=4, false)).is_err(),
            "a write never taken from the core"
        );
    }

    #[test]
    fn a_read_is_answered_only_once_the_state_machine_applied_its_index() {
        // Dissertation §6.4 step 4.
        let mut c = ContractCheck::new(LogIndex::ZERO);
        let read = Action::ReadReady {
            id: ReadId(1),
            index: LogIndex(2),
        };
        let actions = [Action::Apply(vec![entry(1), entry(2)]), read.clone(), read];
        take(&mut c, &actions);
        c.started(&actions[0]).expect("handed to the state machine");
        assert!(c.started(&actions[1]).is_err(), "handed is not applied");
        c.applied(LogIndex(2));
        c.started(&actions[2]).expect("applied");
    }

    #[test]
    fn the_state_machine_gets_its_jobs_in_log_order() {
        let mut c = ContractCheck::new(LogIndex(1));
        let actions = [Action::Apply(vec![entry(3)])];
        take(&mut c, &actions);
        assert!(c.started(&actions[0]).is_err(), "index 2 was skipped");
        let mut c = ContractCheck::new(LogIndex::ZERO);
        let failed = Action::ReadFailed {
            id: ReadId(1),
            error: ReadError::Stopped,
        };
        take(&mut c, &[answer(), failed.clone()]);
        assert!(
            c.started(&failed).is_err(),
            "started before the send taken first"
        );
    }
}
