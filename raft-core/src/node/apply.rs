//! The apply task: applies committed entries, builds, receives and installs
//! snapshots, in the order the core asked, and answers the clients waiting on entries.

use super::driver::Event;
use super::{ChangeReply, ProposeReply, Runtime, StateMachine};
use futures::channel::{mpsc, oneshot};
use futures::{FutureExt, StreamExt};
use raft_proto::{Bytes, Entry, LogId, LogIndex, SnapshotMeta};
use std::sync::Arc;

/// A client waiting for an entry in an `Apply` job.
pub(crate) enum Waiter {
    Propose(LogIndex, ProposeReply),
    Change(LogId, ChangeReply),
}

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
    Install {
        meta: SnapshotMeta,
        done: oneshot::Sender<Result<(), String>>,
    },
    Stop(oneshot::Sender<()>),
}

pub(crate) fn spawn(
    sm: Arc<dyn StateMachine>,
    runtime: Arc<dyn Runtime>,
    events: mpsc::UnboundedSender<Event>,
) -> mpsc::UnboundedSender<Job> {
    let (tx, mut jobs) = mpsc::unbounded::<Job>();
    let rt = runtime.clone();
    runtime.spawn(
        async move {
            // A job taken out of the queue while gathering applies, to run next.
            let mut held: Option<Job> = None;
            loop {
                let job = match held.take() {
                    Some(job) => job,
                    None => match jobs.next().await {
                        Some(job) => job,
                        None => break,
                    },
                };
                match job {
                    Job::Apply {
                        mut entries,
                        mut waiters,
                    } => {
                        // Applies that queued up while the state machine was busy go
                        // in one call (one transaction, one sync); they are contiguous
                        // and in order, and any other job keeps its place after them.
                        while let Ok(next) = jobs.try_recv() {
                            match next {
                                Job::Apply {
                                    entries: more,
                                    waiters: more_waiters,
                                } => {
                                    entries.extend(more);
                                    waiters.extend(more_waiters);
                                }
                                other => {
                                    held = Some(other);
                                    break;
                                }
                            }
                        }
                        let Some(last) = entries.last().map(|e| e.log_id.index) else { continue };
                        let first = entries[0].log_id.index;
                        match sm.apply(&entries).await {
                            Ok(mut responses) => {
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
                                let _ = events.unbounded_send(Event::Applied(last));
                            }
                            Err(e) => {
                                let _ = events.unbounded_send(Event::Fatal(e.to_string()));
                                return;
                            }
                        }
                    }
                    Job::BuildSnapshot(meta) => {
                        let task = sm.begin_snapshot(meta);
                        let events = events.clone();
                        rt.spawn(
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
                    Job::Receive { meta, offset, data } => {
                        if let Err(e) = sm.receive_snapshot(&meta, offset, data).await {
                            let _ = events.unbounded_send(Event::Fatal(e.to_string()));
                            return;
                        }
                    }
                    Job::Install { meta, done } => {
                        let result = sm.install_snapshot(&meta).await.map_err(|e| e.to_string());
                        let failed = result.is_err();
                        let _ = done.send(result);
                        if failed {
                            return;
                        }
                    }
                    Job::Stop(done) => {
                        let _ = done.send(());
                        return;
                    }
                }
            }
        }
        .boxed(),
    );
    tx
}
