//! The settings every client subcommand shares: where the nodes are, which
//! certificate to use, and how answers are printed.

use super::error::CliError;
use clap::parser::ValueSource;
use clap::{Args, ValueEnum};
use raft_net_quic::Identity;
use raft_server::dev::ClientFile;
use raft_server::{Client, ClientOptions};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// How `kv` and `cluster` commands print their answers.
#[derive(Args)]
pub(crate) struct OutputArgs {
    /// Output format: text (for people), or json (one JSON document per command, on
    /// standard output).
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Text, global = true)]
    pub(crate) output: Output,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    Text,
    Json,
}

/// Where the nodes are and which certificate to use. Each setting comes from its flag,
/// else its environment variable, else the client file's; a `--client-config` given on
/// the command line also beats the `RAFT_ENDPOINTS`/`RAFT_CA`/`RAFT_CERT`/`RAFT_KEY`
/// variables (see [`conn_from`]).
#[derive(Args)]
pub(crate) struct ConnArgs {
    /// A client file (nodes, ca, cert, key); default raft-dev/client.toml.
    #[arg(long, env = "RAFT_CLIENT_CONFIG")]
    pub(crate) client_config: Option<PathBuf>,
    /// Node addresses, comma-separated (instead of the client file's).
    #[arg(long, value_delimiter = ',', env = "RAFT_ENDPOINTS")]
    pub(crate) nodes: Vec<String>,
    /// CA certificate.
    #[arg(long, env = "RAFT_CA")]
    pub(crate) ca: Option<PathBuf>,
    /// Client certificate.
    #[arg(long, env = "RAFT_CERT")]
    pub(crate) cert: Option<PathBuf>,
    /// Client key.
    #[arg(long, env = "RAFT_KEY")]
    pub(crate) key: Option<PathBuf>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 10)]
    pub(crate) timeout: u64,
    /// Which of the settings above came from environment variables (filled in by
    /// `main` from the parser's matches).
    #[arg(skip)]
    pub(crate) from_env: FromEnv,
}

/// Which connection settings were taken from environment variables rather than flags.
#[derive(Clone, Copy, Default)]
pub(crate) struct FromEnv {
    pub(crate) client_config: bool,
    pub(crate) nodes: bool,
    pub(crate) ca: bool,
    pub(crate) cert: bool,
    pub(crate) key: bool,
}

impl FromEnv {
    /// Reads the sources from the matches of the subcommand that holds the `ConnArgs`.
    pub(crate) fn of(matches: &clap::ArgMatches) -> FromEnv {
        let env = |id: &str| matches.value_source(id) == Some(ValueSource::EnvVariable);
        FromEnv {
            client_config: env("client_config"),
            nodes: env("nodes"),
            ca: env("ca"),
            cert: env("cert"),
            key: env("key"),
        }
    }
}

/// Where the nodes are, how to prove who we are, and whether the addresses were given
/// on the command line (rather than read from a client file).
pub(crate) struct Conn {
    pub(crate) addrs: Vec<SocketAddr>,
    pub(crate) identity: Identity,
    pub(crate) explicit: bool,
}

pub(crate) fn client_from(conn: &ConnArgs) -> Result<(Client, Vec<SocketAddr>), CliError> {
    let c = conn_from(conn)?;
    // One command, one client: fast failover cannot feed a reconnection storm here.
    let options = ClientOptions {
        timeout: Duration::from_secs(conn.timeout),
        ..ClientOptions::fast_failover()
    };
    let client = Client::new(c.addrs.clone(), c.identity, options)?;
    Ok((client, c.addrs))
}

/// The connection settings: each from its flag, else its environment variable, else
/// the client file. A client file named on the command line (not by
/// `RAFT_CLIENT_CONFIG`) also beats the other variables, so that `--client-config
/// other.toml` talks to the cluster that file describes whatever the shell exports.
pub(crate) fn conn_from(conn: &ConnArgs) -> Result<Conn, CliError> {
    let file_typed = conn.client_config.is_some() && !conn.from_env.client_config;
    // A setting from a variable, when the client file was typed: dropped.
    let setting = |value: &Option<PathBuf>, from_env: bool| {
        value.clone().filter(|_| !(file_typed && from_env))
    };
    let (ca, cert, key) = (
        setting(&conn.ca, conn.from_env.ca),
        setting(&conn.cert, conn.from_env.cert),
        setting(&conn.key, conn.from_env.key),
    );
    let nodes: &[String] = if file_typed && conn.from_env.nodes {
        &[]
    } else {
        &conn.nodes
    };
    let file = conn
        .client_config
        .clone()
        .unwrap_or_else(|| PathBuf::from("raft-dev/client.toml"));
    let from_file: Option<ClientFile> = if file.exists() {
        let text = std::fs::read_to_string(&file).map_err(CliError::io(file.display()))?;
        Some(
            toml::from_str(&text).map_err(|source| CliError::ClientFile {
                path: file.clone(),
                source,
            })?,
        )
    } else if conn.client_config.is_some() {
        return Err(CliError::Failed(format!(
            "{} does not exist",
            file.display()
        )));
    } else {
        None
    };
    let pick = |flag: &Option<PathBuf>,
                f: Option<&PathBuf>,
                what: &str|
     -> Result<PathBuf, CliError> {
        flag.clone().or_else(|| f.cloned()).ok_or_else(|| {
            CliError::Failed(format!("no {what}: pass --{what} (or set RAFT_{}), or --client-config FILE (raft-dev/client.toml, written by `raft-server dev`, is the default)", what.to_uppercase()))
        })
    };
    let ca = pick(&ca, from_file.as_ref().map(|f| &f.ca), "ca")?;
    let cert = pick(&cert, from_file.as_ref().map(|f| &f.cert), "cert")?;
    let key = pick(&key, from_file.as_ref().map(|f| &f.key), "key")?;
    // Typed on this command line, not exported in the environment.
    let explicit = !nodes.is_empty() && !conn.from_env.nodes;
    let nodes: Vec<String> = if nodes.is_empty() {
        from_file.map(|f| f.nodes).unwrap_or_default()
    } else {
        nodes.to_vec()
    };
    if nodes.is_empty() {
        return Err(CliError::Failed("no node addresses: pass --nodes HOST:PORT,... (or set RAFT_ENDPOINTS), or --client-config FILE".into()));
    }
    let addrs = nodes
        .iter()
        .map(|n| {
            raft_server::config::resolve(n)
                .map_err(|e| CliError::Failed(format!("node address {n:?}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let identity = Identity::load(&ca, &cert, &key)?;
    Ok(Conn {
        addrs,
        identity,
        explicit,
    })
}

pub(crate) fn emit(doc: impl Into<Value>) {
    println!("{}", doc.into());
}
