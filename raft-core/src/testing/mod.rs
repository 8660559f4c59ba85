//! Test doubles and test harness pieces, behind the `testing` feature: an in-memory
//! [`LogStore`](crate::node::LogStore) and key-value
//! [`StateMachine`](crate::node::StateMachine), an in-process transport with
//! partitions, a [`Runtime`](crate::node::Runtime) on the `futures` thread pool, and
//! the conformance suites every storage implementation must pass.

mod memory;
mod router;
mod runtime;
pub mod suite;

pub use memory::{MemLogStore, MemStateMachine, kv_command};
pub use router::{Router, RouterTransport};
pub use runtime::ThreadPoolRuntime;
