//! A node's configuration file, as `raft-server run --config` reads it.
//!
//! Checks, for any UTF-8 text (other bytes are skipped: the loader reads a `String`):
//! `toml::from_str::<ServerConfig>` (what `ServerConfig::load` does) never panics;
//! a configuration that parses writes back with `to_toml` (what `raft-server dev`
//! does) to text that parses to the same configuration; and `validate` never
//! panics, when every address in it is a literal socket address (`listen`, each
//! peer's part after `=`, `metrics`) so that no DNS lookup runs while fuzzing. A
//! configuration that validates has one peer address per listed peer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use raft_server::ServerConfig;
use std::net::SocketAddr;

/// Whether `validate` can run without name resolution: it parses a literal address
/// itself and only falls back to DNS for anything else.
fn addresses_are_literal(config: &ServerConfig) -> bool {
    let literal = |a: &str| a.parse::<SocketAddr>().is_ok();
    literal(&config.listen)
        && config.metrics.as_deref().is_none_or(literal)
        && config.peers.iter().all(|spec| {
            // Without '=', `parse_peer` refuses the spec before resolving anything.
            spec.split_once('=')
                .is_none_or(|(_, addr)| literal(addr.trim()))
        })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = toml::from_str::<ServerConfig>(text) else {
        return;
    };
    let written = config.to_toml();
    let back = toml::from_str::<ServerConfig>(&written)
        .unwrap_or_else(|e| panic!("to_toml wrote text that does not parse: {e}\n{written}"));
    assert_eq!(
        back, config,
        "to_toml changed the configuration:\n{written}"
    );
    if addresses_are_literal(&config)
        && let Ok(valid) = config.validate()
    {
        assert_eq!(
            valid.peers.len(),
            config.peers.len(),
            "peers lost in validation"
        );
    }
});
