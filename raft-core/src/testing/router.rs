//! An in-process transport: every node's messages go through one router, which can cut
//! links to simulate partitions.

use crate::node::Transport;
use futures::StreamExt;
use futures::channel::mpsc;
use futures::stream::BoxStream;
use raft_proto::{Message, NodeId};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Messages queued per node before the router drops more (bounded memory).
const CAPACITY: usize = 1 << 16;

#[derive(Default)]
struct Inner {
    peers: HashMap<NodeId, mpsc::Sender<(NodeId, Message)>>,
    blocked: HashSet<(NodeId, NodeId)>,
    dropped: u64,
}

/// Connects in-process nodes. Clones share the same router.
#[derive(Clone, Default)]
pub struct Router {
    inner: Arc<Mutex<Inner>>,
}

fn lock(m: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Router {
    /// A router with no nodes.
    pub fn new() -> Router {
        Router::default()
    }

    /// Connects node `id`: its transport, and the stream of messages sent to it. A node
    /// registered again (a restart) replaces its old stream.
    pub fn register(
        &self,
        id: NodeId,
    ) -> (Arc<RouterTransport>, BoxStream<'static, (NodeId, Message)>) {
        let (tx, rx) = mpsc::channel(CAPACITY);
        lock(&self.inner).peers.insert(id, tx);
        (
            Arc::new(RouterTransport {
                id,
                router: self.clone(),
            }),
            rx.boxed(),
        )
    }

    /// Disconnects `id`: messages to it are dropped.
    pub fn unregister(&self, id: NodeId) {
        lock(&self.inner).peers.remove(&id);
    }

    /// Cuts every link to and from `id`.
    pub fn isolate(&self, id: NodeId) {
        let mut inner = lock(&self.inner);
        let others: Vec<NodeId> = inner.peers.keys().copied().filter(|&p| p != id).collect();
        for o in others {
            inner.blocked.insert((id, o));
            inner.blocked.insert((o, id));
        }
    }

    /// Restores every link.
    pub fn heal(&self) {
        lock(&self.inner).blocked.clear();
    }

    /// Messages dropped so far (cut links, unknown or full receivers).
    pub fn dropped(&self) -> u64 {
        lock(&self.inner).dropped
    }

    fn deliver(&self, from: NodeId, to: NodeId, message: Message) {
        let mut inner = lock(&self.inner);
        if inner.blocked.contains(&(from, to)) {
            inner.dropped += 1;
            return;
        }
        let delivered = inner
            .peers
            .get_mut(&to)
            .is_some_and(|tx| tx.try_send((from, message)).is_ok());
        if !delivered {
            inner.dropped += 1;
        }
    }
}

/// One node's side of a [`Router`].
pub struct RouterTransport {
    id: NodeId,
    router: Router,
}

impl Transport for RouterTransport {
    fn send(&self, to: NodeId, message: Message) {
        self.router.deliver(self.id, to, message);
    }
}
