//! One client request: admitted within the in-flight and time limits, checked (sizes,
//! the caller's role and sessions), and carried out as a proposal or a read.

use super::{Caller, MAX_SCAN, Shared, now_ms};
use crate::budget::Held;
use crate::kv::{self, Body, KvCommand};
use crate::proto::{
    self, AdminOp, Consistency, REQUEST_OVERHEAD, ReadOp, Request, Response, ServerError,
    WriteResult,
};
use raft_core::node::Node;
use raft_core::{ProposeError, ReadError};
use raft_net_quic::CertRole;
use raft_proto::{Bytes, NodeId};
use std::time::{Duration, Instant};

impl Shared {
    pub(super) fn not_leader(&self, leader: Option<NodeId>) -> ServerError {
        let leader = leader.filter(|&l| l != self.id);
        ServerError::NotLeader {
            leader,
            addr: leader.and_then(|l| self.addr_of(l)),
        }
    }

    /// Handles a request within the request timeout, and counts it. Bytes the answer
    /// holds (a value read) go into `held`, given back once it is written.
    pub(super) async fn answer(
        &self,
        caller: &Caller,
        request: Request,
        held: &mut Held,
    ) -> Response {
        let started = Instant::now();
        let m = &self.metrics;
        let Ok(_permit) = self.in_flight.try_acquire() else {
            m.requests_busy.inc();
            m.requests_failed.inc();
            return Response::Error(ServerError::Busy(format!(
                "{} requests in flight on this node",
                self.config.config.max_in_flight
            )));
        };
        let timeout = Duration::from_millis(self.config.config.request_timeout_ms);
        let response = match tokio::time::timeout(timeout, self.handle(caller, request, held)).await
        {
            Ok(r) => r,
            Err(_) => Response::Error(ServerError::Unknown(format!(
                "no outcome within {timeout:?} on the server"
            ))),
        };
        m.request_seconds.observe_duration(started.elapsed());
        if matches!(response, Response::Error(_)) {
            m.requests_failed.inc()
        } else {
            m.requests_ok.inc()
        }
        response
    }

    async fn handle(&self, caller: &Caller, request: Request, held: &mut Held) -> Response {
        let result = match request {
            Request::Register => {
                let c = &self.config.config;
                self.propose(Body::RegisterOwned {
                    ttl_ms: c.session_ttl_secs.saturating_mul(1000),
                    owner: caller.owner,
                    max_sessions: c.max_sessions,
                })
                .await
            }
            Request::Write { session, op } => match self.check_sizes(&op) {
                Err(e) => Err(e),
                Ok(()) => match session {
                    Some(session) => {
                        self.propose(Body::OwnedWrite {
                            owner: caller.owner,
                            session,
                            op,
                        })
                        .await
                    }
                    None => self.propose(Body::Write { session, op }).await,
                },
            },
            Request::Read { op, consistency } => self.read(op, consistency, held).await,
            Request::Admin(op) => match self.authorize(caller, &op) {
                Ok(()) => self.admin(op).await,
                Err(e) => Err(e),
            },
        };
        match result {
            Ok(Response::Written(w)) => match w.result {
                WriteResult::Refused(e) => {
                    if let ServerError::SessionNotOwned(id) = e {
                        tracing::warn!(node = %self.id, client = %caller.info.principal, session = id, "refused a write in another client's session");
                    }
                    Response::Error(e)
                }
                _ => Response::Written(w),
            },
            Ok(r) => r,
            Err(e) => Response::Error(e),
        }
    }

    /// Whether `caller` may carry out `op`: a status is anyone's; everything else
    /// changes the cluster and needs the admin role.
    pub(super) fn authorize(&self, caller: &Caller, op: &AdminOp) -> Result<(), ServerError> {
        if matches!(op, AdminOp::Status) || caller.info.role == CertRole::Admin {
            return Ok(());
        }
        tracing::warn!(node = %self.id, client = %caller.info.principal, role = %caller.info.role, ?op, "refused an admin operation");
        Err(ServerError::Forbidden(format!(
            "this operation needs the admin role; certificate CN={} has role {}",
            caller.info.common_name, caller.info.role
        )))
    }

    fn check_sizes(&self, op: &proto::WriteOp) -> Result<(), ServerError> {
        let c = &self.config.config;
        let too_large = |what: &str, size: usize, limit: u64| {
            (size as u64 > limit).then(|| ServerError::TooLarge {
                what: what.into(),
                size: size as u64,
                limit,
            })
        };
        if let Some(e) = too_large("key", op.key().len(), c.max_key_bytes) {
            return Err(e);
        }
        let value = match op {
            proto::WriteOp::Put { value, .. } | proto::WriteOp::Append { value, .. } => value.len(),
            proto::WriteOp::Cas { expected, new, .. } => expected
                .as_ref()
                .map_or(0, |v| v.len())
                .max(new.as_ref().map_or(0, |v| v.len())),
            proto::WriteOp::Delete { .. } => 0,
        };
        too_large("value", value, c.max_value_bytes).map_or(Ok(()), Err)
    }

    /// Proposes a command and decodes the state machine's response.
    pub(super) async fn propose(&self, body: Body) -> Result<Response, ServerError> {
        let command = KvCommand {
            time_ms: now_ms(),
            body,
        };
        let bytes = command
            .encode()
            .map_err(|e| ServerError::Invalid(format!("cannot encode the command: {e}")))?;
        self.metrics.proposals.inc();
        let out = self.shared_node().propose(bytes).await;
        let out = match out {
            Ok(raw) => proto::decode::<Response>(&raw).map_err(|e| {
                ServerError::Unknown(format!("the state machine's response is undecodable: {e}"))
            }),
            Err(ProposeError::NotLeader(n)) | Err(ProposeError::Dropped(n)) => {
                Err(self.not_leader(n.leader_hint))
            }
            Err(ProposeError::TransferInProgress { to }) => Err(self.not_leader(Some(to))),
            // Not applied; this leader is handing over: the client retries elsewhere.
            Err(ProposeError::StateLost) => Err(self.not_leader(None)),
            // Not appended: back-pressure, the client retries after a backoff.
            Err(e @ (ProposeError::Busy { .. } | ProposeError::Overloaded { .. })) => {
                Err(ServerError::Busy(e.to_string()))
            }
            Err(ProposeError::Indeterminate) => Err(ServerError::Unknown(
                "a snapshot replaced the log while the write was in flight".into(),
            )),
            Err(ProposeError::Stopped) => Err(ServerError::Unknown(
                "the node stopped while the write was in flight".into(),
            )),
            Err(e) => Err(ServerError::Unknown(e.to_string())),
        };
        if out.is_err() {
            self.metrics.proposal_failures.inc();
        }
        out
    }

    fn shared_node(&self) -> &Node {
        &self.node
    }

    async fn read(
        &self,
        op: ReadOp,
        consistency: Consistency,
        held: &mut Held,
    ) -> Result<Response, ServerError> {
        if consistency == Consistency::Linearizable {
            match self.node.read().await {
                Ok(_) => {}
                Err(ReadError::NotLeader(n)) => return Err(self.not_leader(n.leader_hint)),
                Err(e @ ReadError::Overloaded { .. }) => {
                    return Err(ServerError::Busy(e.to_string()));
                }
                Err(e) => return Err(ServerError::Failed(e.to_string())),
            }
        } else if self.node.metrics().with(|m| m.state_lost) {
            // A local read of a lost state would see an old or empty store.
            return Err(ServerError::Busy(
                "this node lost its state machine's state and waits for a snapshot from the leader; read from another node".into(),
            ));
        }
        let (start, end, limit) = match op {
            // A point read from LMDB's map takes microseconds: here, not on another
            // thread (a hand-off costs more than the read).
            ReadOp::Get { key } => {
                let value = self
                    .sm
                    .read(|view| kv::get(view.txn, view.data, &key))
                    .map_err(|e| ServerError::Failed(format!("read failed: {e}")))?;
                let size = value.as_ref().map_or(0, |v| v.len() as u64);
                if size > REQUEST_OVERHEAD {
                    held.answer = Some(self.limits.budget.try_reserve(size).ok_or_else(|| {
                        self.metrics.requests_busy.inc();
                        ServerError::Busy(format!(
                            "this node holds {} bytes of requests and answers in flight; a value of {size} bytes must wait",
                            self.limits.budget.limit()
                        ))
                    })?);
                }
                return Ok(Response::Value {
                    value: value.map(Bytes::from),
                });
            }
            ReadOp::Scan { start, end, limit } => (start, end, limit),
        };
        // The answer is at most what the budget holds for it: 64 KiB to half a frame.
        let room = self
            .limits
            .budget
            .reserve_up_to(64 << 10, (proto::MAX_FRAME / 2) as u64)
            .ok_or_else(|| {
                self.metrics.requests_busy.inc();
                ServerError::Busy(format!(
                    "this node holds {} bytes of requests and answers in flight; a scan must wait",
                    self.limits.budget.limit()
                ))
            })?;
        let max_bytes = usize::try_from(room.bytes()).unwrap_or(usize::MAX);
        // A scan may walk thousands of keys: on the blocking pool.
        let sm = self.sm.clone();
        let read = tokio::task::spawn_blocking(move || {
            sm.read(|view| {
                let (mut items, mut more) =
                    kv::scan(view, &start, end.as_deref(), limit.min(MAX_SCAN) as usize)?;
                // Keep the answer within one frame and the bytes reserved for it.
                let mut size = 0;
                if let Some(cut) = items.iter().position(|(k, v)| {
                    size += k.len() + v.len() + 16;
                    size > max_bytes
                }) {
                    items.truncate(cut.max(1));
                    more = true;
                }
                Ok(Response::Scanned { items, more })
            })
        })
        .await;
        match read {
            Ok(Ok(r)) => {
                // Hold what the answer takes, not what it might have.
                let mut room = room;
                if let Response::Scanned { items, .. } = &r {
                    room.shrink_to(
                        items
                            .iter()
                            .map(|(k, v)| (k.len() + v.len() + 16) as u64)
                            .sum(),
                    );
                }
                held.answer = Some(room);
                Ok(r)
            }
            Ok(Err(e)) => Err(ServerError::Failed(format!("read failed: {e}"))),
            Err(e) => Err(ServerError::Failed(format!("read task failed: {e}"))),
        }
    }
}
