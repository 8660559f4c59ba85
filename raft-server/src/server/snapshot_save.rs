//! A snapshot save for a backup: confirm the node is up to date, make sure a snapshot
//! covers it, and stream that snapshot to the client.

use super::{Caller, Shared, now_ms};
use crate::proto::{self, AdminOp, SaveFrame, SaveHeader, ServerError};
use raft_core::node::StateMachine;
use std::time::{Duration, Instant};

/// How long a snapshot save waits for the leader to confirm the node is up to date;
/// past it the save goes on with what the node applied, marked unconfirmed.
const SAVE_BARRIER_WAIT: Duration = Duration::from_secs(5);

/// How long a snapshot save waits for a snapshot that covers what was applied.
const SAVE_SNAPSHOT_WAIT: Duration = Duration::from_secs(300);

impl Shared {
    /// A snapshot save ([`AdminOp::SaveSnapshot`]) on its own stream: streams the
    /// node's newest snapshot as [`SaveFrame`]s, or one error frame.
    pub(super) async fn serve_save(&self, caller: &Caller, mut send: quinn::SendStream) {
        let started = Instant::now();
        match self.save_snapshot(caller, &mut send).await {
            Ok(header) => {
                tracing::info!(node = %self.id, client = %caller.info.principal, snapshot = ?header.meta.last_log_id, bytes = header.size, confirmed = header.confirmed, elapsed = ?started.elapsed(), "streamed a snapshot for a backup");
            }
            Err(e) => {
                tracing::warn!(node = %self.id, client = %caller.info.principal, error = %e, "a snapshot save failed");
                let _ = self.send_save(&mut send, &SaveFrame::Error(e)).await;
            }
        }
        let _ = send.finish();
    }

    /// Makes sure a snapshot covers every write acknowledged before now (a ReadIndex
    /// round, then a snapshot at or after what is applied), and streams it. The
    /// snapshot is a file the state machine wrote from one read transaction: a
    /// point-in-time view, whatever is applied meanwhile.
    async fn save_snapshot(
        &self,
        caller: &Caller,
        send: &mut quinn::SendStream,
    ) -> Result<SaveHeader, ServerError> {
        self.authorize(caller, &AdminOp::SaveSnapshot)?;
        let Ok(_permit) = self.saves.try_acquire() else {
            return Err(ServerError::Busy(
                "a snapshot save is already in progress on this node".into(),
            ));
        };
        let taken_at_ms = now_ms();
        let read_index = match tokio::time::timeout(SAVE_BARRIER_WAIT, self.node.read()).await {
            Ok(Ok(index)) => Some(index),
            Ok(Err(e)) => {
                tracing::warn!(node = %self.id, error = %e, "a snapshot save could not confirm with the leader that this node is up to date; saving what it applied");
                None
            }
            Err(_) => {
                tracing::warn!(node = %self.id, "a snapshot save got no confirmation from the leader within {SAVE_BARRIER_WAIT:?}; saving what this node applied");
                None
            }
        };
        let confirmed = read_index.is_some();
        let (applied, lost) = self.node.metrics().with(|m| (m.applied, m.state_lost));
        // Every write acknowledged before the request is at or below the read index,
        // and applied here once the read returned.
        let floor = read_index.map_or(applied, |r| r.max(applied));
        if lost {
            return Err(ServerError::Failed(
                "this node lost its state machine's state and waits for a snapshot from the leader; save from another node".into(),
            ));
        }
        let failed =
            |what: &str, e: &dyn std::fmt::Display| ServerError::Failed(format!("{what}: {e}"));
        let deadline = Instant::now() + SAVE_SNAPSHOT_WAIT;
        let meta = loop {
            let state = self
                .sm
                .state()
                .await
                .map_err(|e| failed("reading the state machine", &e))?;
            if let Some(s) = state
                .snapshot
                .filter(|s| s.id != 0 && s.last_log_id.index >= floor)
            {
                break s;
            }
            if Instant::now() >= deadline {
                return Err(ServerError::Failed(format!(
                    "no snapshot covering index {} was built within {SAVE_SNAPSHOT_WAIT:?}",
                    floor.0
                )));
            }
            // False while one is being built: the next round asks again.
            let _ = self.node.trigger_snapshot().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let pruned = || {
            ServerError::Failed(format!(
                "snapshot {:x} was replaced by newer ones during the transfer; retry",
                meta.id
            ))
        };
        let size = self
            .sm
            .snapshot_size(meta.id)
            .map_err(|e| failed("reading the snapshot's metadata", &e))?
            .ok_or_else(pruned)?;
        let header = SaveHeader {
            cluster: self.cluster.clone(),
            node: self.id,
            taken_at_ms,
            confirmed,
            meta: meta.clone(),
            size,
        };
        self.send_save(send, &SaveFrame::Header(header.clone()))
            .await?;
        let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
        let mut offset = 0u64;
        loop {
            let (bytes, last) = self
                .sm
                .read_snapshot(meta.id, offset, proto::SAVE_CHUNK)
                .await
                .map_err(|e| failed("reading the snapshot", &e))?
                .ok_or_else(pruned)?;
            if bytes.is_empty() && !last {
                return Err(ServerError::Failed(format!(
                    "the snapshot file ended at {offset} bytes of {size}"
                )));
            }
            digest.update(&bytes);
            offset += bytes.len() as u64;
            if !bytes.is_empty() {
                self.send_save(send, &SaveFrame::Chunk(bytes)).await?;
            }
            if last {
                break;
            }
        }
        if offset != size {
            return Err(ServerError::Failed(format!(
                "the snapshot file holds {offset} bytes, its metadata says {size}"
            )));
        }
        let mut sha256 = [0u8; 32];
        sha256.copy_from_slice(digest.finish().as_ref());
        self.send_save(send, &SaveFrame::End { size, sha256 })
            .await?;
        Ok(header)
    }

    /// Writes one frame of a snapshot save, within the frame timeout.
    async fn send_save(
        &self,
        send: &mut quinn::SendStream,
        frame: &SaveFrame,
    ) -> Result<(), ServerError> {
        let bytes = proto::encode(frame)
            .map_err(|e| ServerError::Failed(format!("cannot encode a frame: {e}")))?;
        match tokio::time::timeout(self.limits.timeout, send.write_all(&bytes)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ServerError::Unknown(format!("the client went away: {e}"))),
            Err(_) => Err(ServerError::Unknown(format!(
                "the client read nothing for {:?}",
                self.limits.timeout
            ))),
        }
    }
}
