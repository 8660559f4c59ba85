//! The [`Raft`] state machine: its state, its inputs, its role transitions and its
//! action queue. The handlers for each kind of message live in sibling modules.

use crate::action::{Action, Persist};
use crate::config::{Config, ReadMode};
use crate::error::{InitError, NotLeader, ProposeError, ReadError};
use crate::log::RaftLog;
use crate::progress::Progress;
use crate::read::ReadState;
use crate::restore::Restore;
use crate::rng::Rng;
use crate::snapshot::Incoming;
use raft_proto::{
    Bytes, Entry, EntryPayload, HardState, LogId, LogIndex, Membership, Message, NodeId, ReadId,
    Term,
};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// The role a node plays in its current term (paper §5.1, dissertation §9.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Answers leaders and candidates; campaigns after an election timeout.
    Follower,
    /// Runs a PreVote round before becoming a candidate; has not changed its term.
    PreCandidate,
    /// Campaigns in its own term.
    Candidate,
    /// Handles proposals and replicates the log.
    Leader,
}

/// A snapshot of a node's externally visible state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// The node's id.
    pub id: NodeId,
    /// Its role.
    pub role: Role,
    /// Its current term.
    pub term: Term,
    /// Whom it voted for in `term`.
    pub voted_for: Option<NodeId>,
    /// The leader it knows of in `term`.
    pub leader: Option<NodeId>,
    /// Its last log entry.
    pub last_log_id: LogId,
    /// Its commit index.
    pub committed: LogIndex,
    /// The state machine's acknowledged applied index.
    pub applied: LogIndex,
    /// The highest index durable in its storage.
    pub persisted: LogIndex,
    /// Its state machine lost its state and waits for a snapshot from a leader: it
    /// applies nothing and serves no read meanwhile.
    pub state_lost: bool,
}

/// Votes collected by a candidate or pre-candidate.
#[derive(Debug, Default)]
pub(crate) struct Votes {
    pub(crate) granted: BTreeSet<NodeId>,
    pub(crate) rejected: BTreeSet<NodeId>,
}

/// A leadership transfer in progress (dissertation §3.10).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Transfer {
    pub(crate) to: NodeId,
    pub(crate) elapsed: u32,
}

/// What only a leader has.
#[derive(Debug)]
pub(crate) struct LeaderState {
    /// One entry per other member of the configuration (voters and learners).
    pub(crate) progress: BTreeMap<NodeId, Progress>,
    pub(crate) heartbeat_elapsed: u32,
    /// Every follower gets an append (maybe empty) at the next flush.
    pub(crate) heartbeat_due: bool,
    /// The heartbeat round carried by every append; see [`ReadState`].
    pub(crate) round: u64,
    pub(crate) reads: ReadState,
    pub(crate) transfer: Option<Transfer>,
    /// Reusable buffer for the commit computation.
    pub(crate) scratch: Vec<LogIndex>,
    /// Payload bytes of the entries after the commit index (see
    /// [`Config::max_uncommitted_bytes`]).
    pub(crate) uncommitted_bytes: u64,
    /// Ticks since this node became leader (the lease's clock).
    pub(crate) ticks: u64,
    /// With lease reads: when each recent heartbeat round was opened, as
    /// `(round, ticks)`, oldest first; rounds too old to grant a lease are dropped.
    pub(crate) round_opened: VecDeque<(u64, u64)>,
    /// Rounds below this grant no lease (the clock skipped after they were sent).
    pub(crate) lease_from_round: u64,
    /// No lease for the rest of this term: a TimeoutNow was sent, and its target's
    /// election bypasses the voters' lease.
    pub(crate) lease_void: bool,
}

/// Role-specific state: follower code cannot reach a leader's progress table.
#[derive(Debug)]
pub(crate) enum RoleState {
    Follower,
    PreCandidate(Votes),
    Candidate(Votes),
    Leader(Box<LeaderState>),
}

/// The Raft consensus algorithm for one node, as a deterministic state machine with no
/// I/O, no clock and no threads.
///
/// # Methods, by family
///
/// - **Inputs** change state and queue actions: [`tick`](Raft::tick) (one logical clock
///   tick), [`step`](Raft::step) (a message from a peer),
///   [`propose`](Raft::propose), [`read_index`](Raft::read_index),
///   [`transfer_leader`](Raft::transfer_leader), and the two acknowledgements of work
///   the driver finished: [`persisted`](Raft::persisted) and [`applied`](Raft::applied).
/// - **Output**: [`poll_action`](Raft::poll_action) returns the next [`Action`]. After
///   every input, call it until it returns `None`, and carry the actions out in order
///   (see [`Action`] for the ordering contract).
/// - **Getters**: [`status`](Raft::status), [`log`](Raft::log),
///   [`membership`](Raft::membership), [`progress`](Raft::progress).
///
/// # Example: a single-node cluster
///
/// ```
/// use raft_core::{Action, Config, Raft, Restore};
/// use raft_proto::{Membership, NodeId};
///
/// let id = NodeId(1);
/// let mut raft = Raft::new(Config::new(id), Restore::bootstrap(Membership::voters([id])))?;
/// let mut applied = Vec::new();
/// for _ in 0..30 {
///     raft.tick();
///     if raft.status().leader == Some(id) && applied.is_empty() {
///         raft.propose("hello".into())?;
///     }
///     while let Some(action) = raft.poll_action() {
///         match action {
///             Action::Persist(p) => {
///                 // write p durably, then:
///                 if let Some(last) = p.entries.last() {
///                     raft.persisted(last.log_id);
///                 }
///             }
///             Action::Apply(entries) => {
///                 let last = entries.last().map(|e| e.log_id.index);
///                 applied.extend(entries);
///                 if let Some(last) = last {
///                     raft.applied(last);
///                 }
///             }
///             _ => {} // Send, ReadReady, ReadFailed: nothing in a one-node cluster
///         }
///     }
/// }
/// assert_eq!(applied.len(), 2); // the leader's blank entry, then "hello"
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Raft {
    pub(crate) id: NodeId,
    pub(crate) config: Config,
    rng: Rng,
    /// Current term and vote. The term never decreases; `voted_for` changes only from
    /// `None` within a term (one vote per term, paper §5.2).
    pub(crate) hard_state: HardState,
    /// The leader of `hard_state.term`, once known.
    pub(crate) leader: Option<NodeId>,
    pub(crate) role: RoleState,
    pub(crate) log: RaftLog,
    /// The configuration in effect: the newest one in the log (paper §6: a server
    /// uses a configuration as soon as it is in its log).
    pub(crate) membership: Membership,
    /// Ticks since the last election timeout reset (followers: since they last heard
    /// from the leader; leaders: since the last CheckQuorum).
    pub(crate) election_elapsed: u32,
    /// This term's randomized election timeout, in `[election_ticks, 2 * election_ticks)`.
    randomized_timeout: u32,
    /// Reads confirmed by a leader, waiting until `applied >= index`.
    pub(crate) ready_reads: Vec<(LogIndex, ReadId)>,
    /// The index of the snapshot the state machine is building, if any.
    pub(crate) snapshot_building: Option<LogIndex>,
    /// Payload bytes handed out for applying since the last snapshot was asked for.
    pub(crate) bytes_since_snapshot: u64,
    /// A snapshot being received from the leader.
    pub(crate) incoming: Option<Incoming>,
    /// While the state machine's state is lost: ticks since this node last asked its
    /// leader for a snapshot.
    pub(crate) snapshot_request_elapsed: u32,
    /// Ticks since this node started (saturating at the election timeout).
    pub(crate) ticks_since_start: u32,
    actions: VecDeque<Action>,
}

impl Raft {
    /// A node that resumes from `restore` (use [`Restore::bootstrap`] for a new
    /// cluster). It starts as a follower (paper §5.2).
    pub fn new(config: Config, restore: Restore) -> Result<Raft, InitError> {
        config.validate()?;
        let Restore {
            hard_state,
            mut snapshot,
            purged,
            entries,
            mut applied,
            state_lost,
        } = restore;
        if state_lost {
            // Nothing is applied: the log starts after a state this node lacks.
            applied = snapshot.last_log_id.index;
            snapshot.id = 0;
        }
        let mut expected = purged.index.next();
        let mut term = purged.term;
        for e in &entries {
            if e.log_id.index != expected {
                return Err(InitError::LogGap {
                    expected,
                    found: e.log_id.index,
                });
            }
            if e.log_id.term < term {
                return Err(InitError::TermsDecrease {
                    index: e.log_id.index,
                });
            }
            term = e.log_id.term;
            expected = expected.next();
        }
        if hard_state.term < term {
            return Err(InitError::TermBehindLog {
                hard_state: hard_state.term,
                log: term,
            });
        }
        let last = expected.prev();
        if applied > last {
            return Err(InitError::AppliedBeyondLog { applied, last });
        }
        if applied < snapshot.last_log_id.index {
            return Err(InitError::AppliedBehindSnapshot {
                applied,
                snapshot: snapshot.last_log_id.index,
            });
        }
        let snap = snapshot.last_log_id;
        let term_at_snapshot = if snap.index == purged.index {
            Some(purged.term)
        } else {
            entries
                .iter()
                .find(|e| e.log_id.index == snap.index)
                .map(|e| e.log_id.term)
        };
        if snap.index < purged.index || term_at_snapshot != Some(snap.term) {
            return Err(InitError::SnapshotNotInLog {
                snapshot: snap,
                purged,
                last,
            });
        }
        let log = RaftLog::restore(snapshot, purged, entries, applied, state_lost);
        let membership = log.latest_membership().1.clone();
        let mut raft = Raft {
            id: config.id,
            rng: Rng::new(config.rng_seed),
            config,
            hard_state,
            leader: None,
            role: RoleState::Follower,
            log,
            membership,
            election_elapsed: 0,
            randomized_timeout: 0,
            ready_reads: Vec::new(),
            snapshot_building: None,
            bytes_since_snapshot: 0,
            incoming: None,
            snapshot_request_elapsed: 0,
            ticks_since_start: 0,
            actions: VecDeque::new(),
        };
        if state_lost {
            tracing::warn!(node = %raft.id, log_starts_after = ?purged, "the state machine lost its state: voting and storing entries as usual, applying nothing until a leader sends a snapshot");
            // Ask the first leader heard from at once.
            raft.snapshot_request_elapsed = raft.config.election_ticks;
        }
        raft.reset_election_timer();
        raft.check_invariants();
        Ok(raft)
    }

    // ---------------------------------------------------------------- getters

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The externally visible state.
    pub fn status(&self) -> Status {
        Status {
            id: self.id,
            role: self.role(),
            term: self.hard_state.term,
            voted_for: self.hard_state.voted_for,
            leader: self.leader,
            last_log_id: self.log.last_log_id(),
            committed: self.log.committed(),
            applied: self.log.applied(),
            persisted: self.log.persisted(),
            state_lost: self.log.state_lost(),
        }
    }

    /// The current role.
    pub fn role(&self) -> Role {
        match self.role {
            RoleState::Follower => Role::Follower,
            RoleState::PreCandidate(_) => Role::PreCandidate,
            RoleState::Candidate(_) => Role::Candidate,
            RoleState::Leader(_) => Role::Leader,
        }
    }

    /// The current term.
    pub fn term(&self) -> Term {
        self.hard_state.term
    }

    /// The term and vote as they must be stored.
    pub fn hard_state(&self) -> HardState {
        self.hard_state
    }

    /// The log.
    pub fn log(&self) -> &RaftLog {
        &self.log
    }

    /// The configuration in effect.
    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// The configuration this node was created with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// On a leader, its replication progress for `peer`.
    pub fn progress(&self, peer: NodeId) -> Option<&Progress> {
        match &self.role {
            RoleState::Leader(l) => l.progress.get(&peer),
            _ => None,
        }
    }

    /// The error a non-leader returns.
    pub fn not_leader(&self) -> NotLeader {
        NotLeader {
            leader_hint: self.leader.filter(|&l| l != self.id),
        }
    }

    // ---------------------------------------------------------------- inputs

    /// Advances the logical clock by one tick: election timeouts, heartbeats,
    /// CheckQuorum and transfer deadlines are counted in ticks.
    pub fn tick(&mut self) {
        self.ticks_since_start = self
            .ticks_since_start
            .saturating_add(1)
            .min(self.config.election_ticks);
        if matches!(self.role, RoleState::Leader(_)) {
            self.tick_leader();
            self.hand_over_if_state_lost();
        } else {
            self.tick_election();
            self.tick_snapshot_request();
        }
        self.check_invariants();
    }

    /// Handles a message `from` a peer. Messages with a stale term are rejected or
    /// ignored (paper §5.1); a newer term turns any role into a follower.
    pub fn step(&mut self, from: NodeId, message: Message) {
        if from == self.id {
            tracing::warn!(node = %self.id, kind = message.kind(), "dropping a message from myself");
            return;
        }
        if let Some(term) = message.term()
            && !self.step_term(from, term, &message)
        {
            self.check_invariants();
            return;
        }
        // CheckQuorum: any message of this term from a follower shows it is alive,
        // whatever kind it is (an answer queued behind others still counts).
        if let RoleState::Leader(l) = &mut self.role
            && let Some(pr) = l.progress.get_mut(&from)
        {
            pr.recent_active = true;
        }
        match message {
            Message::VoteRequest(m) => self.handle_vote_request(from, m),
            Message::VoteResponse(m) => self.handle_vote_response(from, m),
            Message::AppendEntries(m) => self.handle_append(from, m),
            Message::AppendResponse(m) => self.handle_append_response(from, m),
            Message::TimeoutNow(_) => self.handle_timeout_now(from),
            Message::ReadIndexRequest(m) => self.handle_read_request(from, m),
            Message::ReadIndexResponse(m) => self.handle_read_response(m),
            Message::InstallSnapshot(m) => self.handle_install_snapshot(from, m),
            Message::InstallSnapshotResponse(m) => self.handle_snapshot_response(from, m),
            Message::SnapshotRequest(m) => self.handle_snapshot_request(from, m),
        }
        self.check_invariants();
    }

    /// Appends `command` to the leader's log and returns its id; the command is
    /// committed when an [`Action::Apply`] carries an entry with that id. Commands
    /// proposed between two [`poll_action`](Raft::poll_action) calls travel in one
    /// AppendEntries and one [`Persist`].
    pub fn propose(&mut self, command: Bytes) -> Result<LogId, ProposeError> {
        let RoleState::Leader(leader) = &self.role else {
            return Err(self.not_leader().into());
        };
        if let Some(t) = leader.transfer {
            return Err(ProposeError::TransferInProgress { to: t.to });
        }
        if self.log.state_lost() {
            return Err(ProposeError::StateLost);
        }
        let limit = self.config.max_uncommitted_bytes;
        if limit > 0
            && leader.uncommitted_bytes > 0
            && leader.uncommitted_bytes + command.len() as u64 > limit
        {
            return Err(ProposeError::Busy {
                uncommitted_bytes: leader.uncommitted_bytes,
            });
        }
        let id = self.append_as_leader(EntryPayload::Command(command));
        self.check_invariants();
        Ok(id)
    }

    /// Starts the linearizable read `id` (ReadIndex, dissertation §6.4). The answer is
    /// an [`Action::ReadReady`] once the read may be served from the state machine,
    /// or an [`Action::ReadFailed`]. A follower forwards the read to its leader.
    pub fn read_index(&mut self, id: ReadId) -> Result<(), ReadError> {
        let result = self.start_read(id);
        self.check_invariants();
        result
    }

    /// The driver made everything up to `up_to` durable (answers a [`Persist`]).
    pub fn persisted(&mut self, up_to: LogId) {
        if self.log.persisted_to(up_to) && matches!(self.role, RoleState::Leader(_)) {
            self.maybe_commit();
        }
        self.check_invariants();
    }

    /// The state machine applied everything up to `up_to` (answers [`Action::Apply`]).
    ///
    /// # Panics
    ///
    /// If `up_to` is beyond what [`Action::Apply`] handed out: a driver bug.
    pub fn applied(&mut self, up_to: LogIndex) {
        self.log.applied_to(up_to);
        self.release_ready_reads();
        self.maybe_request_snapshot();
        self.check_invariants();
    }

    // ---------------------------------------------------------------- output

    /// The next action to carry out, or `None` when there is nothing to do until the
    /// next input. See [`Action`] for the ordering contract.
    pub fn poll_action(&mut self) -> Option<Action> {
        if self.actions.is_empty() {
            self.flush();
        }
        self.actions.pop_front()
    }

    /// Moves deferred work into the queue: the leader's appends (sends first, then its
    /// own persist, so the driver can overlap them), then committed entries to apply.
    fn flush(&mut self) {
        if matches!(self.role, RoleState::Leader(_)) {
            self.flush_leader();
        }
        let entries = self.log.take_committed_unapplied(usize::MAX);
        self.bytes_since_snapshot += entries.iter().map(|e| e.payload_len() as u64).sum::<u64>();
        if !entries.is_empty() {
            self.actions.push_back(Action::Apply(entries));
        }
    }

    // ---------------------------------------------------------------- helpers

    pub(crate) fn send(&mut self, to: NodeId, message: Message) {
        self.actions.push_back(Action::Send { to, message });
    }

    pub(crate) fn push_action(&mut self, action: Action) {
        self.actions.push_back(action);
    }

    /// Queues a durable write, merged with an earlier one where
    /// [`Action::enqueue`] allows.
    pub(crate) fn push_persist(&mut self, persist: Persist) {
        Action::enqueue(&mut self.actions, Action::Persist(persist));
    }

    pub(crate) fn persist_hard_state(&mut self) {
        let hs = self.hard_state;
        self.push_persist(Persist {
            hard_state: Some(hs),
            ..Persist::default()
        });
    }

    /// Queues the persist of entries the leader appended but has not handed out yet.
    pub(crate) fn queue_unqueued_entries(&mut self) {
        if self.log.has_unqueued() {
            let entries = self.log.take_unqueued();
            self.push_persist(Persist {
                entries,
                ..Persist::default()
            });
        }
    }

    pub(crate) fn reset_election_timer(&mut self) {
        self.election_elapsed = 0;
        let et = self.config.election_ticks;
        self.randomized_timeout = self.rng.range(et, 2 * et);
    }

    pub(crate) fn randomized_timeout(&self) -> u32 {
        self.randomized_timeout
    }

    /// Checks the term of an incoming message (paper §5.1). Returns whether the
    /// message should be handled further.
    fn step_term(&mut self, from: NodeId, term: Term, message: &Message) -> bool {
        use std::cmp::Ordering;
        match term.cmp(&self.hard_state.term) {
            Ordering::Equal => true,
            Ordering::Greater => {
                match message {
                    Message::VoteRequest(m) => {
                        if !m.transfer && self.in_lease() {
                            // Dissertation §4.2.3: a server that heard from a live leader
                            // within the minimum election timeout ignores the request.
                            tracing::debug!(node = %self.id, %from, "ignoring vote request: leader lease");
                            return false;
                        }
                        if !m.pre_vote {
                            self.become_follower(term, None);
                        }
                    }
                    // A granted pre-vote carries the term the candidate would use; it
                    // changes nothing here.
                    Message::VoteResponse(m) if m.pre_vote && m.granted => {}
                    Message::AppendEntries(_)
                    | Message::InstallSnapshot(_)
                    | Message::TimeoutNow(_) => self.become_follower(term, Some(from)),
                    _ => self.become_follower(term, None),
                }
                true
            }
            Ordering::Less => {
                self.reject_stale(from, message);
                false
            }
        }
    }

    /// Answers a message from an older term so its sender learns the newer term: a
    /// leader cut off by a partition steps down, a stale candidate stops campaigning.
    fn reject_stale(&mut self, from: NodeId, message: &Message) {
        let term = self.hard_state.term;
        let reply = match message {
            Message::AppendEntries(m) => Message::AppendResponse(raft_proto::AppendResponse {
                term,
                round: m.round,
                result: raft_proto::AppendResult::Conflict {
                    rejected: m.prev_log_id.index,
                    hint: raft_proto::ConflictHint::LastIndex(self.log.last_index()),
                },
            }),
            Message::InstallSnapshot(m) => {
                Message::InstallSnapshotResponse(raft_proto::InstallSnapshotResponse {
                    term,
                    snapshot_id: m.meta.id,
                    snapshot: m.meta.last_log_id,
                    outcome: raft_proto::SnapshotOutcome::Received { next_offset: 0 },
                })
            }
            Message::VoteRequest(m) => Message::VoteResponse(raft_proto::VoteResponse {
                term,
                granted: false,
                pre_vote: m.pre_vote,
            }),
            _ => return,
        };
        self.send(from, reply);
    }

    /// Whether this node has heard from a live leader within the minimum election
    /// timeout (a leader is always in its own lease while CheckQuorum holds it).
    ///
    /// With lease reads, a node that started less than an election timeout ago counts
    /// as having heard from one: before a crash it may have acknowledged the round a
    /// leader's read lease rests on, and forgot it.
    pub(crate) fn in_lease(&self) -> bool {
        if !self.config.check_quorum {
            return false;
        }
        let heard = self.leader.is_some() && self.election_elapsed < self.config.election_ticks;
        let just_started = matches!(self.config.read_mode, ReadMode::LeaseBased { .. })
            && self.ticks_since_start < self.config.election_ticks;
        heard || just_started
    }

    /// The driver could not deliver every tick (a stall longer than it catches up
    /// on): what counts ticks as time is void until renewed. A leader's read lease
    /// then rests only on rounds sent after this call.
    pub fn time_skipped(&mut self) {
        if let RoleState::Leader(l) = &mut self.role {
            l.lease_from_round = l.round + 1;
            l.round_opened.clear();
        }
        self.check_invariants();
    }

    /// Whether this node may campaign: it is a voter of its configuration.
    pub(crate) fn is_voter(&self) -> bool {
        self.membership.is_voter(self.id)
    }

    // ---------------------------------------------------------------- roles

    /// Becomes a follower in `term` (a newer term clears the vote).
    ///
    /// The election timer restarts only when `leader` is known: Figure 2 resets it on
    /// hearing from the current leader or granting a vote, never on merely seeing a
    /// newer term. Otherwise a node with a stale log that keeps campaigning would hold
    /// every up-to-date node's timer back and the cluster would never elect a leader.
    pub(crate) fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        let was = (self.role(), self.leader);
        self.leave_role(leader);
        if term > self.hard_state.term {
            self.hard_state = HardState {
                term,
                voted_for: None,
            };
            self.persist_hard_state();
        }
        if was != (Role::Follower, leader) {
            tracing::debug!(node = %self.id, %term, ?leader, "became follower");
        }
        self.role = RoleState::Follower;
        self.leader = leader;
        if leader.is_some() {
            self.reset_election_timer();
        }
    }

    /// Tidies up the current role before another replaces it.
    fn leave_role(&mut self, new_leader: Option<NodeId>) {
        if let RoleState::Leader(mut l) = std::mem::replace(&mut self.role, RoleState::Follower) {
            // Entries appended as leader but not yet handed out must still be written,
            // before any later write (a truncation) is queued.
            self.queue_unqueued_entries();
            let hint = NotLeader {
                leader_hint: new_leader.filter(|&n| n != self.id),
            };
            self.fail_leader_reads(&mut l.reads, hint);
        }
    }

    pub(crate) fn become_pre_candidate(&mut self) {
        self.leave_role(None);
        tracing::debug!(node = %self.id, term = %self.hard_state.term, "became pre-candidate");
        self.role = RoleState::PreCandidate(Votes::default());
        self.leader = None;
        self.reset_election_timer();
    }

    pub(crate) fn become_candidate(&mut self) {
        self.leave_role(None);
        self.hard_state = HardState {
            term: self.hard_state.term.next(),
            voted_for: Some(self.id),
        };
        self.persist_hard_state();
        tracing::info!(node = %self.id, term = %self.hard_state.term, "became candidate");
        self.role = RoleState::Candidate(Votes::default());
        self.leader = None;
        self.reset_election_timer();
    }

    /// The payload bytes of the log's entries past the commit index: what a leader
    /// counts against `max_uncommitted_bytes`.
    fn uncommitted_bytes_in_log(&self) -> u64 {
        let committed = self.log.committed();
        self.log
            .entries()
            .rev()
            .take_while(|e| e.log_id.index > committed)
            .map(|e| e.payload_len() as u64)
            .sum()
    }

    pub(crate) fn become_leader(&mut self) {
        assert!(
            matches!(self.role, RoleState::Candidate(_)),
            "node {} term {}: only a candidate can become leader",
            self.id,
            self.hard_state.term
        );
        tracing::info!(node = %self.id, term = %self.hard_state.term, "became leader");
        let next = self.log.last_index().next();
        let progress = self
            .membership
            .members()
            .filter(|&m| m != self.id)
            .map(|m| (m, Progress::new(next)))
            .collect();
        let uncommitted_bytes = self.uncommitted_bytes_in_log();
        self.role = RoleState::Leader(Box::new(LeaderState {
            progress,
            heartbeat_elapsed: 0,
            heartbeat_due: false,
            round: 0,
            reads: ReadState::default(),
            transfer: None,
            scratch: Vec::new(),
            uncommitted_bytes,
            ticks: 0,
            round_opened: VecDeque::new(),
            lease_from_round: 0,
            lease_void: false,
        }));
        self.leader = Some(self.id);
        self.reset_election_timer();
        // Paper §8: a blank entry at the start of the term lets the leader commit the
        // entries of earlier terms and learn the commit index for reads.
        self.append_as_leader(EntryPayload::Blank);
    }

    /// Appends an entry in the leader's term; it goes out at the next flush.
    pub(crate) fn append_as_leader(&mut self, payload: EntryPayload) -> LogId {
        let log_id = LogId::new(self.hard_state.term, self.log.last_index().next());
        let entry = Entry { log_id, payload };
        if let RoleState::Leader(l) = &mut self.role {
            l.uncommitted_bytes += entry.payload_len() as u64;
        }
        self.log.append(entry);
        // A one-voter cluster commits as soon as its own write is durable.
        log_id
    }

    // ---------------------------------------------------------------- invariants

    /// Checks the node's invariants and panics with context on a violation. Runs after
    /// every input in debug builds; the simulator also calls it.
    pub fn check_invariants(&self) {
        if cfg!(debug_assertions) {
            self.check_invariants_now();
        }
    }

    /// [`check_invariants`](Raft::check_invariants), in every build.
    pub fn check_invariants_now(&self) {
        let ctx = || {
            format!(
                "node {} term {} role {:?}",
                self.id,
                self.hard_state.term,
                self.role()
            )
        };
        self.log.check();
        let m = &self.membership;
        assert!(
            m.voters.is_disjoint(&m.learners),
            "{}: voters and learners overlap in {m:?}",
            ctx()
        );
        assert!(
            m.nodes.keys().all(|&id| m.contains(id)),
            "{}: a record of a non-member in {m:?}",
            ctx()
        );
        let last = self.log.last_log_id();
        assert!(
            self.hard_state.term >= last.term,
            "{}: term below the last log term {last:?}",
            ctx()
        );
        match &self.role {
            RoleState::Leader(l) => {
                assert_eq!(
                    self.leader,
                    Some(self.id),
                    "{}: leader does not know itself",
                    ctx()
                );
                assert_eq!(
                    self.hard_state.voted_for,
                    Some(self.id),
                    "{}: leader did not vote for itself",
                    ctx()
                );
                for (&peer, pr) in &l.progress {
                    assert_ne!(peer, self.id, "{}: progress for itself", ctx());
                    pr.check();
                    assert!(
                        pr.match_index <= last.index && pr.next_index <= last.index.next(),
                        "{}: progress of {peer} beyond the log end {last:?}: {pr:?}",
                        ctx()
                    );
                }
                for m in self.membership.members().filter(|&m| m != self.id) {
                    assert!(
                        l.progress.contains_key(&m),
                        "{}: no progress for member {m}",
                        ctx()
                    );
                }
                let uncommitted = self.uncommitted_bytes_in_log();
                assert_eq!(
                    l.uncommitted_bytes,
                    uncommitted,
                    "{}: uncommitted bytes miscounted",
                    ctx()
                );
            }
            RoleState::Candidate(_) => {
                assert_eq!(
                    self.hard_state.voted_for,
                    Some(self.id),
                    "{}: candidate did not vote for itself",
                    ctx()
                );
                assert_eq!(self.leader, None, "{}: candidate knows a leader", ctx());
            }
            RoleState::PreCandidate(_) => {
                assert_eq!(self.leader, None, "{}: pre-candidate knows a leader", ctx());
                assert!(
                    !self.log.has_unqueued(),
                    "{}: unqueued entries off the leader role",
                    ctx()
                );
            }
            RoleState::Follower => {
                assert!(
                    !self.log.has_unqueued(),
                    "{}: unqueued entries off the leader role",
                    ctx()
                );
            }
        }
    }
}
