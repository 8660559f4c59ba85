//! The apply task: applies committed entries, builds, receives and installs
//! snapshots, in the order the core asked, and answers the clients waiting on entries.

use super::event::{Event, FatalError};
use super::{ChangeReply, ProposeReply, Runtime, StateMachine, StorageError};
use futures::channel::{mpsc, oneshot};
use futures::{FutureExt, StreamExt};
use raft_proto::{Bytes, Entry, LogId, LogIndex, SnapshotMeta};
use std::sync::Arc;

/// A client waiting for an entry in an `Apply` job.
pub(crate) enum Waiter {
    Propose(LogIndex, ProposeReply),
    Change(LogId, ChangeReply),
}

/// Work for the apply task, carried out in the order sent.
pub(crate) enum Job {
    Apply {
        entries: Vec<Entry>,
        waiters: Vec<Waiter>,
    },
    BuildSnapshot(SnapshotMeta),
    Receive {
        meta: SnapshotMeta,
        offset: u64,
        data: Bytes,
    },
    /// Install `meta`; the outcome goes to `done` (the driver reports a failure).
    Install {
        meta: SnapshotMeta,
        done: oneshot::Sender<Result<(), StorageError>>,
    },
    Stop(oneshot::Sender<()>),
}

/// What the task does after a job.
enum Next {
    Continue,
    Stop,
}

/// The task that owns the calls into the state machine, one job at a time.
pub(crate) struct ApplyTask {
    sm: Arc<dyn StateMachine>,
    runtime: Arc<dyn Runtime>,
    events: mpsc::UnboundedSender<Event>,
    jobs: mpsc::UnboundedReceiver<Job>,
    /// A job taken out of the queue while gathering applies, to run next.
    held: Option<Job>,
}

impl ApplyTask {
    /// Starts the task on `runtime`; returns where to send it jobs.
    pub(crate) fn spawn(
        sm: Arc<dyn StateMachine>,
        runtime: Arc<dyn Runtime>,
        events: mpsc::UnboundedSender<Event>,
    ) -> mpsc::UnboundedSender<Job> {
        let (tx, jobs) = mpsc::unbounded::<Job>();
        let task = ApplyTask {
            sm,
            runtime: runtime.clone(),
            events,
            jobs,
            held: None,
        };
        runtime.spawn(task.run().boxed());
        tx
    }

    /// Runs jobs until told to stop, the driver is gone, or a job fails; a failure
    /// is reported to the driver, which stops the node.
    async fn run(mut self) {
        while let Some(job) = self.next_job().await {
            match self.run_job(job).await {
                Ok(Next::Continue) => {}
                Ok(Next::Stop) => return,
                Err(e) => {
                    let _ = self.events.unbounded_send(Event::Fatal(e));
                    return;
                }
            }
        }
    }

    async fn next_job(&mut self) -> Option<Job> {
        match self.held.take() {
            Some(job) => Some(job),
            None => self.jobs.next().await,
        }
    }

    async fn run_job(&mut self, job: Job) -> Result<Next, FatalError> {
        match job {
            Job::Apply { entries, waiters } => self.apply_batch(entries, waiters).await?,
            Job::BuildSnapshot(meta) => self.build_snapshot(meta),
            Job::Receive { meta, offset, data } => self
                .sm
                .receive_snapshot(&meta, offset, data)
                .await
                .map_err(|e| FatalError::ReceiveSnapshot(Arc::new(e)))?,
            Job::Install { meta, done } => return Ok(self.install(&meta, done).await),
            Job::Stop(done) => {
                let _ = done.send(());
                return Ok(Next::Stop);
            }
        }
        Ok(Next::Continue)
    }

    /// Applies `entries` and every apply queued behind them, answers their waiters,
    /// and tells the driver how far it got.
    async fn apply_batch(
        &mut self,
        mut entries: Vec<Entry>,
        mut waiters: Vec<Waiter>,
    ) -> Result<(), FatalError> {
        self.gather(&mut entries, &mut waiters);
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            return Ok(());
        };
        let (first, last) = (first.log_id.index, last.log_id.index);
        let mut responses = self
            .sm
            .apply(&entries)
            .await
            .map_err(|e| FatalError::Apply(Arc::new(e)))?;
        answer(waiters, first, &mut responses);
        let _ = self.events.unbounded_send(Event::Applied(last));
        Ok(())
    }

    /// Applies that queued up while the state machine was busy go in one call (one
    /// transaction, one sync); they are contiguous and in order, and any other job
    /// keeps its place after them.
    fn gather(&mut self, entries: &mut Vec<Entry>, waiters: &mut Vec<Waiter>) {
        while let Ok(next) = self.jobs.try_recv() {
            match next {
                Job::Apply {
                    entries: more,
                    waiters: more_waiters,
                } => {
                    entries.extend(more);
                    waiters.extend(more_waiters);
                }
                other => {
                    self.held = Some(other);
                    return;
                }
            }
        }
    }

    /// Captures the state now (between applies, in order) and writes it out in the
    /// background while applies go on. A failed build is retried later, not fatal.
    fn build_snapshot(&self, meta: SnapshotMeta) {
        let task = self.sm.begin_snapshot(meta);
        let events = self.events.clone();
        self.runtime.spawn(
            async move {
                let built = match task.await {
                    Ok(meta) => Some(meta),
                    Err(e) => {
                        tracing::error!(error = %e, "building a snapshot failed; it will be retried");
                        None
                    }
                };
                let _ = events.unbounded_send(Event::SnapshotBuilt(built));
            }
            .boxed(),
        );
    }

    /// Installs a received snapshot; the driver learns the outcome from `done` and
    /// fixes the log behind it. The task stops after a failure.
    async fn install(
        &self,
        meta: &SnapshotMeta,
        done: oneshot::Sender<Result<(), StorageError>>,
    ) -> Next {
        let result = self.sm.install_snapshot(meta).await;
        let failed = result.is_err();
        let _ = done.send(result);
        if failed { Next::Stop } else { Next::Continue }
    }
}

/// Gives each waiter its entry's response (`first` is the index of `responses[0]`).
fn answer(waiters: Vec<Waiter>, first: LogIndex, responses: &mut [Bytes]) {
    for w in waiters {
        match w {
            Waiter::Propose(index, reply) => {
                let i = index.distance_from(first) as usize;
                let r = responses.get_mut(i).map(std::mem::take).unwrap_or_default();
                let _ = reply.send(Ok(r));
            }
            Waiter::Change(id, reply) => {
                let _ = reply.send(Ok(id));
            }
        }
    }
}
