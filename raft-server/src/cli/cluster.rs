//! `raft-server cluster`: every node's status, membership changes, leadership
//! transfer and snapshots on demand.

use super::conn::{ConnArgs, FromEnv, Output, client_from, emit};
use super::error::CliError;
use clap::Subcommand;
use raft_proto::NodeId;
use raft_server::proto::{AdminOp, Status};
use raft_server::{Client, ClientError};
use serde_json::{Value, json};
use std::net::SocketAddr;

#[derive(Subcommand)]
pub(crate) enum ClusterOp {
    /// Every node's view: role, term, indexes, members.
    Status,
    /// Add a node (started with --join) as a learner.
    AddLearner { id: u64, addr: String },
    /// Make a learner a voter.
    Promote { id: u64 },
    /// Remove a node.
    Remove { id: u64 },
    /// Record a member's new address (it restarted elsewhere); every node learns it
    /// from the log.
    MoveNode { id: u64, addr: String },
    /// Hand leadership to another voter.
    TransferLeader { id: u64 },
    /// Take a snapshot on one node (default: the first that answers).
    Snapshot {
        #[arg(long)]
        node: Option<String>,
    },
}

/// `cluster status` as one JSON document: every node's view (or why it did not
/// answer), and the members as the first node that answered knows them.
fn status_json(s: &[(SocketAddr, Result<Status, ClientError>)]) -> Value {
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
            Err(e) => json!({ "address": addr.to_string(), "error": e.to_string() }),
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

fn print_status(s: &[(SocketAddr, Result<Status, ClientError>)]) {
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

pub(crate) async fn statuses(
    client: &Client,
    addrs: &[SocketAddr],
) -> Vec<(SocketAddr, Result<Status, ClientError>)> {
    // Concurrently: a node that is down costs one attempt timeout, not one each.
    futures::future::join_all(
        addrs
            .iter()
            .map(|&a| async move { (a, client.status_of(a).await) }),
    )
    .await
}

pub(crate) async fn cluster(conn: ConnArgs, output: Output, op: ClusterOp) -> Result<(), CliError> {
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
            // Scripts check the exit status: no node answering is a failure (1).
            if all.iter().all(|(_, s)| s.is_err()) {
                return Err(CliError::Failed(format!(
                    "no node answered ({} tried)",
                    all.len()
                )));
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
        ClusterOp::MoveNode { id, addr } => {
            client.move_node(NodeId(id), &addr).await?;
            if json {
                emit(json!({ "op": "move-node", "id": id, "address": addr }));
            } else {
                println!("node {id} is now recorded at {addr}");
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
                Some(n) => raft_server::config::resolve(&n).map_err(CliError::Failed)?,
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
