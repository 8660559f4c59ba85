//! The power-loss harness: a 3-node cluster of real `raft-server` processes on
//! 127.0.0.1 where one node's data directory lives on ext4 on a loop device, so that
//! its "disk" can be frozen at an exact moment, copied, and given back to it after a
//! "reboot".
//!
//! - The loop device is attached with `losetup --direct-io=on` over a sparse image
//!   file: what the loop device completed is in the image, what sits in the page cache
//!   of the filesystem on top of it is not.
//! - A power cut is: SIGSTOP the node (it sends and writes nothing more), freeze the
//!   image (`chattr +i`: every later write of the loop device fails with EIO, so
//!   nothing after the cut reaches it, not even the kernel's writeback), `kill -9`,
//!   copy the image. The original is then unmounted, detached and compared with the
//!   copy: if the freeze held, they are equal although unmounting tried to write back
//!   every dirty page. (`blockdev --setro` does not freeze a disk on this kernel: a
//!   write to a read-only block device only logs a warning and goes through; see the
//!   suite's first test.)
//! - The node restarts from a copy of the copy, mounted on a new loop device at the
//!   same path (ext4 replays its journal), optionally under `unshare -m` with a file
//!   holding a fresh UUID bind-mounted over `/proc/sys/kernel/random/boot_id`, as after
//!   a real reboot.
//!
//! Everything is released by `Drop` (processes killed, mounts lazily unmounted, loop
//! devices detached, images made mutable again), also on panic; a run that failed
//! keeps its directory. Set-up first removes loop devices a crashed run left
//! (their image paths contain [`PREFIX`]). A node stopped with SIGSTOP gets a
//! detached `sleep; kill -CONT` guard, so that even if this process is killed it
//! resumes, sees its standard input closed (`--stop-with-stdin`) and exits.

#![allow(dead_code, unreachable_pub, clippy::print_stderr)]

use crate::netns::sh;
use raft_net_quic::Identity;
use raft_server::proto::Status;
use raft_server::{Client, ClientOptions, ServerConfig};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The prefix of every run directory (and so of every image path).
pub const PREFIX: &str = "raft-power-loss-";

/// Where run directories go: `PL_DIR`, else `/var/tmp` (a disk, where `chattr +i`
/// and direct I/O work, rather than a tmpfs `/tmp`), else the temporary directory.
pub fn base_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("PL_DIR") {
        return PathBuf::from(d);
    }
    let var_tmp = Path::new("/var/tmp");
    if var_tmp.is_dir() {
        var_tmp.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

/// The node whose disk is cut (B).
pub const B: u64 = 2;

fn path_str(p: &Path) -> String {
    p.display().to_string()
}

/// A loop device over an image file, with an ext4 filesystem mounted.
pub struct Disk {
    /// The image file.
    pub image: PathBuf,
    /// Where it is mounted.
    pub mountpoint: PathBuf,
    dev: Option<String>,
    mounted: bool,
    frozen: bool,
    read_only_flag: bool,
}

impl Disk {
    /// Creates a sparse `mb` MiB image with an empty ext4 filesystem.
    pub fn format(image: &Path, mb: u64) -> Result<(), String> {
        sh("truncate", &["-s", &format!("{mb}M"), &path_str(image)])?;
        sh("mkfs.ext4", &["-q", "-F", &path_str(image)]).map(drop)
    }

    /// Attaches `image` to a free loop device (direct I/O) and mounts it at
    /// `mountpoint`.
    pub fn attach(image: &Path, mountpoint: &Path) -> Result<Disk, String> {
        std::fs::create_dir_all(mountpoint).map_err(|e| format!("{mountpoint:?}: {e}"))?;
        let dev = sh(
            "losetup",
            &["--direct-io=on", "-f", "--show", &path_str(image)],
        )?
        .trim()
        .to_string();
        let mut disk = Disk {
            image: image.to_path_buf(),
            mountpoint: mountpoint.to_path_buf(),
            dev: Some(dev.clone()),
            mounted: false,
            frozen: false,
            read_only_flag: false,
        };
        // A loop device keeps a `blockdev --setro` flag across detach and attach.
        if sh("blockdev", &["--getro", &dev])?.trim() != "0" {
            sh("blockdev", &["--setrw", &dev])?;
        }
        sh("mount", &[&dev, &path_str(mountpoint)])?;
        disk.mounted = true;
        Ok(disk)
    }

    /// The loop device (`/dev/loopN`).
    pub fn dev(&self) -> Option<&str> {
        self.dev.as_deref()
    }

    /// Freezes the image: from now on every write of the loop device fails.
    pub fn freeze(&mut self) -> Result<(), String> {
        sh("chattr", &["+i", &path_str(&self.image)])?;
        self.frozen = true;
        Ok(())
    }

    /// `blockdev --setro` on the loop device (for the probe of that method).
    pub fn set_read_only(&mut self) -> Result<(), String> {
        let dev = self.dev.clone().ok_or("not attached")?;
        self.read_only_flag = true;
        sh("blockdev", &["--setro", &dev]).map(drop)
    }

    /// Unmounts (lazily), detaches, waits until the device is gone, clears the flags.
    /// Idempotent; the first error is returned, every step is tried.
    pub fn release(&mut self) -> Result<(), String> {
        let mut first_err = None;
        let mut note = |r: Result<String, String>| {
            if let Err(e) = r
                && first_err.is_none()
            {
                first_err = Some(e);
            }
        };
        if self.mounted {
            note(sh("umount", &["-l", &path_str(&self.mountpoint)]));
            self.mounted = false;
        }
        if let Some(dev) = self.dev.take() {
            if self.read_only_flag {
                note(sh("blockdev", &["--setrw", &dev]));
                self.read_only_flag = false;
            }
            note(sh("losetup", &["-d", &dev]));
            // Detach is deferred while the lazily unmounted filesystem still holds the
            // device; until it is gone, writes could still come.
            let started = Instant::now();
            while loop_backing(&dev).is_some() && started.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(20));
            }
            if loop_backing(&dev).is_some() {
                note(Err(format!("{dev} is still attached 10 s after detach")));
            }
        }
        if self.frozen {
            note(sh("chattr", &["-i", &path_str(&self.image)]));
            self.frozen = false;
        }
        first_err.map_or(Ok(()), Err)
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        if let Err(e) = self.release() {
            eprintln!(
                "power-loss harness: releasing {}: {e}",
                self.image.display()
            );
        }
    }
}

/// The backing file of loop device `dev`, if attached.
fn loop_backing(dev: &str) -> Option<String> {
    let name = dev.trim_start_matches("/dev/");
    std::fs::read_to_string(format!("/sys/block/{name}/loop/backing_file"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// Removes the mounts and loop devices a crashed run left behind (images under a
/// [`PREFIX`] directory) and makes their images mutable again.
pub fn teardown_leftovers() {
    let Ok(list) = sh("losetup", &["-l", "-n", "-O", "NAME,BACK-FILE"]) else {
        return;
    };
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    for line in list.lines() {
        let mut parts = line.split_whitespace();
        let (Some(dev), Some(back)) = (parts.next(), parts.next()) else {
            continue;
        };
        if !back.contains(PREFIX) {
            continue;
        }
        eprintln!("power-loss harness: removing leftover {dev} ({back})");
        for m in mounts.lines() {
            let mut f = m.split_whitespace();
            if f.next() == Some(dev)
                && let Some(target) = f.next()
            {
                let _ = sh("umount", &["-l", target]);
            }
        }
        let _ = sh("blockdev", &["--setrw", dev]);
        let _ = sh("losetup", &["-d", dev]);
        let _ = sh("chattr", &["-i", back]);
    }
}

/// How a node process is started.
#[derive(Default, Clone)]
pub struct Launch {
    /// A shim for `LD_PRELOAD`.
    pub preload: Option<PathBuf>,
    /// More environment variables.
    pub env: Vec<(String, String)>,
    /// A file whose content the node must read as its boot id: the node runs under
    /// `unshare -m` with this file bind-mounted over
    /// `/proc/sys/kernel/random/boot_id`.
    pub boot_id_file: Option<PathBuf>,
}

/// One node.
pub struct Node {
    /// Its configuration.
    pub config: ServerConfig,
    /// Its TOML file.
    pub config_path: PathBuf,
    /// The process of its current life.
    pub child: Option<Child>,
    /// How many times it was started.
    pub lives: u32,
    /// The log of its current life.
    pub log_path: PathBuf,
    /// When its current life began.
    pub started: Option<Instant>,
    /// `sleep; kill -CONT` guards of a stopped process.
    guards: Vec<Child>,
}

impl Node {
    fn end_guards(&mut self) {
        for mut g in self.guards.drain(..) {
            let _ = sh("kill", &["-KILL", "--", &format!("-{}", g.id())]);
            let _ = g.kill();
            let _ = g.wait();
        }
    }
}

/// The cluster of one run.
pub struct PowerCluster {
    /// Certificates, configs, images, logs.
    pub dir: PathBuf,
    /// By id.
    pub nodes: BTreeMap<u64, Node>,
    /// B's disk while attached.
    pub disk: Option<Disk>,
    tmp: Option<tempfile::TempDir>,
}

impl PowerCluster {
    /// B's data directory (on its disk's mount point).
    pub fn b_mountpoint(&self) -> PathBuf {
        self.dir.join("b-mnt")
    }

    /// B's original image.
    pub fn b_image(&self) -> PathBuf {
        self.dir.join("b.img")
    }

    /// Certificates and configurations for nodes 1-3; node 2 (B) gets its data on a
    /// fresh `disk_mb` MiB ext4 loop mount. `tweak` adjusts every node's config.
    pub fn create(disk_mb: u64, tweak: &dyn Fn(&mut ServerConfig)) -> Result<PowerCluster, String> {
        let tmp = tempfile::Builder::new()
            .prefix(PREFIX)
            .tempdir_in(base_dir())
            .map_err(|e| format!("temporary directory: {e}"))?;
        let dir = tmp.path().to_path_buf();
        let certs = dir.join("certs");
        let out = crate::support::run_cli(
            &[
                "certs",
                "--out",
                &path_str(&certs),
                "--nodes",
                "1,2,3",
                "--admins",
                "test",
            ],
            &dir,
            Duration::from_secs(30),
        );
        if !out.status.success() {
            return Err(format!("certs: {out:?}"));
        }
        let mut cluster = PowerCluster {
            dir: dir.clone(),
            nodes: BTreeMap::new(),
            disk: None,
            tmp: Some(tmp),
        };
        Disk::format(&cluster.b_image(), disk_mb)?;
        cluster.disk = Some(Disk::attach(&cluster.b_image(), &cluster.b_mountpoint())?);
        let ports: Vec<(u16, u16)> = (0..3)
            .map(|_| (crate::support::free_port(), crate::support::free_port()))
            .collect();
        let listen = |i: u64| format!("127.0.0.1:{}", ports[(i - 1) as usize].0);
        for id in 1..=3u64 {
            let data = if id == B {
                cluster.b_mountpoint().join("data")
            } else {
                dir.join(format!("node{id}"))
            };
            let mut c = ServerConfig::new(id, &listen(id), &data, &certs);
            c.peers = (1..=3u64)
                .filter(|&p| p != id)
                .map(|p| format!("{p}={}", listen(p)))
                .collect();
            c.metrics = Some(format!("127.0.0.1:{}", ports[(id - 1) as usize].1));
            tweak(&mut c);
            let config_path = dir.join(format!("node{id}.toml"));
            std::fs::write(&config_path, c.to_toml()).map_err(|e| format!("config: {e}"))?;
            cluster.nodes.insert(
                id,
                Node {
                    config: c,
                    config_path,
                    child: None,
                    lives: 0,
                    log_path: dir.join(format!("node{id}-life0.log")),
                    started: None,
                    guards: Vec::new(),
                },
            );
        }
        Ok(cluster)
    }

    /// Starts node `id` (a new life, with its own log file).
    pub fn spawn(&mut self, id: u64, launch: &Launch) -> Result<(), String> {
        let dir = self.dir.clone();
        let node = self.nodes.get_mut(&id).ok_or("no such node")?;
        if node.child.is_some() {
            return Err(format!("node {id} is already running"));
        }
        node.lives += 1;
        node.log_path = dir.join(format!("node{id}-life{}.log", node.lives));
        let log = std::fs::File::create(&node.log_path).map_err(|e| format!("log: {e}"))?;
        let err = log.try_clone().map_err(|e| format!("log: {e}"))?;
        let binary = crate::support::binary();
        let mut cmd = match &launch.boot_id_file {
            None => Command::new(&binary),
            Some(file) => {
                // unshare and sh exec: the child's pid is the node's.
                let mut c = Command::new("unshare");
                c.args(["-m", "--propagation", "private", "sh", "-c"])
                    .arg(
                        "mount --bind \"$1\" /proc/sys/kernel/random/boot_id || exit 97; \
                         shift; exec \"$@\"",
                    )
                    .arg("sh")
                    .arg(file)
                    .arg(&binary);
                c
            }
        };
        cmd.args(["run", "--config"])
            .arg(&node.config_path)
            .arg("--stop-with-stdin")
            .env("RUST_LOG", "info,quinn=warn,quinn_proto=warn")
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(log)
            .stderr(err);
        if let Some(shim) = &launch.preload {
            cmd.env("LD_PRELOAD", shim);
        }
        for (k, v) in &launch.env {
            cmd.env(k, v);
        }
        node.child = Some(cmd.spawn().map_err(|e| format!("start node {id}: {e}"))?);
        node.started = Some(Instant::now());
        Ok(())
    }

    /// The pid of node `id`'s current life.
    pub fn pid(&self, id: u64) -> Option<u32> {
        self.nodes.get(&id)?.child.as_ref().map(Child::id)
    }

    /// Sends a signal (`-STOP`, `-CONT`, ...). A stopped node gets a guard that
    /// resumes it after two minutes, so that it can exit by itself if this process
    /// dies meanwhile; resuming or killing it ends the guard.
    pub fn signal(&mut self, id: u64, sig: &str) -> Result<(), String> {
        let pid = self.pid(id).ok_or(format!("node {id} is not running"))?;
        sh("kill", &[sig, &pid.to_string()])?;
        let node = self.nodes.get_mut(&id).ok_or("no such node")?;
        if sig == "-STOP" {
            // In a process group of its own, so that ending it ends its `sleep` too.
            let guard = Command::new("sh")
                .args(["-c", &format!("sleep 120 && kill -CONT {pid} 2>/dev/null")])
                .process_group(0)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn();
            if let Ok(g) = guard {
                node.guards.push(g);
            }
        } else {
            node.end_guards();
        }
        Ok(())
    }

    /// SIGKILL (after SIGCONT, in case it was stopped), and reaps it.
    pub fn kill9(&mut self, id: u64) {
        let _ = self.signal(id, "-CONT");
        self.kill9_stopped(id);
    }

    /// SIGKILL without SIGCONT: for a node stopped at the moment of a power cut.
    pub fn kill9_stopped(&mut self, id: u64) {
        if let Some(node) = self.nodes.get_mut(&id) {
            if let Some(mut c) = node.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
            node.end_guards();
        }
    }

    /// Stops node `id` cleanly (closing its standard input) and waits for it (10 s at
    /// most, then SIGKILL).
    pub fn stop(&mut self, id: u64) {
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
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

    /// Whether node `id`'s current life has ended, and how.
    pub fn exited(&mut self, id: u64) -> Option<ExitStatus> {
        self.nodes
            .get_mut(&id)?
            .child
            .as_mut()?
            .try_wait()
            .ok()
            .flatten()
    }

    /// Node `id`'s address.
    pub fn addr(&self, id: u64) -> SocketAddr {
        self.nodes[&id]
            .config
            .listen
            .parse()
            .expect("listen is an address")
    }

    /// The client identity.
    pub fn identity(&self) -> Identity {
        let certs = self.dir.join("certs");
        Identity::load(
            &certs.join("ca.crt"),
            &certs.join("client-test.crt"),
            &certs.join("client-test.key"),
        )
        .expect("load the client identity")
    }

    /// A library client for `ids`.
    pub fn client(&self, ids: &[u64], timeout: Duration, attempt: Duration) -> Client {
        Client::new(
            ids.iter().map(|&i| self.addr(i)).collect(),
            self.identity(),
            ClientOptions {
                timeout,
                attempt_timeout: attempt,
                backoff: (Duration::from_millis(20), Duration::from_millis(200)),
                ..ClientOptions::default()
            },
        )
        .expect("a client")
    }

    /// Node `id`'s own status.
    pub async fn status(&self, client: &Client, id: u64) -> Option<Status> {
        client.status_of(self.addr(id)).await.ok()
    }

    /// Waits until the nodes `among` agree on a leader among them; returns it.
    pub async fn wait_leader(
        &self,
        client: &Client,
        among: &[u64],
        limit: Duration,
    ) -> Option<u64> {
        let started = Instant::now();
        while started.elapsed() < limit {
            let mut seen = Vec::new();
            for &id in among {
                if let Some(s) = self.status(client, id).await {
                    seen.push((s.leader.map(|l| l.0), s.role == "Leader", s.id.0));
                }
            }
            if seen.len() == among.len()
                && let Some((Some(l), _, _)) = seen.first()
                && seen.iter().all(|(x, _, _)| *x == Some(*l))
                && seen.iter().any(|(_, is, id)| *is && id == l)
            {
                return Some(*l);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }

    /// One sample of metric `name` (no labels) from node `id`, if it answers.
    pub fn metric(&self, id: u64, name: &str) -> Option<f64> {
        let addr = self.nodes[&id].config.metrics.clone()?;
        let sock: SocketAddr = addr.parse().ok()?;
        let mut s = TcpStream::connect_timeout(&sock, Duration::from_millis(500)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
        write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
        let mut page = String::new();
        s.read_to_string(&mut page).ok()?;
        page.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    }

    /// The lines of node `id`'s current life's log.
    pub fn log_lines(&self, id: u64) -> Vec<String> {
        std::fs::read_to_string(&self.nodes[&id].log_path)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Cuts B's power: SIGSTOP, freeze its image, `kill -9`, copy the image to
    /// `b-cut.img`, then release the original and check the freeze held.
    pub fn cut_power(&mut self) -> Result<Cut, String> {
        let at = Instant::now();
        self.signal(B, "-STOP")?;
        let disk = self.disk.as_mut().ok_or("B has no disk attached")?;
        let frozen = match disk.freeze() {
            Ok(()) => true,
            Err(e) => {
                eprintln!(
                    "power-loss harness: cannot freeze the image ({e}); copying right after kill -9 instead"
                );
                false
            }
        };
        self.kill9_stopped(B);
        let copy = self.dir.join("b-cut.img");
        sh(
            "cp",
            &[
                "--sparse=always",
                &path_str(&self.b_image()),
                &path_str(&copy),
            ],
        )?;
        let copied_after = at.elapsed();
        // Unmounting writes back every dirty page it can: with the freeze, none lands.
        let mut disk = self.disk.take().ok_or("B has no disk attached")?;
        disk.release()?;
        drop(disk);
        let held = sh("cmp", &["-s", &path_str(&self.b_image()), &path_str(&copy)]).is_ok();
        let _ = std::fs::remove_file(self.b_image());
        Ok(Cut {
            frozen,
            held: frozen && held,
            copied_after,
        })
    }

    /// Gives B a disk again: a copy of `b-cut.img` (kept as it was at the cut),
    /// attached on a new loop device and mounted where the original was.
    pub fn restore_b_disk(&mut self) -> Result<(), String> {
        let restart = self.dir.join("b-restart.img");
        sh(
            "cp",
            &[
                "--sparse=always",
                &path_str(&self.dir.join("b-cut.img")),
                &path_str(&restart),
            ],
        )?;
        self.disk = Some(Disk::attach(&restart, &self.b_mountpoint())?);
        Ok(())
    }

    /// Keeps the directory after the run and returns its path.
    pub fn keep(&mut self) -> PathBuf {
        if let Some(t) = self.tmp.take() {
            let _ = t.keep();
        }
        self.dir.clone()
    }
}

/// What a power cut did.
#[derive(Clone, Copy, Debug)]
pub struct Cut {
    /// The image was frozen before the kill.
    pub frozen: bool,
    /// Nothing reached the image after the copy (unmounting's writeback failed).
    pub held: bool,
    /// How long after the SIGSTOP the copy was complete.
    pub copied_after: Duration,
}

impl Drop for PowerCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "power-loss harness: panic; the run's directory is kept: {}",
                self.keep().display()
            );
        }
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            self.kill9(id);
        }
        // Unmount and detach before the directory (and the images in it) goes.
        self.disk = None;
    }
}

/// A fresh random UUID (version 4 layout) from the kernel's generator.
pub fn new_uuid() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| format!("{:032x}", rand_u128()))
}

fn rand_u128() -> u128 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    t ^ (u128::from(std::process::id()) << 64)
}

/// Compiles the shim `name` (`tests/power_loss/<name>.c`) into `out_dir`.
pub fn build_shim(name: &str, out_dir: &Path) -> Result<PathBuf, String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/power_loss")
        .join(format!("{name}.c"));
    let so = out_dir.join(format!("{name}.so"));
    sh(
        "gcc",
        &[
            "-shared",
            "-fPIC",
            "-O2",
            "-o",
            &path_str(&so),
            &path_str(&src),
            "-ldl",
        ],
    )?;
    Ok(so)
}
