//! Client connections: admission against the connection limits, and the requests read
//! off their streams, one per stream or many on a lane, answered by the handler.

use super::{CLOSE_BUSY, Caller, Shared};
use crate::budget::{Held, Reservation};
use crate::kv;
use crate::proto::{self, AdminOp, FrameError, Request, Response, ServerError, Tagged};
use futures::{FutureExt, StreamExt};
use raft_net_quic::CertInfo;
use std::collections::HashMap;
use std::sync::Arc;

/// Requests of one lane in progress at once.
const LANE_IN_FLIGHT: usize = 1024;

/// Client connections open on a node.
#[derive(Default)]
pub(super) struct Connections {
    pub(super) total: u64,
    per_client: HashMap<String, u64>,
}

/// A client connection's place in [`Connections`], given back when dropped.
struct ConnectionSlot {
    shared: Arc<Shared>,
    principal: String,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut c = self
            .shared
            .connections
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_client.get_mut(&self.principal) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.per_client.remove(&self.principal);
            }
        }
    }
}

impl Shared {
    /// Takes a place for a connection of `principal`, or says which limit is reached.
    fn admit(self: &Arc<Self>, principal: &str) -> Result<ConnectionSlot, String> {
        let c = &self.config.config;
        let mut conns = self
            .connections
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if conns.total >= c.max_client_connections {
            return Err(format!(
                "busy: {} client connections are open on this node (max_client_connections)",
                conns.total
            ));
        }
        let mine = conns.per_client.get(principal).copied().unwrap_or(0);
        if mine >= c.max_connections_per_client {
            return Err(format!(
                "busy: {mine} connections of {principal} are open on this node (max_connections_per_client)"
            ));
        }
        conns.total += 1;
        conns.per_client.insert(principal.to_string(), mine + 1);
        Ok(ConnectionSlot {
            shared: self.clone(),
            principal: principal.to_string(),
        })
    }

    pub(super) async fn serve_connection(self: Arc<Self>, conn: quinn::Connection) {
        let remote = conn.remote_address();
        let info = match raft_net_quic::cert::peer_certificate(&conn).map(|c| CertInfo::parse(&c)) {
            Some(Ok(info)) => info,
            Some(Err(e)) => {
                tracing::warn!(node = %self.id, %remote, error = %e, "closing a client connection: its certificate is unreadable");
                conn.close(1u32.into(), b"unreadable certificate");
                return;
            }
            None => {
                conn.close(1u32.into(), b"no client certificate");
                return;
            }
        };
        let _slot = match self.admit(&info.principal) {
            Ok(slot) => slot,
            Err(reason) => {
                tracing::debug!(node = %self.id, %remote, client = %info.principal, reason, "refused a client connection");
                self.metrics.connections_refused.inc();
                conn.close(CLOSE_BUSY.into(), reason.as_bytes());
                return;
            }
        };
        tracing::debug!(node = %self.id, %remote, client = %info.principal, role = %info.role, "client connected");
        let caller = Arc::new(Caller {
            owner: kv::owner_of(&info.principal),
            info,
        });
        while let Ok((send, recv)) = conn.accept_bi().await {
            tokio::spawn(self.clone().serve_stream(caller.clone(), send, recv));
        }
    }

    /// A stream is a lane (it opens with [`proto::LANE_PREAMBLE`]) or carries one
    /// request; either way its first bytes must come within the frame timeout.
    async fn serve_stream(
        self: Arc<Self>,
        caller: Arc<Caller>,
        send: quinn::SendStream,
        mut recv: quinn::RecvStream,
    ) {
        let deadline = tokio::time::Instant::now() + self.limits.timeout;
        let mut first = [0u8; 4];
        if !matches!(
            tokio::time::timeout_at(deadline, recv.read_exact(&mut first)).await,
            Ok(Ok(()))
        ) {
            let _ = recv.stop(1u32.into());
            return;
        }
        if first == proto::LANE_PREAMBLE[..4] {
            let mut rest = [0u8; 4];
            let read = tokio::time::timeout_at(deadline, recv.read_exact(&mut rest)).await;
            if matches!(read, Ok(Ok(()))) && rest == proto::LANE_PREAMBLE[4..] {
                self.serve_lane(caller, send, recv).await;
            } else {
                let _ = recv.stop(1u32.into());
            }
            return;
        }
        self.serve_one(caller, send, recv, first, deadline).await;
    }

    /// One request on its own stream, whose length prefix `len` was read; the whole
    /// frame must be in by `deadline`.
    async fn serve_one(
        self: Arc<Self>,
        caller: Arc<Caller>,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
        len: [u8; 4],
        deadline: tokio::time::Instant,
    ) {
        let read = proto::read_request(&mut recv, &self.limits, Some(len), Some(deadline), false);
        let response = match read.await {
            Err(e) => {
                let _ = recv.stop(1u32.into());
                Response::Error(self.frame_refused(&caller, e))
            }
            Ok((body, reservation)) => {
                let mut held = Held::request(reservation);
                match proto::decode::<Request>(&body) {
                    Err(e) => {
                        Response::Error(ServerError::Invalid(format!("undecodable request: {e}")))
                    }
                    Ok(Request::Admin(AdminOp::SaveSnapshot)) => {
                        drop(held);
                        return self.serve_save(&caller, send).await;
                    }
                    Ok(request) => self.answer(&caller, request, &mut held).await,
                }
            }
        };
        match proto::encode(&response) {
            Ok(frame) => {
                let write = tokio::time::timeout(self.limits.timeout, send.write_all(&frame));
                if matches!(write.await, Ok(Ok(()))) {
                    let _ = send.finish();
                }
            }
            Err(e) => tracing::error!(node = %self.id, error = %e, "cannot encode a response"),
        }
    }

    /// What a client hears about a request frame that was not read, and the log line.
    fn frame_refused(&self, caller: &Caller, e: FrameError) -> ServerError {
        tracing::debug!(node = %self.id, client = %caller.info.principal, error = %e, "refused a request frame");
        match e {
            FrameError::Busy { .. } => {
                self.metrics.requests_busy.inc();
                ServerError::Busy(e.to_string())
            }
            FrameError::TooLarge { len, limit, .. } => ServerError::TooLarge {
                what: "request".into(),
                size: len,
                limit,
            },
            other => ServerError::Invalid(other.to_string()),
        }
    }

    /// A lane: requests are read by a task of their own and answered as they complete,
    /// the answers ready at the same time written together. At most
    /// [`LANE_IN_FLIGHT`] requests of a lane are in progress; beyond that the lane is
    /// not read (QUIC's flow control then holds the client back). Every request holds
    /// its bytes of the node's budget until its answer is written; one that finds the
    /// budget spent is answered busy. A frame over the size limit, one that takes
    /// longer than the frame timeout, or answers the client does not read for that
    /// long, close the lane.
    async fn serve_lane(
        self: Arc<Self>,
        caller: Arc<Caller>,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
    ) {
        enum Item {
            Request(Tagged<Request>, Reservation),
            Refused(Tagged<Response>),
        }
        let (requests, mut incoming) = tokio::sync::mpsc::channel::<Item>(LANE_IN_FLIGHT);
        let reader_shared = self.clone();
        let reader_caller = caller.clone();
        let reader = tokio::spawn(async move {
            let (server, caller) = (reader_shared, reader_caller);
            loop {
                let item = match proto::read_request(&mut recv, &server.limits, None, None, true)
                    .await
                {
                    Ok((body, reservation)) => match proto::decode::<Tagged<Request>>(&body) {
                        Ok(request) => Item::Request(request, reservation),
                        Err(e) => {
                            tracing::debug!(node = %server.id, client = %caller.info.principal, error = %e, "closing a lane: undecodable request");
                            let _ = recv.stop(1u32.into());
                            return;
                        }
                    },
                    Err(
                        e @ (FrameError::Busy { tag: Some(id), .. }
                        | FrameError::TooLarge { tag: Some(id), .. }),
                    ) => Item::Refused(Tagged {
                        id,
                        body: Response::Error(server.frame_refused(&caller, e)),
                    }),
                    Err(FrameError::Finished) => return,
                    Err(e) => {
                        let _ = server.frame_refused(&caller, e);
                        let _ = recv.stop(1u32.into());
                        return;
                    }
                };
                if requests.send(item).await.is_err() {
                    return;
                }
            }
        });
        let mut pending = futures::stream::FuturesUnordered::new();
        let mut out = Vec::new();
        let mut held: Vec<Held> = Vec::new();
        let mut open = true;
        loop {
            tokio::select! {
                item = incoming.recv(), if open && pending.len() < LANE_IN_FLIGHT => match item {
                    Some(Item::Request(Tagged { id, body }, reservation)) => {
                        let server = self.clone();
                        let caller = caller.clone();
                        pending.push(async move {
                            let mut held = Held::request(reservation);
                            let body = server.answer(&caller, body, &mut held).await;
                            (Tagged { id, body }, held)
                        }.boxed());
                    }
                    Some(Item::Refused(answer)) => {
                        pending.push(async move { (answer, Held::default()) }.boxed());
                    }
                    None => open = false,
                },
                Some((answer, h)) = pending.next(), if !pending.is_empty() => {
                    self.encode_answer(&answer, &mut out);
                    held.push(h);
                    while let Some(Some((answer, h))) = pending.next().now_or_never() {
                        self.encode_answer(&answer, &mut out);
                        held.push(h);
                    }
                    let write = tokio::time::timeout(self.limits.timeout, send.write_all(&out));
                    if !matches!(write.await, Ok(Ok(()))) {
                        break;
                    }
                    out.clear();
                    held.clear();
                }
                else => break,
            }
            if !open && pending.is_empty() {
                break;
            }
        }
        reader.abort();
        let _ = send.finish();
    }

    fn encode_answer(&self, answer: &Tagged<Response>, out: &mut Vec<u8>) {
        if let Err(e) = proto::encode_into(answer, out) {
            tracing::error!(node = %self.id, error = %e, "cannot encode a response");
            let failed = Tagged {
                id: answer.id,
                body: Response::Error(ServerError::Failed(format!(
                    "cannot encode the response: {e}"
                ))),
            };
            let _ = proto::encode_into(&failed, out);
        }
    }
}
