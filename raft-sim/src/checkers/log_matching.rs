//! Log Matching (paper Figure 3): if two logs contain an entry with the same index and
//! term, then the logs are identical in all entries up through that index.
//!
//! Checked by induction: every entry id `(term, index)` ever appended anywhere must
//! always come with the same payload and the same predecessor term. Then two logs that
//! share an id share its predecessor, and so on down to the start. Each node's log is
//! mirrored from the `Persist` actions its core emits, and the mirror is compared with
//! the core's log after every event, so a log that changes without a write is caught
//! too.

use super::{Check, violation};
use raft_core::{Persist, Raft};
use raft_proto::{Entry, EntryPayload, LogId, Term};
use std::collections::HashMap;

/// The registry of entry ids and the mirrored logs.
#[derive(Debug, Default)]
pub struct LogMatching {
    /// For each id: the predecessor's term and a hash of the payload.
    ids: HashMap<LogId, (Term, u64)>,
    /// Per node: the id before the first mirrored entry, then the mirrored ids.
    mirrors: Vec<(LogId, Vec<LogId>)>,
}

impl LogMatching {
    /// Starts mirroring `node` from its restored log.
    pub fn restart(&mut self, node: usize, snapshot: LogId, entries: &[Entry]) {
        if self.mirrors.len() <= node {
            self.mirrors.resize(node + 1, (LogId::ZERO, Vec::new()));
        }
        self.mirrors[node] = (snapshot, entries.iter().map(|e| e.log_id).collect());
    }

    /// Registers a write the core asked `node` to make.
    pub fn persist(&mut self, node: usize, p: &Persist) -> Check {
        let (base, ids) = &mut self.mirrors[node];
        if let Some(t) = p.truncate_from {
            let keep = t.distance_from(base.index).saturating_sub(1) as usize;
            ids.truncate(keep);
        }
        for e in &p.entries {
            let prev = ids.last().copied().unwrap_or(*base);
            if e.log_id.index != prev.index.next() {
                return violation(
                    "Log Matching",
                    format!(
                        "node {node} appends {:?} after {prev:?}: a gap in its log",
                        e.log_id
                    ),
                );
            }
            let fingerprint = (prev.term, payload_hash(&e.payload));
            let known = *self.ids.entry(e.log_id).or_insert(fingerprint);
            if known != fingerprint {
                return violation(
                    "Log Matching",
                    format!(
                        "entry {:?} on node {node} follows term {} with payload hash {:x}; elsewhere it follows term {} with hash {:x}",
                        e.log_id, fingerprint.0, fingerprint.1, known.0, known.1
                    ),
                );
            }
            ids.push(e.log_id);
        }
        Ok(())
    }

    /// `node` purged its log up to `up_to`.
    pub fn purge(&mut self, node: usize, up_to: LogId) {
        let (base, ids) = &mut self.mirrors[node];
        let drop = up_to.index.distance_from(base.index) as usize;
        ids.drain(..drop.min(ids.len()));
        *base = up_to;
    }

    /// `node` installed a snapshot ending at `last`, keeping the entries after it
    /// unless `discard`.
    pub fn install(&mut self, node: usize, last: LogId, discard: bool) -> Check {
        if !discard {
            let (base, ids) = &self.mirrors[node];
            let held = ids.get(last.index.distance_from(base.index).wrapping_sub(1) as usize);
            if held != Some(&last) && *base != last {
                return violation(
                    "Log Matching",
                    format!(
                        "node {node} keeps its log after a snapshot ending at {last:?} that its log does not hold"
                    ),
                );
            }
            self.purge(node, last);
        } else {
            self.mirrors[node] = (last, Vec::new());
        }
        Ok(())
    }

    /// Compares the mirror of `node` with its core's log.
    pub fn verify(&self, node: usize, raft: &Raft) -> Check {
        let (base, ids) = &self.mirrors[node];
        let mirrored = ids.last().copied().unwrap_or(*base);
        let actual = raft.log().last_log_id();
        if mirrored != actual {
            return violation(
                "Log Matching",
                format!(
                    "node {node}'s log ends at {actual:?} but its writes say {mirrored:?}: the log changed without a Persist"
                ),
            );
        }
        Ok(())
    }
}

/// FNV-1a over the payload, with a tag per kind.
pub(crate) fn payload_hash(payload: &EntryPayload) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    match payload {
        EntryPayload::Blank => eat(&[0]),
        EntryPayload::Command(c) => {
            eat(&[1]);
            eat(c);
        }
        EntryPayload::Membership(m) => {
            eat(&[2]);
            for v in &m.voters {
                eat(&v.0.to_le_bytes());
            }
            eat(&[3]);
            for l in &m.learners {
                eat(&l.0.to_le_bytes());
            }
        }
    }
    h
}
