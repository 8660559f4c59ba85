//! The workspace's benchmarks. Everything is in one criterion binary,
//! `benches/all.rs`, with one suite module per layer (`proto`, `core`, `node`,
//! `lmdb`, `quic`); this library is empty and exists only because a package needs a
//! library or binary target.
//!
//! Run all suites with `cargo bench` (or `cargo bench -p benches`), one layer with
//! `cargo bench -p benches -- quic`; see `benches/all.rs` for the rest.
