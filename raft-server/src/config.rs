//! A node's configuration: from a TOML file or from flags, validated before anything
//! starts.
//!
//! ```toml
//! id = 1
//! listen = "127.0.0.1:7101"          # QUIC: peers and clients
//! peers = ["2=127.0.0.1:7102", "3=127.0.0.1:7103"]
//! data_dir = "raft-dev/node1"
//! ca = "raft-dev/certs/ca.crt"
//! cert = "raft-dev/certs/node1.crt"
//! key = "raft-dev/certs/node1.key"   # mode 0600 (or 0400), or the node refuses to start
//! deny_list = "raft-dev/certs/revoked.txt"  # optional: revoked certificate fingerprints
//! metrics = "127.0.0.1:9101"         # optional: /metrics and /health over HTTP
//! ```
//!
//! `ca`, `cert`, `key` and `deny_list` are read again on SIGHUP and when one of them
//! changes (checked every `cert_check_secs`); see `raft_server::certificates`.

use raft_proto::NodeId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A node's configuration as written in its file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// This node's id (not 0).
    pub id: u64,
    /// The UDP address for QUIC, shared by peers and clients.
    pub listen: String,
    /// The other founding members, `ID=HOST:PORT` (more nodes join through
    /// `cluster add-learner`).
    #[serde(default)]
    pub peers: Vec<String>,
    /// Start empty and wait to be added to an existing cluster with `cluster
    /// add-learner`, instead of founding one. `peers` then lists the cluster's current
    /// members (how to reach them; membership stays as the cluster decides).
    #[serde(default)]
    pub join: bool,
    /// Where the log and the state machine live. Created with mode 0700 (with its
    /// `log` and `sm` subdirectories); an existing directory that its group or others
    /// may enter is used as it is, with a warning.
    pub data_dir: PathBuf,
    /// The cluster CA certificates (PEM): one, or a bundle of several while a CA is
    /// being replaced. Peers and clients must chain to one of them.
    pub ca: PathBuf,
    /// This node's certificate (PEM), naming `node-<id>.raft`, signed by a CA in `ca`.
    pub cert: PathBuf,
    /// Its private key (PEM). On Unix it must not be readable by group or others
    /// (mode 0600 or 0400): the node refuses to start otherwise.
    pub key: PathBuf,
    /// A deny-list of revoked certificates: one SHA-256 fingerprint (64 hex digits,
    /// as `raft-server certs` prints them) per line, `#` comments. A listed node or
    /// client is refused at its next handshake, in both directions. Without it,
    /// nothing is revoked.
    #[serde(default)]
    pub deny_list: Option<PathBuf>,
    /// How often, in seconds, the node checks whether `ca`, `cert`, `key` or
    /// `deny_list` changed (their modification time, size or inode); a change reloads
    /// them all, as SIGHUP does.
    #[serde(default = "defaults::cert_check_secs")]
    pub cert_check_secs: u64,
    /// Where to serve `/metrics` and `/health` over HTTP.
    #[serde(default)]
    pub metrics: Option<String>,
    /// The largest key accepted, bytes.
    #[serde(default = "defaults::max_key_bytes")]
    pub max_key_bytes: u64,
    /// The largest value accepted, bytes.
    #[serde(default = "defaults::max_value_bytes")]
    pub max_value_bytes: u64,
    /// A client session expires after this long without a request.
    #[serde(default = "defaults::session_ttl_secs")]
    pub session_ttl_secs: u64,
    /// One Raft tick.
    #[serde(default = "defaults::tick_ms")]
    pub tick_ms: u64,
    /// The election timeout, in ticks: a follower that hears nothing from a leader for
    /// a random time in `[election_ticks, 2 * election_ticks)` campaigns, and a leader
    /// that hears from no quorum for `election_ticks` steps down.
    #[serde(default = "defaults::election_ticks")]
    pub election_ticks: u32,
    /// Ticks between a leader's heartbeats (below `election_ticks`).
    #[serde(default = "defaults::heartbeat_ticks")]
    pub heartbeat_ticks: u32,
    /// Serve linearizable reads from the leader's lease instead of a heartbeat round
    /// per batch (raft_core::ReadMode::LeaseBased): faster, and safe only while no
    /// node's clock runs faster than another's beyond `lease_clock_drift_ticks`.
    #[serde(default)]
    pub lease_reads: bool,
    /// The lease is `election_ticks - lease_clock_drift_ticks` ticks after the last
    /// heartbeat round a quorum acknowledged (see raft_core::ReadMode).
    #[serde(default = "defaults::lease_clock_drift_ticks")]
    pub lease_clock_drift_ticks: u32,
    /// Client requests (reads, writes, sessions and admin operations) in progress on
    /// this node at once; beyond it a request is refused as busy.
    #[serde(default = "defaults::max_in_flight")]
    pub max_in_flight: u64,
    /// Bytes of client requests held at once: request frames being read or waiting
    /// for their answer, and read answers (values and scans) not yet handed to the
    /// connection. Beyond it a request is refused as busy, before its body is read.
    #[serde(default = "defaults::max_request_bytes_in_flight")]
    pub max_request_bytes_in_flight: u64,
    /// How long a client may take to send a whole request frame once its first byte
    /// arrived (and, on a stream that carries one request, from the stream's opening).
    /// A slower one is cut off.
    #[serde(default = "defaults::frame_timeout_ms")]
    pub frame_timeout_ms: u64,
    /// Client connections open on this node at once; beyond it a new one is closed
    /// after its handshake with "busy".
    #[serde(default = "defaults::max_client_connections")]
    pub max_client_connections: u64,
    /// Client connections open at once per client identity (the certificate's name).
    #[serde(default = "defaults::max_connections_per_client")]
    pub max_connections_per_client: u64,
    /// Streams a client may have open on one connection at once (QUIC's
    /// MAX_STREAMS); a client's lane is one.
    #[serde(default = "defaults::max_streams_per_connection")]
    pub max_streams_per_connection: u64,
    /// Bytes a client may send on one connection before the node has read them (QUIC's
    /// connection flow-control window; each stream gets half).
    #[serde(default = "defaults::client_receive_window_bytes")]
    pub client_receive_window_bytes: u64,
    /// Open client sessions the cluster keeps; registering one more expires the one
    /// idle longest first. Applied by every node from the leader's value in the log.
    #[serde(default = "defaults::max_sessions")]
    pub max_sessions: u64,
    /// How long a client request may take on the server before it answers "outcome
    /// unknown".
    #[serde(default = "defaults::request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Take a snapshot (and compact the log) every this many applied entries.
    #[serde(default = "defaults::snapshot_entries")]
    pub snapshot_entries: u64,
}

mod defaults {
    pub(super) fn max_key_bytes() -> u64 {
        4096
    }
    pub(super) fn max_value_bytes() -> u64 {
        1 << 20
    }
    pub(super) fn session_ttl_secs() -> u64 {
        3600
    }
    pub(super) fn tick_ms() -> u64 {
        10
    }
    /// 300-600 ms with 10 ms ticks: measured on a 2-core machine with 1,024 clients
    /// and a CPU load of 8, 10 ticks (100-200 ms) cost 3 leader changes and 821 failed
    /// requests in 40 s, 30 ticks none; a killed leader was replaced in 489 ms
    /// (median of 5) against 198 ms with 10 ticks (README, "Timing").
    pub(super) fn election_ticks() -> u32 {
        30
    }
    pub(super) fn heartbeat_ticks() -> u32 {
        3
    }
    /// A third of the default election timeout: covers clock rates that differ by a
    /// factor of up to 1.36 (ticks delivered late are caught up; a stall too long to
    /// catch up on ends the lease).
    pub(super) fn lease_clock_drift_ticks() -> u32 {
        10
    }
    pub(super) fn max_in_flight() -> u64 {
        8192
    }
    /// 64 MiB: 32 of the largest requests (two 1 MiB values in a compare-and-swap)
    /// at once, and ~300,000 typical 200-byte ones.
    pub(super) fn max_request_bytes_in_flight() -> u64 {
        64 << 20
    }
    pub(super) fn frame_timeout_ms() -> u64 {
        10_000
    }
    /// Above the 1,024 connections of the overload test and `bench --clients 1024`.
    pub(super) fn max_client_connections() -> u64 {
        2048
    }
    pub(super) fn max_connections_per_client() -> u64 {
        1536
    }
    pub(super) fn max_streams_per_connection() -> u64 {
        16
    }
    /// Bytes buffered per connection before the node reads them: with 2,048 client
    /// connections, at most 512 MiB in all.
    pub(super) fn client_receive_window_bytes() -> u64 {
        256 << 10
    }
    pub(super) fn max_sessions() -> u64 {
        100_000
    }
    pub(super) fn request_timeout_ms() -> u64 {
        10_000
    }
    pub(super) fn snapshot_entries() -> u64 {
        20_000
    }
    pub(super) fn cert_check_secs() -> u64 {
        5
    }
}

impl ServerConfig {
    /// A configuration with every default, for the given identity and paths.
    pub fn new(id: u64, listen: &str, data_dir: &Path, certs: &Path) -> ServerConfig {
        ServerConfig {
            id,
            listen: listen.to_string(),
            peers: Vec::new(),
            join: false,
            data_dir: data_dir.to_path_buf(),
            ca: certs.join("ca.crt"),
            cert: certs.join(format!("node{id}.crt")),
            key: certs.join(format!("node{id}.key")),
            deny_list: None,
            cert_check_secs: defaults::cert_check_secs(),
            metrics: None,
            max_key_bytes: defaults::max_key_bytes(),
            max_value_bytes: defaults::max_value_bytes(),
            session_ttl_secs: defaults::session_ttl_secs(),
            tick_ms: defaults::tick_ms(),
            election_ticks: defaults::election_ticks(),
            heartbeat_ticks: defaults::heartbeat_ticks(),
            lease_reads: false,
            lease_clock_drift_ticks: defaults::lease_clock_drift_ticks(),
            max_in_flight: defaults::max_in_flight(),
            max_request_bytes_in_flight: defaults::max_request_bytes_in_flight(),
            frame_timeout_ms: defaults::frame_timeout_ms(),
            max_client_connections: defaults::max_client_connections(),
            max_connections_per_client: defaults::max_connections_per_client(),
            max_streams_per_connection: defaults::max_streams_per_connection(),
            client_receive_window_bytes: defaults::client_receive_window_bytes(),
            max_sessions: defaults::max_sessions(),
            request_timeout_ms: defaults::request_timeout_ms(),
            snapshot_entries: defaults::snapshot_entries(),
        }
    }

    /// Reads a TOML file.
    pub fn load(path: &Path) -> Result<ServerConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::File {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })
    }

    /// The configuration as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }

    /// Checks everything that can be checked before starting.
    pub fn validate(&self) -> Result<Validated, ConfigError> {
        if self.id == 0 {
            return Err(ConfigError::Invalid("id must not be 0".into()));
        }
        let id = NodeId(self.id);
        let listen = resolve(&self.listen).map_err(|detail| ConfigError::Address {
            what: "listen".into(),
            addr: self.listen.clone(),
            detail,
        })?;
        let mut peers = BTreeMap::new();
        for spec in &self.peers {
            let (pid, addr) = parse_peer(spec)?;
            if pid == id {
                return Err(ConfigError::Invalid(format!(
                    "peer {spec:?} has this node's own id {id}; list only the other nodes"
                )));
            }
            if peers.insert(pid, addr).is_some() {
                return Err(ConfigError::Invalid(format!(
                    "node {pid} is listed twice in peers"
                )));
            }
        }
        let mut seen = BTreeMap::new();
        seen.insert(listen, id);
        for (&pid, &addr) in &peers {
            if let Some(other) = seen.insert(addr, pid) {
                return Err(ConfigError::Invalid(format!(
                    "nodes {other} and {pid} share the address {addr}"
                )));
            }
        }
        if self.join && peers.is_empty() {
            return Err(ConfigError::Invalid(
                "join = true needs the cluster's current members in peers (--peer ID=HOST:PORT \
                 for each), to reach them; they stay in charge of membership"
                    .into(),
            ));
        }
        for (what, v) in [
            ("max_key_bytes", self.max_key_bytes),
            ("max_value_bytes", self.max_value_bytes),
            ("session_ttl_secs", self.session_ttl_secs),
            ("tick_ms", self.tick_ms),
            ("max_in_flight", self.max_in_flight),
            ("request_timeout_ms", self.request_timeout_ms),
            ("frame_timeout_ms", self.frame_timeout_ms),
            ("max_client_connections", self.max_client_connections),
            (
                "max_connections_per_client",
                self.max_connections_per_client,
            ),
            (
                "max_streams_per_connection",
                self.max_streams_per_connection,
            ),
            ("max_sessions", self.max_sessions),
            ("cert_check_secs", self.cert_check_secs),
        ] {
            if v == 0 {
                return Err(ConfigError::Invalid(format!("{what} must be more than 0")));
            }
        }
        if self.election_ticks < 2
            || self.heartbeat_ticks == 0
            || self.heartbeat_ticks >= self.election_ticks
        {
            return Err(ConfigError::Invalid(format!(
                "heartbeat_ticks is {} and election_ticks is {}; heartbeats must come more often than elections (0 < heartbeat_ticks < election_ticks, election_ticks >= 2)",
                self.heartbeat_ticks, self.election_ticks
            )));
        }
        if self.lease_reads
            && (self.lease_clock_drift_ticks < 2
                || self.lease_clock_drift_ticks >= self.election_ticks)
        {
            return Err(ConfigError::Invalid(format!(
                "lease_clock_drift_ticks is {} and election_ticks is {}; it must be at least 2 and below election_ticks",
                self.lease_clock_drift_ticks, self.election_ticks
            )));
        }
        if self.max_key_bytes > 4096 {
            return Err(ConfigError::Invalid(format!(
                "max_key_bytes is {}; at most 4096 is supported",
                self.max_key_bytes
            )));
        }
        if self.max_value_bytes > 64 << 20 {
            return Err(ConfigError::Invalid(format!(
                "max_value_bytes is {}; at most 64 MiB is supported",
                self.max_value_bytes
            )));
        }
        // The largest request the limits allow: a compare-and-swap of a key and two
        // values, with room for the encoding.
        if self.max_request_bytes_in_flight < self.request_frame_limit() {
            return Err(ConfigError::Invalid(format!(
                "max_request_bytes_in_flight is {}; it must hold at least one request of the largest size ({} bytes: max_key_bytes + 2 * max_value_bytes + 4096)",
                self.max_request_bytes_in_flight,
                self.request_frame_limit()
            )));
        }
        if self.client_receive_window_bytes < 16 << 10 || self.client_receive_window_bytes > 1 << 30
        {
            return Err(ConfigError::Invalid(format!(
                "client_receive_window_bytes is {}; it must be between 16 KiB and 1 GiB",
                self.client_receive_window_bytes
            )));
        }
        let metrics = match &self.metrics {
            Some(m) => Some(resolve(m).map_err(|detail| ConfigError::Address {
                what: "metrics".into(),
                addr: m.clone(),
                detail,
            })?),
            None => None,
        };
        Ok(Validated {
            id,
            listen,
            peers,
            metrics,
            config: self.clone(),
        })
    }

    /// The largest client request frame accepted: a compare-and-swap of the largest
    /// key and two of the largest values, with 4 KiB for the encoding. A frame that
    /// announces more is refused before anything is allocated.
    pub fn request_frame_limit(&self) -> u64 {
        self.max_key_bytes
            .saturating_add(self.max_value_bytes.saturating_mul(2))
            .saturating_add(4096)
    }

    /// One Raft tick.
    pub fn tick(&self) -> Duration {
        Duration::from_millis(self.tick_ms)
    }
}

/// A configuration that passed [`ServerConfig::validate`].
#[derive(Clone, Debug)]
pub struct Validated {
    /// This node.
    pub id: NodeId,
    /// Its QUIC address.
    pub listen: SocketAddr,
    /// The other founding members.
    pub peers: BTreeMap<NodeId, SocketAddr>,
    /// The metrics address.
    pub metrics: Option<SocketAddr>,
    /// The file's settings.
    pub config: ServerConfig,
}

/// Parses `ID=HOST:PORT`.
pub fn parse_peer(spec: &str) -> Result<(NodeId, SocketAddr), ConfigError> {
    let bad = |detail: &str| {
        ConfigError::Invalid(format!(
            "peer {spec:?}: {detail} (expected ID=HOST:PORT, e.g. 2=10.0.0.2:7101)"
        ))
    };
    let (id, addr) = spec.split_once('=').ok_or_else(|| bad("no '='"))?;
    let id: u64 = id
        .trim()
        .parse()
        .map_err(|_| bad("the id is not a number"))?;
    if id == 0 {
        return Err(bad("the id must not be 0"));
    }
    let addr = resolve(addr.trim()).map_err(|d| bad(&d))?;
    Ok((NodeId(id), addr))
}

/// Resolves `HOST:PORT` to one socket address.
pub fn resolve(addr: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = addr.parse() {
        return Ok(a);
    }
    addr.to_socket_addrs()
        .map_err(|e| format!("cannot resolve: {e}"))?
        .next()
        .ok_or_else(|| "resolves to no address".to_string())
}

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file cannot be read or parsed.
    #[error("config file {path}: {detail}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// An address is malformed or cannot be resolved.
    #[error("{what} address {addr:?}: {detail}")]
    Address {
        /// Which setting.
        what: String,
        /// The address given.
        addr: String,
        /// What is wrong.
        detail: String,
    },
    /// A setting is wrong.
    #[error("{0}")]
    Invalid(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ServerConfig {
        let mut c = ServerConfig::new(1, "127.0.0.1:7101", Path::new("d"), Path::new("c"));
        c.peers = vec!["2=127.0.0.1:7102".into(), "3=127.0.0.1:7103".into()];
        c
    }

    #[test]
    fn a_valid_config_round_trips_through_toml() {
        let c = config();
        let parsed: ServerConfig = toml::from_str(&c.to_toml()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(parsed, c);
        let v = c.validate().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(v.peers.len(), 2);
    }

    #[test]
    fn bad_configs_are_refused_with_a_reason() {
        type Breakage = fn(&mut ServerConfig);
        let cases: Vec<(Breakage, &str)> = vec![
            (|c| c.peers.push("2=127.0.0.1:7104".into()), "listed twice"),
            (|c| c.peers.push("1=127.0.0.1:7104".into()), "own id"),
            (
                |c| c.peers.push("4=127.0.0.1:7102".into()),
                "share the address",
            ),
            (|c| c.peers.push("x=127.0.0.1:7104".into()), "not a number"),
            (|c| c.peers.push("4:127.0.0.1".into()), "no '='"),
            (|c| c.id = 0, "must not be 0"),
            (|c| c.listen = "nowhere".into(), "listen address"),
            (|c| c.max_key_bytes = 10_000, "at most 4096"),
            (|c| c.tick_ms = 0, "tick_ms"),
            (
                |c| {
                    c.join = true;
                    c.peers.clear();
                },
                "current members",
            ),
        ];
        for (breakage, expected) in cases {
            let mut c = config();
            breakage(&mut c);
            match c.validate() {
                Ok(_) => panic!("accepted a config that should fail with {expected:?}"),
                Err(e) => assert!(
                    e.to_string().contains(expected),
                    "{e} (expected {expected:?})"
                ),
            }
        }
        let unknown = toml::from_str::<ServerConfig>(
            "id = 1\nlisten = \"x\"\ndata_dir = \"d\"\nca = \"c\"\ncert = \"c\"\nkey = \"k\"\nlisen = 2\n",
        );
        assert!(
            unknown.is_err_and(|e| e.to_string().contains("lisen")),
            "unknown fields are refused"
        );
    }
}
