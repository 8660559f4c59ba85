//! A cluster of real `raft-server` processes on 127.0.0.1 for the process-level tests.
//!
//! Each node runs the binary cargo built for this test (`run --config nodeN.toml`)
//! with its own data directory and log file under a temporary directory. Children are
//! started with `--stop-with-stdin`, so they stop when this process goes away even if
//! it is killed; dropping the cluster kills them, and a failing test prints the end
//! of every node's log.

#![allow(dead_code, unreachable_pub, clippy::print_stderr)]

use raft_net_quic::Identity;
use raft_proto::NodeId;
use raft_server::proto::Status;
use raft_server::{Client, ClientOptions, ServerConfig};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The binary under test: `RAFT_SERVER_BIN` when set (CI points the hostile-client
/// suite at the release build), else the one cargo built for these tests.
pub fn binary() -> PathBuf {
    match std::env::var_os("RAFT_SERVER_BIN") {
        Some(path) => PathBuf::from(path),
        None => PathBuf::from(env!("CARGO_BIN_EXE_raft-server")),
    }
}

/// Process tests share two cores: one cluster at a time keeps their timing honest.
/// (Each test has its own runtime; tokio's mutex works across them.)
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// A port for a node to listen on, UDP (QUIC) or TCP (metrics).
///
/// Ports come from below the kernel's ephemeral range, so a socket bound to port 0
/// (a client, a QUIC endpoint dialling out) can never take the port of a node that a
/// test killed and is about to restart; a CI run once failed on exactly that ("cannot
/// listen on ...: Address already in use"). Each test binary starts at an offset of
/// its own (from its pid) and never hands a port out twice; a port is only handed out
/// if it is free for both UDP and TCP at that moment.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOW: u32 = 10_000;
    let high = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .filter(|&first| first > LOW + 1_000)
        .unwrap_or(32_768);
    let span = high - LOW;
    let _ = NEXT.compare_exchange(
        0,
        1 + std::process::id() % span,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..span {
        let port = (LOW + NEXT.fetch_add(1, Ordering::Relaxed) % span) as u16;
        if UdpSocket::bind(("127.0.0.1", port)).is_ok()
            && TcpListener::bind(("127.0.0.1", port)).is_ok()
        {
            return port;
        }
    }
    panic!("no free port below the ephemeral range ({LOW}..{high})");
}

/// A free UDP port on 127.0.0.1 (for QUIC); see [`free_port`].
fn free_udp_port() -> u16 {
    free_port()
}

/// A free TCP port on 127.0.0.1 (for metrics); see [`free_port`].
fn free_tcp_port() -> u16 {
    free_port()
}

/// One node: its configuration and, while it runs, its process.
pub struct NodeProc {
    /// Its configuration as written to `config_path`.
    pub config: ServerConfig,
    /// Its TOML file.
    pub config_path: PathBuf,
    /// Where its stdout and stderr go.
    pub log_path: PathBuf,
    /// The running process.
    pub child: Option<Child>,
    /// How many times it was started (logs of earlier runs are kept).
    pub starts: u32,
}

/// A cluster of `raft-server` processes.
pub struct TestCluster {
    /// Certificates, configs, data and logs.
    pub dir: tempfile::TempDir,
    /// By id.
    pub nodes: BTreeMap<u64, NodeProc>,
    /// The client file (`client.toml`) for the CLI.
    pub client_file: PathBuf,
    tweak: fn(&mut ServerConfig),
}

/// Runs the binary with `args`, waiting at most `limit`.
pub fn run_cli(args: &[&str], cwd: &Path, limit: Duration) -> Output {
    let mut child = Command::new(binary())
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start raft-server");
    let started = Instant::now();
    loop {
        if child.try_wait().expect("wait for raft-server").is_some() {
            return child.wait_with_output().expect("collect output");
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().expect("collect output");
            panic!(
                "`raft-server {}` did not finish within {limit:?}; stderr:\n{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl TestCluster {
    /// Creates certificates (with the `certs` command) and configurations for nodes
    /// `1..=n`, adjusted by `tweak`, and starts them.
    pub fn start(n: u64, tweak: fn(&mut ServerConfig)) -> TestCluster {
        let mut cluster = Self::configure(n, tweak);
        for id in 1..=n {
            cluster.spawn(id);
        }
        cluster
    }

    /// Like [`start`](Self::start), but starts no node: their data directories can be
    /// prepared first (a restore), then each started with [`spawn`](Self::spawn).
    pub fn configure(n: u64, tweak: fn(&mut ServerConfig)) -> TestCluster {
        let dir = tempfile::tempdir().expect("temporary directory");
        let certs = dir.path().join("certs");
        let ids: Vec<String> = (1..=n).map(|i| i.to_string()).collect();
        let out = run_cli(
            &[
                "certs",
                "--out",
                certs.to_str().expect("utf-8 path"),
                "--nodes",
                &ids.join(","),
                "--admins",
                "test",
                "--clients",
                "app,other",
            ],
            dir.path(),
            Duration::from_secs(30),
        );
        assert!(out.status.success(), "certs: {out:?}");
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_udp_port(), free_tcp_port())).collect();
        let listen = |i: u64| format!("127.0.0.1:{}", ports[(i - 1) as usize].0);
        let mut nodes = BTreeMap::new();
        for id in 1..=n {
            let mut c = ServerConfig::new(
                id,
                &listen(id),
                &dir.path().join(format!("node{id}")),
                &certs,
            );
            c.peers = (1..=n)
                .filter(|&p| p != id)
                .map(|p| format!("{p}={}", listen(p)))
                .collect();
            c.metrics = Some(format!("127.0.0.1:{}", ports[(id - 1) as usize].1));
            tweak(&mut c);
            nodes.insert(id, Self::node_files(dir.path(), c));
        }
        let client_file = dir.path().join("client.toml");
        let addrs: Vec<String> = (1..=n).map(|i| format!("{:?}", listen(i))).collect();
        std::fs::write(
            &client_file,
            format!(
                "nodes = [{}]\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
                addrs.join(", "),
                certs.join("ca.crt"),
                certs.join("client-test.crt"),
                certs.join("client-test.key")
            ),
        )
        .expect("write client.toml");
        TestCluster {
            dir,
            nodes,
            client_file,
            tweak,
        }
    }

    fn node_files(dir: &Path, config: ServerConfig) -> NodeProc {
        let id = config.id;
        let config_path = dir.join(format!("node{id}.toml"));
        std::fs::write(&config_path, config.to_toml()).expect("write the node's config");
        NodeProc {
            config,
            config_path,
            log_path: dir.join(format!("node{id}.log")),
            child: None,
            starts: 0,
        }
    }

    /// Creates node `id` (a certificate from the cluster CA, a config with `join` and
    /// the current nodes as peers) and starts it; it waits to be added with `cluster
    /// add-learner`. Returns its address.
    pub fn add_joining_node(&mut self, id: u64) -> String {
        let certs = self.dir.path().join("certs");
        let out = run_cli(
            &[
                "certs",
                "--out",
                certs.to_str().expect("utf-8 path"),
                "--nodes",
                &id.to_string(),
            ],
            self.dir.path(),
            Duration::from_secs(30),
        );
        assert!(out.status.success(), "certs: {out:?}");
        let listen = format!("127.0.0.1:{}", free_udp_port());
        let mut c = ServerConfig::new(
            id,
            &listen,
            &self.dir.path().join(format!("node{id}")),
            &certs,
        );
        c.join = true;
        c.peers = self
            .nodes
            .iter()
            .map(|(id, n)| format!("{id}={}", n.config.listen))
            .collect();
        c.metrics = Some(format!("127.0.0.1:{}", free_tcp_port()));
        (self.tweak)(&mut c);
        self.nodes.insert(id, Self::node_files(self.dir.path(), c));
        self.spawn(id);
        listen
    }

    /// Starts node `id` (again).
    pub fn spawn(&mut self, id: u64) {
        let node = self.nodes.get_mut(&id).expect("a known node");
        assert!(node.child.is_none(), "node {id} is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log_path)
            .expect("open the node's log");
        let err = log.try_clone().expect("clone the log handle");
        let child = Command::new(binary())
            .args(["run", "--config"])
            .arg(&node.config_path)
            .arg("--stop-with-stdin")
            .env("RUST_LOG", "info,quinn=warn,quinn_proto=warn")
            .current_dir(self.dir.path())
            .stdin(Stdio::piped())
            .stdout(log)
            .stderr(err)
            .spawn()
            .expect("start a node");
        node.child = Some(child);
        node.starts += 1;
    }

    /// SIGKILL: no shutdown, no flush beyond what was already synced.
    pub fn kill9(&mut self, id: u64) {
        let node = self.nodes.get_mut(&id).expect("a known node");
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops node `id` cleanly (closing its stdin) and waits for it.
    pub fn stop(&mut self, id: u64) {
        let node = self.nodes.get_mut(&id).expect("a known node");
        if let Some(mut child) = node.child.take() {
            drop(child.stdin.take());
            let started = Instant::now();
            while child.try_wait().ok().flatten().is_none() {
                if started.elapsed() > Duration::from_secs(10) {
                    let _ = child.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.wait();
        }
    }

    /// Node `id`'s client address.
    pub fn addr(&self, id: u64) -> SocketAddr {
        self.nodes[&id]
            .config
            .listen
            .parse()
            .expect("listen is an address")
    }

    /// The client identity from the cluster CA.
    pub fn identity(&self) -> Identity {
        let certs = self.dir.path().join("certs");
        Identity::load(
            &certs.join("ca.crt"),
            &certs.join("client-test.crt"),
            &certs.join("client-test.key"),
        )
        .expect("load the client identity")
    }

    /// A library client for every node (running or not).
    pub fn client(&self, timeout: Duration) -> Client {
        let addrs = self.nodes.keys().map(|&id| self.addr(id)).collect();
        Client::new(
            addrs,
            self.identity(),
            ClientOptions {
                timeout,
                attempt_timeout: Duration::from_secs(2),
                ..ClientOptions::default()
            },
        )
        .expect("a client")
    }

    /// Runs a `kv` or `cluster` command with the cluster's client file.
    pub fn cli(&self, args: &[&str]) -> Output {
        let (sub, rest) = args.split_first().expect("a subcommand");
        let mut full = vec![
            *sub,
            "--client-config",
            self.client_file.to_str().expect("utf-8"),
        ];
        full.extend_from_slice(rest);
        run_cli(&full, self.dir.path(), Duration::from_secs(60))
    }

    /// Node `id`'s own status.
    pub async fn status(&self, client: &Client, id: u64) -> Option<Status> {
        client.status_of(self.addr(id)).await.ok()
    }

    /// Waits until the running nodes among `among` agree on one leader (itself among
    /// them); returns it.
    pub async fn wait_leader(&self, client: &Client, among: &[u64], limit: Duration) -> u64 {
        let started = Instant::now();
        loop {
            let mut leaders = Vec::new();
            for &id in among {
                if let Some(s) = self.status(client, id).await {
                    leaders.push((s.leader, s.role == "Leader", s.id));
                }
            }
            if leaders.len() == among.len()
                && let Some((Some(l), _, _)) = leaders.first()
                && leaders.iter().all(|(x, _, _)| *x == Some(*l))
                && leaders.iter().any(|(_, is, id)| *is && id == l)
            {
                return l.0;
            }
            assert!(
                started.elapsed() < limit,
                "no agreed leader among {among:?} within {limit:?}: {leaders:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until node `id` has applied at least `index`.
    pub async fn wait_applied(
        &self,
        client: &Client,
        id: u64,
        index: u64,
        limit: Duration,
    ) -> Status {
        let started = Instant::now();
        loop {
            let s = self.status(client, id).await;
            if let Some(s) = &s
                && s.applied >= index
            {
                return s.clone();
            }
            assert!(
                started.elapsed() < limit,
                "node {id} did not apply index {index} within {limit:?}: {s:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Node `id`'s `/metrics` page.
    pub fn metrics(&self, id: u64) -> String {
        let addr = self.nodes[&id]
            .config
            .metrics
            .clone()
            .expect("metrics address");
        let mut s = TcpStream::connect(&addr).expect("connect to the metrics endpoint");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").expect("send");
        let mut page = String::new();
        s.read_to_string(&mut page).expect("read");
        page
    }

    /// One sample of `name` (without labels) from node `id`'s metrics.
    pub fn metric(&self, id: u64, name: &str) -> f64 {
        let page = self.metrics(id);
        page.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in node {id}'s metrics:\n{page}"))
    }

    /// The end of node `id`'s log.
    pub fn log_tail(&self, id: u64, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.nodes[&id].log_path).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The whole of node `id`'s log.
    pub fn log(&self, id: u64) -> String {
        std::fs::read_to_string(&self.nodes[&id].log_path).unwrap_or_default()
    }

    /// The other running nodes.
    pub fn running_except(&self, id: u64) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|(i, n)| **i != id && n.child.is_some())
            .map(|(&i, _)| i)
            .collect()
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for &id in &ids {
            self.kill9(id);
        }
        if std::thread::panicking() {
            for &id in &ids {
                eprintln!(
                    "---- the end of node {id}'s log ----\n{}",
                    self.log_tail(id, 40)
                );
            }
        }
    }
}

/// `NodeId` for `id`.
pub fn nid(id: u64) -> NodeId {
    NodeId(id)
}
