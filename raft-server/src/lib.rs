//! A replicated key-value server on `raft-core`: LMDB storage, QUIC with mutual TLS,
//! exactly-once client sessions, a client library, metrics.
//!
//! The server's main loop, as `raft-server run` does it:
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use raft_server::{Server, ServerConfig};
//! let config = ServerConfig::load("node1.toml".as_ref())?.validate()?;
//! let server = Server::start(config).await?;       // stores, transport, node, client endpoint
//! tokio::select! {
//!     _ = tokio::signal::ctrl_c() => {}                   // graceful stop
//!     reason = server.stopped() => eprintln!("stopped: {reason:?}"),
//! }
//! server.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! Modules: [`backup`] (snapshot save and restore), [`bench`](mod@bench) (the load generator), [`certificates`] (the node's TLS material, its reloads and expiry), [`kv`] (the state machine and its sessions), [`proto`] (the client
//! protocol), [`client`] (the Rust client), [`config`], [`metrics`], [`server`].

pub mod backup;
pub mod bench;
pub mod budget;
pub mod certificates;
pub mod client;
pub mod config;
pub mod data_dir;
pub mod dev;
pub mod kv;
mod lane;
pub mod metrics;
pub mod proto;
pub mod server;

pub use client::{Client, ClientError, ClientOptions};
pub use config::{ConfigError, ServerConfig, Validated};
pub use server::{Server, StartError};

/// The TLS identity [`Client::new`] takes.
pub use raft_net_quic::Identity;
/// The QUIC implementation in this crate's public API ([`proto::read_frame`]).
pub use raft_net_quic::quinn;

/// The README's example, compiled and run by `cargo test --doc`.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
