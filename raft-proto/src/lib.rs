//! Wire and log types of the raft workspace.
//!
//! Everything that crosses a network or lands on disk is defined here: typed ids
//! ([`NodeId`], [`Term`], [`LogIndex`], [`LogId`]), log [`Entry`]s, [`HardState`], one
//! [`Message`] variant per RPC, and the versioned frame encoding (serde + postcard).
//! No logic, no I/O.
//!
//! ```
//! use raft_proto::{Envelope, Message, NodeId, Term, TimeoutNow};
//!
//! let env = Envelope {
//!     from: NodeId(1),
//!     to: NodeId(2),
//!     message: Message::TimeoutNow(TimeoutNow { term: Term(7) }),
//! };
//! let frame = env.encode()?;
//! assert_eq!(Envelope::decode(&frame)?, env);
//! // Untrusted bytes decode to an error, never a panic.
//! assert!(Envelope::decode(&[1, 0xff, 0xff]).is_err());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod bytes;
mod entry;
mod frame;
mod ids;
mod message;

pub use crate::bytes::Bytes;
pub use entry::{Entry, EntryPayload, HardState, Membership, NodeRecord, SnapshotMeta};
pub use frame::{
    DecodeError, EncodeError, Envelope, FORMAT_VERSION, decode_frame, encode_frame,
    encode_frame_into,
};
pub use ids::{LogId, LogIndex, NodeId, ReadId, Term};
pub use message::{
    AppendEntries, AppendResponse, AppendResult, ConflictHint, InstallSnapshot,
    InstallSnapshotResponse, Message, ReadIndexRequest, ReadIndexResponse, ReadIndexResult,
    SnapshotOutcome, SnapshotRequest, TimeoutNow, VoteRequest, VoteResponse,
};

/// The README's example, compiled and run by `cargo test --doc`.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
