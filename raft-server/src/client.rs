//! The Rust client: finds the leader, follows redirects, retries with backoff, and
//! makes writes exactly-once through a session.
//!
//! ```no_run
//! # async fn demo(identity: raft_net_quic::Identity) -> Result<(), raft_server::ClientError> {
//! use raft_server::{Client, ClientOptions};
//! let nodes = vec!["127.0.0.1:7101".parse().unwrap(), "127.0.0.1:7102".parse().unwrap()];
//! let client = Client::new(nodes, identity, ClientOptions::default())?;
//! let w = client.put("greeting", "hello").await?;       // committed at log index w.index
//! let v = client.get("greeting").await?;                // linearizable
//! # Ok(()) }
//! ```
//!
//! **Errors say whether a write took effect.** [`ClientError::outcome_unknown`] is
//! true only when a write was sent and no answer came back (timeouts, lost
//! connections): it may or may not have been applied, and it will not be applied
//! twice. Every other error means the request did not take effect.

use crate::lane::{Lane, Outcome};
use crate::proto::{
    self, AdminOp, Consistency, ReadOp, Request, Response, ServerError, SessionRef, Status,
    WriteOp, Written,
};
use raft_net_quic::{ClientConnection, Identity};
use raft_proto::{Bytes, NodeId};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// How a client retries.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// The longest a call may take, retries included (default 10 s).
    pub timeout: Duration,
    /// The longest one attempt may take (default 3 s).
    pub attempt_timeout: Duration,
    /// Backoff between attempts: the first delay, doubling up to the second.
    pub backoff: (Duration, Duration),
    /// Fast failover, part 1: how long a node may take to answer the first flight of
    /// a handshake before the next node is tried (`None`, the default: the attempt
    /// timeout). A live, unloaded node answers at once; a dead one never does, so this
    /// is what a dead endpoint costs. The CLI sets 300 ms.
    ///
    /// Off by default because a node overloaded by clients answers late too: in the
    /// overload test (1,024 clients and 2 CPU hogs on 2 cores) a 300 ms limit made
    /// clients abandon hundreds of handshakes, whose retries cost the cluster its
    /// leader. Set it for clients that are few or that do not share the nodes' CPUs.
    pub connect_timeout: Option<Duration>,
    /// Fast failover, part 2: how long a connected node may stay silent while a
    /// request to it is outstanding (`None`, the default: the attempt timeout, then as
    /// long as packets keep coming). Halfway through, the client sends a probe that a
    /// live node's transport acknowledges; a node silent for the whole time counts as
    /// down, and the request is retried on another node under the same session number
    /// (so it is still applied once). The CLI sets 400 ms. Off by default for the
    /// reason above.
    pub silence_timeout: Option<Duration>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            timeout: Duration::from_secs(10),
            attempt_timeout: Duration::from_secs(3),
            backoff: (Duration::from_millis(20), Duration::from_millis(500)),
            connect_timeout: None,
            silence_timeout: None,
        }
    }
}

impl ClientOptions {
    /// The defaults with fast failover: a 300 ms connect timeout and a 400 ms silence
    /// timeout (what the CLI uses). A dead endpoint then costs 300 ms, and a killed
    /// leader about one election; see the fields for when not to use it.
    pub fn fast_failover() -> ClientOptions {
        ClientOptions {
            connect_timeout: Some(Duration::from_millis(300)),
            silence_timeout: Some(Duration::from_millis(400)),
            ..ClientOptions::default()
        }
    }
}

/// How long a node found down is not followed by redirects (other nodes keep naming
/// a dead leader until they elect another).
const SUSPECT_FOR: Duration = Duration::from_secs(1);

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// No answer in time.
    #[error("{} after {elapsed:?} (last error: {last_error})", if *.outcome_unknown { "no answer; the write may or may not have taken effect" } else { "timed out; nothing was changed" })]
    Timeout {
        /// How long the call took.
        elapsed: Duration,
        /// A write was sent and may have been applied (it is never applied twice).
        outcome_unknown: bool,
        /// The last thing that went wrong.
        last_error: String,
    },
    /// The server refused the request; it did not take effect.
    #[error("refused: {0}")]
    Refused(ServerError),
    /// The session expired while the write was being retried: it may have been
    /// applied before the expiry (if `outcome_unknown`). New calls open a new session.
    #[error("the session expired{}", if *.outcome_unknown { "; the write may or may not have taken effect" } else { "" })]
    SessionExpired {
        /// Whether an earlier attempt may have been applied.
        outcome_unknown: bool,
    },
    /// A node could not be reached (for requests sent to one node, like a status).
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// A node refused this client's certificate during the TLS handshake: nothing
    /// was sent, and retrying will not help.
    #[error(
        "the node at {node} refused this client's certificate ({detail}); {}",
        refusal_hint(detail)
    )]
    CertificateRefused {
        /// The node.
        node: SocketAddr,
        /// The TLS alert.
        detail: String,
    },
    /// The node's certificate does not verify against this client's CA file (the CA
    /// of another cluster, or a certificate that is not a node's): nothing was sent,
    /// and retrying will not help.
    #[error(
        "the node at {node} presented a certificate this client does not trust ({detail}); the client's CA file must be the cluster's CA (ca.crt from `raft-server certs`)"
    )]
    UntrustedNode {
        /// The node.
        node: SocketAddr,
        /// The TLS error.
        detail: String,
    },
    /// The client's own setup is wrong (no endpoints, bad certificate).
    #[error("client setup: {0}")]
    Setup(String),
}

/// What to do about a refused certificate, from the TLS alert the node sent.
fn refusal_hint(detail: &str) -> &'static str {
    if detail.contains("Revoked") {
        "it is revoked (on the cluster's deny-list): ask the operator for a new certificate"
    } else if detail.contains("expired") || detail.contains("not valid yet") {
        "it has expired (or is not valid yet): issue a new one (`raft-server certs --clients NAME`), and check this machine's clock"
    } else {
        "use one signed by the cluster's CA (`raft-server certs --clients NAME`)"
    }
}

impl ClientError {
    /// Whether the request may have taken effect.
    pub fn outcome_unknown(&self) -> bool {
        matches!(
            self,
            ClientError::Timeout {
                outcome_unknown: true,
                ..
            } | ClientError::SessionExpired {
                outcome_unknown: true
            }
        )
    }
}

/// A connection to one node and the lane every request goes through.
struct Link {
    addr: SocketAddr,
    conn: ClientConnection,
    lane: Arc<Lane>,
}

struct SessionState {
    client_id: u64,
    next_seq: u64,
    outstanding: BTreeSet<u64>,
}

struct Inner {
    endpoints: Vec<SocketAddr>,
    identity: Identity,
    options: ClientOptions,
    /// The connection in use, where it goes, and its lane.
    conn: tokio::sync::Mutex<Option<Link>>,
    /// Where to send next (the leader, when known).
    target: Mutex<SocketAddr>,
    session: tokio::sync::Mutex<Option<Arc<Mutex<SessionState>>>>,
    rotate: Mutex<usize>,
    /// Nodes found down lately, and when: a redirect to one is not followed for
    /// [`SUSPECT_FOR`].
    suspects: Mutex<Vec<(SocketAddr, Instant)>>,
    /// The connection in use and where it goes, readable while `conn` is held (by a
    /// call reopening its lane), so every waiting call can tell whether the node is
    /// still heard from.
    current: Mutex<Option<(SocketAddr, quinn::Connection)>>,
}

/// A client of a KV cluster. Cheap to clone; clones share the connection and session,
/// and calls may run concurrently.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

enum Attempt {
    /// Never reached the server: the request was not sent.
    NotSent(String),
    /// Sent, no answer: it may have been processed.
    Lost(String),
    /// The node closed the connection with a TLS alert: our certificate is refused.
    CertificateRefused(String),
    /// The node's certificate does not verify against our CA.
    Untrusted(String),
    Answer(Response),
}

impl Client {
    /// A client for the cluster whose nodes are at `endpoints` (any subset with at
    /// least one live node). Connects lazily. Must be used inside a tokio runtime.
    pub fn new(
        endpoints: Vec<SocketAddr>,
        identity: Identity,
        options: ClientOptions,
    ) -> Result<Client, ClientError> {
        let first = *endpoints
            .first()
            .ok_or_else(|| ClientError::Setup("no node addresses given".into()))?;
        Ok(Client {
            inner: Arc::new(Inner {
                endpoints,
                identity,
                options,
                conn: tokio::sync::Mutex::new(None),
                target: Mutex::new(first),
                session: tokio::sync::Mutex::new(None),
                rotate: Mutex::new(0),
                suspects: Mutex::new(Vec::new()),
                current: Mutex::new(None),
            }),
        })
    }

    /// Sets `key` to `value`; returns the commit index and the previous value.
    pub async fn put(
        &self,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
    ) -> Result<Written, ClientError> {
        self.write(WriteOp::Put {
            key: key.into(),
            value: value.into(),
        })
        .await
    }

    /// Removes `key`; returns the commit index and the previous value.
    pub async fn delete(&self, key: impl Into<Bytes>) -> Result<Written, ClientError> {
        self.write(WriteOp::Delete { key: key.into() }).await
    }

    /// Sets `key` to `new` if its value is `expected` (`None`: absent).
    pub async fn cas(
        &self,
        key: impl Into<Bytes>,
        expected: Option<Bytes>,
        new: Option<Bytes>,
    ) -> Result<Written, ClientError> {
        self.write(WriteOp::Cas {
            key: key.into(),
            expected,
            new,
        })
        .await
    }

    /// Appends `value` to `key`'s value.
    pub async fn append(
        &self,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
    ) -> Result<Written, ClientError> {
        self.write(WriteOp::Append {
            key: key.into(),
            value: value.into(),
        })
        .await
    }

    /// A linearizable read of `key`.
    pub async fn get(&self, key: impl Into<Bytes>) -> Result<Option<Bytes>, ClientError> {
        self.get_with(key, Consistency::Linearizable).await
    }

    /// A read of `key` with the given consistency.
    pub async fn get_with(
        &self,
        key: impl Into<Bytes>,
        consistency: Consistency,
    ) -> Result<Option<Bytes>, ClientError> {
        let request = Request::Read {
            op: ReadOp::Get { key: key.into() },
            consistency,
        };
        match self.call(&request, false).await? {
            Response::Value { value } => Ok(value),
            other => Err(unexpected(other)),
        }
    }

    /// Keys in `[start, end)` in order, at most `limit` (capped by the server); and
    /// whether more were left out.
    pub async fn scan(
        &self,
        start: impl Into<Bytes>,
        end: Option<Bytes>,
        limit: u32,
        consistency: Consistency,
    ) -> Result<(Vec<(Bytes, Bytes)>, bool), ClientError> {
        let request = Request::Read {
            op: ReadOp::Scan {
                start: start.into(),
                end,
                limit,
            },
            consistency,
        };
        match self.call(&request, false).await? {
            Response::Scanned { items, more } => Ok((items, more)),
            other => Err(unexpected(other)),
        }
    }

    /// The status of the node at `node` (no redirect), within one attempt timeout.
    pub async fn status_of(&self, node: SocketAddr) -> Result<Status, ClientError> {
        match self
            .request_once(node, &Request::Admin(AdminOp::Status))
            .await
        {
            Ok(Response::Status(s)) => Ok(s),
            Ok(other) => Err(unexpected(other)),
            Err(ClientError::Timeout { last_error, .. }) => {
                Err(ClientError::Unreachable(last_error))
            }
            Err(e) => Err(e),
        }
    }

    /// Sends `request` once to the node at `node` on a connection of its own, and
    /// returns whatever it answers (errors and redirects included): no session
    /// numbering, no retry, no redirect. For tools and tests that speak the protocol
    /// directly; a write sent this way is exactly-once only if it carries a session.
    ///
    /// Fails with `Unreachable` if the request was not delivered, and with `Timeout`
    /// (outcome unknown) if it was sent but no answer came within the attempt
    /// timeout.
    pub async fn request_once(
        &self,
        node: SocketAddr,
        request: &Request,
    ) -> Result<Response, ClientError> {
        let frame = encode(request)?;
        let identity = self.inner.identity.clone();
        let connect_timeout = self.inner.options.connect_timeout;
        let attempt_timeout = self.inner.options.attempt_timeout;
        let started = Instant::now();
        let ask = async move {
            let conn = raft_net_quic::connect_client_within(
                &identity,
                node,
                runtime()?,
                Some(connect_timeout.unwrap_or(attempt_timeout)),
            )
            .await
            .map_err(|e| match connect_failed(e) {
                Attempt::Untrusted(detail) => ClientError::UntrustedNode { node, detail },
                other => ClientError::Unreachable(format!("{node}: {}", describe(&other))),
            })?;
            let answer = exchange(&conn.connection, &frame).await;
            conn.connection.close(0u32.into(), b"done");
            match answer {
                Attempt::Answer(r) => Ok(r),
                Attempt::NotSent(e) => Err(ClientError::Unreachable(format!("{node}: {e}"))),
                Attempt::CertificateRefused(detail) => {
                    Err(ClientError::CertificateRefused { node, detail })
                }
                Attempt::Untrusted(detail) => Err(ClientError::UntrustedNode { node, detail }),
                Attempt::Lost(e) => Err(ClientError::Timeout {
                    elapsed: started.elapsed(),
                    outcome_unknown: true,
                    last_error: format!("{node}: {e}"),
                }),
            }
        };
        let wait = self.inner.options.attempt_timeout;
        tokio::time::timeout(wait, ask).await.unwrap_or_else(|_| {
            Err(ClientError::Timeout {
                elapsed: started.elapsed(),
                outcome_unknown: true,
                last_error: format!("no answer from {node} within {wait:?}"),
            })
        })
    }

    /// Runs an admin operation on the leader (`Snapshot` and `Status` on whichever
    /// node answers).
    pub async fn admin(&self, op: AdminOp) -> Result<Response, ClientError> {
        self.call(&Request::Admin(op), true).await
    }

    /// Adds node `id` at `addr` as a learner.
    pub async fn add_learner(&self, id: NodeId, addr: &str) -> Result<(), ClientError> {
        self.admin(AdminOp::AddLearner {
            id,
            addr: addr.to_string(),
        })
        .await
        .map(drop)
    }

    /// Records that member `id` is now reachable at `addr`.
    pub async fn move_node(&self, id: NodeId, addr: &str) -> Result<(), ClientError> {
        self.admin(AdminOp::MoveNode {
            id,
            addr: addr.to_string(),
        })
        .await
        .map(drop)
    }

    /// Makes learner `id` a voter.
    pub async fn promote(&self, id: NodeId) -> Result<(), ClientError> {
        self.admin(AdminOp::Promote { id }).await.map(drop)
    }

    /// Removes node `id`.
    pub async fn remove(&self, id: NodeId) -> Result<(), ClientError> {
        self.admin(AdminOp::Remove { id }).await.map(drop)
    }

    /// Hands leadership to `to`.
    pub async fn transfer_leader(&self, to: NodeId) -> Result<(), ClientError> {
        self.admin(AdminOp::TransferLeader { to }).await.map(drop)
    }

    /// The session's id (opening one if needed).
    pub async fn session_id(&self) -> Result<u64, ClientError> {
        let s = self.session().await?;
        Ok(lock(&s).client_id)
    }

    async fn session(&self) -> Result<Arc<Mutex<SessionState>>, ClientError> {
        let mut guard = self.inner.session.lock().await;
        if let Some(s) = guard.as_ref() {
            return Ok(s.clone());
        }
        // A retried registration may open a second session; the unused one expires.
        let client_id = match self.call(&Request::Register, true).await? {
            Response::Registered { client_id } => client_id,
            other => return Err(unexpected(other)),
        };
        let s = Arc::new(Mutex::new(SessionState {
            client_id,
            next_seq: 1,
            outstanding: BTreeSet::new(),
        }));
        *guard = Some(s.clone());
        Ok(s)
    }

    /// A write in the session: numbered once, retried with the same number until it
    /// gets an answer or the call times out.
    pub async fn write(&self, op: WriteOp) -> Result<Written, ClientError> {
        let session = self.session().await?;
        let (client_id, seq) = {
            let mut s = lock(&session);
            let seq = s.next_seq;
            s.next_seq += 1;
            s.outstanding.insert(seq);
            (s.client_id, seq)
        };
        let acked_below = lock(&session).outstanding.first().copied().unwrap_or(seq);
        let request = Request::Write {
            session: Some(SessionRef {
                client_id,
                seq,
                acked_below,
            }),
            op,
        };
        let result = self.call(&request, true).await;
        let result = match result {
            Ok(Response::Written(w)) => Ok(w),
            Ok(other) => Err(unexpected(other)),
            Err(
                e @ (ClientError::Refused(ServerError::SessionExpired(_))
                | ClientError::SessionExpired { .. }),
            ) => {
                // This session is gone; the next call opens another.
                let mut guard = self.inner.session.lock().await;
                if guard.as_ref().is_some_and(|s| Arc::ptr_eq(s, &session)) {
                    *guard = None;
                }
                let outcome_unknown = e.outcome_unknown();
                Err(ClientError::SessionExpired { outcome_unknown })
            }
            Err(e) => Err(e),
        };
        // Answered (or given up on): no retry will use this number again.
        lock(&session).outstanding.remove(&seq);
        result
    }

    /// Sends `request` until it gets an answer that is not a redirect, or the call
    /// times out.
    async fn call(&self, request: &Request, is_write: bool) -> Result<Response, ClientError> {
        let o = &self.inner.options;
        let started = Instant::now();
        let mut backoff = o.backoff.0;
        let mut sent = false;
        let mut last_error = String::from("none");
        loop {
            if started.elapsed() >= o.timeout {
                return Err(ClientError::Timeout {
                    elapsed: started.elapsed(),
                    outcome_unknown: is_write && sent,
                    last_error,
                });
            }
            let target = *lock(&self.inner.target);
            let attempt = self
                .attempt_while_alive(target, request, started + o.timeout)
                .await;
            let redirect_now = match attempt {
                None => {
                    sent = true;
                    last_error = format!("{target} went silent with the request outstanding");
                    self.suspect(target);
                    self.drop_connection(target).await;
                    self.next_target();
                    // With fast failover, at once; otherwise after the backoff.
                    o.silence_timeout.is_some()
                }
                Some(Attempt::NotSent(e)) => {
                    last_error = format!("{target}: {e}");
                    self.suspect(target);
                    self.drop_connection(target).await;
                    self.next_target();
                    false
                }
                Some(Attempt::Lost(e)) => {
                    sent = true;
                    last_error = format!("{target}: {e}");
                    self.drop_connection(target).await;
                    self.next_target();
                    false
                }
                Some(Attempt::Answer(Response::Error(e))) => match e {
                    ServerError::NotLeader { ref addr, .. } => {
                        last_error = e.to_string();
                        match addr.as_deref().and_then(|a| a.parse::<SocketAddr>().ok()) {
                            Some(leader) if leader != target && !self.suspected(leader) => {
                                *lock(&self.inner.target) = leader;
                                true
                            }
                            _ => {
                                self.next_target();
                                // An election is on (or the leader named is down). With
                                // fast failover, ask around again soon; otherwise after
                                // the growing backoff.
                                if o.silence_timeout.is_some() {
                                    let left = o.timeout.saturating_sub(started.elapsed());
                                    tokio::time::sleep(o.backoff.0.min(left)).await;
                                    true
                                } else {
                                    false
                                }
                            }
                        }
                    }
                    ServerError::Unknown(ref detail) => {
                        sent = true;
                        last_error = detail.clone();
                        self.next_target();
                        false
                    }
                    ServerError::Busy(ref detail) => {
                        last_error = detail.clone();
                        false
                    }
                    other => {
                        if matches!(other, ServerError::SessionExpired(_)) && sent {
                            return Err(ClientError::SessionExpired {
                                outcome_unknown: true,
                            });
                        }
                        return Err(ClientError::Refused(other));
                    }
                },
                Some(Attempt::Answer(r)) => return Ok(r),
                Some(Attempt::CertificateRefused(detail)) => {
                    return Err(ClientError::CertificateRefused {
                        node: target,
                        detail,
                    });
                }
                Some(Attempt::Untrusted(detail)) => {
                    return Err(ClientError::UntrustedNode {
                        node: target,
                        detail,
                    });
                }
            };
            if !redirect_now {
                let left = o.timeout.saturating_sub(started.elapsed());
                tokio::time::sleep(backoff.min(left)).await;
                backoff = (backoff * 2).min(o.backoff.1);
            }
        }
    }

    /// Runs an attempt on `target`, for as long as the node shows it is alive, up to
    /// `deadline`; `None` when it went silent. Connecting is bounded by the connect
    /// timeout (in [`Client::link`]) and, past that, by the attempt timeout. Once
    /// connected, a node that has not been heard from for half the silence timeout
    /// gets a probe (an empty stream, which its transport acknowledges however busy
    /// its request handling is); heard from, it may take as long as the request
    /// takes (a slow commit is not a dead node); silent for the whole silence timeout,
    /// it counts as down.
    async fn attempt_while_alive(
        &self,
        target: SocketAddr,
        request: &Request,
        deadline: Instant,
    ) -> Option<Attempt> {
        let o = &self.inner.options;
        let Some(silence_timeout) = o.silence_timeout else {
            return self.attempt_patiently(target, request, deadline).await;
        };
        let started = Instant::now();
        let mut attempt = std::pin::pin!(self.attempt(target, request));
        let tick = (silence_timeout / 8).max(Duration::from_millis(5));
        let mut seen: Option<u64> = None;
        let mut heard = Instant::now();
        let mut probed = false;
        loop {
            let wait = tick.min(deadline.saturating_duration_since(Instant::now()));
            if let Ok(a) = tokio::time::timeout(wait, &mut attempt).await {
                return Some(a);
            }
            if Instant::now() >= deadline {
                return None;
            }
            match self.packets_from(target) {
                // Connecting (or reconnecting the lane): bounded by the attempt
                // timeout.
                None => {
                    if started.elapsed() >= o.attempt_timeout && seen.is_none() {
                        return None;
                    }
                }
                Some(rx) if Some(rx) != seen => {
                    seen = Some(rx);
                    heard = Instant::now();
                    probed = false;
                }
                Some(_) => {
                    let silent = heard.elapsed();
                    if silent >= silence_timeout {
                        return None;
                    }
                    if !probed && silent >= silence_timeout / 2 {
                        probed = true;
                        self.probe(target);
                    }
                }
            }
        }
    }

    /// Without a silence timeout: past the attempt timeout, keeps waiting for as long
    /// as the node's connection keeps receiving packets (the node is alive, only
    /// slow: giving up would cost it a new request and maybe a new handshake under the
    /// very load that made it slow), up to `deadline`; `None` when the node went
    /// silent for a whole attempt timeout.
    async fn attempt_patiently(
        &self,
        target: SocketAddr,
        request: &Request,
        deadline: Instant,
    ) -> Option<Attempt> {
        let patience = self.inner.options.attempt_timeout;
        let mut attempt = std::pin::pin!(self.attempt(target, request));
        let mut seen = self.packets_from(target);
        loop {
            let wait = patience.min(deadline.saturating_duration_since(Instant::now()));
            match tokio::time::timeout(wait, &mut attempt).await {
                Ok(a) => return Some(a),
                Err(_) => {
                    let now = self.packets_from(target);
                    if now.is_none() || now <= seen || Instant::now() >= deadline {
                        return None;
                    }
                    seen = now;
                }
            }
        }
    }

    /// Sends something the node at `target` must acknowledge: an empty stream, which
    /// its server closes without a request.
    fn probe(&self, target: SocketAddr) {
        let conn = lock(&self.inner.current)
            .as_ref()
            .filter(|(a, _)| *a == target)
            .map(|(_, c)| c.clone());
        if let Some(conn) = conn {
            tokio::spawn(async move {
                if let Ok(Ok((mut send, _recv))) =
                    tokio::time::timeout(Duration::from_secs(1), conn.open_bi()).await
                {
                    let _ = send.finish();
                }
            });
        }
    }

    /// Records that the node at `addr` was found down (with fast failover on; without,
    /// every node is tried in turn as before).
    fn suspect(&self, addr: SocketAddr) {
        if self.inner.options.silence_timeout.is_none() {
            return;
        }
        let mut s = lock(&self.inner.suspects);
        s.retain(|(a, at)| *a != addr && at.elapsed() < SUSPECT_FOR);
        s.push((addr, Instant::now()));
    }

    /// Whether the node at `addr` was found down within [`SUSPECT_FOR`].
    fn suspected(&self, addr: SocketAddr) -> bool {
        lock(&self.inner.suspects)
            .iter()
            .any(|(a, at)| *a == addr && at.elapsed() < SUSPECT_FOR)
    }

    /// Datagrams received on the connection to `addr`, if there is one (and it is not
    /// being set up right now).
    fn packets_from(&self, addr: SocketAddr) -> Option<u64> {
        lock(&self.inner.current)
            .as_ref()
            .filter(|(a, _)| *a == addr)
            .map(|(_, c)| c.stats().udp_rx.datagrams)
    }

    /// Moves to the next endpoint in the list that was not found down lately (any,
    /// if all were).
    fn next_target(&self) {
        let mut r = lock(&self.inner.rotate);
        let n = self.inner.endpoints.len();
        for _ in 0..n {
            *r = (*r + 1) % n;
            if !self.suspected(self.inner.endpoints[*r]) {
                break;
            }
        }
        *lock(&self.inner.target) = self.inner.endpoints[*r];
    }

    async fn drop_connection(&self, addr: SocketAddr) {
        let mut conn = self.inner.conn.lock().await;
        if conn.as_ref().is_some_and(|l| l.addr == addr)
            && let Some(link) = conn.take()
        {
            link.conn
                .connection
                .close(0u32.into(), b"retrying elsewhere");
        }
        let mut current = lock(&self.inner.current);
        if current.as_ref().is_some_and(|(a, _)| *a == addr) {
            *current = None;
        }
    }

    /// The connection to `addr` and its lane, opened when needed.
    async fn link(&self, addr: SocketAddr) -> Result<(quinn::Connection, Arc<Lane>), Attempt> {
        let mut conn = self.inner.conn.lock().await;
        if let Some(link) = conn.as_mut()
            && link.addr == addr
            && link.conn.connection.close_reason().is_none()
        {
            if link.lane.is_broken() {
                link.lane = Arc::new(self.open_lane(&link.conn.connection).await?);
            }
            return Ok((link.conn.connection.clone(), link.lane.clone()));
        }
        let rt = runtime().map_err(|e| Attempt::NotSent(e.to_string()))?;
        let c = raft_net_quic::connect_client_within(
            &self.inner.identity,
            addr,
            rt,
            self.inner.options.connect_timeout,
        )
        .await
        .map_err(connect_failed)?;
        *lock(&self.inner.current) = Some((addr, c.connection.clone()));
        let lane = Arc::new(self.open_lane(&c.connection).await?);
        let connection = c.connection.clone();
        let link = Link {
            addr,
            conn: c,
            lane: lane.clone(),
        };
        if let Some(old) = conn.replace(link) {
            old.conn.connection.close(0u32.into(), b"moved");
        }
        Ok((connection, lane))
    }

    /// Opens a lane on `conn`, within the silence timeout (a dead node's connection
    /// may have no stream left to open; the caller holds the connection lock).
    async fn open_lane(&self, conn: &quinn::Connection) -> Result<Lane, Attempt> {
        let o = &self.inner.options;
        let limit = o.silence_timeout.unwrap_or(o.attempt_timeout);
        match tokio::time::timeout(limit, Lane::open(conn)).await {
            Ok(Ok(lane)) => Ok(lane),
            Ok(Err(e)) => Err(Attempt::NotSent(e)),
            Err(_) => Err(Attempt::NotSent(format!(
                "no stream could be opened within {limit:?}"
            ))),
        }
    }

    async fn attempt(&self, addr: SocketAddr, request: &Request) -> Attempt {
        let (conn, lane) = match self.link(addr).await {
            Ok(link) => link,
            Err(a) => return a,
        };
        let attempt = match lane.call(request).await {
            Outcome::Answer(r) => Attempt::Answer(r),
            Outcome::NotSent(e) => Attempt::NotSent(e),
            Outcome::Lost(e) => Attempt::Lost(e),
        };
        match attempt {
            Attempt::NotSent(_) | Attempt::Lost(_) => certificate_refused(&conn).unwrap_or(attempt),
            other => other,
        }
    }
}

/// One request on its own stream of `conn` (for [`Client::request_once`]).
async fn exchange(conn: &quinn::Connection, frame: &[u8]) -> Attempt {
    let attempt = exchange_inner(conn, frame).await;
    match attempt {
        Attempt::NotSent(_) | Attempt::Lost(_) => certificate_refused(conn).unwrap_or(attempt),
        other => other,
    }
}

async fn exchange_inner(conn: &quinn::Connection, frame: &[u8]) -> Attempt {
    let (mut send, mut recv) = match conn.open_bi().await {
        Ok(s) => s,
        Err(e) => return Attempt::NotSent(e.to_string()),
    };
    if let Err(e) = send.write_all(frame).await {
        return Attempt::Lost(e.to_string());
    }
    let _ = send.finish();
    match proto::read_frame(&mut recv).await {
        Ok(body) => match proto::decode::<Response>(&body) {
            Ok(r) => Attempt::Answer(r),
            Err(e) => Attempt::Lost(format!("undecodable response: {e}")),
        },
        Err(e) => Attempt::Lost(e),
    }
}

/// In TLS 1.3 the client finishes its handshake before the server has checked the
/// client's certificate; a refusal arrives afterwards as a connection closed with a
/// TLS alert (QUIC error codes 0x100-0x1ff). The server never read a stream of such a
/// connection, so nothing took effect.
fn certificate_refused(conn: &quinn::Connection) -> Option<Attempt> {
    match conn.close_reason()? {
        quinn::ConnectionError::ConnectionClosed(close)
            if (0x100..0x200).contains(&u64::from(close.error_code)) =>
        {
            Some(Attempt::CertificateRefused(close.to_string()))
        }
        _ => None,
    }
}

/// What a failed connection attempt means for the request.
fn connect_failed(e: raft_net_quic::QuicError) -> Attempt {
    match e {
        raft_net_quic::QuicError::Untrusted { detail, .. } => Attempt::Untrusted(detail),
        other => Attempt::NotSent(other.to_string()),
    }
}

/// The error text of an attempt that got no answer.
fn describe(a: &Attempt) -> String {
    match a {
        Attempt::NotSent(e) | Attempt::Lost(e) | Attempt::CertificateRefused(e) => e.clone(),
        Attempt::Untrusted(e) => format!("untrusted certificate: {e}"),
        Attempt::Answer(r) => format!("{r:?}"),
    }
}

fn encode(request: &Request) -> Result<Vec<u8>, ClientError> {
    proto::encode(request)
        .map_err(|e| ClientError::Setup(format!("cannot encode the request: {e}")))
}

fn unexpected(r: Response) -> ClientError {
    match r {
        Response::Error(e) => ClientError::Refused(e),
        other => ClientError::Refused(ServerError::Failed(format!("unexpected answer: {other:?}"))),
    }
}

fn runtime() -> Result<Arc<dyn quinn::Runtime>, ClientError> {
    raft_net_quic::tokio_runtime()
        .ok_or_else(|| ClientError::Setup("the client must run inside a tokio runtime".into()))
}
