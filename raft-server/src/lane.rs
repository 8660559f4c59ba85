//! The client's end of a lane (see [`proto`](crate::proto)): one stream per connection
//! carrying every request, each tagged with an id, the answers matched back by id.
//! A writer task sends the requests queued since its last write in one write; a reader
//! task hands each answer to its caller.

use crate::proto::{self, Request, Response, Tagged};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio::sync::{mpsc, oneshot};

/// Bytes of requests written to the stream at once, at most.
const WRITE_BATCH: usize = 256 << 10;

type Reply = oneshot::Sender<Result<Response, String>>;

#[derive(Default)]
struct Calls {
    waiting: HashMap<u64, Reply>,
    /// Why the lane stopped working; no call is accepted after this.
    broken: Option<String>,
}

fn lock(calls: &Mutex<Calls>) -> MutexGuard<'_, Calls> {
    calls.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Ends every call waiting on the lane with `reason`.
fn break_lane(calls: &Mutex<Calls>, reason: String) {
    let mut c = lock(calls);
    for (_, reply) in c.waiting.drain() {
        let _ = reply.send(Err(reason.clone()));
    }
    c.broken.get_or_insert(reason);
}

/// How a call on a lane ended.
pub(crate) enum Outcome {
    /// The request was never handed to the stream.
    NotSent(String),
    /// It may have been sent, and no answer came.
    Lost(String),
    /// The server's answer.
    Answer(Response),
}

/// One connection's lane.
pub(crate) struct Lane {
    frames: mpsc::UnboundedSender<Vec<u8>>,
    calls: Arc<Mutex<Calls>>,
    next_id: AtomicU64,
}

impl Lane {
    /// Opens a lane on `conn` (a new stream).
    pub(crate) async fn open(conn: &quinn::Connection) -> Result<Lane, String> {
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        let (frames, mut queued) = mpsc::unbounded_channel::<Vec<u8>>();
        let calls = Arc::new(Mutex::new(Calls::default()));
        let on_write_error = calls.clone();
        tokio::spawn(async move {
            let mut buf = proto::LANE_PREAMBLE.to_vec();
            while let Some(frame) = queued.recv().await {
                buf.extend_from_slice(&frame);
                while buf.len() < WRITE_BATCH {
                    match queued.try_recv() {
                        Ok(frame) => buf.extend_from_slice(&frame),
                        Err(_) => break,
                    }
                }
                if let Err(e) = send.write_all(&buf).await {
                    break_lane(&on_write_error, format!("the lane broke: {e}"));
                    return;
                }
                buf.clear();
            }
            let _ = send.finish();
        });
        let answers = calls.clone();
        tokio::spawn(async move {
            let reason = loop {
                let body = match proto::read_frame(&mut recv).await {
                    Ok(body) => body,
                    Err(e) => break e,
                };
                match proto::decode::<Tagged<Response>>(&body) {
                    Ok(answer) => {
                        let reply = lock(&answers).waiting.remove(&answer.id);
                        if let Some(reply) = reply {
                            let _ = reply.send(Ok(answer.body));
                        }
                    }
                    Err(e) => break format!("undecodable response: {e}"),
                }
            };
            break_lane(&answers, reason);
        });
        Ok(Lane {
            frames,
            calls,
            next_id: AtomicU64::new(1),
        })
    }

    /// Whether the lane stopped working (a new one is needed).
    pub(crate) fn is_broken(&self) -> bool {
        lock(&self.calls).broken.is_some() || self.frames.is_closed()
    }

    /// Sends `request` and waits for its answer. Dropping the future forgets the call.
    pub(crate) async fn call(&self, request: &Request) -> Outcome {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut frame = Vec::new();
        if let Err(e) = proto::encode_into(&Tagged { id, body: request }, &mut frame) {
            return Outcome::NotSent(format!("cannot encode the request: {e}"));
        }
        let (reply, answer) = oneshot::channel();
        {
            let mut c = lock(&self.calls);
            if let Some(reason) = &c.broken {
                return Outcome::NotSent(reason.clone());
            }
            c.waiting.insert(id, reply);
        }
        let forget = Forget {
            calls: &self.calls,
            id,
        };
        if self.frames.send(frame).is_err() {
            return Outcome::NotSent("the lane is closed".into());
        }
        let outcome = match answer.await {
            Ok(Ok(response)) => Outcome::Answer(response),
            Ok(Err(reason)) => Outcome::Lost(reason),
            Err(_) => Outcome::Lost("the lane closed".into()),
        };
        drop(forget);
        outcome
    }
}

/// Removes a call from the lane's table when its caller stops waiting.
struct Forget<'a> {
    calls: &'a Mutex<Calls>,
    id: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        lock(self.calls).waiting.remove(&self.id);
    }
}

impl Drop for Lane {
    fn drop(&mut self) {
        break_lane(&self.calls, "the lane was closed".into());
    }
}
