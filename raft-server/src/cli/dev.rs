//! `raft-server dev`: a local cluster of child processes with development
//! certificates, watched until Ctrl-C.

use super::cluster::statuses;
use super::conn::{ConnArgs, FromEnv, client_from};
use super::error::CliError;
use super::run::shutdown_signal;
use clap::Args;
use raft_server::dev::DevLayout;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Args)]
pub(crate) struct DevArgs {
    /// Where configs, certificates, data and logs go.
    #[arg(long, default_value = "raft-dev")]
    dir: PathBuf,
    /// The first node's UDP port (the others follow).
    #[arg(long, default_value_t = 7101)]
    port: u16,
    /// The first node's metrics port.
    #[arg(long, default_value_t = 9101)]
    metrics_port: u16,
    /// How many nodes.
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Start, wait for a leader, print it, and stop (for scripts and tests).
    #[arg(long)]
    check: bool,
}

fn relative(p: &Path) -> String {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| p.strip_prefix(cwd).ok().map(|r| r.display().to_string()))
        .unwrap_or_else(|| p.display().to_string())
}

pub(crate) async fn dev(args: DevArgs) -> Result<(), CliError> {
    if args.nodes == 0 {
        return Err(CliError::Failed("--nodes must be at least 1".into()));
    }
    let layout = DevLayout::new(&args.dir, args.nodes, args.port, args.metrics_port);
    let configs = layout.write()?;
    let exe = std::env::current_exe().map_err(CliError::io("cannot find this program's path"))?;
    let me = relative(&exe);
    let mut children = Vec::new();
    for (c, path) in layout.nodes.iter().zip(&configs) {
        let log_path = args.dir.join(format!("node{}.log", c.id));
        let log = std::fs::File::create(&log_path).map_err(CliError::io(log_path.display()))?;
        let err = log
            .try_clone()
            .map_err(|e| CliError::Failed(e.to_string()))?;
        let child = tokio::process::Command::new(&exe)
            .arg("run")
            .arg("--config")
            .arg(path)
            .arg("--stop-with-stdin")
            .stdin(std::process::Stdio::piped())
            .stdout(log)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .map_err(CliError::io(format_args!("cannot start node {}", c.id)))?;
        children.push((c.id, child));
    }
    let conn = ConnArgs {
        client_config: Some(args.dir.join("client.toml")),
        nodes: vec![],
        ca: None,
        cert: None,
        key: None,
        timeout: 10,
        from_env: FromEnv::default(),
    };
    let (client, addrs) = client_from(&conn)?;
    // Wait for a leader.
    let mut leader = None;
    for _ in 0..300 {
        for (id, child) in &mut children {
            if let Ok(Some(status)) = child.try_wait() {
                let log = args.dir.join(format!("node{id}.log"));
                let tail = std::fs::read_to_string(&log).unwrap_or_default();
                let last: Vec<&str> = tail.lines().rev().take(5).collect();
                return Err(CliError::Failed(format!(
                    "node {id} exited ({status}) before the cluster was up; the end of {}:\n{}",
                    log.display(),
                    last.into_iter().rev().collect::<Vec<_>>().join("\n")
                )));
            }
        }
        if let Some((_, Ok(s))) = statuses(&client, &addrs[..1]).await.into_iter().next()
            && let Some(l) = s.leader
        {
            leader = Some((l, s.term));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let Some((leader, term)) = leader else {
        return Err(CliError::Failed(format!(
            "no leader after 30 s; see the logs in {}",
            args.dir.display()
        )));
    };
    let dir = relative(&std::path::absolute(&args.dir).unwrap_or(args.dir.clone()));
    println!(
        "raft dev cluster: {} nodes, configs, certificates, data and logs in ./{dir}",
        args.nodes
    );
    for ((id, child), c) in children.iter().zip(&layout.nodes) {
        let pid = child.id().map_or("?".into(), |p| p.to_string());
        let tag = if *id == leader.0 { "  <- leader" } else { "" };
        println!(
            "  node {id}  pid {pid:<7} {}  metrics http://{}/metrics{tag}",
            c.listen,
            c.metrics.as_deref().unwrap_or("-")
        );
    }
    println!("node {leader} leads term {term}. Try, in another terminal:");
    println!("  {me} kv put greeting hello");
    println!("  {me} kv get greeting");
    println!("  {me} cluster status");
    let leader_pid = children
        .iter()
        .find(|(id, _)| *id == leader.0)
        .and_then(|(_, c)| c.id());
    if let Some(pid) = leader_pid {
        println!(
            "  kill -9 {pid}     # crash the leader: the others elect a new one and keep serving"
        );
    }
    println!("Restart a stopped node with: {me} run --config {dir}/node<ID>.toml");
    println!("Ctrl-C stops the cluster.");
    if args.check {
        drop(children);
        return Ok(());
    }
    let mut last_leader = Some(leader);
    let mut exited = vec![false; children.len()];
    // One listener for the whole watch: a signal that arrives while a status poll
    // runs must not be missed.
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let watch = async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            for (i, (id, child)) in children.iter_mut().enumerate() {
                if !exited[i]
                    && let Ok(Some(status)) = child.try_wait()
                {
                    exited[i] = true;
                    println!("node {id} exited ({status})");
                }
            }
            let now = statuses(&client, &addrs)
                .await
                .into_iter()
                .filter_map(|(_, s)| s.ok())
                .find_map(|s| s.leader.map(|l| (l, s.term)));
            if let Some((l, t)) = now
                && Some(l) != last_leader
            {
                println!("node {l} now leads (term {t})");
                last_leader = Some(l);
            }
        };
        tokio::select! {
            _ = &mut shutdown => break,
            _ = watch => {}
        }
    }
    println!("stopping the cluster");
    for (_, child) in &mut children {
        // Closing stdin asks the node to stop cleanly.
        drop(child.stdin.take());
    }
    for (id, child) in &mut children {
        match tokio::time::timeout(Duration::from_secs(10), child.wait()).await {
            Ok(_) => {}
            Err(_) => {
                eprintln!("node {id} did not stop in 10 s; killing it");
                let _ = child.kill().await;
            }
        }
    }
    Ok(())
}
