//! `raft-server`: run a node, a local dev cluster, the KV and cluster clients, and
//! certificate generation.
//!
//! Exit codes (the README's "Scripting the CLI" lists them too): 0 success, 1 an error
//! (network, refusal, unreadable files...), 2 a wrong command line, 3 `kv get` of a key
//! that is not set, 4 `kv cas` that found another value. Each subcommand group lives in
//! a module of `cli`; their failures are one typed error, `cli::error::CliError`, whose
//! `exit_code` is the process's.

// A command-line tool prints its answers.
#![allow(clippy::print_stdout)]

mod cli;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use cli::bench::BenchArgs;
use cli::certs::CertsArgs;
use cli::cluster::ClusterOp;
use cli::conn::{ConnArgs, FromEnv, OutputArgs};
use cli::dev::DevArgs;
use cli::kv::KvOp;
use cli::run::RunArgs;
use cli::snapshot::SnapshotOp;
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
        op: SnapshotOp,
    },
    /// Create a CA (unless DIR holds one) and certificates for nodes and clients.
    Certs(CertsArgs),
    /// Print a completion script for a shell (bash, zsh, fish, elvish, powershell),
    /// e.g. `raft-server completions bash > /etc/bash_completion.d/raft-server`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
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
            Command::Run(args) => cli::run::run(args).await,
            Command::Dev(args) => cli::dev::dev(args).await,
            Command::Kv { conn, out, op } => cli::kv::kv(conn, out.output, op).await,
            Command::Cluster { conn, out, op } => cli::cluster::cluster(conn, out.output, op).await,
            Command::Bench { conn, args } => cli::bench::bench(conn, args).await,
            Command::Snapshot { op } => cli::snapshot::run(op).await,
            Command::Completions { shell } => {
                clap_complete::generate(
                    shell,
                    &mut Cli::command(),
                    "raft-server",
                    &mut std::io::stdout(),
                );
                Ok(())
            }
            Command::Certs(args) => cli::certs::certs(args),
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(2));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
