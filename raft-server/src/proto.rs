//! The client protocol (ALPN `raft-client/1`): length-prefixed, versioned postcard
//! frames on bidirectional QUIC streams, in one of two shapes.
//!
//! - **A lane** (what [`Client`](crate::Client) uses): a stream that opens with
//!   [`LANE_PREAMBLE`] and then carries any number of [`Tagged`] requests; the server
//!   answers each with a [`Tagged`] response of the same id, as soon as it is ready
//!   (not necessarily in order), several per write. One stream serves a connection's
//!   whole life: no stream set-up, teardown or task per request.
//! - **One request per stream**: a [`Request`] frame, answered by one [`Response`]
//!   frame, then the stream ends (for tools that send a single request).

use crate::budget::{ByteBudget, Reservation};
use raft_proto::{Bytes, NodeId};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// A client's request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Opens an exactly-once session; answered with [`Response::Registered`].
    Register,
    /// A write. With a session, a retry with the same `(client_id, seq)` returns the
    /// first response and is applied once.
    Write {
        /// The session and the request's number in it (`None`: at-most-once is not
        /// guaranteed across retries).
        session: Option<SessionRef>,
        /// What to write.
        op: WriteOp,
    },
    /// A read.
    Read {
        /// What to read.
        op: ReadOp,
        /// How fresh it must be.
        consistency: Consistency,
    },
    /// Cluster administration.
    Admin(AdminOp),
}

/// Which session a write belongs to, and its place in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRef {
    /// The id [`Response::Registered`] gave.
    pub client_id: u64,
    /// This request's number, unique within the session.
    pub seq: u64,
    /// Every request numbered below this has its response at the client: the
    /// server may forget those responses.
    pub acked_below: u64,
}

/// A write operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteOp {
    /// Sets `key` to `value`.
    Put {
        /// The key.
        key: Bytes,
        /// The value.
        value: Bytes,
    },
    /// Removes `key`.
    Delete {
        /// The key.
        key: Bytes,
    },
    /// Sets `key` to `new` (or removes it, if `None`) only if its value is `expected`
    /// (`None`: absent).
    Cas {
        /// The key.
        key: Bytes,
        /// The value it must have.
        expected: Option<Bytes>,
        /// The value to set.
        new: Option<Bytes>,
    },
    /// Appends `value` to `key`'s value (an absent key counts as empty).
    Append {
        /// The key.
        key: Bytes,
        /// The bytes to append.
        value: Bytes,
    },
}

impl WriteOp {
    /// The key written.
    pub fn key(&self) -> &Bytes {
        match self {
            WriteOp::Put { key, .. }
            | WriteOp::Delete { key }
            | WriteOp::Cas { key, .. }
            | WriteOp::Append { key, .. } => key,
        }
    }
}

/// A read operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReadOp {
    /// One key's value.
    Get {
        /// The key.
        key: Bytes,
    },
    /// Keys in `[start, end)` in order (`end: None`: to the last key), at most `limit`.
    Scan {
        /// The first key.
        start: Bytes,
        /// The key after the last one.
        end: Option<Bytes>,
        /// The most keys to return.
        limit: u32,
    },
}

/// How fresh a read must be.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Consistency {
    /// Linearizable (ReadIndex, dissertation §6.4): reflects every write acknowledged
    /// before the read began. Served by any node; a follower asks the leader.
    #[default]
    Linearizable,
    /// Whatever the node that answers has applied: may be stale, never blocks.
    Stale,
}

/// Cluster administration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminOp {
    /// This node's view of the cluster.
    Status,
    /// Adds node `id`, reachable at `addr`, as a learner. The address is recorded in
    /// the configuration entry (a [`NodeRecord`](raft_proto::NodeRecord)), so every
    /// node learns it from the log.
    AddLearner {
        /// The new node.
        id: NodeId,
        /// Its address (`host:port`).
        addr: String,
    },
    /// Makes a caught-up learner a voter.
    Promote {
        /// The learner.
        id: NodeId,
    },
    /// Removes a voter or learner.
    Remove {
        /// The node.
        id: NodeId,
    },
    /// Hands leadership to `to`.
    TransferLeader {
        /// The new leader.
        to: NodeId,
    },
    /// Takes a snapshot on the node that receives this now.
    Snapshot,
    /// Streams a snapshot of the node's state to the client, for a backup. Only on a
    /// stream of its own (not on a lane): the node answers with [`SaveFrame`]s, a
    /// header, the snapshot's bytes in chunks, then an end frame.
    SaveSnapshot,
    /// Records a member's new address (it moved): a configuration change that
    /// replaces its [`NodeRecord`](raft_proto::NodeRecord).
    MoveNode {
        /// The member.
        id: NodeId,
        /// Its new address (`host:port`).
        addr: String,
    },
}

/// What a node sends on a [`AdminOp::SaveSnapshot`] stream, in this order: one
/// [`Header`](SaveFrame::Header), [`Chunk`](SaveFrame::Chunk)s holding the snapshot
/// file's bytes in order, then [`End`](SaveFrame::End). An
/// [`Error`](SaveFrame::Error) may come instead of any of them, and ends the stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SaveFrame {
    /// What the snapshot is.
    Header(SaveHeader),
    /// The next bytes of the snapshot file (at most [`SAVE_CHUNK`]).
    Chunk(Bytes),
    /// Every byte was sent.
    End {
        /// The bytes sent.
        size: u64,
        /// SHA-256 of them.
        sha256: [u8; 32],
    },
    /// The save failed; nothing more follows.
    Error(ServerError),
}

/// The bytes of snapshot data one [`SaveFrame::Chunk`] carries at most.
pub const SAVE_CHUNK: usize = 1 << 20;

/// What a snapshot being saved is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SaveHeader {
    /// The cluster it belongs to: the hex SHA-256 of the cluster CA certificate (the
    /// same fingerprint the data directory's `IDENTITY` records).
    pub cluster: String,
    /// The node that sent it.
    pub node: NodeId,
    /// The node's clock when it began, ms since the Unix epoch.
    pub taken_at_ms: u64,
    /// The node confirmed with the leader (a ReadIndex round) that its state held
    /// every write acknowledged before the save began. `false`: the cluster had no
    /// leader the node could reach, and the snapshot holds what the node had applied.
    pub confirmed: bool,
    /// The entries it covers, and the membership then.
    pub meta: raft_proto::SnapshotMeta,
    /// The snapshot file's size in bytes.
    pub size: u64,
}

/// A server's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// A session was opened.
    Registered {
        /// The session's id.
        client_id: u64,
    },
    /// A write was committed and applied.
    Written(Written),
    /// A value (`None`: the key is absent).
    Value {
        /// The value.
        value: Option<Bytes>,
    },
    /// Keys and values in key order.
    Scanned {
        /// The pairs.
        items: Vec<(Bytes, Bytes)>,
        /// More keys were left out by the limit.
        more: bool,
    },
    /// The cluster as this node sees it.
    Status(Status),
    /// An admin operation was carried out.
    Done,
    /// The request failed.
    Error(ServerError),
}

/// The outcome of a committed write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Written {
    /// The log index the write committed at.
    pub index: u64,
    /// What it did.
    pub result: WriteResult,
}

/// What a committed write did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteResult {
    /// A put or delete: the value before.
    Previous(Option<Bytes>),
    /// A compare-and-swap: whether it swapped, and the value now.
    Cas {
        /// The value was as expected and was replaced.
        swapped: bool,
        /// The key's value after the operation.
        current: Option<Bytes>,
    },
    /// An append: the value's length after it.
    Appended {
        /// The new length.
        len: u64,
    },
    /// The request was refused by the state machine (the session expired, ...); it
    /// did not take effect.
    Refused(ServerError),
}

/// A node's view of the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The node answering.
    pub id: NodeId,
    /// Its role (`Leader`, `Follower`, `Candidate`, `Learner`...).
    pub role: String,
    /// Its term.
    pub term: u64,
    /// The leader it knows.
    pub leader: Option<NodeId>,
    /// Its commit index.
    pub committed: u64,
    /// What it has applied.
    pub applied: u64,
    /// Its last log index.
    pub last_index: u64,
    /// Its newest snapshot's index.
    pub snapshot: u64,
    /// Voters, with their addresses.
    pub voters: Vec<(NodeId, String)>,
    /// Learners, with their addresses.
    pub learners: Vec<(NodeId, String)>,
    /// On a leader: each follower's match index.
    pub replication: Vec<(NodeId, u64)>,
}

/// Why a request failed. Every variant says whether the request may have taken
/// effect.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ServerError {
    /// This node is not the leader; retry at `leader` (its address, if known). The
    /// request did not take effect.
    #[error("not the leader (leader: {leader:?} at {addr:?})")]
    NotLeader {
        /// The leader this node knows.
        leader: Option<NodeId>,
        /// Its client address.
        addr: Option<String>,
    },
    /// The key or value is over the server's limit; not applied.
    #[error("{what} is {size} bytes, over the limit of {limit}")]
    TooLarge {
        /// "key" or "value".
        what: String,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The session is unknown or expired; the request was not applied now (an earlier
    /// attempt of it may have been, before the session expired).
    #[error("session {0} is unknown or expired; register a new one")]
    SessionExpired(u64),
    /// The request is malformed or not allowed; not applied.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// Too many requests in flight; not applied. Retry later.
    #[error("server busy: {0}")]
    Busy(String),
    /// The outcome is unknown (a leader change or a stopped node while the write was
    /// in flight): retry with the same session and sequence number.
    #[error("outcome unknown: {0}")]
    Unknown(String),
    /// The request failed for a reason that is not a leader change (a membership
    /// change refused, ...); not applied.
    #[error("{0}")]
    Failed(String),
    /// The client's certificate does not carry the role the operation needs; not
    /// applied.
    #[error("{0}")]
    Forbidden(String),
    /// The session belongs to another client identity (the certificate name that
    /// registered it); not applied. Register a session of your own.
    #[error(
        "session {0} belongs to another client; this request was not applied (register a session of your own)"
    )]
    SessionNotOwned(u64),
}

impl ServerError {
    /// Whether retrying the same request (same session and number) is right.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            ServerError::NotLeader { .. } | ServerError::Busy(_) | ServerError::Unknown(_)
        )
    }
}

/// The largest request or response frame (a scan answer included).
pub const MAX_FRAME: usize = 8 << 20;

/// The first 8 bytes of a lane: a length no frame can have, then `LANE`.
pub const LANE_PREAMBLE: [u8; 8] = [0xff, 0xff, 0xff, 0xff, b'L', b'A', b'N', b'E'];

/// A request or a response on a lane, with the id that pairs them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tagged<T> {
    /// Chosen by the client, unique among its requests in flight on the lane.
    pub id: u64,
    /// The request or the response.
    pub body: T,
}

/// Encodes a message as one frame (length prefix, version byte, postcard).
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, raft_proto::EncodeError> {
    let body = raft_proto::encode_frame(value)?;
    let mut out = Vec::with_capacity(body.len() + 4);
    raft_net_quic::frame::put_frame(&mut out, &body);
    Ok(out)
}

/// Decodes a frame body (without its length prefix).
pub fn decode<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, raft_proto::DecodeError> {
    raft_proto::decode_frame(body)
}

/// Appends a message as one frame (length prefix, version byte, postcard) to `out`.
pub fn encode_into<T: Serialize>(
    value: &T,
    out: &mut Vec<u8>,
) -> Result<(), raft_proto::EncodeError> {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    if let Err(e) = raft_proto::encode_frame_into(value, out) {
        out.truncate(start);
        return Err(e);
    }
    let len = u32::try_from(out.len() - start - 4).unwrap_or(u32::MAX);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    Ok(())
}

/// Why a client's request frame was not read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The stream ended between frames.
    #[error("the stream ended")]
    Finished,
    /// The stream broke, or ended inside a frame.
    #[error("reading a frame: {0}")]
    Stream(String),
    /// The frame announced more than the limit; nothing was allocated. On a lane, a
    /// frame up to [`MAX_FRAME`] was read past, so the lane goes on (`tag` is its id).
    #[error("a frame of {len} bytes is over the limit of {limit}")]
    TooLarge {
        /// The length announced.
        len: u64,
        /// The limit.
        limit: u64,
        /// The lane id the frame carried, if it was read past.
        tag: Option<u64>,
    },
    /// The frame did not arrive whole within the frame timeout.
    #[error("the frame did not arrive within {0:?}")]
    Timeout(Duration),
    /// The node's request byte budget was spent: the frame was read past and dropped.
    #[error(
        "this node holds {limit} bytes of requests in flight; a request of {len} bytes must wait"
    )]
    Busy {
        /// The frame's length.
        len: u64,
        /// The budget.
        limit: u64,
        /// The lane id the frame carried, if its first bytes held one.
        tag: Option<u64>,
    },
}

/// What bounds the reading of a client's request frames.
#[derive(Clone, Debug)]
pub struct FrameLimits {
    /// The largest frame body accepted.
    pub max: u64,
    /// How long a frame may take to arrive once started.
    pub timeout: Duration,
    /// The bytes of requests the node holds at once.
    pub budget: Arc<ByteBudget>,
}

/// Bytes reserved for a request beyond its frame: its decoded form and answer.
pub const REQUEST_OVERHEAD: u64 = 512;

/// The lane id of a [`Tagged`] frame, from its first bytes (the format version, then
/// the id as a varint).
pub fn peek_tag(prefix: &[u8]) -> Option<u64> {
    let (&version, rest) = prefix.split_first()?;
    if version != raft_proto::FORMAT_VERSION {
        return None;
    }
    postcard::take_from_bytes::<u64>(rest)
        .ok()
        .map(|(id, _)| id)
}

/// Reads a client's request frame, incrementally: the memory it takes grows with the
/// bytes that arrived, never with the length announced. A length over `limits.max` is
/// refused at once; a frame that finds the byte budget spent is read past (its first
/// bytes kept for [`peek_tag`] when `tagged`) and refused as busy.
///
/// `header` is the length prefix when the caller read it already. The frame must be
/// whole by `deadline`; with none, the wait for its first byte is unbounded (a lane
/// between requests) and the frame timeout starts then.
pub async fn read_request(
    recv: &mut quinn::RecvStream,
    limits: &FrameLimits,
    header: Option<[u8; 4]>,
    deadline: Option<tokio::time::Instant>,
    tagged: bool,
) -> Result<(Vec<u8>, Reservation), FrameError> {
    let stream = |e: &dyn std::fmt::Display| FrameError::Stream(e.to_string());
    let mut len = header.unwrap_or_default();
    let mut got = if header.is_some() { 4 } else { 0 };
    let deadline = match deadline {
        Some(d) => d,
        None => {
            match recv.read(&mut len).await.map_err(|e| stream(&e))? {
                Some(n) => got = n,
                None => return Err(FrameError::Finished),
            }
            tokio::time::Instant::now() + limits.timeout
        }
    };
    let read = async {
        while got < 4 {
            match recv.read(&mut len[got..]).await.map_err(|e| stream(&e))? {
                Some(n) => got += n,
                None => return Err(stream(&"the stream ended inside a frame header")),
            }
        }
        let n = u64::from(u32::from_le_bytes(len));
        if n > limits.max {
            // A lane's frame that is merely too large (a value over the limit) is read
            // past, so its sender hears why; a larger one ends the lane.
            let tag = if tagged && n <= MAX_FRAME as u64 {
                skip(recv, n).await?
            } else {
                None
            };
            return Err(FrameError::TooLarge {
                len: n,
                limit: limits.max,
                tag,
            });
        }
        let Some(reservation) = limits.budget.try_reserve(n + REQUEST_OVERHEAD) else {
            let tag = skip(recv, n).await?;
            return Err(FrameError::Busy {
                len: n,
                limit: limits.budget.limit(),
                tag: if tagged { tag } else { None },
            });
        };
        let mut body = Vec::with_capacity(usize::try_from(n.min(64 << 10)).unwrap_or(0));
        while (body.len() as u64) < n {
            let chunk = next_chunk(recv, n - body.len() as u64).await?;
            body.extend_from_slice(&chunk.bytes);
        }
        Ok((body, reservation))
    };
    match tokio::time::timeout_at(deadline, read).await {
        Ok(r) => r,
        Err(_) => Err(FrameError::Timeout(limits.timeout)),
    }
}

/// Reads past a frame body of `n` bytes without keeping it; the lane id in its first
/// bytes, if they hold one.
async fn skip(recv: &mut quinn::RecvStream, n: u64) -> Result<Option<u64>, FrameError> {
    let mut prefix = Vec::new();
    let mut left = n;
    while left > 0 {
        let chunk = next_chunk(recv, left).await?.bytes;
        if prefix.len() < 16 {
            let take = chunk.len().min(16 - prefix.len());
            prefix.extend_from_slice(&chunk[..take]);
        }
        left = left.saturating_sub(chunk.len() as u64);
    }
    Ok(peek_tag(&prefix))
}

/// The next bytes of a frame, at most `left`.
async fn next_chunk(recv: &mut quinn::RecvStream, left: u64) -> Result<quinn::Chunk, FrameError> {
    let want = usize::try_from(left).unwrap_or(usize::MAX);
    match recv.read_chunk(want, true).await {
        Ok(Some(chunk)) => Ok(chunk),
        Ok(None) => Err(FrameError::Stream("the stream ended inside a frame".into())),
        Err(e) => Err(FrameError::Stream(e.to_string())),
    }
}

/// Reads one length-prefixed frame from a stream, refusing one over [`MAX_FRAME`].
pub async fn read_frame(recv: &mut quinn::RecvStream) -> Result<Vec<u8>, String> {
    let mut len = [0u8; 4];
    recv.read_exact(&mut len)
        .await
        .map_err(|e| format!("reading a frame: {e}"))?;
    read_frame_body(recv, len).await
}

/// Reads the body of a frame whose length prefix `len` was already read.
pub async fn read_frame_body(
    recv: &mut quinn::RecvStream,
    len: [u8; 4],
) -> Result<Vec<u8>, String> {
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(format!(
            "a frame of {len} bytes is over the limit of {MAX_FRAME}"
        ));
    }
    let mut body = vec![0; len];
    recv.read_exact(&mut body)
        .await
        .map_err(|e| format!("reading a frame: {e}"))?;
    Ok(body)
}
