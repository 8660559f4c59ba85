//! The clients: each invokes one operation at a time, sends it to its guess of the
//! leader, follows redirects, times out and retries with the same sequence number, and
//! records the outcome in the history.

use crate::checkers::Check;
use crate::client::{Current, Reply, is_write};
use crate::kv::ClientCommand;
use crate::linearizability::{KvOp, KvOutput, Operation, Outcome};
use crate::node::{PendingRead, PendingWrite};
use crate::profile::MS;
use raft_core::{ProposeError, ReadError, Role};
use raft_proto::{Bytes, ReadId};

use super::{Event, OpState, Phase, World};

impl World {
    pub(super) fn think_time(&mut self) -> u64 {
        match self.phase {
            Phase::Faults => {
                let mean = self.profile.fault_phase_us * self.profile.clients
                    / self.profile.ops.max(1)
                    * 4
                    / 5;
                self.rng.range(0, 2 * mean.max(1))
            }
            Phase::Liveness { .. } => self.rng.range(0, MS),
        }
    }

    pub(super) fn client_next(&mut self, c: usize) {
        if self.clients[c].current.is_some() || self.stats.ops >= self.profile.ops {
            return;
        }
        let key = self.rng.range(0, self.profile.keys);
        let value = self.next_value;
        let roll = self.rng.range(0, 100);
        let op = match roll {
            0..35 => KvOp::Get,
            35..60 => {
                self.next_value += 1;
                KvOp::Put { value }
            }
            60..80 => {
                self.next_value += 1;
                KvOp::Append { value }
            }
            80..95 => {
                self.next_value += 1;
                let expected = self.clients[c].last_read.get(&key).cloned().unwrap_or(None);
                KvOp::Cas {
                    expected,
                    new: value,
                }
            }
            _ => KvOp::Delete,
        };
        let client = &mut self.clients[c];
        client.seq += 1;
        let seq = client.seq;
        let op_index = self.history.len();
        self.history.push(Operation {
            client: c as u64,
            key,
            op: op.clone(),
            invoke: self.now,
            outcome: Outcome::Unknown,
        });
        self.commands.push(ClientCommand {
            client: c as u64,
            seq,
            key,
            op,
        });
        self.op_state.push(OpState::default());
        self.stats.ops += 1;
        let target = match client.leader_guess {
            Some(t) => t,
            None => self.rng.range(0, self.nodes.len() as u64) as usize,
        };
        self.clients[c].current = Some(Current {
            op: op_index,
            attempt: 0,
            timeouts: 0,
            maybe_applied: false,
            target,
        });
        self.send_attempt(c);
    }

    pub(super) fn send_attempt(&mut self, c: usize) {
        if let Some(cur) = self.clients[c].current {
            self.schedule_attempt(c, cur.target, cur.attempt, 0);
        }
    }

    /// Sends attempt `attempt` of client `c`'s operation to `target` after `delay`, and
    /// arms its timeout.
    pub(super) fn schedule_attempt(&mut self, c: usize, target: usize, attempt: u32, delay: u64) {
        let seq = self.clients[c].seq;
        if let Some(d) = self.net.client_delay() {
            let arrive = Event::ClientArrive {
                node: target,
                client: c,
                seq,
                attempt,
            };
            self.schedule(delay + d, arrive);
        }
        let timeout = self.profile.client_timeout_us + delay;
        self.schedule(
            timeout,
            Event::ClientTimeout {
                client: c,
                seq,
                attempt,
            },
        );
    }

    /// Retries the current operation at `target` (a new attempt, same sequence number).
    pub(super) fn retry(&mut self, c: usize, target: usize, delay: u64) {
        let Some(cur) = &mut self.clients[c].current else {
            return;
        };
        cur.attempt += 1;
        cur.target = target;
        let attempt = cur.attempt;
        let trying_for = self.now - self.history[cur.op].invoke;
        if trying_for > self.give_up_us && self.phase == Phase::Faults {
            self.finish_op(c, None);
            return;
        }
        self.schedule_attempt(c, target, attempt, delay);
    }

    pub(super) fn client_arrive(&mut self, i: usize, c: usize, seq: u64, attempt: u32) -> Check {
        if !self.nodes[i].is_up(self.now) || self.clients[c].seq != seq {
            return Ok(());
        }
        let Some(cur) = self.clients[c].current else {
            return Ok(());
        };
        let cmd = self.commands[cur.op].clone();
        let node = &mut self.nodes[i];
        let Some(raft) = node.raft.as_mut() else {
            return Ok(());
        };
        let already_proposed = node
            .writes
            .values_mut()
            .find(|w| w.client == c && w.seq == seq && w.log_id.term == raft.term());
        let reply = if let Some(pending) = already_proposed.filter(|_| raft.role() == Role::Leader)
        {
            // This leader already has the operation in its log for this term: answer
            // the new attempt when that entry applies instead of appending a copy (a
            // retry storm would otherwise grow the log faster than it commits).
            pending.attempt = attempt;
            None
        } else if is_write(&cmd.op) {
            match raft.propose(Bytes::from((cur.op as u64).to_le_bytes().to_vec())) {
                Ok(log_id) => {
                    let old = node.writes.insert(
                        log_id.index,
                        PendingWrite {
                            log_id,
                            client: c,
                            seq,
                            attempt,
                        },
                    );
                    // An older proposal at this index was overwritten: it never applies.
                    old.map(|w| (w.client, w.seq, w.attempt, Reply::Retry))
                }
                Err(ProposeError::NotLeader(nl)) => {
                    Some((c, seq, attempt, Reply::NotLeader(nl.leader_hint)))
                }
                Err(_) => Some((c, seq, attempt, Reply::Retry)),
            }
        } else {
            let id = ReadId(node.next_read);
            node.next_read += 1;
            match raft.read_index(id) {
                Ok(()) => {
                    node.reads.insert(
                        id,
                        PendingRead {
                            client: c,
                            seq,
                            attempt,
                            key: cmd.key,
                        },
                    );
                    None
                }
                Err(ReadError::NotLeader(nl)) => {
                    Some((c, seq, attempt, Reply::NotLeader(nl.leader_hint)))
                }
                Err(_) => Some((c, seq, attempt, Reply::Retry)),
            }
        };
        if let Some((rc, rs, ra, r)) = reply {
            self.reply(rc, rs, ra, r);
        }
        self.drive(i)?;
        self.check_node(i)
    }

    pub(super) fn reply(&mut self, c: usize, seq: u64, attempt: u32, reply: Reply) {
        if let Some(d) = self.net.client_delay() {
            self.schedule(
                d,
                Event::ClientReply {
                    client: c,
                    seq,
                    attempt,
                    reply,
                },
            );
        }
    }

    pub(super) fn client_reply(&mut self, c: usize, seq: u64, attempt: u32, reply: Reply) -> Check {
        let client = &self.clients[c];
        let Some(cur) = client.current else {
            return Ok(());
        };
        if client.seq != seq {
            return Ok(());
        }
        match reply {
            Reply::Ok { output, log_id } => {
                if let Some(id) = log_id {
                    self.checkers
                        .acked_writes
                        .ack(id, &self.checkers.committed)?;
                }
                self.finish_op(c, Some(output));
            }
            // Only the answer to the current attempt redirects the client.
            Reply::NotLeader(hint) if attempt == cur.attempt => {
                let target = hint
                    .and_then(|h| self.index_of(h))
                    .filter(|&t| t != cur.target);
                let target = target.unwrap_or_else(|| self.other_node(cur.target));
                self.clients[c].leader_guess = hint.and_then(|h| self.index_of(h));
                let backoff = if hint.is_some() {
                    0
                } else {
                    self.rng.range(MS, 20 * MS)
                };
                self.retry(c, target, backoff);
            }
            Reply::Retry if attempt == cur.attempt => {
                let backoff = self.rng.range(MS, 20 * MS);
                self.retry(c, cur.target, backoff);
            }
            _ => {}
        }
        Ok(())
    }

    pub(super) fn other_node(&mut self, not: usize) -> usize {
        let n = self.nodes.len() as u64;
        (not + 1 + self.rng.range(0, n - 1) as usize) % n as usize
    }

    pub(super) fn client_timeout(&mut self, c: usize, seq: u64, attempt: u32) {
        let client = &mut self.clients[c];
        let Some(cur) = &mut client.current else {
            return;
        };
        if client.seq != seq || cur.attempt != attempt {
            return;
        }
        // The attempt may have reached a node and taken effect.
        cur.maybe_applied = true;
        cur.timeouts += 1;
        client.leader_guess = None;
        let (target, timeouts) = (cur.target, cur.timeouts);
        let other = self.other_node(target);
        // Exponential backoff with jitter: a congested cluster is not fed more retries.
        let cap = (10 * MS) << timeouts.min(6);
        let backoff = self.rng.range(0, cap);
        self.retry(c, other, backoff);
    }

    /// Ends the current operation: with its output, or (`None`) given up.
    pub(super) fn finish_op(&mut self, c: usize, output: Option<KvOutput>) {
        let Some(cur) = self.clients[c].current.take() else {
            return;
        };
        let op = &mut self.history[cur.op];
        match output {
            Some(output) => {
                if let (KvOp::Get, KvOutput::Value(v)) = (&op.op, &output) {
                    self.clients[c].last_read.insert(op.key, v.clone());
                }
                let write = is_write(&op.op);
                op.outcome = Outcome::Ok {
                    ret: self.now,
                    output,
                };
                self.stats.ops_ok += 1;
                if write {
                    // Sessions: this write was applied, so the state machine now ignores
                    // every older sequence number of this client. Its earlier writes of
                    // unknown outcome took effect before now, or never will.
                    for earlier in std::mem::take(&mut self.clients[c].open_unknown) {
                        self.history[earlier].outcome = Outcome::MaybeBefore { ret: self.now };
                    }
                }
            }
            None if cur.maybe_applied && is_write(&op.op) => {
                self.stats.ops_unknown += 1;
                self.clients[c].open_unknown.push(cur.op);
            }
            None => {
                self.op_state[cur.op].failed = true;
                self.stats.ops_failed += 1;
            }
        }
        self.op_state[cur.op].done = true;
        let think = self.think_time();
        self.schedule(think, Event::ClientNext { client: c });
    }
}
