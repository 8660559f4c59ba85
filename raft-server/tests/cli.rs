//! The scriptable CLI: JSON output, exit codes, connection settings from the
//! environment, values from standard input or a file, shell completions, and `run`
//! with both `--config` and `--certs`. Each test drives real `raft-server` processes
//! (see `support`); the clusters run one at a time.

#![allow(clippy::print_stderr)]

mod support;

use base64::Engine;
use raft_proto::Bytes;
use raft_server::ServerConfig;
use serde_json::Value;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;
use support::{TestCluster, run_cli, serial};

const LEADER_WAIT: Duration = Duration::from_secs(20);

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

/// The one JSON document a `-o json` command printed (exactly one line).
fn json_of(out: &Output) -> Value {
    let text = stdout(out);
    assert_eq!(
        text.lines().count(),
        1,
        "one JSON document on one line: {text:?}; stderr: {}",
        stderr(out)
    );
    serde_json::from_str(text.trim_end()).unwrap_or_else(|e| panic!("{e}: {text:?}"))
}

/// The exit code, which must exist (no signal).
fn code(out: &Output) -> i32 {
    out.status.code().expect("an exit code, not a signal")
}

/// Starts a 3-node cluster and waits for its leader.
async fn cluster() -> TestCluster {
    let cluster = TestCluster::start(3, |_| {});
    let client = cluster.client(Duration::from_secs(20));
    cluster.wait_leader(&client, &[1, 2, 3], LEADER_WAIT).await;
    cluster
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_json_prints_one_document_per_kv_and_cluster_command() {
    let _serial = serial().await;
    let cluster = cluster().await;
    let client = cluster.client(Duration::from_secs(20));

    // Both places for the flag: after the operation, and before it.
    let out = cluster.cli(&["kv", "put", "greeting", "hello", "-o", "json"]);
    assert_eq!(code(&out), 0, "kv put -o json: {}", stderr(&out));
    let doc = json_of(&out);
    assert_eq!(doc["key"], "greeting");
    assert!(doc["index"].as_u64().expect("an index") > 0, "{doc}");
    assert_eq!(doc["previous"], Value::Null, "{doc}");
    let out = cluster.cli(&["kv", "--output", "json", "put", "greeting", "world"]);
    assert_eq!(code(&out), 0, "kv --output json put: {}", stderr(&out));
    assert_eq!(json_of(&out)["previous"], "hello");

    let out = cluster.cli(&["kv", "get", "greeting", "-o", "json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        json_of(&out),
        serde_json::json!({ "key": "greeting", "value": "world" })
    );
    // The default output is the one for people, as before.
    let out = cluster.cli(&["kv", "get", "greeting"]);
    assert_eq!(stdout(&out), "world\n");

    let out = cluster.cli(&["kv", "append", "greeting", "!", "-o", "json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(json_of(&out)["len"], 6);
    let out = cluster.cli(&[
        "kv",
        "cas",
        "greeting",
        "--expected",
        "world!",
        "--new",
        "mars",
        "-o",
        "json",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let doc = json_of(&out);
    assert_eq!(
        (&doc["swapped"], &doc["current"]),
        (&Value::Bool(true), &"mars".into())
    );

    // A value that is not UTF-8 is base64, and says so.
    let binary = vec![0xff, 0xfe, 0x00, b'a'];
    client
        .put("greeting-bin", binary.clone())
        .await
        .expect("put a binary value");
    let out = cluster.cli(&["kv", "get", "greeting-bin", "-o", "json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let doc = json_of(&out);
    assert_eq!(doc["value_encoding"], "base64", "{doc}");
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(doc["value"].as_str().expect("a string"))
        .expect("base64");
    assert_eq!(decoded, binary);

    let out = cluster.cli(&["kv", "scan", "--prefix", "greeting", "-o", "json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let doc = json_of(&out);
    let items = doc["items"].as_array().expect("items");
    assert_eq!(items.len(), 2, "{doc}");
    assert_eq!(
        items[0],
        serde_json::json!({ "key": "greeting", "value": "mars" })
    );
    assert_eq!(items[1]["key"], "greeting-bin");
    assert_eq!(items[1]["value_encoding"], "base64");
    assert_eq!(doc["more"], false);

    let out = cluster.cli(&["kv", "delete", "greeting", "-o", "json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(json_of(&out)["previous"], "mars");

    let out = cluster.cli(&["cluster", "status", "-o", "json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let doc = json_of(&out);
    let nodes = doc["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 3, "{doc}");
    assert_eq!(
        nodes.iter().filter(|n| n["role"] == "Leader").count(),
        1,
        "{doc}"
    );
    assert!(
        nodes
            .iter()
            .all(|n| n["term"].as_u64().is_some() && n["address"].is_string())
    );
    assert_eq!(doc["voters"].as_array().map(Vec::len), Some(3), "{doc}");
    assert_eq!(doc["learners"], serde_json::json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_tell_a_missing_key_and_a_cas_mismatch_from_errors_and_usage() {
    let _serial = serial().await;
    let cluster = cluster().await;

    // 3: the key is not set; the JSON answer still comes on stdout.
    let out = cluster.cli(&["kv", "get", "nothing-here"]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert!(stderr(&out).contains("is not set"), "{}", stderr(&out));
    let out = cluster.cli(&["kv", "get", "nothing-here", "-o", "json"]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert_eq!(
        json_of(&out),
        serde_json::json!({ "key": "nothing-here", "value": null })
    );

    // 4: a compare-and-swap that found another value.
    let out = cluster.cli(&["kv", "put", "planet", "mars"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = cluster.cli(&[
        "kv",
        "cas",
        "planet",
        "--expected",
        "earth",
        "--new",
        "venus",
    ]);
    assert_eq!(code(&out), 4, "{}", stderr(&out));
    assert!(stderr(&out).contains("not swapped"), "{}", stderr(&out));
    let out = cluster.cli(&[
        "kv", "cas", "planet", "--absent", "--new", "venus", "-o", "json",
    ]);
    assert_eq!(code(&out), 4, "{}", stderr(&out));
    let doc = json_of(&out);
    assert_eq!(
        (&doc["swapped"], &doc["current"]),
        (&Value::Bool(false), &"mars".into())
    );
    let out = cluster.cli(&["kv", "cas", "planet", "--expected", "mars", "--remove"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));

    // 2: the command line is wrong, whether clap or the command finds it.
    for args in [
        &["kv", "get"][..],
        &["kv", "frobnicate", "x"],
        &["kv", "cas", "planet", "--new", "x"],
        &["kv", "cas", "planet", "--absent"],
        &["kv", "get", "planet", "-o", "yaml"],
    ] {
        let out = cluster.cli(args);
        assert_eq!(code(&out), 2, "{args:?}: {}", stderr(&out));
    }

    // 1: everything else, here no node answering: a read, and `cluster status` (which
    // used to exit 0 with nobody answering).
    let certs = cluster.dir.path().join("certs");
    let path = |name: &str| certs.join(name).to_str().expect("utf-8").to_string();
    let (ca, cert, key) = (
        path("ca.crt"),
        path("client-test.crt"),
        path("client-test.key"),
    );
    let dead = format!("127.0.0.1:{}", support::free_port());
    let against_a_dead_node = |group: &str, command: &[&str]| {
        let mut args = vec![
            group,
            "--nodes",
            dead.as_str(),
            "--ca",
            ca.as_str(),
            "--cert",
            cert.as_str(),
            "--key",
            key.as_str(),
            "--timeout",
            "1",
        ];
        args.extend_from_slice(command);
        run_cli(&args, cluster.dir.path(), Duration::from_secs(30))
    };
    let out = against_a_dead_node("kv", &["get", "planet"]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let out = against_a_dead_node("cluster", &["status"]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no node answered"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_settings_come_from_the_environment_and_flags_override_them() {
    let _serial = serial().await;
    let cluster = cluster().await;
    let certs = cluster.dir.path().join("certs");
    let path = |name: &str| certs.join(name).to_str().expect("utf-8").to_string();
    let endpoints: Vec<String> = (1..=3).map(|i| cluster.addr(i).to_string()).collect();
    let endpoints = endpoints.join(",");
    let client_file = cluster.client_file.to_str().expect("utf-8");
    let dead = format!("127.0.0.1:{}", support::free_port());
    // A directory without raft-dev/client.toml: only the environment says where to go.
    let empty = tempfile::tempdir().expect("a temporary directory");
    let (ca, cert, key) = (
        path("ca.crt"),
        path("client-test.crt"),
        path("client-test.key"),
    );
    let every_setting = [
        ("RAFT_ENDPOINTS", endpoints.as_str()),
        ("RAFT_CA", &ca),
        ("RAFT_CERT", &cert),
        ("RAFT_KEY", &key),
    ];

    let out = run_with(
        &["kv", "put", "from", "the-environment"],
        empty.path(),
        &every_setting,
        b"",
    );
    assert_eq!(
        code(&out),
        0,
        "RAFT_ENDPOINTS/CA/CERT/KEY: {}",
        stderr(&out)
    );
    let out = run_with(
        &["kv", "get", "from"],
        empty.path(),
        &[("RAFT_CLIENT_CONFIG", client_file)],
        b"",
    );
    assert_eq!(code(&out), 0, "RAFT_CLIENT_CONFIG: {}", stderr(&out));
    assert_eq!(stdout(&out), "the-environment\n");

    // A flag beats its variable: a dead endpoint in the environment is not tried.
    let out = run_with(
        &["kv", "--nodes", &endpoints, "--timeout", "5", "get", "from"],
        empty.path(),
        &[
            ("RAFT_ENDPOINTS", &dead),
            ("RAFT_CA", &ca),
            ("RAFT_CERT", &cert),
            ("RAFT_KEY", &key),
        ],
        b"",
    );
    assert_eq!(
        code(&out),
        0,
        "--nodes over RAFT_ENDPOINTS: {}",
        stderr(&out)
    );
    // A client file on the command line beats the variables (a missing file named in
    // RAFT_CLIENT_CONFIG, a dead endpoint, another certificate).
    let out = run_with(
        &[
            "kv",
            "--client-config",
            client_file,
            "--timeout",
            "5",
            "get",
            "from",
        ],
        empty.path(),
        &[
            ("RAFT_CLIENT_CONFIG", "/nonexistent/client.toml"),
            ("RAFT_ENDPOINTS", &dead),
            ("RAFT_CERT", "/nonexistent/client.crt"),
        ],
        b"",
    );
    assert_eq!(
        code(&out),
        0,
        "--client-config over RAFT_*: {}",
        stderr(&out)
    );
    assert_eq!(stdout(&out), "the-environment\n");

    // A variable beats the client file that another variable names.
    let out = run_with(
        &["kv", "--timeout", "1", "get", "from"],
        empty.path(),
        &[
            ("RAFT_CLIENT_CONFIG", client_file),
            ("RAFT_ENDPOINTS", &dead),
        ],
        b"",
    );
    assert_eq!(
        code(&out),
        1,
        "RAFT_ENDPOINTS over RAFT_CLIENT_CONFIG's nodes: {}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_come_from_standard_input_or_a_file_byte_for_byte() {
    let _serial = serial().await;
    let cluster = cluster().await;
    let client = cluster.client(Duration::from_secs(20));
    let dir = cluster.dir.path();
    let config = cluster.client_file.to_str().expect("utf-8");
    let kv = |args: &[&str], input: &[u8]| {
        let mut full = vec!["kv", "--client-config", config];
        full.extend_from_slice(args);
        run_with(&full, dir, &[], input)
    };

    // `-` reads standard input, trailing newline included.
    let out = kv(&["put", "poem", "-"], b"line one\nline two\n");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        client.get("poem").await.expect("get"),
        Some(Bytes::from("line one\nline two\n"))
    );

    // A file, which need not be UTF-8.
    let binary: Vec<u8> = (0..=255).collect();
    std::fs::write(dir.join("binary.dat"), &binary).expect("write the value file");
    let out = kv(&["put", "blob", "--value-file", "binary.dat"], b"");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        client.get("blob").await.expect("get"),
        Some(Bytes::from(binary.clone()))
    );
    let out = kv(&["append", "poem", "--value-file", "-"], b"line three\n");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        client.get("poem").await.expect("get"),
        Some(Bytes::from("line one\nline two\nline three\n"))
    );

    // cas: the expected value from standard input, the new one from a file.
    let out = kv(
        &[
            "cas",
            "blob",
            "--expected-file",
            "-",
            "--value-file",
            "binary.dat",
        ],
        &binary,
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    std::fs::write(dir.join("new.dat"), b"replaced").expect("write the value file");
    let out = kv(
        &[
            "cas",
            "blob",
            "--expected-file",
            "binary.dat",
            "--value-file",
            "new.dat",
        ],
        b"",
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        client.get("blob").await.expect("get"),
        Some(Bytes::from("replaced"))
    );

    // Refused: two values from one standard input, a value and a file, no file.
    let out = kv(
        &["cas", "blob", "--expected-file", "-", "--value-file", "-"],
        b"x",
    );
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    let out = kv(&["put", "blob", "inline", "--value-file", "new.dat"], b"");
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    let out = kv(&["put", "blob", "--value-file", "no-such-file"], b"");
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(stderr(&out).contains("no-such-file"), "{}", stderr(&out));
    assert_eq!(
        client.get("blob").await.expect("get"),
        Some(Bytes::from("replaced")),
        "a refused command wrote nothing"
    );
}

#[test]
fn completions_are_printed_for_each_shell() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = run_with(&["completions", shell], dir.path(), &[], b"");
        assert_eq!(code(&out), 0, "{shell}: {}", stderr(&out));
        let script = stdout(&out);
        for word in [
            "raft-server",
            "kv",
            "cluster",
            "output",
            "value-file",
            "completions",
        ] {
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
