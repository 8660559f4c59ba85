//! The node's log store and state machine, wrapped so that every call is timed or
//! counted in the server's metrics.

use crate::kv::Kv;
use crate::metrics::ServerMetrics;
use raft_core::Persist;
use raft_core::node::{
    LogStore, MachineState, SnapshotTask, StateMachine, StorageError, StoredLog,
};
use raft_proto::{Bytes, Entry, LogId, SnapshotMeta};
use raft_storage_lmdb::{LmdbLogStore, LmdbStateMachine};
use std::sync::Arc;
use std::time::Instant;

/// The log store, timed.
pub(super) struct MeteredLog {
    pub(super) inner: LmdbLogStore,
    pub(super) metrics: Arc<ServerMetrics>,
}

#[async_trait::async_trait]
impl LogStore for MeteredLog {
    async fn load(&self) -> Result<StoredLog, StorageError> {
        self.inner.load().await
    }

    async fn write(&self, batch: &Persist) -> Result<(), StorageError> {
        let started = Instant::now();
        let r = self.inner.write(batch).await;
        self.metrics
            .log_write_seconds
            .observe_duration(started.elapsed());
        self.metrics
            .log_batch_entries
            .observe(batch.entries.len() as f64);
        r
    }

    async fn purge(&self, up_to: LogId, base: &SnapshotMeta) -> Result<(), StorageError> {
        self.inner.purge(up_to, base).await
    }

    async fn reset(&self, base: &SnapshotMeta) -> Result<(), StorageError> {
        self.inner.reset(base).await
    }
}

/// The state machine, counted.
pub(super) struct MeteredMachine {
    pub(super) inner: LmdbStateMachine<Kv>,
    pub(super) metrics: Arc<ServerMetrics>,
}

#[async_trait::async_trait]
impl StateMachine for MeteredMachine {
    async fn state(&self) -> Result<MachineState, StorageError> {
        self.inner.state().await
    }

    async fn apply(&self, entries: &[Entry]) -> Result<Vec<Bytes>, StorageError> {
        self.metrics
            .apply_batch_entries
            .observe(entries.len() as f64);
        self.inner.apply(entries).await
    }

    fn begin_snapshot(&self, meta: SnapshotMeta) -> SnapshotTask {
        let task = self.inner.begin_snapshot(meta);
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let started = Instant::now();
            let r = task.await;
            if r.is_ok() {
                metrics.snapshots.inc();
                metrics.snapshot_seconds.observe_duration(started.elapsed());
            }
            r
        })
    }

    async fn read_snapshot(
        &self,
        id: u64,
        offset: u64,
        len: usize,
    ) -> Result<Option<(Bytes, bool)>, StorageError> {
        self.inner.read_snapshot(id, offset, len).await
    }

    async fn receive_snapshot(
        &self,
        meta: &SnapshotMeta,
        offset: u64,
        data: Bytes,
    ) -> Result<(), StorageError> {
        self.inner.receive_snapshot(meta, offset, data).await
    }

    async fn install_snapshot(&self, meta: &SnapshotMeta) -> Result<(), StorageError> {
        self.inner.install_snapshot(meta).await?;
        self.metrics.snapshots_installed.inc();
        tracing::info!(last = ?meta.last_log_id, "installed a snapshot from the leader");
        Ok(())
    }
}
