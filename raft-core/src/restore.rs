//! What a node restores from storage at start-up, and how it decides that from what its
//! two stores hold ([`Restore::plan`]).
//!
//! The log store and the state machine are written separately, so a crash, a power
//! cut or a damaged file can leave them out of step. The planner reconciles them
//! without ever giving up the two things that make the node's answers to its peers
//! true: its hard state (term and vote) and its log.
//!
//! | what storage holds | what the node does |
//! |---|---|
//! | the state machine reached at least the log's start | resumes normally |
//! | a snapshot the log does not hold (cut between an install and the log's reset) | resets the log to start after the snapshot |
//! | the newest snapshot's data is damaged, an older one plus the log still reach the state | resumes from the older snapshot |
//! | no intact snapshot reaches the log's start, but the state does | resumes; the log store's record of the snapshot it continues gives the configuration |
//! | the state machine is behind the log's start (its snapshot was lost) | **state lost**: keeps its log and vote, votes and stores entries as a follower (leads only until another voter can take over), applies nothing, and asks the leader for a snapshot |

use raft_proto::{Entry, HardState, LogId, LogIndex, Membership, SnapshotMeta};

/// What a node restores from durable storage when it starts.
#[derive(Clone, Debug, Default)]
pub struct Restore {
    /// The last persisted term and vote.
    pub hard_state: HardState,
    /// The newest durable snapshot; for a brand-new cluster, an empty snapshot at
    /// [`LogId::ZERO`] holding the initial membership. An `id` of 0 on a snapshot
    /// past [`LogId::ZERO`] means its data is gone and only its metadata is known:
    /// the node never sends it, and builds a new one before a follower needs one.
    pub snapshot: SnapshotMeta,
    /// The last entry purged from the stored log (from [`Action::PurgeLog`](crate::Action::PurgeLog),
    /// or the snapshot's last entry after [`Action::InstallSnapshot`](crate::Action::InstallSnapshot));
    /// [`LogId::ZERO`] when nothing was purged.
    pub purged: LogId,
    /// The stored entries after `purged`, in order.
    pub entries: Vec<Entry>,
    /// The last index the state machine has durably applied.
    pub applied: LogIndex,
    /// The state machine does not hold the state the log continues (its snapshot was
    /// damaged and could not be rebuilt): the node applies nothing and serves no read
    /// until a leader sends it a snapshot. `snapshot` then says where the log starts
    /// and the newest configuration known; `applied` is ignored.
    pub state_lost: bool,
}

impl Restore {
    /// The state of a node of a brand-new cluster whose voters are `membership`:
    /// every founding member must start from the same membership.
    pub fn bootstrap(membership: Membership) -> Restore {
        Restore {
            snapshot: SnapshotMeta {
                last_log_id: LogId::ZERO,
                membership,
                id: 0,
            },
            ..Restore::default()
        }
    }

    /// Decides how a node resumes from what its stores hold (see the module docs).
    /// `initial_members` are the founding members, for a node whose storage is empty.
    pub fn plan(stored: Stored, initial_members: Option<&Membership>) -> Plan {
        let Stored {
            hard_state,
            mut purged,
            mut entries,
            log_base,
            applied,
            snapshot,
        } = stored;
        let mut notes = Vec::new();
        let snapshot = snapshot.unwrap_or_else(|| SnapshotMeta {
            last_log_id: LogId::ZERO,
            membership: initial_members.cloned().unwrap_or_default(),
            id: 0,
        });
        let holds = |purged: LogId, entries: &[Entry], id: LogId| {
            id == purged
                || id
                    .index
                    .0
                    .checked_sub(purged.index.0 + 1)
                    .and_then(|i| entries.get(usize::try_from(i).ok()?))
                    .is_some_and(|e| e.log_id == id)
        };
        // A cut between a snapshot install and the log's reset: the snapshot (whose
        // state the state machine holds) supersedes the log.
        let mut reset_log = None;
        let snap = snapshot.last_log_id;
        if snap.index > purged.index && !holds(purged, &entries, snap) {
            notes.push(format!(
                "the log (purged up to {purged:?}) does not hold the installed snapshot's last entry {snap:?}: resetting it to start after the snapshot"
            ));
            reset_log = Some(snapshot.clone());
            purged = snap;
            entries.clear();
        }
        let mut restore = Restore {
            hard_state,
            snapshot,
            purged,
            entries,
            applied: applied.index,
            state_lost: false,
        };
        if restore.applied >= purged.index && restore.snapshot.last_log_id.index >= purged.index {
            return Plan {
                restore,
                reset_log,
                notes,
            };
        }
        // The state machine's snapshot does not reach the log's start (its newer one was
        // lost). The snapshot the log store recorded with its last purge still says
        // where the log starts and the configuration then.
        let base = log_base
            .filter(|b| {
                b.last_log_id.index >= purged.index
                    && holds(purged, &restore.entries, b.last_log_id)
            })
            .map(|b| SnapshotMeta { id: 0, ..b });
        match base {
            Some(base) if restore.applied >= base.last_log_id.index => {
                notes.push(format!(
                    "the state machine has no intact snapshot at or after the log's start {purged:?}, but its state (applied {applied:?}) is intact: resuming; a new snapshot is built before any follower needs one"
                ));
                restore.snapshot = base;
            }
            base => {
                let base = base.unwrap_or_else(|| {
                    notes.push(format!(
                        "the configuration as of the log's start {purged:?} is unknown (a log written before this was recorded): this node does not campaign until a leader sends a configuration or a snapshot"
                    ));
                    SnapshotMeta {
                        last_log_id: purged,
                        membership: Membership::default(),
                        id: 0,
                    }
                });
                notes.push(format!(
                    "the state machine's state (applied {applied:?}) does not reach the log's start {purged:?}: its snapshot was lost. Keeping the log and the vote; applying nothing until the leader sends a snapshot"
                ));
                restore.applied = base.last_log_id.index;
                restore.snapshot = base;
                restore.state_lost = true;
            }
        }
        Plan {
            restore,
            reset_log,
            notes,
        }
    }
}

/// What the two stores held at start-up.
#[derive(Clone, Debug, Default)]
pub struct Stored {
    /// The log store's term and vote.
    pub hard_state: HardState,
    /// The log store's last purged entry.
    pub purged: LogId,
    /// The log store's entries after `purged`.
    pub entries: Vec<Entry>,
    /// The snapshot the log store recorded with its last purge or reset.
    pub log_base: Option<SnapshotMeta>,
    /// The state machine's last applied entry.
    pub applied: LogId,
    /// The state machine's newest intact snapshot, at or behind `applied`.
    pub snapshot: Option<SnapshotMeta>,
}

/// How a node resumes: the result of [`Restore::plan`].
#[derive(Clone, Debug)]
pub struct Plan {
    /// What to give [`Raft::new`](crate::Raft::new).
    pub restore: Restore,
    /// Reset the stored log to start after this snapshot before starting (durably).
    pub reset_log: Option<SnapshotMeta>,
    /// What was found wrong and what the node does about it, for the operator's log.
    pub notes: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft_proto::{EntryPayload, NodeId, Term};

    fn entries(term: u64, from: u64, to: u64) -> Vec<Entry> {
        (from..=to)
            .map(|i| Entry {
                log_id: LogId::new(Term(term), LogIndex(i)),
                payload: EntryPayload::Blank,
            })
            .collect()
    }

    fn snap(index: u64, voters: &[u64]) -> SnapshotMeta {
        SnapshotMeta {
            last_log_id: LogId::new(Term(1), LogIndex(index)),
            membership: Membership::voters(voters.iter().map(|&v| NodeId(v))),
            id: 0x5000 + index,
        }
    }

    /// A log purged up to 10, holding 11..=30, whose store recorded snapshot 12 as its
    /// base; the state machine as given.
    fn stored(applied: u64, snapshot: Option<SnapshotMeta>) -> Stored {
        Stored {
            hard_state: HardState {
                term: Term(1),
                voted_for: Some(NodeId(1)),
            },
            purged: LogId::new(Term(1), LogIndex(10)),
            entries: entries(1, 11, 30),
            log_base: Some(snap(12, &[1, 2, 3])),
            applied: LogId::new(Term(1), LogIndex(applied)),
            snapshot,
        }
    }

    #[test]
    fn an_intact_state_resumes_normally() {
        let plan = Restore::plan(stored(20, Some(snap(12, &[1, 2, 3]))), None);
        assert!(!plan.restore.state_lost && plan.reset_log.is_none());
        assert!(plan.notes.is_empty(), "{:?}", plan.notes);
        assert_eq!(plan.restore.applied, LogIndex(20));
        assert_eq!(plan.restore.snapshot.id, 0x5000 + 12, "servable");
    }

    #[test]
    fn a_snapshot_the_log_does_not_hold_resets_the_log() {
        // Cut between an install (state at 40) and the log's reset.
        let plan = Restore::plan(stored(40, Some(snap(40, &[1, 2]))), None);
        assert_eq!(
            plan.reset_log.map(|m| m.last_log_id.index),
            Some(LogIndex(40))
        );
        assert!(plan.restore.entries.is_empty() && !plan.restore.state_lost);
        assert_eq!(plan.restore.purged.index, LogIndex(40));
    }

    #[test]
    fn an_older_snapshot_the_log_reaches_back_to_is_used() {
        let mut s = stored(8, Some(snap(8, &[1, 2, 3])));
        s.purged = LogId::new(Term(1), LogIndex(5));
        s.entries = entries(1, 6, 30);
        let plan = Restore::plan(s, None);
        assert!(!plan.restore.state_lost);
        assert_eq!(plan.restore.snapshot.last_log_id.index, LogIndex(8));
    }

    #[test]
    fn an_intact_state_without_a_snapshot_at_the_log_start_uses_the_log_base() {
        // The newest snapshot (12) was lost, the state is intact at 20.
        let plan = Restore::plan(stored(20, Some(snap(4, &[9]))), None);
        assert!(!plan.restore.state_lost, "{:?}", plan.notes);
        assert_eq!(plan.restore.snapshot.last_log_id.index, LogIndex(12));
        assert_eq!(
            plan.restore.snapshot.id, 0,
            "not servable: rebuilt when needed"
        );
        assert_eq!(
            plan.restore.snapshot.membership,
            Membership::voters([NodeId(1), NodeId(2), NodeId(3)])
        );
        assert_eq!(plan.restore.applied, LogIndex(20));
    }

    #[test]
    fn a_state_behind_the_log_start_is_lost_but_the_log_and_vote_are_kept() {
        for machine_snapshot in [None, Some(snap(4, &[9]))] {
            let plan = Restore::plan(stored(4, machine_snapshot), None);
            let r = &plan.restore;
            assert!(r.state_lost);
            assert_eq!(r.entries.len(), 20, "the log is kept");
            assert_eq!(r.hard_state.voted_for, Some(NodeId(1)), "the vote is kept");
            assert_eq!(
                r.snapshot.last_log_id.index,
                LogIndex(12),
                "from the log base"
            );
            assert_eq!(r.snapshot.membership.voters.len(), 3);
            assert!(plan.notes.iter().any(|n| n.contains("snapshot was lost")));
            let raft = crate::Raft::new(crate::Config::new(NodeId(1)), plan.restore.clone());
            assert!(raft.is_ok_and(|r| r.status().state_lost));
        }
    }

    #[test]
    fn without_a_log_base_the_configuration_is_unknown_and_the_node_does_not_campaign() {
        let mut s = stored(0, None);
        s.log_base = None;
        let plan = Restore::plan(s, Some(&Membership::voters([NodeId(1)])));
        assert!(plan.restore.state_lost);
        assert!(plan.restore.snapshot.membership.voters.is_empty());
        assert!(plan.notes.iter().any(|n| n.contains("unknown")));
    }

    #[test]
    fn an_empty_store_bootstraps_from_the_initial_members() {
        let members = Membership::voters([NodeId(1), NodeId(2)]);
        let plan = Restore::plan(Stored::default(), Some(&members));
        assert!(!plan.restore.state_lost && plan.notes.is_empty());
        assert_eq!(plan.restore.snapshot.membership, members);
    }
}
