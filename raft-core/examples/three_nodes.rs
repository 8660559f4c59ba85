//! A 3-node cluster of sans-IO `Raft` nodes in one process: elect a leader, replicate
//! commands, lose the leader, and watch a new one take over with every command intact.
//!
//! Run with `cargo run -p quorum-raft-core --example three_nodes`.

#![allow(clippy::print_stdout)]

use raft_core::{Action, Config, Raft, Restore, Role};
use raft_proto::{Bytes, EntryPayload, Membership, Message, NodeId};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Three nodes, a wire, and a set of nodes that are down.
struct Cluster {
    nodes: BTreeMap<NodeId, Raft>,
    applied: BTreeMap<NodeId, Vec<String>>,
    wire: VecDeque<(NodeId, NodeId, Message)>,
    down: BTreeSet<NodeId>,
}

impl Cluster {
    fn new() -> Result<Cluster, raft_core::InitError> {
        let ids = [NodeId(1), NodeId(2), NodeId(3)];
        let mut nodes = BTreeMap::new();
        for id in ids {
            let restore = Restore::bootstrap(Membership::voters(ids));
            let mut config = Config::new(id);
            config.snapshot_entries = 0; // the log stays short; no snapshots here
            nodes.insert(id, Raft::new(config, restore)?);
        }
        let applied = ids.iter().map(|&id| (id, Vec::new())).collect();
        Ok(Cluster {
            nodes,
            applied,
            wire: VecDeque::new(),
            down: BTreeSet::new(),
        })
    }

    /// Carries out every node's actions (persist and apply are in memory here), then
    /// delivers messages until the wire is empty.
    fn run(&mut self) {
        loop {
            for (&id, raft) in &mut self.nodes {
                while let Some(action) = raft.poll_action() {
                    match action {
                        Action::Send { to, message } => self.wire.push_back((id, to, message)),
                        Action::Persist(p) => {
                            if let Some(last) = p.entries.last() {
                                raft.persisted(last.log_id);
                            }
                        }
                        Action::Apply(entries) => {
                            for e in &entries {
                                if let EntryPayload::Command(c) = &e.payload {
                                    let text = String::from_utf8_lossy(c).into_owned();
                                    self.applied.entry(id).or_default().push(text);
                                }
                            }
                            if let Some(last) = entries.last() {
                                raft.applied(last.log_id.index);
                            }
                        }
                        // No reads and no snapshots in this example.
                        _ => {}
                    }
                }
            }
            let Some((from, to, msg)) = self.wire.pop_front() else {
                break;
            };
            if !self.down.contains(&from)
                && !self.down.contains(&to)
                && let Some(raft) = self.nodes.get_mut(&to)
            {
                raft.step(from, msg);
            }
        }
    }

    fn tick_until_leader(&mut self) -> (NodeId, u32) {
        for ticks in 1..1000 {
            for (id, raft) in &mut self.nodes {
                if !self.down.contains(id) {
                    raft.tick();
                }
            }
            self.run();
            if let Some(leader) = self.leader() {
                return (leader, ticks);
            }
        }
        panic!("no leader after 1000 ticks");
    }

    fn leader(&self) -> Option<NodeId> {
        self.nodes
            .iter()
            .filter(|(id, r)| !self.down.contains(id) && r.role() == Role::Leader)
            .map(|(&id, _)| id)
            .next()
    }

    fn propose(&mut self, leader: NodeId, text: &str) {
        if let Some(raft) = self.nodes.get_mut(&leader) {
            match raft.propose(Bytes::from(text)) {
                Ok(id) => println!("  proposed {text:?} at {id}"),
                Err(e) => println!("  {text:?} refused: {e}"),
            }
        }
        self.run();
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut c = Cluster::new()?;
    let (leader, ticks) = c.tick_until_leader();
    println!("node {leader} won the first election after {ticks} ticks");
    for cmd in ["x=1", "y=2", "z=3"] {
        c.propose(leader, cmd);
    }

    println!("node {leader} (the leader) goes down");
    c.down.insert(leader);
    let (new_leader, ticks) = c.tick_until_leader();
    let term = c.nodes[&new_leader].term();
    println!("node {new_leader} leads term {term} after {ticks} more ticks");
    c.propose(new_leader, "w=4");

    println!("node {leader} comes back and catches up");
    c.down.remove(&leader);
    for _ in 0..3 {
        for raft in c.nodes.values_mut() {
            raft.tick();
        }
        c.run();
    }
    for (id, cmds) in &c.applied {
        let role = c.nodes[id].role();
        println!("  node {id} ({role:?}) applied {cmds:?}");
    }
    Ok(())
}
