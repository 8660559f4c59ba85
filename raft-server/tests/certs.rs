//! Certificates at the process level: expiry, revocation through the deny-list,
//! rotation without a restart (file change and SIGHUP), the expiry gauges, and the
//! private-key and data-directory permission rules.

#![allow(clippy::print_stderr)]

mod support;

use raft_net_quic::tls::{self, PemPair, Validity};
use raft_net_quic::{CertInfo, CertRole, Identity};
use raft_server::{Client, ClientError, ClientOptions, ServerConfig};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use support::{TestCluster, run_cli, serial};

const LEADER_WAIT: Duration = Duration::from_secs(20);

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Every node checks its files every second and has a deny-list,
/// `certs/revoked.txt`, empty at first.
fn with_deny_list(c: &mut ServerConfig) {
    let deny = c.ca.with_file_name("revoked.txt");
    if !deny.exists() {
        std::fs::write(&deny, "# revoked certificates\n").expect("write the deny-list");
    }
    c.deny_list = Some(deny);
    c.cert_check_secs = 1;
}

fn certs_dir(cluster: &TestCluster) -> PathBuf {
    cluster.dir.path().join("certs")
}

fn fingerprint(path: &Path) -> String {
    raft_server::dev::describe(path)
        .expect("a readable certificate")
        .fingerprint()
}

/// The cluster CA, read back from `certs/`.
fn cluster_ca(cluster: &TestCluster) -> PemPair {
    let dir = certs_dir(cluster);
    PemPair {
        cert: std::fs::read_to_string(dir.join("ca.crt")).expect("ca.crt"),
        key: std::fs::read_to_string(dir.join("ca.key")).expect("ca.key"),
    }
}

fn client_identity(cluster: &TestCluster, name: &str) -> Identity {
    let dir = certs_dir(cluster);
    Identity::load(
        &dir.join("ca.crt"),
        &dir.join(format!("client-{name}.crt")),
        &dir.join(format!("client-{name}.key")),
    )
    .expect("the client's identity")
}

/// A new client (its own connection) for `name`'s certificate.
fn client_as(cluster: &TestCluster, name: &str) -> Client {
    Client::new(
        cluster.nodes.keys().map(|&id| cluster.addr(id)).collect(),
        client_identity(cluster, name),
        ClientOptions {
            timeout: Duration::from_secs(5),
            attempt_timeout: Duration::from_secs(2),
            ..ClientOptions::default()
        },
    )
    .expect("a client")
}

/// Waits until node `id`'s log holds `needle` at least `count` times.
async fn wait_log(cluster: &TestCluster, id: u64, needle: &str, count: usize, limit: Duration) {
    let started = Instant::now();
    while cluster.log(id).matches(needle).count() < count {
        assert!(
            started.elapsed() < limit,
            "node {id} did not log {needle:?} {count} time(s) within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Node `id`'s `raft_certificate_expiry_seconds{cert="<cert>"}`.
///
/// (Fetched here rather than with `TestCluster::metrics`: that one writes the request
/// in pieces, and the current endpoint answers the first piece and closes, so the
/// next piece can fail with a broken pipe.)
fn expiry(cluster: &TestCluster, id: u64, cert: &str) -> f64 {
    use std::io::{Read, Write};
    let addr = cluster.nodes[&id]
        .config
        .metrics
        .clone()
        .expect("metrics address");
    let mut s = std::net::TcpStream::connect(&addr).expect("connect to the metrics endpoint");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .expect("send");
    let mut page = String::new();
    s.read_to_string(&mut page).expect("read");
    let name = format!("raft_certificate_expiry_seconds{{cert=\"{cert}\"}} ");
    page.lines()
        .find_map(|l| l.strip_prefix(&name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in node {id}'s metrics:\n{page}"))
}

const DAY: f64 = 86_400.0;

/// A certificate past its validity is refused by every node at the handshake, and the
/// client says so (not "use one signed by the cluster's CA").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_an_expired_certificate_is_refused_with_a_clear_error() {
    let _serial = serial().await;
    let cluster = TestCluster::start(3, |_| {});
    let admin = cluster.client(Duration::from_secs(20));
    cluster.wait_leader(&admin, &[1, 2, 3], LEADER_WAIT).await;
    let expired = tls::issue_client_valid(
        &cluster_ca(&cluster),
        "late",
        CertRole::Client,
        // 2020-01-01 to 2021-01-01.
        Validity::from_unix(1_577_836_800, 1_609_459_200),
    )
    .expect("issue");
    tls::write_pem(&certs_dir(&cluster), "client-late", &expired).expect("write");
    let nodes: Vec<String> = (1..=3).map(|i| cluster.addr(i).to_string()).collect();
    let out = run_cli(
        &[
            "kv",
            "--nodes",
            &nodes.join(","),
            "--ca",
            "certs/ca.crt",
            "--cert",
            "certs/client-late.crt",
            "--key",
            "certs/client-late.key",
            "--timeout",
            "3",
            "put",
            "late",
            "too late",
        ],
        cluster.dir.path(),
        Duration::from_secs(30),
    );
    let err = stderr(&out);
    eprintln!("refused: {}", err.trim());
    assert!(!out.status.success());
    assert!(
        err.contains("refused this client's certificate") && err.contains("it has expired"),
        "{err}"
    );
    let r = client_as(&cluster, "late").put("late", "again").await;
    match &r {
        Err(e @ ClientError::CertificateRefused { .. }) => {
            assert!(e.to_string().contains("expired"), "{e}")
        }
        other => panic!("expected a refused certificate, got {other:?}"),
    }
    assert_eq!(admin.get("late").await.expect("get"), None);
    let logs: String = (1..=3).map(|id| cluster.log(id)).collect();
    assert!(logs.contains("certificate expired"), "{logs}");
}

/// A client whose fingerprint is added to the deny-list (no restart: the nodes see
/// the file change) is refused at its next connection, with a clear error; other
/// clients keep working. The refusal is logged with the fingerprint and principal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_client_is_refused_at_its_next_connection_while_others_keep_working() {
    let _serial = serial().await;
    let cluster = TestCluster::start(3, with_deny_list);
    let admin = cluster.client(Duration::from_secs(20));
    cluster.wait_leader(&admin, &[1, 2, 3], LEADER_WAIT).await;
    // Data directories (and what the server creates in them) are private.
    #[cfg(unix)]
    for id in 1..=3 {
        use std::os::unix::fs::PermissionsExt;
        let data = &cluster.nodes[&id].config.data_dir;
        for d in [data.clone(), data.join("log"), data.join("sm")] {
            let mode = std::fs::metadata(&d).expect("exists").permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", d.display());
        }
    }
    let app = client_as(&cluster, "app");
    app.put("app", "1").await.expect("app writes before");
    let other = client_as(&cluster, "other");
    other.put("other", "1").await.expect("other writes before");

    let app_fp = fingerprint(&certs_dir(&cluster).join("client-app.crt"));
    let deny = certs_dir(&cluster).join("revoked.txt");
    let mut text = std::fs::read_to_string(&deny).expect("deny-list");
    text.push_str(&format!("{app_fp}  # app's key leaked\n"));
    std::fs::write(&deny, text).expect("revoke");
    for id in 1..=3 {
        wait_log(
            &cluster,
            id,
            "reloaded the certificate",
            1,
            Duration::from_secs(10),
        )
        .await;
    }

    let r = client_as(&cluster, "app").put("app", "2").await;
    let e = match r {
        Err(e @ ClientError::CertificateRefused { .. }) => e.to_string(),
        other => panic!("expected a refused certificate, got {other:?}"),
    };
    eprintln!("refused: {e}");
    assert!(e.contains("Revoked") && e.contains("revoked"), "{e}");
    other.put("other", "2").await.expect("other still writes");
    client_as(&cluster, "other")
        .put("other", "3")
        .await
        .expect("and connects anew");
    assert_eq!(
        admin.get("app").await.expect("get").as_deref(),
        Some(&b"1"[..])
    );
    let logs: String = (1..=3).map(|id| cluster.log(id)).collect();
    let refusal = logs
        .lines()
        .find(|l| l.contains("refused a revoked certificate"))
        .unwrap_or_else(|| panic!("no refusal logged:\n{logs}"));
    assert!(
        refusal.contains(&app_fp) && refusal.contains("client-app.raft"),
        "{refusal}"
    );
}

/// A node whose certificate is revoked while it is down cannot rejoin: with the
/// shared deny-list it refuses to start (its own certificate is revoked); with a
/// deny-list of its own it starts, but every peer refuses it, both when it dials and
/// when they do, and it falls behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_a_revoked_certificate_cannot_rejoin() {
    let _serial = serial().await;
    let mut cluster = TestCluster::start(3, with_deny_list);
    let admin = cluster.client(Duration::from_secs(20));
    let leader = cluster.wait_leader(&admin, &[1, 2, 3], LEADER_WAIT).await;
    let gone = (1..=3).find(|&i| i != leader).expect("a follower");
    let rest: Vec<u64> = (1..=3).filter(|&i| i != gone).collect();
    admin.put("before", "1").await.expect("write");
    cluster.kill9(gone);

    let node_fp = fingerprint(&certs_dir(&cluster).join(format!("node{gone}.crt")));
    let deny = certs_dir(&cluster).join("revoked.txt");
    std::fs::write(&deny, format!("# node {gone} was stolen\n{node_fp}\n")).expect("revoke");
    for &id in &rest {
        wait_log(
            &cluster,
            id,
            "reloaded the certificate",
            1,
            Duration::from_secs(10),
        )
        .await;
    }

    // Its own certificate is on its deny-list: it says so and does not start.
    let out = run_cli(
        &[
            "run",
            "--config",
            cluster.nodes[&gone].config_path.to_str().expect("utf-8"),
        ],
        cluster.dir.path(),
        Duration::from_secs(20),
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("deny-list"), "{}", stderr(&out));

    // With an empty deny-list of its own, it starts; its peers refuse it.
    let own = cluster.dir.path().join(format!("revoked-{gone}.txt"));
    std::fs::write(&own, "").expect("write");
    let node = cluster.nodes.get_mut(&gone).expect("node");
    node.config.deny_list = Some(own);
    std::fs::write(&node.config_path, node.config.to_toml()).expect("config");
    cluster.spawn(gone);
    let mut last = 0;
    for i in 0..20 {
        last = admin
            .put(format!("during-{i}"), "x")
            .await
            .expect("write")
            .index;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let s = cluster
        .status(&admin, gone)
        .await
        .expect("the revoked node runs and answers its own status");
    assert!(
        s.applied < last,
        "node {gone} caught up to {} (last write {last}) with a revoked certificate",
        s.applied
    );
    assert_eq!(
        cluster.wait_leader(&admin, &rest, LEADER_WAIT).await,
        leader,
        "the rest kept their leader"
    );
    let logs: String = rest.iter().map(|&id| cluster.log(id)).collect();
    let principal = format!("node-{gone}.raft");
    let refusals: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("refused a revoked certificate"))
        .collect();
    assert!(
        refusals
            .iter()
            .any(|l| l.contains(&node_fp) && l.contains(&principal)),
        "{refusals:?}"
    );
}

/// Rotation: new node certificates (same CA, a 20-day validity) are written over the
/// old ones while clients write. Nodes 2 and 3 notice the files change; node 1 checks
/// only every hour and is sent SIGHUP. The leader stays, writes keep being
/// acknowledged, the gauges show the new expiry (and the 30-day warning is logged),
/// and new connections are given the new certificates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_node_certificates_are_used_without_a_restart_and_the_cluster_keeps_serving() {
    let _serial = serial().await;
    let cluster = TestCluster::start(3, |c| {
        c.cert_check_secs = if c.id == 1 { 3600 } else { 1 };
    });
    let admin = cluster.client(Duration::from_secs(20));
    let leader = cluster.wait_leader(&admin, &[1, 2, 3], LEADER_WAIT).await;
    let term = cluster
        .status(&admin, leader)
        .await
        .expect("leader status")
        .term;
    for id in 1..=3 {
        let node = expiry(&cluster, id, "node");
        let ca = expiry(&cluster, id, "ca");
        assert!((node / DAY - 365.0).abs() < 1.0, "node {id}: {node}");
        assert!((ca / DAY - 3650.0).abs() < 1.0, "node {id}: {ca}");
    }

    // Writes all along.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let writer = {
        let (client, stop, acked) = (admin.clone(), stop.clone(), acked.clone());
        tokio::spawn(async move {
            let mut failures = Vec::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                match client.put(format!("rot-{n:06}"), "v").await {
                    Ok(_) => {
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => failures.push(e.to_string()),
                }
                n += 1;
            }
            failures
        })
    };
    let progress = |acked: &Arc<AtomicU64>, more: u64| {
        let acked = acked.clone();
        async move {
            let target = acked.load(Ordering::Relaxed) + more;
            let started = Instant::now();
            while acked.load(Ordering::Relaxed) < target {
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "writes stalled"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    progress(&acked, 50).await;

    let certs = certs_dir(&cluster);
    let old: Vec<String> = (1..=3)
        .map(|id| fingerprint(&certs.join(format!("node{id}.crt"))))
        .collect();
    let out = run_cli(
        &[
            "certs",
            "--out",
            certs.to_str().expect("utf-8"),
            "--nodes",
            "1,2,3",
            "--days",
            "20",
        ],
        cluster.dir.path(),
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "certs: {out:?}");
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    let new: Vec<String> = (1..=3)
        .map(|id| fingerprint(&certs.join(format!("node{id}.crt"))))
        .collect();
    for (id, fp) in (1..=3).zip(&new) {
        assert!(!old.contains(fp));
        let line = printed
            .lines()
            .find(|l| l.contains(&format!("node{id}.crt (node-{id}.raft, role node,")))
            .unwrap_or_else(|| panic!("certs prints each certificate:\n{printed}"));
        assert!(
            (line.contains("expires in 19 days") || line.contains("expires in 20 days"))
                && line.ends_with(&format!("sha256 {fp})")),
            "{line}"
        );
    }

    for id in [2, 3] {
        wait_log(
            &cluster,
            id,
            "reloaded the certificate",
            1,
            Duration::from_secs(10),
        )
        .await;
        let left = expiry(&cluster, id, "node") / DAY;
        assert!((19.0..=20.0).contains(&left), "node {id}: {left} days");
    }
    // Node 1 watches its files only hourly: still the old certificate until SIGHUP.
    assert!(expiry(&cluster, 1, "node") / DAY > 364.0);
    assert!(!cluster.log(1).contains("reloaded the certificate"));
    let pid = cluster.nodes[&1].child.as_ref().expect("running").id();
    let kill = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .expect("kill -HUP");
    assert!(kill.success());
    wait_log(
        &cluster,
        1,
        "reloaded the certificate",
        1,
        Duration::from_secs(10),
    )
    .await;
    let left = expiry(&cluster, 1, "node") / DAY;
    assert!((19.0..=20.0).contains(&left), "node 1: {left} days");
    for id in 1..=3 {
        let log = cluster.log(id);
        assert!(
            log.contains("expires in less than 30 days"),
            "node {id} warns about the short validity"
        );
        // `certs` replaces each file whole, and the watcher lets a rotation settle.
        assert!(!log.contains("certificate reload failed"), "node {id}");
    }

    progress(&acked, 50).await;
    // New connections get the new certificates.
    for (id, fp) in (1..=3).zip(&new) {
        assert_eq!(&presented(&cluster, id).await, fp, "node {id}");
    }
    stop.store(true, Ordering::Relaxed);
    let failures = writer.await.expect("writer");
    assert!(
        failures.is_empty(),
        "writes failed during rotation: {failures:?}"
    );
    let s = cluster.status(&admin, leader).await.expect("status");
    assert_eq!(
        (s.leader, s.term),
        (Some(raft_proto::NodeId(leader)), term),
        "the leader stayed"
    );
    eprintln!(
        "{} writes acknowledged during the rotation",
        acked.load(Ordering::Relaxed)
    );
}

/// The fingerprint of the certificate node `id` presents to a new connection.
async fn presented(cluster: &TestCluster, id: u64) -> String {
    let conn = raft_net_quic::connect_client(
        &client_identity(cluster, "test"),
        cluster.addr(id),
        raft_net_quic::tokio_runtime().expect("tokio"),
    )
    .await
    .expect("connect");
    raft_net_quic::cert::peer_certificate(&conn.connection)
        .and_then(|c| CertInfo::parse(&c).ok())
        .expect("the node's certificate")
        .fingerprint()
}

/// A reload that cannot be used (a key of another certificate, then a deny-list with
/// a bad line) is logged with its reason and changes nothing: the node keeps
/// presenting its certificate and serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_fails_keeps_the_old_material_and_says_why() {
    let _serial = serial().await;
    let cluster = TestCluster::start(3, with_deny_list);
    let admin = cluster.client(Duration::from_secs(20));
    cluster.wait_leader(&admin, &[1, 2, 3], LEADER_WAIT).await;
    let certs = certs_dir(&cluster);
    let fp = fingerprint(&certs.join("node2.crt"));
    assert_eq!(presented(&cluster, 2).await, fp);
    let stranger = tls::issue_node(&cluster_ca(&cluster), raft_proto::NodeId(2)).expect("issue");
    let key = certs.join("node2.key");
    let original_key = std::fs::read_to_string(&key).expect("key");
    std::fs::write(&key, &stranger.key).expect("write a key of another certificate");
    wait_log(
        &cluster,
        2,
        "certificate reload failed",
        1,
        Duration::from_secs(10),
    )
    .await;
    let line = cluster
        .log(2)
        .lines()
        .find(|l| l.contains("certificate reload failed"))
        .map(str::to_string)
        .unwrap_or_default();
    eprintln!("{line}");
    assert!(
        line.contains("node2.key") && line.contains("private key does not belong"),
        "the reason: {line}"
    );
    assert_eq!(
        presented(&cluster, 2).await,
        fp,
        "still the old certificate"
    );
    admin.put("after-bad-key", "1").await.expect("writes go on");

    std::fs::write(&key, original_key).expect("restore the key");
    wait_log(
        &cluster,
        2,
        "reloaded the certificate",
        1,
        Duration::from_secs(10),
    )
    .await;
    let deny = certs.join("revoked.txt");
    let app_fp = fingerprint(&certs.join("client-app.crt"));
    std::fs::write(&deny, format!("{app_fp}\nnot a fingerprint\n")).expect("write");
    for id in 1..=3 {
        wait_log(
            &cluster,
            id,
            "certificate reload failed",
            if id == 2 { 2 } else { 1 },
            Duration::from_secs(10),
        )
        .await;
    }
    assert!(
        cluster.log(1).contains("line 2"),
        "the reason names the line"
    );
    // The deny-list in use is the last good one (empty): app is not refused.
    client_as(&cluster, "app")
        .put("app", "1")
        .await
        .expect("a half-written deny-list revokes nothing");
}

/// A key file readable by others stops `run` before anything is created, naming the
/// file and the fix.
#[cfg(unix)]
#[test]
fn a_key_file_readable_by_others_stops_the_node_with_the_chmod_hint() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("temporary directory");
    let out = run_cli(
        &["certs", "--out", "certs", "--nodes", "1"],
        dir.path(),
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "certs: {out:?}");
    let key = dir.path().join("certs/node1.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let run = [
        "run",
        "--id",
        "1",
        "--listen",
        "127.0.0.1:0",
        "--data",
        "d",
        "--certs",
        "certs",
    ];
    let out = run_cli(&run, dir.path(), Duration::from_secs(20));
    let err = stderr(&out);
    eprintln!("refused: {}", err.trim());
    assert!(!out.status.success());
    assert!(
        err.contains("certs/node1.key")
            && err.contains("0644")
            && err.contains("chmod 600 certs/node1.key"),
        "{err}"
    );
    assert!(!dir.path().join("d").exists(), "nothing was created");
}
