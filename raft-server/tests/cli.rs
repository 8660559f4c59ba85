//! The scriptable CLI: JSON output, exit codes, connection settings from the
//! environment, values from standard input or a file, shell completions, and `run`
//! with both `--config` and `--certs`. Each test drives real `raft-server` processes
//! (see `support`); the clusters run one at a time.

#![allow(clippy::print_stderr)]

mod support;

use raft_server::ServerConfig;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;
use support::{run_cli, serial};

/// The connection variables, removed from every child so the tests do not depend on
/// the shell that runs them.
const CONN_VARS: [&str; 5] = [
    "RAFT_ENDPOINTS",
    "RAFT_CA",
    "RAFT_CERT",
    "RAFT_KEY",
    "RAFT_CLIENT_CONFIG",
];

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs the binary in `cwd` with exactly the connection variables in `env`, `input`
/// on its standard input; at most 60 s. Reads stdout and stderr while it runs, so a
/// long answer (a completion script) cannot fill the pipe.
fn run_with(args: &[&str], cwd: &Path, env: &[(&str, &str)], input: &[u8]) -> Output {
    let mut cmd = Command::new(support::binary());
    cmd.args(args)
        .current_dir(cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for var in CONN_VARS {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("start raft-server");
    let mut stdin = child.stdin.take().expect("a stdin pipe");
    let input = input.to_vec();
    // The child may exit without reading (a usage error): ignore a broken pipe.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = rx
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("`raft-server {}` did not finish in 60 s", args.join(" ")))
        .expect("collect output");
    let _ = writer.join();
    out
}

/// The exit code, which must exist (no signal).
fn code(out: &Output) -> i32 {
    out.status.code().expect("an exit code, not a signal")
}

#[test]
fn completions_are_printed_for_each_shell() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = run_with(&["completions", shell], dir.path(), &[], b"");
        assert_eq!(code(&out), 0, "{shell}: {}", stderr(&out));
        let script = stdout(&out);
        for word in ["raft-server", "kv", "cluster", "run", "completions"] {
            assert!(script.contains(word), "{shell}: no {word:?} in the script");
        }
    }
    // bash loads the script and registers it for the command.
    let script = run_with(&["completions", "bash"], dir.path(), &[], b"").stdout;
    std::fs::write(dir.path().join("raft-server.bash"), script).expect("write the script");
    let out = Command::new("bash")
        .args(["-c", "source ./raft-server.bash && complete -p raft-server"])
        .current_dir(dir.path())
        .output()
        .expect("run bash");
    assert!(
        out.status.success() && stdout(&out).contains("raft-server"),
        "bash: {}",
        stderr(&out)
    );
    let out = run_with(&["completions", "tcsh"], dir.path(), &[], b"");
    assert_eq!(code(&out), 2, "an unknown shell is a usage error");
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
