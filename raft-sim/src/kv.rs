//! The key-value state machine the simulated clients use, with client sessions for
//! exactly-once writes (dissertation §6.3).

use crate::linearizability::{KvOp, KvOutput};
use std::collections::{BTreeMap, HashMap};

/// A write as it travels through the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientCommand {
    /// The client's id.
    pub client: u64,
    /// The client's sequence number for this operation; retries reuse it.
    pub seq: u64,
    /// The key written.
    pub key: u64,
    /// The write.
    pub op: KvOp,
}

/// A key-value store whose values are sequences of write ids.
///
/// Sessions: per client, the last applied sequence number and its output. A command
/// whose sequence number was already applied returns the saved output and changes
/// nothing, so a retried write takes effect once.
#[derive(Clone, Debug, Default)]
pub struct KvStore {
    data: BTreeMap<u64, Vec<u64>>,
    sessions: HashMap<u64, (u64, KvOutput)>,
}

impl KvStore {
    /// Applies a committed command; `None` when it is older than the client's last one
    /// (a late duplicate of an operation the client has finished).
    pub fn apply(&mut self, cmd: &ClientCommand) -> Option<KvOutput> {
        if let Some((seq, output)) = self.sessions.get(&cmd.client) {
            if cmd.seq == *seq {
                return Some(output.clone());
            }
            if cmd.seq < *seq {
                return None;
            }
        }
        let output = match &cmd.op {
            KvOp::Put { value } => {
                self.data.insert(cmd.key, vec![*value]);
                KvOutput::Unit
            }
            KvOp::Append { value } => {
                self.data.entry(cmd.key).or_default().push(*value);
                KvOutput::Unit
            }
            KvOp::Delete => {
                self.data.remove(&cmd.key);
                KvOutput::Unit
            }
            KvOp::Cas { expected, new } => {
                if self.data.get(&cmd.key) == expected.as_ref() {
                    self.data.insert(cmd.key, vec![*new]);
                    KvOutput::Cas(true)
                } else {
                    KvOutput::Cas(false)
                }
            }
            KvOp::Get => KvOutput::Value(self.get(cmd.key)),
        };
        self.sessions.insert(cmd.client, (cmd.seq, output.clone()));
        Some(output)
    }

    /// The current value of `key`.
    pub fn get(&self, key: u64) -> Option<Vec<u64>> {
        self.data.get(&key).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retried_write_applies_once() {
        let mut kv = KvStore::default();
        let append = |seq, value| ClientCommand {
            client: 1,
            seq,
            key: 7,
            op: KvOp::Append { value },
        };
        assert_eq!(kv.apply(&append(1, 10)), Some(KvOutput::Unit));
        assert_eq!(kv.apply(&append(1, 10)), Some(KvOutput::Unit));
        assert_eq!(kv.get(7), Some(vec![10]));
        assert_eq!(kv.apply(&append(2, 11)), Some(KvOutput::Unit));
        assert_eq!(
            kv.apply(&append(1, 10)),
            None,
            "a late duplicate changes nothing"
        );
        assert_eq!(kv.get(7), Some(vec![10, 11]));
    }

    #[test]
    fn a_retried_cas_returns_its_first_answer() {
        let mut kv = KvStore::default();
        let cas = ClientCommand {
            client: 2,
            seq: 1,
            key: 1,
            op: KvOp::Cas {
                expected: None,
                new: 5,
            },
        };
        assert_eq!(kv.apply(&cas), Some(KvOutput::Cas(true)));
        assert_eq!(
            kv.apply(&cas),
            Some(KvOutput::Cas(true)),
            "not re-evaluated against the new value"
        );
    }
}

impl KvStore {
    /// The store as snapshot bytes: keys in order, then sessions in client order, so
    /// equal stores encode to equal bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let put = |out: &mut Vec<u8>, v: u64| out.extend_from_slice(&v.to_le_bytes());
        put(&mut out, self.data.len() as u64);
        for (key, values) in &self.data {
            put(&mut out, *key);
            put(&mut out, values.len() as u64);
            for v in values {
                put(&mut out, *v);
            }
        }
        let mut sessions: Vec<_> = self.sessions.iter().collect();
        sessions.sort_by_key(|(client, _)| **client);
        put(&mut out, sessions.len() as u64);
        for (client, (seq, output)) in sessions {
            put(&mut out, *client);
            put(&mut out, *seq);
            match output {
                KvOutput::Unit => out.push(0),
                KvOutput::Cas(false) => out.push(1),
                KvOutput::Cas(true) => out.push(2),
                KvOutput::Value(None) => out.push(3),
                KvOutput::Value(Some(values)) => {
                    out.push(4);
                    put(&mut out, values.len() as u64);
                    for v in values {
                        put(&mut out, *v);
                    }
                }
            }
        }
        out
    }

    /// A store from snapshot bytes; `None` when they are malformed.
    pub fn decode(bytes: &[u8]) -> Option<KvStore> {
        let mut r = Reader { bytes, pos: 0 };
        let mut kv = KvStore::default();
        for _ in 0..r.u64()? {
            let key = r.u64()?;
            let values = r.values()?;
            kv.data.insert(key, values);
        }
        for _ in 0..r.u64()? {
            let client = r.u64()?;
            let seq = r.u64()?;
            let output = match r.u8()? {
                0 => KvOutput::Unit,
                1 => KvOutput::Cas(false),
                2 => KvOutput::Cas(true),
                3 => KvOutput::Value(None),
                4 => KvOutput::Value(Some(r.values()?)),
                _ => return None,
            };
            kv.sessions.insert(client, (seq, output));
        }
        (r.pos == bytes.len()).then_some(kv)
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn u8(&mut self) -> Option<u8> {
        let b = *self.bytes.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    fn u64(&mut self) -> Option<u64> {
        let raw = self.bytes.get(self.pos..self.pos + 8)?;
        self.pos += 8;
        Some(u64::from_le_bytes(raw.try_into().ok()?))
    }

    fn values(&mut self) -> Option<Vec<u64>> {
        let len = usize::try_from(self.u64()?).ok()?;
        if len > self.bytes.len() / 8 {
            return None;
        }
        (0..len).map(|_| self.u64()).collect()
    }
}

#[cfg(test)]
mod snapshot_tests {
    use super::*;

    #[test]
    fn a_store_round_trips_through_its_snapshot_bytes() {
        let mut kv = KvStore::default();
        kv.apply(&ClientCommand {
            client: 3,
            seq: 1,
            key: 9,
            op: KvOp::Append { value: 5 },
        });
        kv.apply(&ClientCommand {
            client: 1,
            seq: 4,
            key: 2,
            op: KvOp::Cas {
                expected: None,
                new: 6,
            },
        });
        kv.apply(&ClientCommand {
            client: 2,
            seq: 1,
            key: 2,
            op: KvOp::Get,
        });
        let bytes = kv.encode();
        let back = KvStore::decode(&bytes).expect("valid");
        assert_eq!(back.encode(), bytes);
        assert_eq!(back.get(9), Some(vec![5]));
        assert!(KvStore::decode(&bytes[..bytes.len() - 1]).is_none());
    }
}
