//! `raft-server bench`: the load generator against a running cluster.

use super::conn::{ConnArgs, conn_from};
use super::error::CliError;
use clap::{Args, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Clone, Copy, ValueEnum)]
enum WorkloadArg {
    Put,
    Get,
    Mixed,
    Cas,
    Populate,
}

#[derive(Args)]
pub(crate) struct BenchArgs {
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

pub(crate) async fn bench(conn: ConnArgs, args: BenchArgs) -> Result<(), CliError> {
    use raft_server::bench::{self, BenchOptions, Workload};
    let c = conn_from(&conn)?;
    // Load goes to loopback, or to addresses the operator typed on this command line.
    if !c.explicit
        && let Some(a) = c.addrs.iter().find(|a| !a.ip().is_loopback())
    {
        return Err(CliError::Failed(format!(
            "{a} is not a loopback address: pass the nodes explicitly with --nodes to load them"
        )));
    }
    let server_pids = match &args.pid_file {
        Some(path) => std::fs::read_to_string(path)
            .map_err(CliError::io(path.display()))?
            .split_whitespace()
            .map(|p| {
                p.parse::<u32>().map_err(|_| {
                    CliError::Failed(format!("{}: {p:?} is not a PID", path.display()))
                })
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
    let report = bench::run(c.addrs, c.identity, options)
        .await
        .map_err(CliError::Failed)?;
    if !args.json {
        print!("{}", report.text);
    }
    println!("RESULT_JSON {}", report.json);
    Ok(())
}
