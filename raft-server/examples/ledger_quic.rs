//! The bank-transfer ledger of `raft-core/examples/ledger.rs`, on the production
//! layers: each node keeps its log in an `LmdbLogStore` and its accounts in an
//! `LmdbStateMachine` (the ledger implements `raft_storage_lmdb::Machine`), and the
//! three nodes talk over QUIC with mutual TLS, with a CA and node certificates made at
//! start-up. Three nodes run as tasks in this process on 127.0.0.1.
//!
//! The example moves money, has an overdraft refused, checks every node's balances
//! after a linearizable read barrier, then stops a follower, goes on without it,
//! restarts it from its directories and checks that it kept its state and caught up.
//! Every step is asserted; it exits 0 in a few seconds (it gives up after 30).
//!
//! `cargo run -p quorum-raft-server --example ledger_quic`

#![allow(clippy::print_stdout)]

use raft_core::node::{Environment, Node, NodeOptions, Runtime, StateMachine};
use raft_core::rt::tokio::TokioRuntime;
use raft_core::{Config, ReadError};
use raft_net_quic::tls::{PemPair, generate_ca, issue_node};
use raft_net_quic::{Identity, QuicConfig, QuicTransport, Started, tokio_runtime};
use raft_proto::{Bytes, LogIndex, Membership, NodeId, NodeRecord};
use raft_storage_lmdb::{
    ApplyContext, EnvConfig, LmdbError, LmdbLogStore, LmdbStateMachine, Machine, SmConfig,
};
use std::collections::BTreeMap;
use std::error::Error;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

type BoxError = Box<dyn Error + Send + Sync>;

// ------------------------------------------------------------------ the application

/// Where the ledger keeps its balances: an LMDB table here, a map in the in-memory
/// example. The rules below do not care.
trait Accounts {
    fn balance(&mut self, name: &str) -> Result<Option<u64>, LmdbError>;
    fn set_balance(&mut self, name: &str, balance: u64) -> Result<(), LmdbError>;
}

/// Runs one command and returns its response: the same rules and answers as the
/// in-memory example. Deterministic, so every replica agrees, refusals included.
///
/// Commands: `open NAME`, `deposit NAME AMOUNT`, `transfer FROM TO AMOUNT`.
fn execute(accounts: &mut dyn Accounts, command: &str) -> Result<String, LmdbError> {
    let words: Vec<&str> = command.split_whitespace().collect();
    let amount = |text: &str| text.parse::<u64>().ok();
    Ok(match words.as_slice() {
        ["open", name] => {
            if accounts.balance(name)?.is_some() {
                return Ok(format!("refused: {name} already has an account"));
            }
            accounts.set_balance(name, 0)?;
            format!("opened {name}")
        }
        ["deposit", name, text] => {
            let Some(amount) = amount(text) else {
                return Ok(format!("refused: {text:?} is not an amount"));
            };
            let Some(balance) = accounts.balance(name)? else {
                return Ok(format!("refused: {name} has no account"));
            };
            let Some(new) = balance.checked_add(amount) else {
                return Ok(format!("refused: {name}'s balance would overflow"));
            };
            accounts.set_balance(name, new)?;
            format!("{name} has {new}")
        }
        ["transfer", from, to, text] => {
            let Some(amount) = amount(text) else {
                return Ok(format!("refused: {text:?} is not an amount"));
            };
            if from == to {
                return Ok("refused: a transfer needs two accounts".to_string());
            }
            let (Some(have), Some(theirs)) = (accounts.balance(from)?, accounts.balance(to)?)
            else {
                return Ok(format!("refused: {from} or {to} has no account"));
            };
            if have < amount {
                return Ok(format!("refused: {from} has {have}, cannot send {amount}"));
            }
            let Some(theirs) = theirs.checked_add(amount) else {
                return Ok(format!("refused: {to}'s balance would overflow"));
            };
            accounts.set_balance(from, have - amount)?;
            accounts.set_balance(to, theirs)?;
            format!("{from} has {}, {to} has {theirs}", have - amount)
        }
        _ => format!("refused: unknown command {command:?}"),
    })
}

// ------------------------------------------------------ the LMDB state machine

/// The ledger as an LMDB [`Machine`]: one record per account in the `data` table, the
/// name as key and the balance as a big-endian `u64`. `LmdbStateMachine` runs each
/// batch of commands in one write transaction that also records the applied log id,
/// and builds, streams and installs snapshots of the table: the machine only applies.
struct Ledger;

/// An apply's view of the accounts: the batch's write transaction.
struct InTxn<'c, 'a, 'e>(&'c mut ApplyContext<'a, 'e>);

impl Accounts for InTxn<'_, '_, '_> {
    fn balance(&mut self, name: &str) -> Result<Option<u64>, LmdbError> {
        let cx = &mut *self.0;
        Ok(cx.data.get(cx.txn, name.as_bytes())?.map(decode_balance))
    }

    fn set_balance(&mut self, name: &str, balance: u64) -> Result<(), LmdbError> {
        let cx = &mut *self.0;
        cx.data
            .put(cx.txn, name.as_bytes(), &balance.to_be_bytes())?;
        Ok(())
    }
}

fn decode_balance(bytes: &[u8]) -> u64 {
    // Only this machine writes the table, always 8 bytes.
    u64::from_be_bytes(bytes.try_into().unwrap_or_default())
}

impl Machine for Ledger {
    fn apply(&self, cx: &mut ApplyContext<'_, '_>, command: &[u8]) -> Result<Bytes, LmdbError> {
        let command = String::from_utf8_lossy(command);
        Ok(Bytes::from(execute(&mut InTxn(cx), &command)?))
    }
}

/// Every account and balance, read from a snapshot of the live state.
fn balances(sm: &LmdbStateMachine<Ledger>) -> Result<BTreeMap<String, u64>, LmdbError> {
    sm.read(|view| {
        let mut out = BTreeMap::new();
        for record in view.data.iter(view.txn)? {
            let (name, balance) = record?;
            out.insert(
                String::from_utf8_lossy(name).into_owned(),
                decode_balance(balance),
            );
        }
        Ok(out)
    })
}

// ------------------------------------------------------------------------ the cluster

struct Member {
    node: Node,
    transport: Arc<QuicTransport>,
    sm: LmdbStateMachine<Ledger>,
}

struct Cluster {
    root: PathBuf,
    ca: PemPair,
    addrs: BTreeMap<NodeId, SocketAddr>,
    runtime: Arc<dyn Runtime>,
    members: BTreeMap<NodeId, Member>,
}

/// Small write-ahead-log segments: the default 32 MiB is zero-filled before use.
fn env_config() -> EnvConfig {
    EnvConfig {
        wal_segment_bytes: 1 << 20,
        ..EnvConfig::default()
    }
}

/// Opens a node's stores in `dir`, waiting while a previous run of the node in this
/// process still holds them (its tasks let go shortly after `shutdown`).
async fn open_stores(dir: &Path) -> Result<(LmdbLogStore, LmdbStateMachine<Ledger>), BoxError> {
    for _ in 0..200 {
        let log = LmdbLogStore::open(dir.join("log"), env_config());
        let sm = LmdbStateMachine::open(dir.join("sm"), Ledger, SmConfig::default());
        match (log, sm) {
            (Ok(log), Ok(sm)) => return Ok((log, sm)),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    Err(format!("cannot open the stores in {}", dir.display()).into())
}

impl Cluster {
    /// Three free UDP ports on 127.0.0.1 (bound, noted, released), a CA, a root
    /// directory.
    fn new(root: &Path) -> Result<Cluster, BoxError> {
        let sockets = (0..3)
            .map(|_| UdpSocket::bind("127.0.0.1:0"))
            .collect::<Result<Vec<_>, _>>()?;
        let mut addrs = BTreeMap::new();
        for (id, socket) in (1..).zip(&sockets) {
            addrs.insert(NodeId(id), socket.local_addr()?);
        }
        drop(sockets);
        Ok(Cluster {
            root: root.to_path_buf(),
            ca: generate_ca()?,
            addrs,
            runtime: Arc::new(TokioRuntime::current().ok_or("not on tokio")?),
            members: BTreeMap::new(),
        })
    }

    /// Node `id`'s stores, in its directories (new, or kept from an earlier run).
    async fn open(&self, id: NodeId) -> Result<(LmdbLogStore, LmdbStateMachine<Ledger>), BoxError> {
        open_stores(&self.root.join(format!("node{}", id.0))).await
    }

    /// Starts node `id` on its stores.
    async fn start(
        &mut self,
        id: NodeId,
        (log, sm): (LmdbLogStore, LmdbStateMachine<Ledger>),
    ) -> Result<(), BoxError> {
        // The node's certificate names its id; peers check it on every connection.
        let identity = Identity::from_pem(&self.ca.cert, &issue_node(&self.ca, id)?)?;
        let mut quic = QuicConfig::new(id, self.addrs[&id], self.addrs.clone(), identity);
        quic.reconnect = (Duration::from_millis(20), Duration::from_millis(200));
        let mut tries = 0;
        let Started {
            transport,
            incoming,
            ..
        } = loop {
            // A restarted node's port is free once its old endpoint has let go of it.
            match QuicTransport::start(quic.clone(), tokio_runtime().ok_or("not on tokio")?) {
                Ok(started) => break started,
                Err(_) if tries < 100 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(e.into()),
            }
        };
        // The founders' records carry their addresses, replicated with the
        // configuration (`raft-server` connects to peers from them; here the transport
        // was given the same map up front).
        let members = Membership::voters_with(
            self.addrs
                .iter()
                .map(|(&id, addr)| (id, NodeRecord::new(addr.to_string()))),
        );
        let env = Environment {
            log: Arc::new(log),
            state_machine: Arc::new(sm.clone()),
            transport: transport.clone(),
            incoming,
            runtime: self.runtime.clone(),
        };
        let node = Node::start(Config::new(id), NodeOptions::new(members), env).await?;
        self.members.insert(
            id,
            Member {
                node,
                transport,
                sm,
            },
        );
        Ok(())
    }

    /// Stops node `id`: its node, its endpoint, and (with the last handles dropped) its
    /// stores.
    async fn stop(&mut self, id: NodeId) {
        if let Some(member) = self.members.remove(&id) {
            member.node.shutdown().await;
            member.transport.close();
        }
    }

    fn node(&self, id: NodeId) -> &Node {
        &self.members[&id].node
    }

    /// A leader every running node agrees on.
    async fn leader(&self) -> NodeId {
        loop {
            let metrics: Vec<_> = self
                .members
                .values()
                .map(|m| m.node.metrics().get())
                .collect();
            if let Some(leader) = metrics[0].leader
                && metrics.iter().all(|m| m.leader == Some(leader))
            {
                return leader;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Each running node's balances, after a linearizable read barrier on that node
    /// (a follower asks the leader for the commit index, then waits to apply it).
    async fn balances(&self) -> Result<BTreeMap<NodeId, BTreeMap<String, u64>>, BoxError> {
        let mut out = BTreeMap::new();
        for (&id, member) in &self.members {
            // A node that just started knows no leader yet: it says so, and we retry.
            let mut tries = 0;
            while let Err(e) = member.node.read().await {
                match e {
                    ReadError::NotLeader(_) if tries < 100 => tries += 1,
                    e => return Err(e.into()),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            out.insert(id, balances(&member.sm)?);
        }
        Ok(out)
    }
}

/// Proposes `command` on `leader`, prints it with the ledger's response, returns it.
async fn submit(leader: &Node, command: &str) -> Result<String, BoxError> {
    let response = leader.propose(Bytes::from(command)).await?;
    let response = String::from_utf8_lossy(&response).into_owned();
    println!("  {command:<28} -> {response}");
    Ok(response)
}

fn expected(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|&(n, b)| (n.to_string(), b)).collect()
}

async fn run(root: &Path) -> Result<(), BoxError> {
    let mut cluster = Cluster::new(root)?;
    println!(
        "three nodes on {:?}",
        cluster.addrs.values().collect::<Vec<_>>()
    );
    for id in [NodeId(1), NodeId(2), NodeId(3)] {
        let stores = cluster.open(id).await?;
        cluster.start(id, stores).await?;
    }
    let leader_id = cluster.leader().await;
    println!("node {leader_id} leads");
    let leader = cluster.node(leader_id).clone();

    for name in ["alice", "bob", "carol"] {
        assert_eq!(
            submit(&leader, &format!("open {name}")).await?,
            format!("opened {name}")
        );
    }
    assert_eq!(submit(&leader, "deposit alice 100").await?, "alice has 100");
    assert_eq!(
        submit(&leader, "transfer alice bob 30").await?,
        "alice has 70, bob has 30"
    );
    assert_eq!(
        submit(&leader, "transfer bob carol 10").await?,
        "bob has 20, carol has 10"
    );
    let refused = submit(&leader, "transfer carol alice 50").await?;
    assert_eq!(refused, "refused: carol has 10, cannot send 50");

    let want = expected(&[("alice", 70), ("bob", 20), ("carol", 10)]);
    for (id, balances) in cluster.balances().await? {
        println!("  node {id}: {balances:?}");
        assert_eq!(balances, want, "node {id}'s balances");
    }

    // A follower stops; the other two go on; it restarts from its directories.
    let follower = *cluster
        .members
        .keys()
        .find(|&&id| id != leader_id)
        .ok_or("no follower")?;
    let applied_before = cluster.node(follower).metrics().get().applied;
    cluster.stop(follower).await;
    println!("node {follower} stopped (it had applied up to {applied_before})");
    assert_eq!(
        submit(&leader, "transfer alice carol 25").await?,
        "alice has 45, carol has 35"
    );
    assert_eq!(submit(&leader, "deposit bob 5").await?, "bob has 25");

    // Its directories, reopened: before it hears from anyone, the state it had.
    let (log, sm) = cluster.open(follower).await?;
    let kept = sm.state().await?;
    let kept_balances = balances(&sm)?;
    println!(
        "node {follower} reopened its directories: applied up to {}, {kept_balances:?}",
        kept.applied.index
    );
    assert!(
        kept.applied.index >= applied_before && kept.applied.index > LogIndex(0),
        "the state machine kept what it applied"
    );
    assert_eq!(kept_balances, want, "node {follower} kept its balances");
    cluster.start(follower, (log, sm)).await?;

    // It catches up on what it missed (from the leader's log, over QUIC).
    let want = expected(&[("alice", 45), ("bob", 25), ("carol", 35)]);
    for (id, balances) in cluster.balances().await? {
        println!("  node {id}: {balances:?}");
        assert_eq!(balances, want, "node {id}'s balances");
    }

    for id in [NodeId(1), NodeId(2), NodeId(3)] {
        cluster.stop(id).await;
    }
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), BoxError> {
    let root = tempfile::tempdir()?;
    match tokio::time::timeout(Duration::from_secs(30), run(root.path())).await {
        Ok(result) => result,
        Err(_) => Err("the example did not finish within 30 s".into()),
    }
}
