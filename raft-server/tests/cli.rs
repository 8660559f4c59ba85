//! The scriptable CLI: JSON output, exit codes, connection settings from the
//! environment, values from standard input or a file, shell completions, and `run`
//! with both `--config` and `--certs`. Each test drives real `raft-server` processes
//! (see `support`); the clusters run one at a time.

#![allow(clippy::print_stderr)]

mod support;

use raft_server::ServerConfig;
use std::process::Output;
use std::time::Duration;
use support::{run_cli, serial};

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The exit code, which must exist (no signal).
fn code(out: &Output) -> i32 {
    out.status.code().expect("an exit code, not a signal")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_with_config_and_certs_takes_the_certificates_from_the_directory() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let out = run_cli(
        &["certs", "--out", "certs", "--nodes", "1"],
        dir.path(),
        Duration::from_secs(30),
    );
    assert_eq!(code(&out), 0, "certs: {}", stderr(&out));
    // The file names certificates that are not there (moved, say, to certs/).
    let listen = format!("127.0.0.1:{}", support::free_port());
    let data = dir.path().join("node1");
    let config = ServerConfig::new(1, &listen, &data, &dir.path().join("old-certs"));
    std::fs::write(dir.path().join("node1.toml"), config.to_toml()).expect("write the config");

    let out = run_cli(
        &["run", "--config", "node1.toml", "--stop-with-stdin"],
        dir.path(),
        Duration::from_secs(30),
    );
    assert_eq!(code(&out), 1, "the file alone names missing certificates");
    assert!(!data.exists(), "a node that did not start made no data");

    // `--stop-with-stdin` with no stdin: the node starts, then stops cleanly at once.
    let out = run_cli(
        &[
            "run",
            "--config",
            "node1.toml",
            "--certs",
            "certs",
            "--stop-with-stdin",
        ],
        dir.path(),
        Duration::from_secs(30),
    );
    assert_eq!(
        code(&out),
        0,
        "--certs replaces the file's ca, cert and key: {}",
        stderr(&out)
    );
    assert!(
        data.exists(),
        "the node started and made its data directory"
    );
}
