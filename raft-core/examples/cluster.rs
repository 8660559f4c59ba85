//! Three in-memory `Node`s in one process: elect, write, read linearizably.
//!
//! `cargo run -p quorum-raft-core --example cluster --features testing`

#![allow(clippy::print_stdout)]

use raft_core::Config;
use raft_core::node::{Environment, Node, NodeOptions};
use raft_core::testing::{MemLogStore, MemStateMachine, Router, ThreadPoolRuntime, kv_command};
use raft_proto::{Membership, NodeId};
use std::sync::Arc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let runtime = Arc::new(ThreadPoolRuntime::new(2)?);
    let router = Router::new();
    let ids = [NodeId(1), NodeId(2), NodeId(3)];
    futures::executor::block_on(async {
        let mut nodes = Vec::new();
        let mut machines = Vec::new();
        for id in ids {
            let (transport, incoming) = router.register(id);
            let machine = MemStateMachine::new(id.0);
            let env = Environment {
                log: Arc::new(MemLogStore::new()),
                state_machine: Arc::new(machine.clone()),
                transport,
                incoming,
                runtime: runtime.clone(),
            };
            let options = NodeOptions::new(Membership::voters(ids));
            nodes.push(Node::start(Config::new(id), options, env).await?);
            machines.push(machine);
        }
        let leader = nodes[0].leader().await.ok_or("no leader")?;
        println!("node {leader} leads");
        let leader_node = &nodes[(leader.0 - 1) as usize];
        leader_node
            .propose(kv_command("put", "greeting", "hello"))
            .await?;
        let after = leader_node
            .propose(kv_command("append", "greeting", ", world"))
            .await?;
        println!("the leader answered {:?}", String::from_utf8_lossy(&after));
        // A linearizable read on a follower: barrier, then the local state machine.
        let follower = if leader.0 == 1 { 1 } else { 0 };
        nodes[follower].read().await?;
        println!(
            "node {} reads {:?}",
            follower + 1,
            machines[follower].get("greeting")
        );
        for node in &nodes {
            node.shutdown().await;
        }
        Ok(())
    })
}
