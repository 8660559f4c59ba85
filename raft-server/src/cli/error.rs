//! Why a subcommand failed, and the exit code each failure ends the process with.

use raft_core::node::FatalError;
use raft_proto::Bytes;
use raft_server::backup::{RestoreError, SaveError};
use raft_server::dev::CertsError;
use raft_server::{ClientError, ConfigError, StartError};

/// A subcommand's failure. [`exit_code`](CliError::exit_code) maps it to the exit codes
/// the README documents: 1 an error, 2 a wrong command line, 3 `kv get` of a key that
/// is not set, 4 `kv cas` that found another value. (0 is success; clap's own usage
/// errors exit with 2 before any subcommand runs.)
#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    /// The command line is wrong in a way clap does not check (exit code 2).
    #[error("{0}")]
    Usage(String),
    /// `kv get` of a key that is not set (exit code 3).
    #[error("{key:?} is not set")]
    NotFound {
        /// The key asked for.
        key: String,
    },
    /// `kv cas` found another value than the expected one (exit code 4).
    #[error("not swapped: the value is {:?}", current.as_ref().map(|v| String::from_utf8_lossy(v)))]
    CasMismatch {
        /// The value the key holds (`None`: not set).
        current: Option<Bytes>,
    },
    /// The cluster refused the request, or could not be reached.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// A configuration file, or a setting given on the command line, is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The certificate, key or CA of the client cannot be loaded.
    #[error(transparent)]
    Tls(#[from] raft_net_quic::TlsError),
    /// The node could not start.
    #[error(transparent)]
    Start(#[from] StartError),
    /// The node stopped by itself (a storage failure); `None` if it gave no reason.
    #[error("the node stopped: {}", reason.as_ref().map_or_else(|| "no reason given".to_string(), ToString::to_string))]
    Stopped {
        /// Why.
        reason: Option<FatalError>,
    },
    /// Certificates could not be written.
    #[error(transparent)]
    Certs(#[from] CertsError),
    /// A snapshot save failed.
    #[error(transparent)]
    Save(#[from] SaveError),
    /// A backup file is damaged, or a restore failed.
    #[error(transparent)]
    Restore(#[from] RestoreError),
    /// A value to write is longer than the CLI reads (from standard input or a file).
    #[error(
        "{name}: longer than {} bytes, the most a value may be",
        super::kv::MAX_VALUE_INPUT
    )]
    ValueTooLong {
        /// The file, or "standard input".
        name: String,
    },
    /// The client file is not valid TOML, or misses a field.
    #[error("{}: {source}", path.display())]
    ClientFile {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: toml::de::Error,
    },
    /// A file (or standard input) could not be read or written.
    #[error("{what}: {source}")]
    Io {
        /// The file, or what it is.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Anything else, in words: an unresolvable address, a refusal by this program
    /// (a non-loopback bench target, a dev node that exited), an unexpected answer.
    #[error("{0}")]
    Failed(String),
}

impl CliError {
    /// The process's exit code for this failure.
    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => 2,
            CliError::NotFound { .. } => 3,
            CliError::CasMismatch { .. } => 4,
            CliError::Client(_)
            | CliError::Config(_)
            | CliError::Tls(_)
            | CliError::Start(_)
            | CliError::Stopped { .. }
            | CliError::ValueTooLong { .. }
            | CliError::ClientFile { .. }
            | CliError::Certs(_)
            | CliError::Save(_)
            | CliError::Restore(_)
            | CliError::Io { .. }
            | CliError::Failed(_) => 1,
        }
    }

    /// An I/O failure on `what` (a path, or "standard input").
    pub(crate) fn io(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> CliError {
        let what = what.to_string();
        move |source| CliError::Io { what, source }
    }
}
