//! Shared helpers: a cluster CA, transports on 127.0.0.1, raw connections for the
//! adversarial tests.

#![allow(clippy::unwrap_used, dead_code, unreachable_pub)]

use futures::StreamExt;
use futures::stream::BoxStream;
use raft_net_quic::tls::{self, ALPN_RAFT, PemPair};
use raft_net_quic::{Identity, QuicConfig, QuicTransport, Started};
use raft_proto::{AppendEntries, LogId, LogIndex, Message, NodeId, Term};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// A cluster CA and the identities it issues.
pub struct Pki {
    pub ca: PemPair,
}

impl Pki {
    pub fn new() -> Pki {
        // `RUST_LOG=raft_net_quic=debug cargo test -p quorum-raft-net-quic -- --nocapture`
        // shows what the transports decided.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        Pki {
            ca: tls::generate_ca().unwrap(),
        }
    }

    pub fn node(&self, id: u64) -> Identity {
        Identity::from_pem(
            &self.ca.cert,
            &tls::issue_node(&self.ca, NodeId(id)).unwrap(),
        )
        .unwrap()
    }

    pub fn client(&self, name: &str) -> Identity {
        let pair = tls::issue_client(&self.ca, name, raft_net_quic::CertRole::Client).unwrap();
        Identity::from_pem(&self.ca.cert, &pair).unwrap()
    }
}

pub fn localhost() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A started transport and its incoming messages.
pub struct Peer {
    pub id: NodeId,
    pub transport: Arc<QuicTransport>,
    pub incoming: BoxStream<'static, (NodeId, Message)>,
    pub addr: SocketAddr,
}

impl Peer {
    pub fn start(id: u64, listen: SocketAddr, identity: Identity) -> Peer {
        Peer::start_with(id, listen, identity, |_| {})
    }

    pub fn start_with(
        id: u64,
        listen: SocketAddr,
        identity: Identity,
        tune: impl FnOnce(&mut QuicConfig),
    ) -> Peer {
        Peer::try_start(id, listen, identity, tune).unwrap()
    }

    pub fn try_start(
        id: u64,
        listen: SocketAddr,
        identity: Identity,
        tune: impl FnOnce(&mut QuicConfig),
    ) -> Result<Peer, raft_net_quic::QuicError> {
        let mut config = QuicConfig::new(NodeId(id), listen, BTreeMap::new(), identity);
        config.reconnect = (Duration::from_millis(20), Duration::from_millis(200));
        tune(&mut config);
        let Started {
            transport,
            incoming,
            ..
        } = QuicTransport::start(config, raft_net_quic::tokio_runtime().unwrap())?;
        let addr = transport.local_addr().unwrap();
        Ok(Peer {
            id: NodeId(id),
            transport,
            incoming,
            addr,
        })
    }

    /// The next message, or `None` after `wait`.
    pub async fn recv(&mut self, wait: Duration) -> Option<(NodeId, Message)> {
        tokio::time::timeout(wait, self.incoming.next())
            .await
            .ok()
            .flatten()
    }
}

/// Every peer learns every other's address.
pub fn introduce(peers: &[&Peer]) {
    for a in peers {
        for b in peers {
            if a.id != b.id {
                a.transport.add_peer(b.id, b.addr);
            }
        }
    }
}

/// A heartbeat tagged with `round`.
pub fn heartbeat(round: u64) -> Message {
    Message::AppendEntries(AppendEntries {
        term: Term(1),
        prev_log_id: LogId::default(),
        entries: Vec::new(),
        leader_commit: LogIndex(0),
        round,
    })
}

pub fn round_of(m: &Message) -> Option<u64> {
    match m {
        Message::AppendEntries(a) => Some(a.round),
        _ => None,
    }
}

/// Sends `round` from `from` to `to` every 20 ms until `to` receives it (or 10 s pass);
/// returns whether it arrived.
pub async fn deliver(from: &Peer, to: &mut Peer, round: u64) -> bool {
    for _ in 0..500 {
        from.transport.send_message(to.id, heartbeat(round));
        while let Some((sender, m)) = to.recv(Duration::from_millis(20)).await {
            if sender == from.id && round_of(&m) == Some(round) {
                return true;
            }
        }
    }
    false
}

/// A hand-made peer connection that speaks the wire protocol directly, for sending
/// what a genuine transport never would.
pub struct RawPeer {
    pub endpoint: quinn::Endpoint,
    pub conn: quinn::Connection,
}

impl RawPeer {
    /// Dials `addr` (expecting node `target`) as `identity`, with TLS client auth only
    /// if `present_cert`.
    pub async fn dial(
        identity: &Identity,
        present_cert: bool,
        addr: SocketAddr,
        target: u64,
    ) -> Result<RawPeer, String> {
        let tls = if present_cert {
            tls::client_config(identity, ALPN_RAFT).unwrap()
        } else {
            let mut roots = rustls::RootCertStore::empty();
            for c in &identity.ca {
                roots.add(c.clone()).unwrap();
            }
            let mut c = rustls::ClientConfig::builder_with_provider(tls::provider())
                .with_protocol_versions(&[&rustls::version::TLS13])
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
            c.alpn_protocols = vec![ALPN_RAFT.to_vec()];
            c
        };
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
        let socket = std::net::UdpSocket::bind(localhost()).unwrap();
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            None,
            socket,
            raft_net_quic::tokio_runtime().unwrap(),
        )
        .unwrap();
        let conn = endpoint
            .connect_with(
                quinn::ClientConfig::new(Arc::new(crypto)),
                addr,
                &tls::node_name(NodeId(target)),
            )
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        Ok(RawPeer { endpoint, conn })
    }

    /// The application hello, claiming to be `claimed`; the answer's error if refused.
    pub async fn hello(&self, claimed: u64) -> Result<(), String> {
        let (mut send, mut recv) = self.conn.open_bi().await.map_err(|e| e.to_string())?;
        let mut hello = b"RAFTHELO".to_vec();
        hello.extend_from_slice(&claimed.to_le_bytes());
        send.write_all(&hello).await.map_err(|e| e.to_string())?;
        let _ = send.finish();
        let mut answer = [0u8; 16];
        tokio::time::timeout(Duration::from_secs(5), recv.read_exact(&mut answer))
            .await
            .map_err(|_| "no answer".to_string())?
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Opens a raft stream and writes `bytes` after the kind byte.
    pub async fn stream(&self, bytes: &[u8]) {
        let mut s = self.conn.open_uni().await.unwrap();
        s.write_all(&[0]).await.unwrap();
        // The node may stop the stream as soon as it sees something wrong.
        let _ = s.write_all(bytes).await;
        let _ = s.finish();
    }
}

/// Extension so tests read `transport.send_message(to, m)`.
pub trait SendExt {
    fn send_message(&self, to: NodeId, m: Message);
}

impl SendExt for QuicTransport {
    fn send_message(&self, to: NodeId, m: Message) {
        raft_core::node::Transport::send(self, to, m);
    }
}
