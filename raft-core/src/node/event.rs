//! What the node's background tasks (the apply task, snapshot builds, chunk reads)
//! report to the driver, and why a node stops by itself.
//!
//! Both the driver and the apply task use these; neither imports the other's module
//! for them, so the dependency runs one way: driver -> apply -> event.

use super::StorageError;
use raft_proto::{Bytes, LogIndex, NodeId, SnapshotMeta};
use std::sync::Arc;

/// Inputs from the node's own background tasks.
pub(crate) enum Event {
    /// The apply task applied everything up to this index.
    Applied(LogIndex),
    /// A snapshot build finished (`None`: it failed).
    SnapshotBuilt(Option<SnapshotMeta>),
    /// A snapshot chunk was read for a follower.
    ChunkRead {
        to: NodeId,
        id: u64,
        offset: u64,
        data: Option<Bytes>,
        last: bool,
    },
    /// A background task hit a storage error: the node must stop.
    Fatal(FatalError),
}

/// Why a node stopped by itself: the storage error, and what the node was doing when
/// it struck. The node never continues past a write it cannot confirm.
///
/// Cheap to clone (the error is shared), so it can sit in every published
/// [`Metrics`](super::Metrics). Two values are equal when they hold the same failure.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum FatalError {
    /// The log store failed: a write, a purge behind a snapshot, or the reset of the
    /// log after a snapshot install.
    #[error(transparent)]
    Log(Arc<StorageError>),
    /// The state machine failed to apply committed entries.
    #[error(transparent)]
    Apply(Arc<StorageError>),
    /// Reading a snapshot chunk to send to a follower failed.
    #[error(transparent)]
    ReadSnapshot(Arc<StorageError>),
    /// Storing a chunk of a snapshot received from the leader failed.
    #[error(transparent)]
    ReceiveSnapshot(Arc<StorageError>),
    /// Installing a received snapshot as the state failed.
    #[error("install a snapshot failed: {0}")]
    InstallSnapshot(Arc<StorageError>),
    /// The apply task is gone (after one of the failures above, reported first when
    /// the driver saw it).
    #[error("the apply task stopped")]
    ApplyTaskStopped,
}

impl FatalError {
    /// The storage error behind the stop, if there is one.
    pub fn storage(&self) -> Option<&StorageError> {
        match self {
            FatalError::Log(e)
            | FatalError::Apply(e)
            | FatalError::ReadSnapshot(e)
            | FatalError::ReceiveSnapshot(e)
            | FatalError::InstallSnapshot(e) => Some(e),
            FatalError::ApplyTaskStopped => None,
        }
    }
}

impl PartialEq for FatalError {
    fn eq(&self, other: &FatalError) -> bool {
        match (self, other) {
            (FatalError::Log(a), FatalError::Log(b))
            | (FatalError::Apply(a), FatalError::Apply(b))
            | (FatalError::ReadSnapshot(a), FatalError::ReadSnapshot(b))
            | (FatalError::ReceiveSnapshot(a), FatalError::ReceiveSnapshot(b))
            | (FatalError::InstallSnapshot(a), FatalError::InstallSnapshot(b)) => Arc::ptr_eq(a, b),
            (FatalError::ApplyTaskStopped, FatalError::ApplyTaskStopped) => true,
            _ => false,
        }
    }
}

impl Eq for FatalError {}
