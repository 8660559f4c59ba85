//! The subcommands, one module per group, and the error they share.

pub(crate) mod bench;
pub(crate) mod certs;
pub(crate) mod cluster;
pub(crate) mod conn;
pub(crate) mod dev;
pub(crate) mod error;
pub(crate) mod kv;
pub(crate) mod run;
pub(crate) mod snapshot;
