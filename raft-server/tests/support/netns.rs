//! Five `raft-server` processes, each in its own network namespace (`rf-n1`..`rf-n5`,
//! 10.77.0.1-5) on a bridge that exists only inside the namespace `rf-hub`; the test
//! process reaches them through one veth into that bridge (10.77.0.100). Faults are
//! iptables rules inside the nodes' namespaces, signals, libfaketime and a small
//! loop-mounted filesystem. Set-up first tears down what a crashed run left; tear-down
//! runs on drop.

#![allow(dead_code, unreachable_pub, clippy::print_stderr)]

use raft_server::ServerConfig;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Node count.
pub const NODES: u64 = 5;
const HUB: &str = "rf-hub";
const ROOT_VETH: &str = "rf-root";
const CLIENT_IP: &str = "10.77.0.100";

fn ns(id: u64) -> String {
    format!("rf-n{id}")
}

/// A node's address.
pub fn ip(id: u64) -> String {
    format!("10.77.0.{id}")
}

/// Runs a command; its failure is an error with its output.
pub fn sh(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Runs a command inside node `id`'s namespace.
pub fn in_ns(id: u64, program: &str, args: &[&str]) -> Result<String, String> {
    let n = ns(id);
    let mut all = vec!["netns", "exec", n.as_str(), program];
    all.extend_from_slice(args);
    sh("ip", &all)
}

/// Whether this process may build network namespaces (root).
pub fn is_root() -> bool {
    sh("id", &["-u"]).map(|s| s.trim() == "0").unwrap_or(false)
}

/// Removes every namespace, veth and mount a previous run may have left.
pub fn teardown_network() {
    for id in 1..=NODES + 1 {
        let _ = sh("ip", &["netns", "del", &ns(id)]);
    }
    let _ = sh("ip", &["netns", "del", HUB]);
    let _ = sh("ip", &["link", "del", ROOT_VETH]);
}

/// Builds the namespaces and the bridge (after tearing down leftovers).
pub fn setup_network(nodes: u64) -> Result<(), String> {
    teardown_network();
    sh("ip", &["netns", "add", HUB])?;
    sh("ip", &["-n", HUB, "link", "add", "br0", "type", "bridge"])?;
    sh("ip", &["-n", HUB, "link", "set", "br0", "up"])?;
    for id in 1..=nodes {
        let n = ns(id);
        let port = format!("v{id}");
        sh("ip", &["netns", "add", &n])?;
        sh(
            "ip",
            &[
                "-n", HUB, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &n,
            ],
        )?;
        sh(
            "ip",
            &["-n", HUB, "link", "set", &port, "master", "br0", "up"],
        )?;
        sh(
            "ip",
            &[
                "-n",
                &n,
                "addr",
                "add",
                &format!("{}/24", ip(id)),
                "dev",
                "eth0",
            ],
        )?;
        sh("ip", &["-n", &n, "link", "set", "eth0", "up"])?;
        sh("ip", &["-n", &n, "link", "set", "lo", "up"])?;
    }
    // The test process's way in: a veth from the root namespace to the bridge.
    sh(
        "ip",
        &[
            "link", "add", ROOT_VETH, "type", "veth", "peer", "name", "vroot", "netns", HUB,
        ],
    )?;
    sh(
        "ip",
        &["-n", HUB, "link", "set", "vroot", "master", "br0", "up"],
    )?;
    sh(
        "ip",
        &["addr", "add", &format!("{CLIENT_IP}/24"), "dev", ROOT_VETH],
    )?;
    sh("ip", &["link", "set", ROOT_VETH, "up"])?;
    Ok(())
}

/// Drops every packet between node `a` and node `b`, both ways.
pub fn cut(a: u64, b: u64) -> Result<(), String> {
    drop_from(a, b)?;
    drop_from(b, a)
}

/// Node `to` drops what it receives from node `from` (one way).
pub fn drop_from(to: u64, from: u64) -> Result<(), String> {
    in_ns(
        to,
        "iptables",
        &["-A", "INPUT", "-s", &ip(from), "-j", "DROP"],
    )
    .map(drop)
}

/// Removes every rule.
pub fn heal(nodes: u64) -> Result<(), String> {
    for id in 1..=nodes {
        in_ns(id, "iptables", &["-F"])?;
    }
    Ok(())
}

/// A small filesystem for one node's data, so that its disk can fill.
pub struct SmallDisk {
    image: PathBuf,
    /// Where it is mounted.
    pub mount: PathBuf,
}

impl SmallDisk {
    /// A `mb` MiB ext4 image mounted at `dir/mnt`.
    pub fn new(dir: &Path, mb: u64) -> Result<SmallDisk, String> {
        let image = dir.join("disk.img");
        let mount = dir.join("mnt");
        std::fs::create_dir_all(&mount).map_err(|e| e.to_string())?;
        sh(
            "dd",
            &[
                "if=/dev/zero",
                &format!("of={}", image.display()),
                "bs=1M",
                &format!("count={mb}"),
                "status=none",
            ],
        )?;
        sh("mkfs.ext4", &["-q", "-F", &image.display().to_string()])?;
        sh(
            "mount",
            &[
                "-o",
                "loop",
                &image.display().to_string(),
                &mount.display().to_string(),
            ],
        )?;
        Ok(SmallDisk { image, mount })
    }

    /// Fills the free space (leaves a few KiB).
    pub fn fill(&self) -> Result<(), String> {
        let filler = self.mount.join("filler");
        // dd stops with ENOSPC: that is the point.
        let _ = sh(
            "dd",
            &[
                "if=/dev/zero",
                &format!("of={}", filler.display()),
                "bs=64k",
                "status=none",
            ],
        );
        Ok(())
    }

    /// Gives the space back.
    pub fn free(&self) -> Result<(), String> {
        std::fs::remove_file(self.mount.join("filler")).map_err(|e| e.to_string())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = sh("umount", &["-l", &self.mount.display().to_string()]);
        let _ = std::fs::remove_file(&self.image);
    }
}

/// One node process.
pub struct NodeProc {
    /// Its configuration file.
    pub config_path: PathBuf,
    /// Its log file.
    pub log_path: PathBuf,
    /// The process.
    pub child: Option<Child>,
    /// Wrapped in `faketime -f SPEC` (clock rate skew).
    pub faketime: Option<String>,
}

/// The cluster in namespaces.
pub struct NetCluster {
    /// Certificates, configs, data and logs.
    pub dir: PathBuf,
    /// The nodes by id.
    pub nodes: BTreeMap<u64, NodeProc>,
    _tmp: Option<tempfile::TempDir>,
    /// The small disk of the node that gets one.
    pub disk: Option<(u64, SmallDisk)>,
}

/// The QUIC port every node listens on (each in its own namespace).
pub const PORT: u16 = 7101;

impl NetCluster {
    /// Certificates and configurations for nodes `1..=n`; `small_disk` puts one node's
    /// data on a small filesystem; `faketime` runs one node with a skewed clock rate.
    pub fn create(
        n: u64,
        small_disk: Option<u64>,
        faketime: Option<(u64, &str)>,
        tweak: fn(&mut ServerConfig),
    ) -> Result<NetCluster, String> {
        let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
        let dir = tmp.path().to_path_buf();
        let certs = dir.join("certs");
        let ids: Vec<String> = (1..=n).map(|i| i.to_string()).collect();
        sh(
            &crate::support::binary().display().to_string(),
            &[
                "certs",
                "--out",
                &certs.display().to_string(),
                "--nodes",
                &ids.join(","),
                "--admins",
                "test",
            ],
        )?;
        let disk = match small_disk {
            Some(id) => Some((id, SmallDisk::new(&dir, 96)?)),
            None => None,
        };
        let mut nodes = BTreeMap::new();
        for id in 1..=n {
            let data = match &disk {
                Some((d, disk)) if *d == id => disk.mount.join("data"),
                _ => dir.join(format!("node{id}")),
            };
            let mut c = ServerConfig::new(id, &format!("{}:{PORT}", ip(id)), &data, &certs);
            c.peers = (1..=n)
                .filter(|&p| p != id)
                .map(|p| format!("{p}={}:{PORT}", ip(p)))
                .collect();
            tweak(&mut c);
            let config_path = dir.join(format!("node{id}.toml"));
            std::fs::write(&config_path, c.to_toml()).map_err(|e| e.to_string())?;
            nodes.insert(
                id,
                NodeProc {
                    config_path,
                    log_path: dir.join(format!("node{id}.log")),
                    child: None,
                    faketime: faketime
                        .filter(|(f, _)| *f == id)
                        .map(|(_, spec)| spec.to_string()),
                },
            );
        }
        Ok(NetCluster {
            dir,
            nodes,
            _tmp: Some(tmp),
            disk,
        })
    }

    /// Starts node `id` inside its namespace.
    pub fn start(&mut self, id: u64) -> Result<(), String> {
        let node = self.nodes.get_mut(&id).ok_or("no such node")?;
        if node.child.is_some() {
            return Ok(());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log_path)
            .map_err(|e| e.to_string())?;
        let err = log.try_clone().map_err(|e| e.to_string())?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &ns(id)]);
        if let Some(spec) = &node.faketime {
            cmd.args(["faketime", "-f", spec]);
        }
        cmd.arg(crate::support::binary())
            .args(["run", "--config"])
            .arg(&node.config_path)
            .arg("--stop-with-stdin")
            .env("RUST_LOG", "info,quinn=warn,quinn_proto=warn")
            .stdin(Stdio::piped())
            .stdout(log)
            .stderr(err);
        node.child = Some(cmd.spawn().map_err(|e| format!("start node {id}: {e}"))?);
        Ok(())
    }

    /// SIGKILL.
    pub fn kill9(&mut self, id: u64) {
        if let Some(mut c) = self.nodes.get_mut(&id).and_then(|n| n.child.take()) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `kill -9` of node `id`, down for `down`, then started again and given `up`.
    pub async fn crash_and_restart(
        &mut self,
        id: u64,
        down: Duration,
        up: Duration,
    ) -> Result<(), String> {
        self.kill9(id);
        tokio::time::sleep(down).await;
        self.start(id)?;
        tokio::time::sleep(up).await;
        Ok(())
    }

    /// SIGSTOP or SIGCONT.
    pub fn signal(&self, id: u64, sig: &str) -> Result<(), String> {
        let pid = self.nodes[&id]
            .child
            .as_ref()
            .ok_or("not running")?
            .id()
            .to_string();
        sh("kill", &[sig, &pid]).map(drop)
    }

    /// Node `id`'s client address.
    pub fn addr(&self, id: u64) -> SocketAddr {
        format!("{}:{PORT}", ip(id))
            .parse()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], PORT)))
    }

    /// The end of every node's log.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for (id, n) in &self.nodes {
            let text = std::fs::read_to_string(&n.log_path).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            out.push_str(&format!(
                "---- node {id} ----\n{}\n",
                all[all.len().saturating_sub(lines)..].join("\n")
            ));
        }
        out
    }

    /// Keeps the directory (histories, logs) after a failure and returns its path.
    pub fn keep(&mut self) -> PathBuf {
        if let Some(t) = self._tmp.take() {
            let _ = t.keep();
        }
        self.dir.clone()
    }
}

impl Drop for NetCluster {
    fn drop(&mut self) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            let _ = self.signal(id, "-CONT");
            self.kill9(id);
        }
        self.disk = None;
    }
}

/// Waits until `f` holds, polling every 100 ms, at most `limit`.
pub async fn wait_for(limit: Duration, mut f: impl AsyncFnMut() -> bool) -> bool {
    let started = Instant::now();
    while started.elapsed() < limit {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}
