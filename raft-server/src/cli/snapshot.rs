//! `raft-server snapshot save|status|restore`: backups (see `raft_server::backup`).

use super::conn::{ConnArgs, conn_from};
use super::error::CliError;
use clap::{Args, Subcommand};
use raft_proto::NodeId;
use raft_server::ServerConfig;
use raft_server::backup::{self, RestoreOptions};
use raft_server::proto::SaveHeader;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Subcommand)]
pub(crate) enum SnapshotOp {
    /// Stream a consistent snapshot of the cluster from a node into FILE (admin role).
    /// The node confirms with the leader that it holds every acknowledged write, then
    /// sends a snapshot at or after that point; writes go on meanwhile. FILE is written
    /// as FILE.part, synced, then renamed.
    Save {
        /// The backup file to write.
        file: PathBuf,
        #[command(flatten)]
        conn: ConnArgs,
        /// The node to save from (default: the first of the client's nodes that
        /// answers).
        #[arg(long)]
        node: Option<String>,
    },
    /// Check a backup file (version, length, SHA-256) and print what it holds.
    Status {
        /// The backup file.
        file: PathBuf,
    },
    /// Build a fresh data directory for one node of a NEW cluster from a backup. Run it
    /// once per node, with the same FILE and the same members; then start the nodes.
    /// The new cluster's voters are --id and the --peer ids (or the config's id and
    /// peers); the old cluster's membership and node addresses are not carried over.
    Restore(RestoreArgs),
}

#[derive(Args)]
pub(crate) struct RestoreArgs {
    /// The backup file.
    file: PathBuf,
    /// The node's TOML configuration (its id, data_dir and peers); the flags below
    /// override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The node's id in the new cluster.
    #[arg(long)]
    id: Option<u64>,
    /// The data directory to create (must not exist, or be empty).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Another member of the new cluster, ID=HOST:PORT (repeat), as for `run`.
    #[arg(long = "peer")]
    peers: Vec<String>,
}

pub(crate) async fn run(op: SnapshotOp) -> Result<(), CliError> {
    match op {
        SnapshotOp::Save { file, conn, node } => save(file, conn, node).await,
        SnapshotOp::Status { file } => {
            let v = backup::verify(&file)?;
            println!("{}: intact ({} bytes)", file.display(), v.file_bytes);
            describe(&v.header);
            Ok(())
        }
        SnapshotOp::Restore(args) => restore(args).await,
    }
}

fn describe(h: &SaveHeader) {
    let members = |ids: &BTreeSet<NodeId>| {
        ids.iter()
            .map(|id| id.0.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    println!(
        "  cluster (CA SHA-256) {}\n  from node {}, at log index {} (term {}), voters {}{}\n  snapshot {} bytes, taken at {} ms since the epoch{}",
        h.cluster,
        h.node,
        h.meta.last_log_id.index.0,
        h.meta.last_log_id.term.0,
        members(&h.meta.membership.voters),
        if h.meta.membership.learners.is_empty() {
            String::new()
        } else {
            format!(", learners {}", members(&h.meta.membership.learners))
        },
        h.size,
        h.taken_at_ms,
        if h.confirmed {
            ""
        } else {
            "\n  NOT confirmed by a leader: it holds what that node had applied"
        }
    );
}

async fn save(file: PathBuf, conn: ConnArgs, node: Option<String>) -> Result<(), CliError> {
    let c = conn_from(&conn)?;
    let nodes = match node {
        Some(n) => {
            vec![
                raft_server::config::resolve(&n)
                    .map_err(|e| CliError::Failed(format!("--node {n:?}: {e}")))?,
            ]
        }
        None => c.addrs,
    };
    let report = backup::save(
        &nodes,
        &c.identity,
        &file,
        Duration::from_secs(conn.timeout),
    )
    .await?;
    println!(
        "saved {} ({} bytes) from {} in {:.2} s",
        file.display(),
        report.file_bytes,
        report.node,
        report.elapsed.as_secs_f64()
    );
    describe(&report.header);
    if !report.header.confirmed {
        eprintln!(
            "warning: the node could not confirm with a leader that it was up to date; writes acknowledged just before the save may be missing"
        );
    }
    Ok(())
}

async fn restore(args: RestoreArgs) -> Result<(), CliError> {
    let config = match &args.config {
        Some(path) => Some(ServerConfig::load(path)?),
        None => None,
    };
    let id = args
        .id
        .or_else(|| config.as_ref().map(|c| c.id))
        .ok_or_else(|| CliError::Failed("give --id N (or --config FILE)".into()))?;
    let data_dir = args
        .data
        .clone()
        .or_else(|| config.as_ref().map(|c| c.data_dir.clone()))
        .ok_or_else(|| CliError::Failed("give --data DIR (or --config FILE)".into()))?;
    let peers = if args.peers.is_empty() {
        config.map(|c| c.peers).unwrap_or_default()
    } else {
        args.peers
    };
    let mut members = BTreeSet::from([NodeId(id)]);
    for p in &peers {
        let (peer, _) = raft_server::config::parse_peer(p)?;
        members.insert(peer);
    }
    let options = RestoreOptions {
        file: args.file.clone(),
        id: NodeId(id),
        data_dir: data_dir.clone(),
        members,
    };
    let report = backup::restore(&options).await?;
    println!(
        "restored {} into {} for node {id} in {:.2} s: {} records",
        args.file.display(),
        data_dir.display(),
        report.elapsed.as_secs_f64(),
        report.records
    );
    describe(&report.header);
    let voters: Vec<String> = report
        .meta
        .membership
        .voters
        .iter()
        .map(|v| v.0.to_string())
        .collect();
    println!(
        "the new cluster's voters: {}; restore every one of them from this file with the same members, then start them",
        voters.join(",")
    );
    Ok(())
}
