//! `raft-server run`: one node, until a signal, the end of standard input, or a
//! failure stops it.

use super::error::CliError;
use clap::Args;
use raft_server::{Server, ServerConfig};
use std::path::PathBuf;

#[derive(Args)]
pub(crate) struct RunArgs {
    /// A TOML configuration file (flags below override it).
    #[arg(long)]
    config: Option<PathBuf>,
    /// This node's id.
    #[arg(long)]
    id: Option<u64>,
    /// UDP address for QUIC (peers and clients).
    #[arg(long)]
    listen: Option<String>,
    /// Another member, ID=HOST:PORT (repeat): the founding members, or with --join the
    /// current ones.
    #[arg(long = "peer")]
    peers: Vec<String>,
    /// Data directory.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Directory with ca.crt, node<ID>.crt and node<ID>.key (with --config, these
    /// three replace the file's ca, cert and key).
    #[arg(long)]
    certs: Option<PathBuf>,
    /// HTTP address for /metrics and /health.
    #[arg(long)]
    metrics: Option<String>,
    /// Start empty and wait to be added to an existing cluster (`cluster add-learner`);
    /// list its current members with --peer.
    #[arg(long)]
    join: bool,
    /// Stop when standard input closes (used by `dev` for its children).
    #[arg(long, hide = true)]
    stop_with_stdin: bool,
}

pub(crate) async fn run(args: RunArgs) -> Result<(), CliError> {
    let mut config = match &args.config {
        Some(path) => ServerConfig::load(path)?,
        None => {
            let (Some(id), Some(listen), Some(data), Some(certs)) =
                (args.id, &args.listen, &args.data, &args.certs)
            else {
                return Err(CliError::Usage(
                    "give --config FILE, or --id, --listen, --data and --certs".into(),
                ));
            };
            ServerConfig::new(id, listen, data, certs)
        }
    };
    if args.config.is_some() {
        if let Some(id) = args.id {
            config.id = id;
        }
        if let Some(l) = &args.listen {
            config.listen = l.clone();
        }
        if let Some(d) = &args.data {
            config.data_dir = d.clone();
        }
        // Like every other flag, --certs overrides the file: the same three paths as
        // without --config, for the (possibly overridden) id.
        if let Some(certs) = &args.certs {
            let named = ServerConfig::new(config.id, &config.listen, &config.data_dir, certs);
            config.ca = named.ca;
            config.cert = named.cert;
            config.key = named.key;
        }
    }
    if !args.peers.is_empty() {
        config.peers = args.peers.clone();
    }
    if args.metrics.is_some() {
        config.metrics = args.metrics.clone();
    }
    config.join |= args.join;
    let validated = config.validate()?;
    let server = Server::start(validated).await?;
    let mut hangup = Hangup::new();
    let stdin_closed = async {
        if args.stop_with_stdin {
            let mut buf = [0u8; 64];
            let mut stdin = tokio::io::stdin();
            loop {
                match tokio::io::AsyncReadExt::read(&mut stdin, &mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        } else {
            futures::future::pending::<()>().await
        }
    };
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown, stdin_closed);
    let outcome = loop {
        tokio::select! {
            _ = &mut shutdown => break Ok(()),
            _ = &mut stdin_closed => break Ok(()),
            reason = server.stopped() => break Err(CliError::Stopped { reason }),
            // A failed reload is logged and keeps the previous material.
            _ = hangup.recv() => { let _ = server.reload_certificates(); }
        }
    };
    server.shutdown().await;
    outcome
}

/// SIGHUP (Unix): reload the certificates. Never fires elsewhere, or if the handler
/// cannot be installed.
struct Hangup {
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
}

impl Hangup {
    fn new() -> Hangup {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let signal = match signal(SignalKind::hangup()) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGHUP; certificates reload only when their files change");
                    None
                }
            };
            Hangup { signal }
        }
        #[cfg(not(unix))]
        Hangup {}
    }

    async fn recv(&mut self) {
        #[cfg(unix)]
        if let Some(s) = &mut self.signal
            && s.recv().await.is_some()
        {
            return;
        }
        futures::future::pending::<()>().await
    }
}

/// SIGINT or SIGTERM.
pub(crate) async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
