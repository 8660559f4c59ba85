//! Bad input gets a clear error that names the problem and the fix, and loses
//! nothing: malformed configuration, unreadable certificates, an address in use, a data
//! directory of another node or cluster, requests over the size limits.

#![allow(clippy::print_stderr)]

mod support;

use raft_server::ClientError;
use raft_server::proto::ServerError;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::{TestCluster, run_cli, serial};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs `raft-server` with `args` in `dir`; it must fail within 20 s. Returns stderr.
fn fails(args: &[&str], dir: &Path) -> String {
    let started = Instant::now();
    let out = run_cli(args, dir, Duration::from_secs(20));
    assert!(
        !out.status.success(),
        "`raft-server {}` should fail; stderr:\n{}",
        args.join(" "),
        stderr(&out)
    );
    eprintln!(
        "`raft-server {}` failed in {:?}: {}",
        args.join(" "),
        started.elapsed(),
        stderr(&out).trim()
    );
    stderr(&out)
}

/// `run` for node `id`, data in `data`, certificates in `certs`, on any free port.
fn run_node<'a>(id: &'a str, data: &'a str, certs: &'a str) -> [&'a str; 9] {
    [
        "run",
        "--id",
        id,
        "--listen",
        "127.0.0.1:0",
        "--data",
        data,
        "--certs",
        certs,
    ]
}

fn certs(dir: &Path, out: &str, nodes: &str) {
    let o = run_cli(
        &["certs", "--out", out, "--nodes", nodes],
        dir,
        Duration::from_secs(30),
    );
    assert!(o.status.success(), "certs: {o:?}");
}

#[test]
fn a_malformed_configuration_is_refused_naming_the_file_and_the_problem() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "id = \"one\"\nlisten = \"127.0.0.1:7101\"\n")
        .unwrap_or_else(|e| panic!("{e}"));
    let e = fails(&["run", "--config", "bad.toml"], dir.path());
    assert!(e.contains("bad.toml") && e.contains("id"), "{e}");
    std::fs::write(
        &bad,
        "id = 1\nlisten = \"127.0.0.1:7101\"\ndata_dir = \"d\"\nca = \"c\"\ncert = \"c\"\nkey = \"k\"\nlisten_port = 7\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let e = fails(&["run", "--config", "bad.toml"], dir.path());
    assert!(
        e.contains("unknown field") && e.contains("listen_port"),
        "{e}"
    );
    let e = fails(&["run", "--config", "missing.toml"], dir.path());
    assert!(e.contains("missing.toml"), "{e}");
    let e = fails(
        &[
            "run",
            "--id",
            "1",
            "--listen",
            "127.0.0.1:0",
            "--peer",
            "1=127.0.0.1:7102",
            "--data",
            "d",
            "--certs",
            "c",
        ],
        dir.path(),
    );
    assert!(e.contains("own id"), "{e}");
    assert!(!dir.path().join("d").exists(), "nothing was created");
}

#[test]
fn an_unreadable_certificate_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let e = fails(&run_node("1", "d", "nowhere"), dir.path());
    assert!(
        e.contains("nowhere/ca.crt") && e.contains("check the path"),
        "{e}"
    );
    certs(dir.path(), "certs", "1");
    std::fs::write(dir.path().join("certs/node1.crt"), "not a certificate\n")
        .unwrap_or_else(|e| panic!("{e}"));
    let e = fails(&run_node("1", "d", "certs"), dir.path());
    assert!(
        e.contains("node1.crt") && e.contains("no certificate"),
        "{e}"
    );
}

#[test]
fn an_address_in_use_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    certs(dir.path(), "certs", "1");
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let addr = taken
        .local_addr()
        .unwrap_or_else(|e| panic!("{e}"))
        .to_string();
    let e = fails(
        &[
            "run", "--id", "1", "--listen", &addr, "--data", "d", "--certs", "certs",
        ],
        dir.path(),
    );
    assert!(e.contains(&addr) && e.contains("in use"), "{e}");
}

#[test]
fn a_data_directory_of_another_node_or_cluster_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    certs(dir.path(), "certs", "1,2");
    certs(dir.path(), "other", "1");
    // Node 1 founds a one-node cluster in d1, which records whose data it is.
    let mut node = Command::new(support::binary())
        .args(run_node("1", "d1", "certs"))
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let identity = dir.path().join("d1/IDENTITY");
    let started = Instant::now();
    while !identity.exists() || !dir.path().join("d1/log").exists() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "node 1 never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let _ = node.kill();
    let _ = node.wait();
    let before = std::fs::read_to_string(&identity).unwrap_or_default();

    let e = fails(&run_node("2", "d1", "certs"), dir.path());
    assert!(
        e.contains("holds node 1's data") && e.contains("configuration is node 2"),
        "{e}"
    );
    let e = fails(&run_node("1", "d1", "other"), dir.path());
    assert!(
        e.contains("another cluster") && e.contains("IDENTITY"),
        "{e}"
    );
    assert_eq!(
        std::fs::read_to_string(&identity).unwrap_or_default(),
        before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_over_the_size_limits_are_refused_before_they_reach_the_log() {
    let _serial = serial().await;
    let cluster = TestCluster::start(3, |c| c.max_value_bytes = 1024);
    let client = cluster.client(Duration::from_secs(20));
    let leader = cluster
        .wait_leader(&client, &[1, 2, 3], Duration::from_secs(20))
        .await;
    client
        .put("ok", "small")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let before = cluster
        .status(&client, leader)
        .await
        .map(|s| s.last_index)
        .unwrap_or_default();

    let r = client.put("big", vec![b'v'; 2048]).await;
    assert!(
        matches!(
            &r,
            Err(ClientError::Refused(ServerError::TooLarge {
                size: 2048,
                limit: 1024,
                ..
            }))
        ),
        "{r:?}"
    );
    eprintln!("{}", r.err().map(|e| e.to_string()).unwrap_or_default());
    // A request over the frame limit (max_key_bytes + 2 * max_value_bytes + 4 KiB) is
    // refused before the node keeps its body, and the lane goes on.
    let r = client.put("huge", vec![b'v'; 50_000]).await;
    assert!(
        matches!(
            &r,
            Err(ClientError::Refused(ServerError::TooLarge { what, limit: 10_240, .. })) if what == "request"
        ),
        "{r:?}"
    );
    let r = client.put(vec![b'k'; 5000], "v").await;
    assert!(
        matches!(
            &r,
            Err(ClientError::Refused(ServerError::TooLarge {
                size: 5000,
                limit: 4096,
                ..
            }))
        ),
        "{r:?}"
    );
    let after = cluster
        .status(&client, leader)
        .await
        .map(|s| s.last_index)
        .unwrap_or_default();
    assert_eq!(before, after, "nothing reached the log");
    assert_eq!(
        client
            .get("ok")
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .as_deref(),
        Some(&b"small"[..])
    );
}
