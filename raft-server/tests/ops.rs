//! Operations at the process level: the Grafana dashboard and the Prometheus alert
//! rules in `ops/` parse and name only metrics that running nodes export, and the
//! steps of the README's "Three machines, from nothing" that the other suites do not
//! cover: `/health` on every node, a stop by SIGTERM (what systemd sends) and a
//! restart, and replacing a dead node by removing it and adding a new id.

#![allow(clippy::print_stderr)]

mod support;

use serde_json::Value;
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use support::{TestCluster, serial};

const LEADER_WAIT: Duration = Duration::from_secs(20);

const DASHBOARD: &str = "grafana-dashboard.json";
const ALERTS: &str = "prometheus-alerts.yml";

fn ops_file(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../ops")
        .join(name)
}

fn read_ops(name: &str) -> String {
    let path = ops_file(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn parse_dashboard(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("ops/{DASHBOARD} does not parse: {e}"))
}

fn parse_alerts(text: &str) -> Value {
    yaml_serde::from_str(text).unwrap_or_else(|e| panic!("ops/{ALERTS} does not parse: {e}"))
}

/// Every `raft_[a-z_]+` name in the strings and keys of `v` (expressions, legends,
/// descriptions). A `raft_` glued to a longer identifier (`x_raft_y`) is not a name.
fn referenced(v: &Value) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    walk(v, &mut names);
    names
}

fn walk(v: &Value, names: &mut BTreeSet<String>) {
    match v {
        Value::String(s) => names_in(s, names),
        Value::Array(items) => items.iter().for_each(|i| walk(i, names)),
        Value::Object(map) => {
            for (k, v) in map {
                names_in(k, names);
                walk(v, names);
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

fn names_in(text: &str, names: &mut BTreeSet<String>) {
    let bytes = text.as_bytes();
    let mut from = 0;
    while let Some(at) = text[from..].find("raft_").map(|i| from + i) {
        let glued = at > 0 && (bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_');
        let end = at
            + 5
            + bytes[at + 5..]
                .iter()
                .take_while(|b| b.is_ascii_lowercase() || **b == b'_')
                .count();
        if !glued && end > at + 5 {
            names.insert(text[at..end].trim_end_matches('_').to_string());
        }
        from = end;
    }
}

/// What a `/metrics` page exports: each sample's series name
/// (`raft_log_write_seconds_bucket`, `raft_leader_changes_total`, `raft_term`) and
/// each `# TYPE` line's family name (`raft_log_write_seconds`). So a histogram may be
/// named by its family or by its `_bucket`, `_sum` and `_count` series, a counter
/// only with its `_total`, and `raft_term_bucket` is no name at all.
fn exported(page: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in page.lines() {
        let name = match line.strip_prefix("# TYPE ") {
            Some(rest) => rest.split_whitespace().next(),
            None if line.starts_with('#') => None,
            None => line.split(['{', ' ']).next(),
        };
        if let Some(name) = name.filter(|n| n.starts_with("raft_")) {
            names.insert(name.to_string());
        }
    }
    names
}

/// The names in `used` that no page exports.
fn missing(used: &BTreeSet<String>, exported: &BTreeSet<String>) -> Vec<String> {
    used.difference(exported).cloned().collect()
}

/// `GET path` on node `id`'s metrics address, the request in one write: the status
/// code and the body.
fn http_get(cluster: &TestCluster, id: u64, path: &str) -> (u16, String) {
    let addr = cluster.nodes[&id]
        .config
        .metrics
        .clone()
        .expect("metrics address");
    let mut s = std::net::TcpStream::connect(&addr).expect("connect to the metrics endpoint");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .expect("send");
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("read");
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP head in {answer:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (status, body.to_string())
}

/// Node `id`'s `/health`, parsed; it must answer 200.
fn health(cluster: &TestCluster, id: u64) -> Value {
    let (status, body) = http_get(cluster, id, "/health");
    assert_eq!(status, 200, "node {id}'s /health: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("node {id}'s /health {body:?}: {e}"))
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The alert rules every deployment needs, by the names the README and the runbook
/// use.
const EXPECTED_ALERTS: &[&str] = &[
    "RaftNodeDown",
    "RaftNodeNotRunning",
    "RaftNoLeader",
    "RaftFrequentLeaderChanges",
    "RaftFollowerLagging",
    "RaftCommitStalled",
    "RaftLogWriteSlow",
    "RaftProposalFailures",
    "RaftClientRequestsBusy",
    "RaftClientConnectionsRefused",
    "RaftCertificateExpiresSoon",
];

/// The metrics the issue asks the dashboard and the alerts to watch.
const WATCHED: &[&str] = &[
    "raft_is_leader",
    "raft_leader_changes_total",
    "raft_leader_id",
    "raft_follower_match_index",
    "raft_commit_index",
    "raft_log_write_seconds_bucket",
    "raft_proposal_failures_total",
    "raft_client_requests_busy_total",
    "raft_client_connections_refused_total",
    "raft_certificate_expiry_seconds",
    "raft_running",
];

/// Both files parse; every rule has a name, an expression, a `for` duration, a
/// severity and a summary; the dashboard's panels have unique ids, fit the 24-column
/// grid and query something; both watch what the issue lists.
#[test]
fn the_dashboard_and_the_alert_rules_parse_and_watch_what_the_issue_asks() {
    let rules = parse_alerts(&read_ops(ALERTS));
    let groups = rules["groups"].as_array().expect("groups: a list");
    assert!(!groups.is_empty(), "no rule groups");
    let mut alerts = BTreeSet::new();
    for group in groups {
        let name = group["name"].as_str().expect("a group name");
        let list = group["rules"].as_array().expect("rules: a list");
        assert!(!list.is_empty(), "group {name} has no rules");
        for rule in list {
            let alert = rule["alert"]
                .as_str()
                .unwrap_or_else(|| panic!("a rule without `alert` in {name}: {rule}"));
            assert!(alerts.insert(alert.to_string()), "{alert} twice");
            let expr = rule["expr"].as_str().unwrap_or_default();
            assert!(!expr.trim().is_empty(), "{alert} has no expr");
            let for_ = rule["for"].as_str().unwrap_or_default();
            let (n, unit) = for_.split_at(for_.len().saturating_sub(1));
            assert!(
                n.parse::<u32>().is_ok() && ["s", "m", "h"].contains(&unit),
                "{alert}: `for: {for_}` is not a duration like 2m"
            );
            let severity = rule["labels"]["severity"].as_str().unwrap_or_default();
            assert!(
                ["warning", "critical"].contains(&severity),
                "{alert}: severity {severity:?}"
            );
            assert!(
                rule["annotations"]["summary"].is_string(),
                "{alert} has no summary"
            );
        }
    }
    for expected in EXPECTED_ALERTS {
        assert!(
            alerts.contains(*expected),
            "no alert {expected}: {alerts:?}"
        );
    }
    let soon = groups
        .iter()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .find(|r| r["alert"] == "RaftCertificateExpiresSoon")
        .expect("the expiry alert");
    assert!(
        soon["expr"]
            .as_str()
            .is_some_and(|e| e.contains("< 30 * 86400")),
        "the certificate warning is at 30 days: {soon}"
    );

    let dashboard = parse_dashboard(&read_ops(DASHBOARD));
    assert!(dashboard["uid"].is_string() && dashboard["title"].is_string());
    let panels = dashboard["panels"].as_array().expect("panels: a list");
    let mut ids = BTreeSet::new();
    let mut queried = 0;
    for panel in panels {
        let title = panel["title"].as_str().unwrap_or_default();
        let id = panel["id"].as_u64().expect("a panel id");
        assert!(ids.insert(id), "panel id {id} twice ({title})");
        let grid = &panel["gridPos"];
        let (x, w) = (grid["x"].as_u64(), grid["w"].as_u64());
        assert!(
            matches!((x, w), (Some(x), Some(w)) if w > 0 && x + w <= 24),
            "panel {title:?} is off the 24-column grid: {grid}"
        );
        if panel["type"] == "row" {
            continue;
        }
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {title:?} queries nothing");
        for t in targets {
            assert!(
                t["expr"].as_str().is_some_and(|e| !e.trim().is_empty()),
                "panel {title:?}: a target without an expr"
            );
        }
        queried += 1;
    }
    assert!(queried >= 10, "only {queried} panels query anything");

    for (file, used) in [
        (ALERTS, referenced(&rules)),
        (DASHBOARD, referenced(&dashboard)),
    ] {
        for name in WATCHED {
            assert!(used.contains(*name), "ops/{file} does not use {name}");
        }
    }
}

/// The checker itself: a name no page exports is reported, so the process test below
/// fails on a typo, a counter without `_total`, a `_bucket` of a gauge, or a metric
/// that was renamed or removed.
#[test]
fn a_referenced_name_that_no_node_exports_is_reported() {
    let page = "\
# HELP raft_term The node's current term.
# TYPE raft_term gauge
raft_term 3
# HELP raft_leader_changes_total Leader changes seen by this node.
# TYPE raft_leader_changes_total counter
raft_leader_changes_total 1
# TYPE raft_log_write_seconds histogram
raft_log_write_seconds_sum 0.003
raft_log_write_seconds_count 1
raft_log_write_seconds_bucket{le=\"0.005\"} 1
raft_follower_match_index{peer=\"2\"} 7
";
    let exported = exported(page);
    let used: BTreeSet<String> = [
        "raft_term",
        "raft_leader_changes_total",
        "raft_log_write_seconds",
        "raft_log_write_seconds_bucket",
        "raft_log_write_seconds_count",
        "raft_follower_match_index",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(missing(&used, &exported), Vec::<String>::new());
    let wrong: BTreeSet<String> = [
        "raft_term",
        "raft_term_bucket",
        "raft_leader_changes",
        "raft_no_such_metric",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(
        missing(&wrong, &exported),
        [
            "raft_leader_changes",
            "raft_no_such_metric",
            "raft_term_bucket"
        ]
    );

    // Names are found in expressions, legends and JSON escapes alike, not inside
    // longer identifiers.
    let v: Value = serde_json::json!({
        "expr": "sum(rate(raft_proposals_total{job=\"raft\"}[5m]))\nraft_term",
        "legend": "lag of {{peer}} per raft_commit_index",
        "other": "my_raft_thing, raft-cluster, raft_",
    });
    let found: Vec<String> = referenced(&v).into_iter().collect();
    assert_eq!(
        found,
        ["raft_commit_index", "raft_proposals_total", "raft_term"]
    );
}

/// Every `raft_*` name the dashboard and the alert rules use is exported by a running
/// 3-node cluster after a few writes (the union of the three pages: the leader alone
/// has `raft_follower_match_index`). The same check on the rules with one planted
/// name reports exactly that name. On the way: `/health` answers 200 with the same
/// leader on every node (the README's health check).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_and_the_alerts_use_is_exported_by_a_running_node() {
    let _serial = serial().await;
    let cluster = TestCluster::start(3, |_| {});
    let client = cluster.client(Duration::from_secs(30));
    let leader = cluster.wait_leader(&client, &[1, 2, 3], LEADER_WAIT).await;
    let mut last = 0;
    for i in 0..20 {
        last = client.put(format!("ops{i}"), "x").await.expect("put").index;
    }
    for id in 1..=3 {
        cluster
            .wait_applied(&client, id, last, Duration::from_secs(10))
            .await;
        let h = health(&cluster, id);
        assert_eq!(h["id"], id, "{h}");
        assert_eq!(h["running"], true, "{h}");
        assert_eq!(h["leader"], leader, "{h}");
    }

    let mut exported_names = BTreeSet::new();
    for id in 1..=3 {
        let (status, page) = http_get(&cluster, id, "/metrics");
        assert_eq!(status, 200, "node {id}'s /metrics");
        exported_names.extend(exported(&page));
    }
    let alerts_text = read_ops(ALERTS);
    for (file, used) in [
        (ALERTS, referenced(&parse_alerts(&alerts_text))),
        (
            DASHBOARD,
            referenced(&parse_dashboard(&read_ops(DASHBOARD))),
        ),
    ] {
        assert!(used.len() >= 10, "ops/{file} uses only {used:?}");
        assert_eq!(
            missing(&used, &exported_names),
            Vec::<String>::new(),
            "ops/{file} uses names no node exports; the nodes export {exported_names:?}"
        );
    }

    let planted = alerts_text.replacen(
        "expr: raft_running{job=\"raft\"} == 0",
        "expr: raft_runing{job=\"raft\"} == 0",
        1,
    );
    assert_ne!(planted, alerts_text, "the rule to plant a typo in is gone");
    assert_eq!(
        missing(&referenced(&parse_alerts(&planted)), &exported_names),
        ["raft_runing"]
    );
}

/// "Replacing a dead one" and "stopping with systemd" in the README: a follower is
/// killed for good; `cluster remove` takes it out while it is down, a new node with a
/// new id joins (`join = true`), is added as a learner, catches up and is promoted.
/// Another follower is stopped with SIGTERM (systemd's stop): it exits 0, and the
/// leader and the new node commit without it, so the new node votes. Restarted, the
/// stopped node catches up; so does the new node, restarted with its `join = true`
/// file unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_is_replaced_by_removing_it_and_adding_a_new_id() {
    let _serial = serial().await;
    let mut cluster = TestCluster::start(3, |_| {});
    let client = cluster.client(Duration::from_secs(30));
    let leader = cluster.wait_leader(&client, &[1, 2, 3], LEADER_WAIT).await;
    for i in 0..50 {
        client.put(format!("r{i:02}"), "x").await.expect("put");
    }
    let followers = cluster.running_except(leader);
    let (dead, other) = (followers[0], followers[1]);
    cluster.kill9(dead);

    let out = cluster.cli(&["cluster", "remove", &dead.to_string()]);
    assert!(
        out.status.success(),
        "remove {dead} while down: {}",
        stderr(&out)
    );
    let addr4 = cluster.add_joining_node(4);
    let out = cluster.cli(&["cluster", "add-learner", "4", &addr4]);
    assert!(out.status.success(), "add-learner: {}", stderr(&out));
    let committed = cluster
        .status(&client, leader)
        .await
        .expect("status")
        .committed;
    cluster
        .wait_applied(&client, 4, committed, Duration::from_secs(30))
        .await;
    let out = cluster.cli(&["cluster", "promote", "4"]);
    assert!(out.status.success(), "promote: {}", stderr(&out));
    let status = cluster.status(&client, leader).await.expect("status");
    let voters: BTreeSet<u64> = status.voters.iter().map(|(id, _)| id.0).collect();
    assert_eq!(voters, BTreeSet::from([leader, other, 4]), "{status:?}");
    assert!(status.learners.is_empty(), "{status:?}");
    let h4 = health(&cluster, 4);
    assert!(h4["role"] == "Follower" || h4["role"] == "Leader", "{h4}");

    // systemd stops a unit with SIGTERM: a clean stop, exit status 0.
    let mut child = cluster
        .nodes
        .get_mut(&other)
        .and_then(|n| n.child.take())
        .expect("a running node");
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(kill.success());
    let started = Instant::now();
    let exit = loop {
        if let Some(exit) = child.try_wait().expect("wait") {
            break exit;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "node {other} did not stop within 10 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "node {other} exited with {exit} on SIGTERM");
    assert!(
        cluster.log(other).contains("shutting down"),
        "{}",
        cluster.log_tail(other, 20)
    );

    let w = client
        .put("after", "replacement")
        .await
        .expect("a write needs node 4's vote");
    cluster
        .wait_applied(&client, 4, w.index, Duration::from_secs(10))
        .await;
    cluster.spawn(other);
    cluster
        .wait_applied(&client, other, w.index, Duration::from_secs(30))
        .await;

    // The new node keeps `join = true` in its file: restarted, it resumes as the
    // voter its log says it is.
    cluster.stop(4);
    cluster.spawn(4);
    let w = client.put("after", "restart of 4").await.expect("put");
    let s4 = cluster
        .wait_applied(&client, 4, w.index, Duration::from_secs(30))
        .await;
    assert!(
        s4.role == "Follower" || s4.role == "Leader",
        "node 4 after a restart: {s4:?}"
    );
}
