//! QUIC transport for `raft-core` nodes: quinn + rustls (ring only), mutual TLS against a
//! cluster CA, node identity bound to certificates, snapshots on their own streams.
//!
//! ```no_run
//! # fn demo(config: raft_net_quic::QuicConfig, runtime: std::sync::Arc<dyn raft_net_quic::quinn::Runtime>) -> Result<(), Box<dyn std::error::Error>> {
//! let started = raft_net_quic::QuicTransport::start(config, runtime)?;
//! // Give `started.transport` and `started.incoming` to `raft_core::node::Environment`.
//! # Ok(()) }
//! ```

pub mod cert;
pub mod frame;
pub mod revocation;
pub mod tls;
mod transport;

pub use cert::{CertInfo, CertRole};
pub use revocation::DenyList;
pub use tls::{Identity, PemPair, TlsError, Validity};
pub use transport::{
    ClientConnection, ClientLimits, PeerStats, QuicConfig, QuicError, QuicTransport, Started,
    connect_client, connect_client_within, delay,
};
#[cfg(feature = "tokio")]
pub use transport::{TokioHandle, tokio_runtime};

/// The QUIC implementation in this crate's public API ([`Started::clients`],
/// [`ClientConnection`], the `quinn::Runtime` that [`QuicTransport::start`] takes).
/// Use this re-export, not your own `quinn` dependency, so the versions always match.
pub use quinn;
/// The TLS library of [`tls`] (its configs, certificate and key types).
pub use rustls;

/// The README's example, compiled and run by `cargo test --doc`.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
