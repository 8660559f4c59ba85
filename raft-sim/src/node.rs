//! A simulated server: a `Raft`, its disk, its key-value state machine, and the client
//! requests it is working on.

use crate::kv::KvStore;
use crate::rng::SimRng;
use raft_core::{Action, ContractCheck, Persist, Raft, Stored};
use raft_proto::{
    Bytes, Entry, EntryPayload, HardState, LogId, LogIndex, Membership, NodeId, ReadId,
    SnapshotMeta,
};
use std::collections::{HashMap, VecDeque};

/// A node's disk: what survives a crash, and the one write in flight.
#[derive(Clone, Debug, Default)]
pub struct Disk {
    /// The durable term and vote.
    pub hard_state: HardState,
    /// The durable snapshot's metadata.
    pub snapshot: SnapshotMeta,
    /// The durable snapshot's bytes (the encoded key-value store).
    pub snapshot_data: Bytes,
    /// The last entry purged from the stored log.
    pub purged: LogId,
    /// The durable entries after `purged`.
    pub entries: Vec<Entry>,
    /// A write the driver issued and the disk has not finished.
    pub in_flight: Option<Persist>,
    /// The snapshot before `snapshot`, kept as a real store keeps its previous one.
    pub older: Option<(SnapshotMeta, Bytes)>,
    /// The empty snapshot the node was created with (the founding configuration).
    pub bootstrap: SnapshotMeta,
    /// The snapshot the log continues, recorded with each purge and reset (as
    /// `LogStore::purge` does).
    pub base: Option<SnapshotMeta>,
}

impl Disk {
    /// Makes a write durable.
    pub fn write(&mut self, p: &Persist) {
        if let Some(h) = p.hard_state {
            self.hard_state = h;
        }
        if let Some(t) = p.truncate_from {
            self.truncate_from(t);
        }
        self.entries.extend(p.entries.iter().cloned());
    }

    fn truncate_from(&mut self, index: LogIndex) {
        let keep = index.distance_from(self.purged.index).saturating_sub(1);
        self.entries
            .truncate(usize::try_from(keep).unwrap_or(usize::MAX));
    }

    /// Removes stored entries up to `up_to`, covered by the snapshot `base`.
    pub fn purge(&mut self, up_to: LogId, base: &SnapshotMeta) {
        self.entries.retain(|e| e.log_id.index > up_to.index);
        self.purged = up_to;
        self.base = Some(base.clone());
    }

    /// Installs a received snapshot: the state and the log prefix it replaces.
    pub fn install(&mut self, meta: SnapshotMeta, data: Bytes, discard_log: bool) {
        if discard_log {
            self.entries.clear();
        }
        self.purge(meta.last_log_id, &meta);
        self.store_snapshot(meta, data);
    }

    /// Stores a snapshot that became durable. The newest by index stays `snapshot`: a
    /// build that finishes after a newer snapshot was installed becomes the older one
    /// (as the LMDB store lists its snapshots newest first by last log id).
    pub fn store_snapshot(&mut self, meta: SnapshotMeta, data: Bytes) {
        let index = meta.last_log_id.index;
        if index > self.snapshot.last_log_id.index {
            let previous = std::mem::replace(&mut self.snapshot, meta);
            let previous_data = std::mem::replace(&mut self.snapshot_data, data);
            if previous.last_log_id.index > LogIndex::ZERO {
                self.older = Some((previous, previous_data));
            }
        } else if index > LogIndex::ZERO
            && self
                .older
                .as_ref()
                .is_none_or(|(o, _)| o.last_log_id.index < index)
        {
            self.older = Some((meta, data));
        }
    }

    /// A fault destroys the newest snapshot (its data or its metadata; either makes it
    /// unusable): the older snapshot, or none, takes its place. Returns false when
    /// there is no snapshot to destroy.
    pub fn lose_newest_snapshot(&mut self) -> bool {
        if self.snapshot.last_log_id.index == LogIndex::ZERO {
            return false;
        }
        let (older, older_data) = self
            .older
            .take()
            .unwrap_or_else(|| (self.bootstrap.clone(), Bytes::new()));
        self.snapshot = older;
        self.snapshot_data = older_data;
        true
    }

    /// The durable id at `index`, if the disk holds that entry (or the purged entry
    /// ends there).
    pub fn log_id(&self, index: LogIndex) -> Option<LogId> {
        let purged = self.purged;
        if index == purged.index {
            return Some(purged);
        }
        let offset = index.0.checked_sub(purged.index.0 + 1)?;
        self.entries
            .get(usize::try_from(offset).ok()?)
            .map(|e| e.log_id)
    }

    /// Whether `id` is durable here, as an entry or inside the snapshot (a snapshot
    /// only ever covers committed entries).
    pub fn holds(&self, id: LogId) -> bool {
        id.index <= self.snapshot.last_log_id.index || self.log_id(id.index) == Some(id)
    }

    /// A crash: the write in flight is lost, or with `torn`, part of it lands (the hard
    /// state and truncation, then a prefix of the entries), as a store that writes in
    /// pieces would leave it.
    pub fn crash(&mut self, torn: Option<&mut SimRng>) {
        let Some(p) = self.in_flight.take() else {
            return;
        };
        if let Some(rng) = torn {
            let keep = rng.range(0, p.entries.len() as u64 + 1) as usize;
            let partial = Persist {
                hard_state: p.hard_state,
                truncate_from: p.truncate_from,
                entries: p.entries[..keep].to_vec(),
            };
            self.write(&partial);
        }
    }

    /// The last durable entry's id.
    pub fn last_log_id(&self) -> LogId {
        self.entries.last().map_or(self.purged, |e| e.log_id)
    }

    /// The newest configuration on disk: in the entries after the snapshot the log
    /// continues, or that snapshot's.
    pub fn latest_membership(&self) -> &Membership {
        let base = match &self.base {
            Some(b) if b.last_log_id.index > self.snapshot.last_log_id.index => b,
            _ => &self.snapshot,
        };
        let snap = base.last_log_id.index;
        self.entries
            .iter()
            .rev()
            .take_while(|e| e.log_id.index > snap)
            .find_map(|e| match &e.payload {
                EntryPayload::Membership(m) => Some(m),
                _ => None,
            })
            .unwrap_or(&base.membership)
    }

    /// What a restarting node reads back: its log, and a state machine rebuilt from
    /// its newest intact snapshot.
    pub fn stored(&self) -> Stored {
        Stored {
            hard_state: self.hard_state,
            purged: self.purged,
            entries: self.entries.clone(),
            log_base: self.base.clone(),
            applied: self.snapshot.last_log_id,
            snapshot: Some(self.snapshot.clone()),
        }
    }

    /// Resets the log to start after `base` (a restart found a snapshot the log does
    /// not hold).
    pub fn reset(&mut self, base: &SnapshotMeta) {
        self.entries.clear();
        self.purged = base.last_log_id;
        self.base = Some(base.clone());
    }
}

/// A write proposed for a client, waiting to be applied.
#[derive(Clone, Copy, Debug)]
pub struct PendingWrite {
    /// The id the leader gave the entry.
    pub log_id: LogId,
    /// The client.
    pub client: usize,
    /// The client's operation number.
    pub seq: u64,
    /// The client's attempt number.
    pub attempt: u32,
}

/// A read waiting for `ReadReady`.
#[derive(Clone, Copy, Debug)]
pub struct PendingRead {
    /// The client.
    pub client: usize,
    /// The client's operation number.
    pub seq: u64,
    /// The client's attempt number.
    pub attempt: u32,
    /// The key read.
    pub key: u64,
}

/// A crash armed to strike in the middle of a node's next matching disk write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashTrap {
    /// Strike during the next write of any kind.
    AnyWrite,
    /// Strike during the next write that records a vote.
    VoteWrite,
}

/// One simulated server.
#[derive(Debug)]
pub struct SimNode {
    /// Its id.
    pub id: NodeId,
    /// The running state machine; `None` while crashed.
    pub raft: Option<Raft>,
    /// Its disk.
    pub disk: Disk,
    /// Its key-value store (volatile: rebuilt from the log after a restart).
    pub kv: KvStore,
    /// Bumped at every restart; events of an earlier incarnation are ignored.
    pub incarnation: u64,
    /// Actions taken from the core that wait behind the write in flight.
    pub queue: VecDeque<Action>,
    /// Paused until this virtual time (no ticks, no messages, no disk progress).
    pub paused_until: u64,
    /// Virtual microseconds per tick (skewed per node).
    pub tick_us: u64,
    /// The tick interval without a temporary clock fault.
    pub base_tick_us: u64,
    /// When the next tick is due (virtual time).
    pub next_tick_at: u64,
    /// Writes proposed here for clients, by log index.
    pub writes: HashMap<LogIndex, PendingWrite>,
    /// Reads started here for clients.
    pub reads: HashMap<ReadId, PendingRead>,
    /// The next read id.
    pub next_read: u64,
    /// The highest index applied by this incarnation's state machine.
    pub applied: LogIndex,
    /// A crash waiting for the node's next matching write.
    pub crash_trap: Option<CrashTrap>,
    /// A snapshot being received: its id and the bytes so far.
    pub incoming: Option<(u64, Vec<u8>)>,
    /// A snapshot being built: written to disk when its build completes.
    pub building: Option<(SnapshotMeta, Bytes)>,
    /// Snapshots this node built.
    pub snapshots_built: u64,
    /// The state machine's jobs (applies, snapshot captures, received chunks,
    /// installs), carried out one at a time in order, later than the driver hands them
    /// over: `Node`'s apply task.
    pub jobs: VecDeque<Action>,
    /// The state machine's next step is scheduled.
    pub job_scheduled: bool,
    /// The driver waits for an install the state machine has not carried out yet.
    pub installing: bool,
    /// A log purge in flight (a storage step the driver waits for): what it removes.
    pub purging: Option<(LogId, SnapshotMeta)>,
    /// The ordering contract, checked on every action this incarnation carries out.
    pub contract: ContractCheck,
}

impl SimNode {
    /// A node with an empty disk for a cluster whose founding voters are `membership`.
    pub fn new(id: NodeId, snapshot: SnapshotMeta, tick_us: u64) -> SimNode {
        SimNode {
            id,
            raft: None,
            disk: Disk {
                bootstrap: snapshot.clone(),
                snapshot,
                ..Disk::default()
            },
            kv: KvStore::default(),
            incarnation: 0,
            queue: VecDeque::new(),
            paused_until: 0,
            tick_us,
            base_tick_us: tick_us,
            next_tick_at: 0,
            writes: HashMap::new(),
            reads: HashMap::new(),
            next_read: 0,
            applied: LogIndex::ZERO,
            crash_trap: None,
            incoming: None,
            building: None,
            snapshots_built: 0,
            jobs: VecDeque::new(),
            job_scheduled: false,
            installing: false,
            purging: None,
            contract: ContractCheck::new(LogIndex::ZERO),
        }
    }

    /// Whether the node runs (neither crashed nor paused) at `now`.
    pub fn is_up(&self, now: u64) -> bool {
        self.raft.is_some() && self.paused_until <= now
    }

    /// Loses everything volatile.
    pub fn crash(&mut self, torn: Option<&mut SimRng>) {
        self.raft = None;
        self.disk.crash(torn);
        self.kv = KvStore::default();
        self.queue.clear();
        self.writes.clear();
        self.reads.clear();
        self.applied = LogIndex::ZERO;
        self.incoming = None;
        self.building = None;
        self.jobs.clear();
        self.job_scheduled = false;
        self.installing = false;
        self.purging = None;
        self.incarnation += 1;
    }
}
