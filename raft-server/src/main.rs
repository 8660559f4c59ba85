//! `raft-server`: run a node, a local dev cluster, the KV and cluster clients, and
//! certificate generation.
//!
//! Exit codes (the README's "Scripting the CLI" lists them too): 0 success, 1 an error
//! (network, refusal, unreadable files...), 2 a wrong command line, 3 `kv get` of a key
//! that is not set, 4 `kv cas` that found another value.

// A command-line tool prints its answers.
#![allow(clippy::print_stdout)]

mod cli_snapshot;

use clap::parser::ValueSource;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use raft_net_quic::CertRole;
use raft_net_quic::Identity;
use raft_proto::{Bytes, NodeId};
use raft_server::dev::{ClientFile, DevLayout, ValidityDays, describe, make_certs_valid};
use raft_server::proto::{AdminOp, Consistency, Status, WriteResult};
use raft_server::{Client, ClientOptions, Server, ServerConfig};
use serde_json::{Map, Value, json};
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "raft-server",
    version,
    about = "A replicated key-value store on Raft, LMDB and QUIC"
)]
struct Cli {
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Human, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run one node.
    Run(RunArgs),
    /// Start a local 3-node cluster on 127.0.0.1 with development certificates (data,
    /// configs and logs under ./raft-dev); Ctrl-C stops it.
    Dev(DevArgs),
    /// Read and write keys.
    Kv {
        #[command(flatten)]
        conn: ConnArgs,
        #[command(flatten)]
        out: OutputArgs,
        #[command(subcommand)]
        op: KvOp,
    },
    /// Inspect and change the cluster.
    Cluster {
        #[command(flatten)]
        conn: ConnArgs,
        #[command(flatten)]
        out: OutputArgs,
        #[command(subcommand)]
        op: ClusterOp,
    },
    /// Load a running cluster with closed-loop clients and report throughput and
    /// latency percentiles (a table and one `RESULT_JSON` line).
    Bench {
        #[command(flatten)]
        conn: ConnArgs,
        #[command(flatten)]
        args: BenchArgs,
    },
    /// Back up a running cluster to a file, or build a new cluster's data
    /// directories from one.
    Snapshot {
        #[command(subcommand)]
        op: cli_snapshot::SnapshotOp,
    },
    /// Create a CA (unless DIR holds one) and certificates for nodes and clients.
    Certs {
        /// Where to write them.
        #[arg(long, default_value = "certs")]
        out: PathBuf,
        /// Node ids, e.g. 1,2,3.
        #[arg(long, value_delimiter = ',')]
        nodes: Vec<u64>,
        /// Client names, e.g. app,web: certificates with the client role (keys only).
        #[arg(long, value_delimiter = ',')]
        clients: Vec<String>,
        /// Administrator names, e.g. ops: client certificates with the admin role
        /// (keys and cluster administration).
        #[arg(long, value_delimiter = ',')]
        admins: Vec<String>,
        /// Days the node, client and admin certificates are valid.
        #[arg(long, default_value_t = raft_net_quic::tls::NODE_VALIDITY_DAYS, value_parser = clap::value_parser!(u32).range(1..))]
        days: u32,
        /// Days a new CA is valid (an existing CA in --out is kept as it is).
        #[arg(long, default_value_t = raft_net_quic::tls::CA_VALIDITY_DAYS, value_parser = clap::value_parser!(u32).range(1..))]
        ca_days: u32,
    },
    /// Print a completion script for a shell (bash, zsh, fish, elvish, powershell),
    /// e.g. `raft-server completions bash > /etc/bash_completion.d/raft-server`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// How `kv` and `cluster` commands print their answers.
#[derive(Args)]
struct OutputArgs {
    /// Output format: text (for people), or json (one JSON document per command, on
    /// standard output).
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Text, global = true)]
    output: Output,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
}

#[derive(Args)]
struct RunArgs {
    /// A TOML configuration file (flags below override it).
    #[arg(long)]
    config: Option<PathBuf>,
    /// This node's id.
    #[arg(long)]
    id: Option<u64>,
    /// UDP address for QUIC (peers and clients).
    #[arg(long)]
    listen: Option<String>,
    /// Another member, ID=HOST:PORT (repeat): the founding members, or with --join the
    /// current ones.
    #[arg(long = "peer")]
    peers: Vec<String>,
    /// Data directory.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Directory with ca.crt, node<ID>.crt and node<ID>.key (with --config, these
    /// three replace the file's ca, cert and key).
    #[arg(long)]
    certs: Option<PathBuf>,
    /// HTTP address for /metrics and /health.
    #[arg(long)]
    metrics: Option<String>,
    /// Start empty and wait to be added to an existing cluster (`cluster add-learner`);
    /// list its current members with --peer.
    #[arg(long)]
    join: bool,
    /// Stop when standard input closes (used by `dev` for its children).
    #[arg(long, hide = true)]
    stop_with_stdin: bool,
}

#[derive(Args)]
struct DevArgs {
    /// Where configs, certificates, data and logs go.
    #[arg(long, default_value = "raft-dev")]
    dir: PathBuf,
    /// The first node's UDP port (the others follow).
    #[arg(long, default_value_t = 7101)]
    port: u16,
    /// The first node's metrics port.
    #[arg(long, default_value_t = 9101)]
    metrics_port: u16,
    /// How many nodes.
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Start, wait for a leader, print it, and stop (for scripts and tests).
    #[arg(long)]
    check: bool,
}

/// Where the nodes are and which certificate to use. Each setting comes from its flag,
/// else its environment variable, else the client file's; a `--client-config` given on
/// the command line also beats the `RAFT_ENDPOINTS`/`RAFT_CA`/`RAFT_CERT`/`RAFT_KEY`
/// variables (see [`conn_from`]).
#[derive(Args)]
struct ConnArgs {
    /// A client file (nodes, ca, cert, key); default raft-dev/client.toml.
    #[arg(long, env = "RAFT_CLIENT_CONFIG")]
    client_config: Option<PathBuf>,
    /// Node addresses, comma-separated (instead of the client file's).
    #[arg(long, value_delimiter = ',', env = "RAFT_ENDPOINTS")]
    nodes: Vec<String>,
    /// CA certificate.
    #[arg(long, env = "RAFT_CA")]
    ca: Option<PathBuf>,
    /// Client certificate.
    #[arg(long, env = "RAFT_CERT")]
    cert: Option<PathBuf>,
    /// Client key.
    #[arg(long, env = "RAFT_KEY")]
    key: Option<PathBuf>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 10)]
    timeout: u64,
    /// Which of the settings above came from environment variables (filled in by
    /// `main` from the parser's matches).
    #[arg(skip)]
    from_env: FromEnv,
}

/// Which connection settings were taken from environment variables rather than flags.
#[derive(Clone, Copy, Default)]
struct FromEnv {
    client_config: bool,
    nodes: bool,
    ca: bool,
    cert: bool,
    key: bool,
}

impl FromEnv {
    /// Reads the sources from the matches of the subcommand that holds the `ConnArgs`.
    fn of(matches: &clap::ArgMatches) -> FromEnv {
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

#[derive(Clone, Copy, ValueEnum)]
enum WorkloadArg {
    Put,
    Get,
    Mixed,
    Cas,
    Populate,
}

#[derive(Args)]
struct BenchArgs {
    /// put, get (linearizable unless --stale), mixed (--read-pct reads), cas, or
    /// populate (put every key once; run it before get).
    #[arg(long, value_enum, default_value_t = WorkloadArg::Put)]
    workload: WorkloadArg,
    /// Client tasks, each with --depth requests in flight.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Requests in flight per client (pipelining).
    #[arg(long, default_value_t = 1)]
    depth: usize,
    /// Connections, each with its own session (0: one per client).
    #[arg(long, default_value_t = 0)]
    conns: usize,
    /// Key size in bytes.
    #[arg(long, default_value_t = 16)]
    key_size: usize,
    /// Value size in bytes.
    #[arg(long, alias = "val-size", default_value_t = 128)]
    value_size: usize,
    /// Distinct keys (uniformly chosen).
    #[arg(long, default_value_t = 100_000)]
    key_space: u64,
    /// Percentage of reads in the mixed workload.
    #[arg(long, default_value_t = 90)]
    read_pct: u32,
    /// Stale reads: served by the node that answers, without a quorum round.
    #[arg(long)]
    stale: bool,
    /// Operations to measure.
    #[arg(long, default_value_t = 100_000)]
    total: u64,
    /// Longest measured phase, seconds.
    #[arg(long, default_value_t = 30)]
    time_limit: u64,
    /// Operations run first and not recorded.
    #[arg(long, default_value_t = 2_000)]
    warmup_ops: u64,
    /// Seed of the key sequence.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// A label copied into the JSON line.
    #[arg(long)]
    label: Option<String>,
    /// A file of whitespace-separated server PIDs whose CPU time to report.
    #[arg(long)]
    pid_file: Option<PathBuf>,
    /// Print only the JSON line.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum KvOp {
    /// Print a key's value.
    Get {
        key: String,
        /// Serve from whichever node answers, possibly stale.
        #[arg(long)]
        stale: bool,
    },
    /// Set a key.
    Put {
        key: String,
        #[command(flatten)]
        value: ValueArgs,
    },
    /// Remove a key.
    Delete { key: String },
    /// Compare and swap: set KEY to --new (or remove it with --remove) if its value is
    /// --expected (or it is absent, with --absent). Exits with 4 if it is not.
    Cas {
        key: String,
        /// The value KEY must have.
        #[arg(long, conflicts_with_all = ["absent", "expected_file"], required_unless_present_any = ["absent", "expected_file"])]
        expected: Option<String>,
        /// Read the expected value from this file (`-`: standard input), byte for byte.
        #[arg(long, value_name = "PATH", conflicts_with = "absent")]
        expected_file: Option<PathBuf>,
        /// Swap only if KEY is not set.
        #[arg(long)]
        absent: bool,
        /// The new value.
        #[arg(long, conflicts_with_all = ["remove", "value_file"], required_unless_present_any = ["remove", "value_file"])]
        new: Option<String>,
        /// Read the new value from this file (`-`: standard input), byte for byte.
        #[arg(long, value_name = "PATH", conflicts_with = "remove")]
        value_file: Option<PathBuf>,
        /// Remove KEY instead of setting it.
        #[arg(long)]
        remove: bool,
    },
    /// Append to a key's value.
    Append {
        key: String,
        #[command(flatten)]
        value: ValueArgs,
    },
    /// List keys with a prefix (or from --start to --end).
    Scan {
        #[arg(long, default_value = "")]
        prefix: String,
        #[arg(long)]
        start: Option<String>,
        #[arg(long)]
        end: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[arg(long)]
        stale: bool,
    },
}

/// A value to write: an argument, standard input or a file.
#[derive(Args)]
struct ValueArgs {
    /// The value (`-`: read it from standard input, byte for byte).
    #[arg(required_unless_present = "value_file", conflicts_with = "value_file")]
    value: Option<String>,
    /// Read the value from this file (`-`: standard input), byte for byte.
    #[arg(long, value_name = "PATH")]
    value_file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum ClusterOp {
    /// Every node's view: role, term, indexes, members.
    Status,
    /// Add a node (started with --join) as a learner.
    AddLearner { id: u64, addr: String },
    /// Make a learner a voter.
    Promote { id: u64 },
    /// Remove a node.
    Remove { id: u64 },
    /// Hand leadership to another voter.
    TransferLeader { id: u64 },
    /// Take a snapshot on one node (default: the first that answers).
    Snapshot {
        #[arg(long)]
        node: Option<String>,
    },
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,quinn=warn,quinn_proto=warn"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Why a command failed; each kind has its own exit code.
enum Failure {
    /// Exit code 1: the command could not be carried out (network, refusal by the
    /// server, unreadable files...).
    Error(String),
    /// Exit code 2, as for clap's own errors: the command line is wrong.
    Usage(String),
    /// Exit code 3: `kv get` of a key that is not set.
    NotFound(String),
    /// Exit code 4: `kv cas` found another value than the expected one.
    CasMismatch(String),
}

impl Failure {
    fn code(&self) -> u8 {
        match self {
            Failure::Error(_) => 1,
            Failure::Usage(_) => 2,
            Failure::NotFound(_) => 3,
            Failure::CasMismatch(_) => 4,
        }
    }

    fn message(&self) -> &str {
        match self {
            Failure::Error(m)
            | Failure::Usage(m)
            | Failure::NotFound(m)
            | Failure::CasMismatch(m) => m,
        }
    }
}

impl From<String> for Failure {
    fn from(message: String) -> Failure {
        Failure::Error(message)
    }
}

impl From<raft_server::ClientError> for Failure {
    fn from(e: raft_server::ClientError) -> Failure {
        Failure::Error(e.to_string())
    }
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let mut cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    if let Some((_, sub)) = matches.subcommand()
        && let Command::Kv { conn, .. }
        | Command::Cluster { conn, .. }
        | Command::Bench { conn, .. } = &mut cli.command
    {
        conn.from_env = FromEnv::of(sub);
    }
    init_logging(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Run(args) => run(args).await,
            Command::Dev(args) => Ok(dev(args).await?),
            Command::Kv { conn, out, op } => kv(conn, out.output, op).await,
            Command::Cluster { conn, out, op } => cluster(conn, out.output, op).await,
            Command::Bench { conn, args } => Ok(bench(conn, args).await?),
            Command::Snapshot { op } => Ok(cli_snapshot::run(op).await?),
            Command::Completions { shell } => {
                clap_complete::generate(
                    shell,
                    &mut Cli::command(),
                    "raft-server",
                    &mut std::io::stdout(),
                );
                Ok(())
            }
            Command::Certs {
                out,
                nodes,
                clients,
                admins,
                days,
                ca_days,
            } => {
                let clients: Vec<(String, CertRole)> = clients
                    .into_iter()
                    .map(|c| (c, CertRole::Client))
                    .chain(admins.into_iter().map(|a| (a, CertRole::Admin)))
                    .collect();
                let validity = ValidityDays { days, ca_days };
                let files = make_certs_valid(&out, &nodes, &clients, validity)
                    .map_err(|e| e.to_string())?;
                for f in files {
                    match describe(&f) {
                        // The fingerprint is what a deny-list names to revoke it.
                        Some(info) => println!(
                            "wrote {} ({}, role {}, expires in {} days, sha256 {})",
                            f.display(),
                            info.principal,
                            info.role,
                            (info.not_after - raft_server::certificates::unix_now())
                                .div_euclid(86_400),
                            info.fingerprint()
                        ),
                        None => println!("wrote {}", f.display()),
                    }
                }
                Ok(())
            }
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(2));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("error: {}", failure.message());
            ExitCode::from(failure.code())
        }
    }
}

async fn run(args: RunArgs) -> Result<(), Failure> {
    let mut config = match &args.config {
        Some(path) => ServerConfig::load(path).map_err(|e| e.to_string())?,
        None => {
            let (Some(id), Some(listen), Some(data), Some(certs)) =
                (args.id, &args.listen, &args.data, &args.certs)
            else {
                return Err(Failure::Usage(
                    "give --config FILE, or --id, --listen, --data and --certs".into(),
                ));
            };
            ServerConfig::new(id, listen, data, certs)
        }
    };
    if args.config.is_some() {
        if let Some(id) = args.id {
            config.id = id;
        }
        if let Some(l) = &args.listen {
            config.listen = l.clone();
        }
        if let Some(d) = &args.data {
            config.data_dir = d.clone();
        }
        // Like every other flag, --certs overrides the file: the same three paths as
        // without --config, for the (possibly overridden) id.
        if let Some(certs) = &args.certs {
            let named = ServerConfig::new(config.id, &config.listen, &config.data_dir, certs);
            config.ca = named.ca;
            config.cert = named.cert;
            config.key = named.key;
        }
    }
    if !args.peers.is_empty() {
        config.peers = args.peers.clone();
    }
    if args.metrics.is_some() {
        config.metrics = args.metrics.clone();
    }
    config.join |= args.join;
    let validated = config.validate().map_err(|e| e.to_string())?;
    let server = Server::start(validated).await.map_err(|e| e.to_string())?;
    let mut hangup = Hangup::new();
    let stdin_closed = async {
        if args.stop_with_stdin {
            let mut buf = [0u8; 64];
            let mut stdin = tokio::io::stdin();
            loop {
                match tokio::io::AsyncReadExt::read(&mut stdin, &mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        } else {
            futures::future::pending::<()>().await
        }
    };
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown, stdin_closed);
    let outcome = loop {
        tokio::select! {
            _ = &mut shutdown => break Ok(()),
            _ = &mut stdin_closed => break Ok(()),
            reason = server.stopped() => break Err(format!("the node stopped: {}", reason.map_or_else(|| "no reason given".into(), |e| e.to_string()))),
            // A failed reload is logged and keeps the previous material.
            _ = hangup.recv() => { let _ = server.reload_certificates(); }
        }
    };
    server.shutdown().await;
    Ok(outcome?)
}

/// SIGHUP (Unix): reload the certificates. Never fires elsewhere, or if the handler
/// cannot be installed.
struct Hangup {
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
}

impl Hangup {
    fn new() -> Hangup {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let signal = match signal(SignalKind::hangup()) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGHUP; certificates reload only when their files change");
                    None
                }
            };
            Hangup { signal }
        }
        #[cfg(not(unix))]
        Hangup {}
    }

    async fn recv(&mut self) {
        #[cfg(unix)]
        if let Some(s) = &mut self.signal
            && s.recv().await.is_some()
        {
            return;
        }
        futures::future::pending::<()>().await
    }
}

/// SIGINT or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Where the nodes are, how to prove who we are, and whether the addresses were given
/// on the command line (rather than read from a client file).
struct Conn {
    addrs: Vec<SocketAddr>,
    identity: Identity,
    explicit: bool,
}

fn client_from(conn: &ConnArgs) -> Result<(Client, Vec<SocketAddr>), String> {
    let c = conn_from(conn)?;
    // One command, one client: fast failover cannot feed a reconnection storm here.
    let options = ClientOptions {
        timeout: Duration::from_secs(conn.timeout),
        ..ClientOptions::fast_failover()
    };
    let client = Client::new(c.addrs.clone(), c.identity, options).map_err(|e| e.to_string())?;
    Ok((client, c.addrs))
}

/// The connection settings: each from its flag, else its environment variable, else
/// the client file. A client file named on the command line (not by
/// `RAFT_CLIENT_CONFIG`) also beats the other variables, so that `--client-config
/// other.toml` talks to the cluster that file describes whatever the shell exports.
fn conn_from(conn: &ConnArgs) -> Result<Conn, String> {
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
        let text =
            std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
        Some(toml::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))?)
    } else if conn.client_config.is_some() {
        return Err(format!("{} does not exist", file.display()));
    } else {
        None
    };
    let pick = |flag: &Option<PathBuf>,
                f: Option<&PathBuf>,
                what: &str|
     -> Result<PathBuf, String> {
        flag.clone().or_else(|| f.cloned()).ok_or_else(|| {
            format!("no {what}: pass --{what} (or set RAFT_{}), or --client-config FILE (raft-dev/client.toml, written by `raft-server dev`, is the default)", what.to_uppercase())
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
        return Err("no node addresses: pass --nodes HOST:PORT,... (or set RAFT_ENDPOINTS), or --client-config FILE".into());
    }
    let addrs = nodes
        .iter()
        .map(|n| raft_server::config::resolve(n).map_err(|e| format!("node address {n:?}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let identity = Identity::load(&ca, &cert, &key).map_err(|e| e.to_string())?;
    Ok(Conn {
        addrs,
        identity,
        explicit,
    })
}

fn show(b: &Bytes) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn prefix_end(prefix: &[u8]) -> Option<Bytes> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return Some(Bytes::from(end));
        }
    }
    None
}

/// Longest value `kv` reads from standard input or a file (the server refuses values
/// over its own `max_value_bytes`, 1 MiB by default, anyway).
const MAX_VALUE_INPUT: u64 = 64 << 20;

/// The bytes of the file at `path` (`-`: standard input), at most [`MAX_VALUE_INPUT`].
fn read_value(path: &Path) -> Result<Bytes, Failure> {
    let stdin = path == Path::new("-");
    let name = if stdin {
        "standard input".to_string()
    } else {
        path.display().to_string()
    };
    let mut buf = Vec::new();
    let read = if stdin {
        std::io::stdin()
            .lock()
            .take(MAX_VALUE_INPUT + 1)
            .read_to_end(&mut buf)
    } else {
        std::fs::File::open(path).and_then(|f| f.take(MAX_VALUE_INPUT + 1).read_to_end(&mut buf))
    };
    read.map_err(|e| Failure::Error(format!("{name}: {e}")))?;
    if buf.len() as u64 > MAX_VALUE_INPUT {
        return Err(Failure::Error(format!(
            "{name}: longer than {MAX_VALUE_INPUT} bytes, the most a value may be"
        )));
    }
    Ok(Bytes::from(buf))
}

impl ValueArgs {
    /// The value: the argument, or the bytes of standard input (`-`) or of `--value-file`.
    fn read(self) -> Result<Bytes, Failure> {
        match (self.value, self.value_file) {
            (Some(v), None) if v == "-" => read_value(Path::new("-")),
            (Some(v), None) => Ok(Bytes::from(v)),
            (None, Some(path)) => read_value(&path),
            _ => Err(Failure::Usage(
                "give VALUE, `-` (standard input) or --value-file PATH".into(),
            )),
        }
    }
}

/// Sets `doc[field]` to `value`: a JSON string when it is UTF-8, `null` when absent,
/// else its base64 (standard alphabet, padded) with `doc[field_encoding] = "base64"`.
fn put_bytes(doc: &mut Map<String, Value>, field: &str, value: Option<&Bytes>) {
    let Some(value) = value else {
        doc.insert(field.into(), Value::Null);
        return;
    };
    match std::str::from_utf8(value) {
        Ok(text) => {
            doc.insert(field.into(), text.into());
        }
        Err(_) => {
            use base64::Engine;
            let encoded = base64::engine::general_purpose::STANDARD.encode(value);
            doc.insert(field.into(), encoded.into());
            doc.insert(format!("{field}_encoding"), "base64".into());
        }
    }
}

/// The JSON answer to a write: its key and the index it committed at.
fn write_doc(key: &str, index: u64) -> Map<String, Value> {
    let mut doc = Map::new();
    doc.insert("key".into(), key.into());
    doc.insert("index".into(), index.into());
    doc
}

/// Prints one JSON document on one line.
/// Prints a put's or a delete's outcome: the index and, in JSON, the value before.
fn print_replaced(json: bool, key: &str, w: &raft_server::proto::Written) {
    if json {
        let mut doc = write_doc(key, w.index);
        if let WriteResult::Previous(previous) = &w.result {
            put_bytes(&mut doc, "previous", previous.as_ref());
        }
        emit(doc);
    } else {
        println!("OK (committed at index {})", w.index);
    }
}

fn emit(doc: impl Into<Value>) {
    println!("{}", doc.into());
}

async fn kv(conn: ConnArgs, output: Output, op: KvOp) -> Result<(), Failure> {
    let json = output == Output::Json;
    let (client, _) = client_from(&conn)?;
    let consistency = |stale: bool| {
        if stale {
            Consistency::Stale
        } else {
            Consistency::Linearizable
        }
    };
    match op {
        KvOp::Get { key, stale } => {
            let value = client.get_with(key.clone(), consistency(stale)).await?;
            if json {
                let mut doc = Map::new();
                doc.insert("key".into(), key.clone().into());
                put_bytes(&mut doc, "value", value.as_ref());
                emit(doc);
            } else if let Some(v) = &value {
                println!("{}", show(v));
            }
            if value.is_none() {
                return Err(Failure::NotFound(format!("{key:?} is not set")));
            }
        }
        KvOp::Put { key, value } => {
            let w = client.put(key.clone(), value.read()?).await?;
            print_replaced(json, &key, &w);
        }
        KvOp::Delete { key } => {
            let w = client.delete(key.clone()).await?;
            print_replaced(json, &key, &w);
        }
        KvOp::Cas {
            key,
            expected,
            expected_file,
            absent,
            new,
            value_file,
            remove,
        } => {
            let stdin = Some(Path::new("-"));
            if expected_file.as_deref() == stdin && value_file.as_deref() == stdin {
                return Err(Failure::Usage(
                    "only one of --expected-file and --value-file can be `-` (standard input)"
                        .into(),
                ));
            }
            let expected = match (expected, expected_file, absent) {
                (Some(v), None, false) => Some(Bytes::from(v)),
                (None, Some(path), false) => Some(read_value(&path)?),
                (None, None, true) => None,
                _ => {
                    return Err(Failure::Usage(
                        "give one of --expected VALUE, --expected-file PATH or --absent".into(),
                    ));
                }
            };
            let new = match (new, value_file, remove) {
                (Some(v), None, false) => Some(Bytes::from(v)),
                (None, Some(path), false) => Some(read_value(&path)?),
                (None, None, true) => None,
                _ => {
                    return Err(Failure::Usage(
                        "give one of --new VALUE, --value-file PATH or --remove".into(),
                    ));
                }
            };
            let w = client.cas(key.clone(), expected, new).await?;
            let WriteResult::Cas { swapped, current } = w.result else {
                return Err(Failure::Error(format!(
                    "unexpected answer to a compare-and-swap: {:?}",
                    w.result
                )));
            };
            if json {
                let mut doc = write_doc(&key, w.index);
                doc.insert("swapped".into(), swapped.into());
                put_bytes(&mut doc, "current", current.as_ref());
                emit(doc);
            } else if swapped {
                println!("swapped (committed at index {})", w.index);
            }
            if !swapped {
                return Err(Failure::CasMismatch(format!(
                    "not swapped: the value is {:?}",
                    current.as_ref().map(show)
                )));
            }
        }
        KvOp::Append { key, value } => {
            let w = client.append(key.clone(), value.read()?).await?;
            match (json, w.result) {
                (true, result) => {
                    let mut doc = write_doc(&key, w.index);
                    if let WriteResult::Appended { len } = result {
                        doc.insert("len".into(), len.into());
                    }
                    emit(doc);
                }
                (false, WriteResult::Appended { len }) => println!(
                    "OK (committed at index {}; the value is now {len} bytes)",
                    w.index
                ),
                (false, other) => println!("OK (committed at index {}; {other:?})", w.index),
            }
        }
        KvOp::Scan {
            prefix,
            start,
            end,
            limit,
            stale,
        } => {
            let (start, end) = match start {
                Some(s) => (Bytes::from(s), end.map(Bytes::from)),
                None => (
                    Bytes::from(prefix.clone()),
                    end.map(Bytes::from)
                        .or_else(|| prefix_end(prefix.as_bytes())),
                ),
            };
            let (items, more) = client.scan(start, end, limit, consistency(stale)).await?;
            if json {
                let items: Vec<Value> = items
                    .iter()
                    .map(|(k, v)| {
                        let mut item = Map::new();
                        put_bytes(&mut item, "key", Some(k));
                        put_bytes(&mut item, "value", Some(v));
                        Value::Object(item)
                    })
                    .collect();
                emit(json!({ "items": items, "more": more }));
                return Ok(());
            }
            for (k, v) in &items {
                println!("{}\t{}", show(k), show(v));
            }
            if more {
                println!("... (more; raise --limit or scan from after the last key)");
            }
        }
    }
    Ok(())
}

/// `cluster status` as one JSON document: every node's view (or why it did not
/// answer), and the members as the first node that answered knows them.
fn status_json(s: &[(SocketAddr, Result<Status, String>)]) -> Value {
    let nodes: Vec<Value> = s
        .iter()
        .map(|(addr, st)| match st {
            Ok(st) => json!({
                "address": addr.to_string(),
                "id": st.id.0,
                "role": st.role,
                "term": st.term,
                "leader": st.leader.map(|l| l.0),
                "last_index": st.last_index,
                "committed": st.committed,
                "applied": st.applied,
                "snapshot": st.snapshot,
            }),
            Err(e) => json!({ "address": addr.to_string(), "error": e }),
        })
        .collect();
    let members = |v: &[(NodeId, String)]| -> Vec<Value> {
        v.iter()
            .map(|(id, a)| json!({ "id": id.0, "address": a }))
            .collect()
    };
    let first = s.iter().find_map(|(_, s)| s.as_ref().ok());
    json!({
        "nodes": nodes,
        "voters": first.map(|st| members(&st.voters)).unwrap_or_default(),
        "learners": first.map(|st| members(&st.learners)).unwrap_or_default(),
    })
}

fn print_status(s: &[(SocketAddr, Result<Status, String>)]) {
    println!(
        "{:<6} {:<22} {:<10} {:>6} {:>8} {:>10} {:>10} {:>10}",
        "node", "address", "role", "term", "leader", "last", "commit", "applied"
    );
    for (addr, st) in s {
        match st {
            Ok(st) => println!(
                "{:<6} {:<22} {:<10} {:>6} {:>8} {:>10} {:>10} {:>10}",
                st.id.0,
                addr,
                st.role,
                st.term,
                st.leader.map_or("-".into(), |l| l.0.to_string()),
                st.last_index,
                st.committed,
                st.applied
            ),
            Err(e) => println!("{:<6} {:<22} {e}", "?", addr),
        }
    }
    if let Some(st) = s.iter().find_map(|(_, s)| s.as_ref().ok()) {
        let list = |v: &[(NodeId, String)]| {
            v.iter()
                .map(|(id, a)| format!("{id}@{a}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!("voters: {}", list(&st.voters));
        if !st.learners.is_empty() {
            println!("learners: {}", list(&st.learners));
        }
    }
}

async fn statuses(
    client: &Client,
    addrs: &[SocketAddr],
) -> Vec<(SocketAddr, Result<Status, String>)> {
    // Concurrently: a node that is down costs one attempt timeout, not one each.
    futures::future::join_all(
        addrs
            .iter()
            .map(|&a| async move { (a, client.status_of(a).await.map_err(|e| e.to_string())) }),
    )
    .await
}

async fn cluster(conn: ConnArgs, output: Output, op: ClusterOp) -> Result<(), Failure> {
    let json = output == Output::Json;
    let (client, addrs) = client_from(&conn)?;
    match op {
        ClusterOp::Status => {
            let s = statuses(&client, &addrs).await;
            // Include members the client file does not list.
            let mut all = s;
            let known: Vec<SocketAddr> = all.iter().map(|(a, _)| *a).collect();
            let extra: Vec<SocketAddr> = all
                .iter()
                .filter_map(|(_, s)| s.as_ref().ok())
                .flat_map(|s| s.voters.iter().chain(&s.learners))
                .filter_map(|(_, a)| a.parse().ok())
                .filter(|a| !known.contains(a))
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            all.extend(statuses(&client, &extra).await);
            if json {
                emit(status_json(&all));
            } else {
                print_status(&all);
            }
        }
        ClusterOp::AddLearner { id, addr } => {
            client.add_learner(NodeId(id), &addr).await?;
            if json {
                emit(json!({ "op": "add-learner", "id": id, "address": addr }));
            } else {
                println!("node {id} ({addr}) added as a learner; promote it once it has caught up");
            }
        }
        ClusterOp::Promote { id } => {
            client.promote(NodeId(id)).await?;
            if json {
                emit(json!({ "op": "promote", "id": id }));
            } else {
                println!("node {id} is a voter");
            }
        }
        ClusterOp::Remove { id } => {
            client.remove(NodeId(id)).await?;
            if json {
                emit(json!({ "op": "remove", "id": id }));
            } else {
                println!("node {id} removed");
            }
        }
        ClusterOp::TransferLeader { id } => {
            client.transfer_leader(NodeId(id)).await?;
            if json {
                emit(json!({ "op": "transfer-leader", "id": id }));
            } else {
                println!("leadership transfer to node {id} started");
            }
        }
        ClusterOp::Snapshot { node } => {
            let target = match node {
                Some(n) => raft_server::config::resolve(&n)?,
                None => addrs[0],
            };
            let (one, _) = client_from(&ConnArgs {
                nodes: vec![target.to_string()],
                // The node chosen here, whatever the environment says.
                from_env: FromEnv {
                    nodes: false,
                    ..conn.from_env
                },
                ..conn
            })?;
            one.admin(AdminOp::Snapshot).await?;
            if json {
                emit(json!({ "op": "snapshot", "node": target.to_string() }));
            } else {
                println!("snapshot started on {target}");
            }
        }
    }
    Ok(())
}

async fn bench(conn: ConnArgs, args: BenchArgs) -> Result<(), String> {
    use raft_server::bench::{self, BenchOptions, Workload};
    let c = conn_from(&conn)?;
    // Load goes to loopback, or to addresses the operator typed on this command line.
    if !c.explicit
        && let Some(a) = c.addrs.iter().find(|a| !a.ip().is_loopback())
    {
        return Err(format!(
            "{a} is not a loopback address: pass the nodes explicitly with --nodes to load them"
        ));
    }
    let server_pids = match &args.pid_file {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| format!("{}: {e}", path.display()))?
            .split_whitespace()
            .map(|p| {
                p.parse::<u32>()
                    .map_err(|_| format!("{}: {p:?} is not a PID", path.display()))
            })
            .collect::<Result<Vec<_>, _>>()?,
        None => Vec::new(),
    };
    use std::io::IsTerminal;
    let options = BenchOptions {
        workload: match args.workload {
            WorkloadArg::Put => Workload::Put,
            WorkloadArg::Get => Workload::Get,
            WorkloadArg::Mixed => Workload::Mixed,
            WorkloadArg::Cas => Workload::Cas,
            WorkloadArg::Populate => Workload::Populate,
        },
        clients: args.clients,
        depth: args.depth,
        conns: args.conns,
        key_size: args.key_size,
        value_size: args.value_size,
        key_space: args.key_space,
        read_pct: args.read_pct,
        stale: args.stale,
        total: args.total,
        duration: Duration::from_secs(args.time_limit),
        warmup_ops: args.warmup_ops,
        request_timeout: Duration::from_secs(conn.timeout),
        seed: args.seed,
        label: args.label,
        server_pids,
        progress: !args.json && std::io::stderr().is_terminal(),
    };
    let report = bench::run(c.addrs, c.identity, options).await?;
    if !args.json {
        print!("{}", report.text);
    }
    println!("RESULT_JSON {}", report.json);
    Ok(())
}

fn relative(p: &Path) -> String {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| p.strip_prefix(cwd).ok().map(|r| r.display().to_string()))
        .unwrap_or_else(|| p.display().to_string())
}

async fn dev(args: DevArgs) -> Result<(), String> {
    if args.nodes == 0 {
        return Err("--nodes must be at least 1".into());
    }
    let layout = DevLayout::new(&args.dir, args.nodes, args.port, args.metrics_port);
    let configs = layout.write().map_err(|e| e.to_string())?;
    let exe =
        std::env::current_exe().map_err(|e| format!("cannot find this program's path: {e}"))?;
    let me = relative(&exe);
    let mut children = Vec::new();
    for (c, path) in layout.nodes.iter().zip(&configs) {
        let log_path = args.dir.join(format!("node{}.log", c.id));
        let log =
            std::fs::File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
        let err = log.try_clone().map_err(|e| e.to_string())?;
        let child = tokio::process::Command::new(&exe)
            .arg("run")
            .arg("--config")
            .arg(path)
            .arg("--stop-with-stdin")
            .stdin(std::process::Stdio::piped())
            .stdout(log)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start node {}: {e}", c.id))?;
        children.push((c.id, child));
    }
    let conn = ConnArgs {
        client_config: Some(args.dir.join("client.toml")),
        nodes: vec![],
        ca: None,
        cert: None,
        key: None,
        timeout: 10,
        from_env: FromEnv::default(),
    };
    let (client, addrs) = client_from(&conn)?;
    // Wait for a leader.
    let mut leader = None;
    for _ in 0..300 {
        for (id, child) in &mut children {
            if let Ok(Some(status)) = child.try_wait() {
                let log = args.dir.join(format!("node{id}.log"));
                let tail = std::fs::read_to_string(&log).unwrap_or_default();
                let last: Vec<&str> = tail.lines().rev().take(5).collect();
                return Err(format!(
                    "node {id} exited ({status}) before the cluster was up; the end of {}:\n{}",
                    log.display(),
                    last.into_iter().rev().collect::<Vec<_>>().join("\n")
                ));
            }
        }
        if let Some((_, Ok(s))) = statuses(&client, &addrs[..1]).await.into_iter().next()
            && let Some(l) = s.leader
        {
            leader = Some((l, s.term));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let Some((leader, term)) = leader else {
        return Err(format!(
            "no leader after 30 s; see the logs in {}",
            args.dir.display()
        ));
    };
    let dir = relative(&std::path::absolute(&args.dir).unwrap_or(args.dir.clone()));
    println!(
        "raft dev cluster: {} nodes, configs, certificates, data and logs in ./{dir}",
        args.nodes
    );
    for ((id, child), c) in children.iter().zip(&layout.nodes) {
        let pid = child.id().map_or("?".into(), |p| p.to_string());
        let tag = if *id == leader.0 { "  <- leader" } else { "" };
        println!(
            "  node {id}  pid {pid:<7} {}  metrics http://{}/metrics{tag}",
            c.listen,
            c.metrics.as_deref().unwrap_or("-")
        );
    }
    println!("node {leader} leads term {term}. Try, in another terminal:");
    println!("  {me} kv put greeting hello");
    println!("  {me} kv get greeting");
    println!("  {me} cluster status");
    let leader_pid = children
        .iter()
        .find(|(id, _)| *id == leader.0)
        .and_then(|(_, c)| c.id());
    if let Some(pid) = leader_pid {
        println!(
            "  kill -9 {pid}     # crash the leader: the others elect a new one and keep serving"
        );
    }
    println!("Restart a stopped node with: {me} run --config {dir}/node<ID>.toml");
    println!("Ctrl-C stops the cluster.");
    if args.check {
        drop(children);
        return Ok(());
    }
    let mut last_leader = Some(leader);
    let mut exited = vec![false; children.len()];
    // One listener for the whole watch: a signal that arrives while a status poll
    // runs must not be missed.
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let watch = async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            for (i, (id, child)) in children.iter_mut().enumerate() {
                if !exited[i]
                    && let Ok(Some(status)) = child.try_wait()
                {
                    exited[i] = true;
                    println!("node {id} exited ({status})");
                }
            }
            let now = statuses(&client, &addrs)
                .await
                .into_iter()
                .filter_map(|(_, s)| s.ok())
                .find_map(|s| s.leader.map(|l| (l, s.term)));
            if let Some((l, t)) = now
                && Some(l) != last_leader
            {
                println!("node {l} now leads (term {t})");
                last_leader = Some(l);
            }
        };
        tokio::select! {
            _ = &mut shutdown => break,
            _ = watch => {}
        }
    }
    println!("stopping the cluster");
    for (_, child) in &mut children {
        // Closing stdin asks the node to stop cleanly.
        drop(child.stdin.take());
    }
    for (id, child) in &mut children {
        match tokio::time::timeout(Duration::from_secs(10), child.wait()).await {
            Ok(_) => {}
            Err(_) => {
                eprintln!("node {id} did not stop in 10 s; killing it");
                let _ = child.kill().await;
            }
        }
    }
    Ok(())
}
