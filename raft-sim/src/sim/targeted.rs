//! Targeted nemeses (issue 19): faults aimed at bug classes the random nemesis finds
//! only rarely, and the checks that make them show. All are off with
//! `--nemeses base`, which then runs exactly as before they existed (they draw from the
//! world's RNG only when on).
//!
//! `--nemeses checks` keeps the checks and injects no targeted fault: the random
//! nemesis's run, checked more closely (to tell what the checks find from what the
//! faults add).
//!
//! - **Vote crash**: a voter crashes right after a granted vote leaves it (before the
//!   write of that vote is done, if the vote did not wait for it) and restarts soon; at
//!   every crash, each vote the node sent must be on its disk ("persist before you
//!   answer", paper Figure 2).
//! - **Stale votes**: granted votes are held back and delivered again to their
//!   candidate once it campaigns in a newer term, while a rival's clock jumps so it
//!   campaigns at once (repeated elections in quick succession); every new leader must
//!   hold the votes of a quorum sent in its own term.
//! - **Deaf node**: a node that cannot hear the others, its clock jumping so it
//!   campaigns again and again with PreVote; handling a pre-vote request must leave the
//!   receiver's term, vote and role as they were (dissertation §9.6).
//! - **Figure 8**: three leaders whose logs diverge at one index (paper §5.4.2): a
//!   leader's new entries reach only a minority and it crashes; the next leader's
//!   entries reach nobody and it crashes; the first comes back, wins, and its old
//!   entries (but not its new term's) reach a quorum before it crashes; the second
//!   comes back and wins over that quorum.

use crate::checkers::{Check, violation};
use raft_core::Role;
use raft_proto::{HardState, LogId, Message, NodeId, Term};

use super::{Event, Phase, World};

/// Share of nemesis events that are targeted ones when they are on.
const TARGETED_SHARE: f64 = 0.4;

/// Granted votes the stale-vote nemesis holds at most.
const HELD_VOTES: usize = 64;

/// Which nemeses a run uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Nemeses {
    /// The random nemesis and the targeted ones, with their checks.
    #[default]
    All,
    /// The random nemesis, with the targeted nemeses' checks but not their faults.
    Checks,
    /// The random nemesis only, as before issue 19.
    Base,
}

/// A targeted fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    VoteCrash,
    StaleVotes,
    DeafNode,
    Figure8,
}

const KINDS: [Kind; 4] = [
    Kind::VoteCrash,
    Kind::StaleVotes,
    Kind::DeafNode,
    Kind::Figure8,
];

/// Events of the targeted nemeses.
#[derive(Clone, Debug)]
pub(super) enum TargetedEvent {
    /// Crash `node` (of incarnation `inc`) and restart it after `down` microseconds.
    CrashRestart { node: usize, inc: u64, down: u64 },
    /// The node's clock jumps: every tick up to a full election timeout and more is
    /// delivered at once, so a follower campaigns now.
    ClockJump { node: usize, inc: u64 },
}

/// The Figure 8 sequence, one step at a time.
#[derive(Clone, Debug)]
enum Fig8 {
    Idle,
    /// Waiting for a leader of a term after `after` to become the first.
    Armed {
        after: Term,
        until: u64,
    },
    /// The first leader: its messages of `t1` reach only `minority`; it crashes at
    /// `crash_at`.
    First {
        l1: usize,
        t1: Term,
        minority: Vec<usize>,
        crash_at: u64,
    },
    /// The first is down; the next leader's appends (of a term after `t1`) reach
    /// nobody, and it crashes soon after winning.
    Second {
        l1: usize,
        t1: Term,
        until: u64,
    },
    /// Both down; the first restarts and should win again.
    Third {
        l1: usize,
        l2: usize,
        t2: Term,
        until: u64,
    },
    /// The first leads again in `t3`: only its appends' entries of earlier terms get
    /// through; once a quorum holds `mark` (since `held_since`, long enough for their
    /// answers to arrive) it crashes and the second restarts.
    Fourth {
        l1: usize,
        l2: usize,
        t3: Term,
        mark: LogId,
        held_since: Option<u64>,
        until: u64,
    },
}

/// The targeted nemeses' state.
#[derive(Debug)]
pub(super) struct Targeted {
    /// Whether targeted faults are injected (not only their checks).
    faults: bool,
    /// Per node: crash right after its next granted vote leaves.
    vote_crash: Vec<bool>,
    /// Per node: granted votes sent by its current incarnation, the newest per term
    /// (term, candidate), to check against its disk at a crash.
    votes_sent: Vec<Vec<(Term, NodeId)>>,
    /// Per term: (voter, candidate) of every granted vote sent in that term.
    grants: std::collections::BTreeMap<Term, Vec<(NodeId, NodeId)>>,
    /// Until when granted votes are held back and delivered again (stale votes).
    stale_until: u64,
    /// Rivals whose clocks may still jump while votes are held (a few per fault, so
    /// elections do not set off one another without end).
    rivals: u32,
    /// Held votes: voter, candidate, term, message.
    held: Vec<(usize, usize, Term, Message)>,
    /// Per node: the term in which it was last seen leading (for the vote check).
    led: Vec<Option<Term>>,
    fig8: Fig8,
}

impl Targeted {
    pub(super) fn new(n: usize, faults: bool) -> Targeted {
        Targeted {
            faults,
            vote_crash: vec![false; n],
            votes_sent: vec![Vec::new(); n],
            grants: Default::default(),
            stale_until: 0,
            rivals: 0,
            held: Vec::new(),
            led: vec![None; n],
            fig8: Fig8::Idle,
        }
    }
}

impl World {
    fn count(&mut self, what: &'static str) {
        *self.stats.faults_by_kind.entry(what).or_default() += 1;
    }

    /// Maybe injects a targeted fault instead of a random one; returns whether it did.
    pub(super) fn targeted_fault(&mut self) -> Result<bool, crate::checkers::Violation> {
        if !self.targeted.as_ref().is_some_and(|t| t.faults) || !self.rng.chance(TARGETED_SHARE) {
            return Ok(false);
        }
        let n = self.nodes.len();
        let (lo, hi) = self.profile.fault_duration_us;
        let duration = self.rng.range(lo, hi);
        let kind = self.rng.pick(&KINDS);
        let election = self.profile.election_us();
        match kind {
            Kind::VoteCrash => {
                self.count("targeted: vote crash armed");
                let k = self.rng.range(1, n as u64 + 1) as usize;
                for _ in 0..k {
                    let node = self.rng.range(0, n as u64) as usize;
                    self.log(|| format!("arm crash of node {node} right after its next vote"));
                    if let Some(t) = &mut self.targeted {
                        t.vote_crash[node] = true;
                    }
                }
            }
            Kind::StaleVotes => {
                self.count("targeted: stale votes");
                let until = self.now + duration.max(3 * election);
                self.log(|| format!("hold back granted votes until {until}"));
                if let Some(t) = &mut self.targeted {
                    t.stale_until = until;
                    t.rivals = 2;
                }
                // An election now, to start with.
                let node = self.rng.range(0, n as u64) as usize;
                let inc = self.nodes[node].incarnation;
                self.schedule(0, Event::Targeted(TargetedEvent::ClockJump { node, inc }));
            }
            Kind::DeafNode => {
                self.count("targeted: deaf node");
                let x = self.rng.range(0, n as u64) as usize;
                let links: Vec<(usize, usize)> =
                    (0..n).filter(|&o| o != x).map(|o| (o, x)).collect();
                let duration = duration.max(4 * election);
                self.log(|| format!("node {x} cannot hear the others for {duration}us"));
                self.cut_links(links, duration);
                // Its clock jumps a few times while it is deaf: each time it campaigns.
                let inc = self.nodes[x].incarnation;
                for _ in 0..4 {
                    let at = self.rng.range(0, duration);
                    self.schedule(
                        at,
                        Event::Targeted(TargetedEvent::ClockJump { node: x, inc }),
                    );
                }
            }
            Kind::Figure8 => {
                let idle = self
                    .targeted
                    .as_ref()
                    .is_some_and(|t| matches!(t.fig8, Fig8::Idle));
                if idle {
                    self.count("targeted: figure 8 armed");
                    let until = self.now + 6 * election;
                    let after = self.newest_leader().map_or(Term(0), |(_, t)| t);
                    // A new election: the current leader crashes.
                    if let Some(l) = self.current_leader() {
                        self.crash(l)?;
                        let down = self.rng.range(election / 2, 2 * election);
                        self.schedule(down, Event::Restart { node: l });
                    }
                    self.set_fig8(Fig8::Armed { after, until });
                }
            }
        }
        Ok(true)
    }

    /// A targeted event.
    pub(super) fn targeted_event(&mut self, event: TargetedEvent) -> Check {
        if self.phase != Phase::Faults {
            return Ok(());
        }
        match event {
            TargetedEvent::CrashRestart { node, inc, down } => {
                if self.nodes[node].incarnation != inc {
                    return Ok(());
                }
                self.count("targeted: crash");
                self.crash(node)?;
                self.schedule(down, Event::Restart { node });
                Ok(())
            }
            TargetedEvent::ClockJump { node, inc } => {
                if self.nodes[node].incarnation != inc || !self.nodes[node].is_up(self.now) {
                    return Ok(());
                }
                // Lease reads rest on clocks that do not jump.
                if self.profile.lease.is_some() {
                    return Ok(());
                }
                self.count("targeted: clock jump");
                self.log(|| format!("clock of node {node} jumps"));
                let ticks = (2 * self.profile.election_ticks + 1).min(super::MAX_CATCH_UP_TICKS);
                if let Some(raft) = &mut self.nodes[node].raft {
                    for _ in 0..ticks {
                        raft.tick();
                    }
                }
                self.drive(node)?;
                self.check_node(node)
            }
        }
    }

    /// Every message a node sends passes here first; returns whether the network drops
    /// it. May shorten an AppendEntries (as a leader with a smaller batch size would
    /// have sent it).
    pub(super) fn targeted_send(&mut self, from: usize, to: usize, msg: &mut Message) -> bool {
        let Some(t) = &mut self.targeted else {
            return false;
        };
        let now = self.now;
        match msg {
            Message::VoteResponse(r) if r.granted && !r.pre_vote => {
                let (voter, candidate, term) = (self.nodes[from].id, self.nodes[to].id, r.term);
                let sent = &mut t.votes_sent[from];
                sent.retain(|&(vt, _)| vt != term);
                sent.push((term, candidate));
                t.grants.entry(term).or_default().push((voter, candidate));
                if now < t.stale_until {
                    if t.held.len() >= HELD_VOTES {
                        t.held.remove(0);
                    }
                    t.held.push((from, to, term, msg.clone()));
                }
                // The window a vote that does not wait for its write opens: aim there.
                // A vote already on disk is struck too, now and then.
                let on_disk = self.nodes[from].disk.hard_state
                    == HardState {
                        term,
                        voted_for: Some(candidate),
                    }
                    || self.nodes[from].disk.hard_state.term > term;
                if !on_disk {
                    *self
                        .stats
                        .faults_by_kind
                        .entry("targeted: vote sent before it was on disk")
                        .or_default() += 1;
                }
                if t.vote_crash[from] && (!on_disk || self.rng.chance(0.2)) {
                    t.vote_crash[from] = false;
                    let inc = self.nodes[from].incarnation;
                    let tick = self.nodes[from].tick_us;
                    let down = self.rng.range(tick, self.profile.election_us());
                    self.log(|| {
                        format!(
                            "node {from} sent its vote to node {to}: crash now, restart in {down}us"
                        )
                    });
                    self.schedule(
                        0,
                        Event::Targeted(TargetedEvent::CrashRestart {
                            node: from,
                            inc,
                            down,
                        }),
                    );
                }
                false
            }
            Message::VoteRequest(r) if !r.pre_vote && now < t.stale_until => {
                // The candidate campaigns in a newer term: its old votes arrive now.
                let term = r.term;
                let mut stale = Vec::new();
                t.held.retain(|(v, c, vt, m)| {
                    if *c == from && *vt < term {
                        stale.push((*v, m.clone()));
                        false
                    } else {
                        true
                    }
                });
                let rival_left = t.rivals > 0;
                for (v, m) in stale {
                    let d = self.rng.range(self.net.delay_us.0, self.net.delay_us.1);
                    self.log(|| format!("old vote of node {v} delivered again to node {from}"));
                    self.schedule(
                        d,
                        Event::Deliver {
                            from: v,
                            to: from,
                            msg: m,
                        },
                    );
                }
                // A rival's clock jumps before the request reaches it.
                let rival = self.rng.range(0, self.nodes.len() as u64) as usize;
                if rival_left && rival != from && rival != to && self.rng.chance(0.3) {
                    if let Some(t) = &mut self.targeted {
                        t.rivals -= 1;
                    }
                    let inc = self.nodes[rival].incarnation;
                    let at = self.rng.range(0, self.net.delay_us.0.max(1));
                    self.schedule(
                        at,
                        Event::Targeted(TargetedEvent::ClockJump { node: rival, inc }),
                    );
                }
                false
            }
            _ => self.figure8_send(from, to, msg),
        }
    }

    /// The Figure 8 sequence's message filter.
    fn figure8_send(&mut self, from: usize, to: usize, msg: &mut Message) -> bool {
        // A new leader's very first appends are the first leader's: its blank entry
        // must reach only the minority.
        let armed_after = match self.targeted.as_ref().map(|t| &t.fig8) {
            Some(Fig8::Armed { after, .. }) => Some(*after),
            _ => None,
        };
        if let (Some(after), Message::AppendEntries(a)) = (armed_after, &*msg)
            && a.term > after
            && self.nodes[from]
                .raft
                .as_ref()
                .is_some_and(|r| r.role() == Role::Leader && r.term() == a.term)
        {
            let term = a.term;
            self.figure8_first(from, term);
        }
        let Some(t) = &self.targeted else {
            return false;
        };
        match (&t.fig8, msg) {
            (
                Fig8::First {
                    l1, t1, minority, ..
                },
                m,
            ) if *l1 == from && m.term() == Some(*t1) && !minority.contains(&to) => {
                matches!(
                    m,
                    Message::AppendEntries(_)
                        | Message::InstallSnapshot(_)
                        | Message::TimeoutNow(_)
                )
            }
            (Fig8::Second { t1, .. }, Message::AppendEntries(a)) if a.term > *t1 => true,
            (Fig8::Second { t1, .. }, Message::InstallSnapshot(s)) if s.term > *t1 => true,
            (Fig8::Third { l2, t2, .. }, m) if *l2 == from && m.term() == Some(*t2) => matches!(
                m,
                Message::AppendEntries(_) | Message::InstallSnapshot(_) | Message::TimeoutNow(_)
            ),
            (Fig8::Fourth { l1, t3, .. }, Message::AppendEntries(a))
                if *l1 == from && a.term == *t3 =>
            {
                // Only the entries of earlier terms get through.
                let keep = a.entries.iter().take_while(|e| e.log_id.term < *t3).count();
                if keep < a.entries.len() {
                    if keep == 0 && !a.entries.is_empty() {
                        return true;
                    }
                    a.entries.truncate(keep);
                }
                false
            }
            (Fig8::Fourth { l1, t3, .. }, Message::InstallSnapshot(s)) => {
                *l1 == from && s.term == *t3
            }
            _ => false,
        }
    }

    /// After every event: the Figure 8 sequence moves on, and a new leader must hold
    /// the votes of a quorum of its term.
    pub(super) fn targeted_after_event(&mut self) -> Check {
        if self.targeted.is_none() {
            return Ok(());
        }
        self.check_new_leaders()?;
        if self.phase == Phase::Faults {
            self.figure8_step()?;
        }
        Ok(())
    }

    fn check_new_leaders(&mut self) -> Check {
        let Some(t) = &mut self.targeted else {
            return Ok(());
        };
        for (i, node) in self.nodes.iter().enumerate() {
            let Some(raft) = &node.raft else { continue };
            if raft.role() != Role::Leader || t.led[i] == Some(raft.term()) {
                continue;
            }
            let term = raft.term();
            t.led[i] = Some(term);
            let config = raft.membership();
            let voters: Vec<NodeId> = config
                .voters
                .iter()
                .copied()
                .filter(|&v| {
                    v == node.id
                        || t.grants
                            .get(&term)
                            .is_some_and(|g| g.contains(&(v, node.id)))
                })
                .collect();
            if voters.len() < config.quorum() {
                return violation(
                    "Election",
                    format!(
                        "node {i} leads term {term:?} with granted votes of that term from {voters:?} only (voters {:?})",
                        config.voters
                    ),
                );
            }
        }
        // Terms long past need no record.
        if t.grants.len() > 64 {
            let first = *t.grants.keys().next().unwrap_or(&Term(0));
            t.grants.remove(&first);
        }
        Ok(())
    }

    /// Called when a node crashed: each vote it sent must be on its disk.
    pub(super) fn check_votes_durable(&mut self, node: usize) -> Check {
        let Some(t) = &mut self.targeted else {
            return Ok(());
        };
        let sent = std::mem::take(&mut t.votes_sent[node]);
        let HardState { term, voted_for } = self.nodes[node].disk.hard_state;
        for (vt, candidate) in sent {
            if term < vt || (term == vt && voted_for != Some(candidate)) {
                return violation(
                    "Vote durability",
                    format!(
                        "node {} granted its vote of term {vt:?} to node {candidate} but crashed with term {term:?}, vote {voted_for:?} on disk",
                        self.nodes[node].id
                    ),
                );
            }
        }
        Ok(())
    }

    /// Before a message is delivered: what a pre-vote request must not change.
    pub(super) fn pre_vote_before(&self, to: usize, msg: &Message) -> Option<(HardState, Role)> {
        self.targeted.as_ref()?;
        let Message::VoteRequest(r) = msg else {
            return None;
        };
        if !r.pre_vote {
            return None;
        }
        let raft = self.nodes[to].raft.as_ref()?;
        Some((raft.hard_state(), raft.role()))
    }

    /// After it was handled.
    pub(super) fn pre_vote_after(
        &self,
        from: usize,
        to: usize,
        before: Option<(HardState, Role)>,
    ) -> Check {
        let (Some(before), Some(raft)) = (before, self.nodes[to].raft.as_ref()) else {
            return Ok(());
        };
        let after = (raft.hard_state(), raft.role());
        if after != before {
            return violation(
                "PreVote",
                format!(
                    "node {to} handled a pre-vote request from node {from} and went from {before:?} to {after:?} (dissertation §9.6: a pre-vote changes nothing)"
                ),
            );
        }
        Ok(())
    }

    /// The faults end: the targeted nemeses stop.
    pub(super) fn targeted_heal(&mut self) {
        if let Some(t) = &mut self.targeted {
            t.vote_crash.iter_mut().for_each(|v| *v = false);
            t.stale_until = 0;
            t.held.clear();
            t.fig8 = Fig8::Idle;
        }
    }

    fn set_fig8(&mut self, next: Fig8) {
        self.log(|| format!("figure 8: {next:?}"));
        if let Some(t) = &mut self.targeted {
            t.fig8 = next;
        }
    }

    /// The node leading the newest term, with that term.
    fn newest_leader(&self) -> Option<(usize, Term)> {
        let l = self.current_leader()?;
        let term = self.nodes[l].raft.as_ref()?.term();
        Some((l, term))
    }

    /// `l1`, leading `t1`, becomes the first leader of the Figure 8 sequence.
    fn figure8_first(&mut self, l1: usize, t1: Term) {
        let Some(raft) = &self.nodes[l1].raft else {
            return;
        };
        let config = raft.membership();
        if config.voters.len() < 3 || !config.is_voter(raft.id()) {
            return;
        }
        let quorum = config.quorum();
        let mut others: Vec<usize> = config
            .voters
            .iter()
            .filter_map(|&v| self.index_of(v))
            .filter(|&i| i != l1)
            .collect();
        let mut minority = Vec::new();
        for _ in 0..quorum.saturating_sub(2) {
            let k = self.rng.range(0, others.len() as u64) as usize;
            minority.push(others.swap_remove(k));
        }
        let heartbeat = self.profile.tick_us * u64::from(self.profile.heartbeat_ticks);
        let crash_at = self.now + self.rng.range(heartbeat, 4 * heartbeat + 1);
        self.count("targeted: figure 8 first leader");
        self.set_fig8(Fig8::First {
            l1,
            t1,
            minority,
            crash_at,
        });
    }

    fn figure8_step(&mut self) -> Check {
        let Some(t) = &self.targeted else {
            return Ok(());
        };
        let election = self.profile.election_us();
        let heartbeat = self.profile.tick_us * u64::from(self.profile.heartbeat_ticks);
        match t.fig8.clone() {
            Fig8::Idle => {}
            Fig8::Armed { after, until } => {
                if self.now > until {
                    self.set_fig8(Fig8::Idle);
                } else if let Some((l1, t1)) = self.newest_leader()
                    && t1 > after
                {
                    self.figure8_first(l1, t1);
                }
            }
            Fig8::First {
                l1, t1, crash_at, ..
            } => {
                let leading = self.nodes[l1]
                    .raft
                    .as_ref()
                    .is_some_and(|r| r.role() == Role::Leader && r.term() == t1);
                if self.now >= crash_at || !leading {
                    self.crash(l1)?;
                    self.set_fig8(Fig8::Second {
                        l1,
                        t1,
                        until: self.now + 6 * election,
                    });
                }
            }
            Fig8::Second { l1, t1, until, .. } => {
                if self.now > until {
                    self.schedule(0, Event::Restart { node: l1 });
                    self.set_fig8(Fig8::Idle);
                } else if let Some((l2, t2)) = self.newest_leader()
                    && t2 > t1
                    && l2 != l1
                {
                    // Its blank entry (and any command) stays on its own disk... once
                    // written: crash it a moment later.
                    self.count("targeted: figure 8 second leader");
                    let inc = self.nodes[l2].incarnation;
                    let at = self.rng.range(
                        self.profile.disk_us.1,
                        heartbeat.max(self.profile.disk_us.1 + 1),
                    );
                    self.schedule(
                        at,
                        Event::Targeted(TargetedEvent::CrashRestart {
                            node: l2,
                            inc,
                            down: 20 * election,
                        }),
                    );
                    // The first comes back before the others time out, and campaigns
                    // at once.
                    let back = self.rng.range(at + 1, at + election / 2 + 2);
                    self.schedule(back, Event::Restart { node: l1 });
                    let inc = self.nodes[l1].incarnation;
                    let tick = self.nodes[l1].tick_us;
                    self.schedule(
                        back + tick,
                        Event::Targeted(TargetedEvent::ClockJump { node: l1, inc }),
                    );
                    self.set_fig8(Fig8::Third {
                        l1,
                        l2,
                        t2,
                        until: self.now + 8 * election,
                    });
                }
            }
            Fig8::Third { l1, l2, t2, until } => {
                let l2_up = self.nodes[l2].raft.is_some();
                if self.now > until {
                    self.schedule(0, Event::Restart { node: l2 });
                    self.set_fig8(Fig8::Idle);
                } else if !l2_up
                    && let Some((l3, t3)) = self.newest_leader()
                    && t3 > t2
                {
                    if l3 != l1 {
                        self.schedule(0, Event::Restart { node: l2 });
                        self.set_fig8(Fig8::Idle);
                        return Ok(());
                    }
                    let Some(raft) = &self.nodes[l1].raft else {
                        return Ok(());
                    };
                    let mark = raft
                        .log()
                        .entries()
                        .rev()
                        .find(|e| e.log_id.term < t3)
                        .map(|e| e.log_id);
                    let Some(mark) = mark else {
                        self.schedule(0, Event::Restart { node: l2 });
                        self.set_fig8(Fig8::Idle);
                        return Ok(());
                    };
                    self.count("targeted: figure 8 first leader again");
                    self.set_fig8(Fig8::Fourth {
                        l1,
                        l2,
                        t3,
                        mark,
                        held_since: None,
                        until: self.now + 4 * election,
                    });
                }
            }
            Fig8::Fourth {
                l1,
                l2,
                t3,
                mark,
                held_since,
                until,
            } => {
                let leading = self.nodes[l1]
                    .raft
                    .as_ref()
                    .is_some_and(|r| r.role() == Role::Leader && r.term() == t3);
                let (holders, quorum) = match &self.nodes[l1].raft {
                    Some(r) => {
                        let config = r.membership();
                        let holders = self
                            .nodes
                            .iter()
                            .filter(|n| config.is_voter(n.id))
                            .filter(|n| {
                                n.raft
                                    .as_ref()
                                    .is_some_and(|r| r.log().term(mark.index) == Some(mark.term))
                            })
                            .count();
                        (holders, config.quorum())
                    }
                    None => (0, usize::MAX),
                };
                // Time for the holders' answers to reach the leader.
                let grace = 2 * self.profile.delay_us.1 + self.profile.disk_us.1 + heartbeat;
                let held = holders >= quorum;
                if held && held_since.is_none() {
                    self.count("targeted: figure 8 old entry on a quorum");
                    if let Some(t) = &mut self.targeted
                        && let Fig8::Fourth { held_since, .. } = &mut t.fig8
                    {
                        *held_since = Some(self.now);
                    }
                }
                let answered = held_since.is_some_and(|since| self.now >= since + grace);
                if answered || !leading || self.now > until {
                    self.crash(l1)?;
                    let back = self.rng.range(election, 4 * election);
                    self.schedule(back, Event::Restart { node: l1 });
                    self.schedule(0, Event::Restart { node: l2 });
                    self.set_fig8(Fig8::Idle);
                }
            }
        }
        Ok(())
    }
}
