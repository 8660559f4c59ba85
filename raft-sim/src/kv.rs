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
