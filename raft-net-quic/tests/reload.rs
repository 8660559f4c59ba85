//! `QuicTransport::reload`: a rotated certificate is presented at new handshakes while
//! connections already up stay up; a reload that cannot be used changes nothing; a
//! deny-list refuses revoked clients and nodes at their next handshake.

#![allow(clippy::unwrap_used)]

mod support;

use futures::StreamExt;
use raft_net_quic::cert::peer_certificate;
use raft_net_quic::tls::{self, PemPair};
use raft_net_quic::{
    CertInfo, ClientConnection, DenyList, Identity, QuicConfig, QuicTransport, Started,
    connect_client,
};
use raft_proto::NodeId;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;

/// A node that accepts clients and echoes every client stream back.
fn echo_node(id: u64, identity: Identity) -> (Arc<QuicTransport>, std::net::SocketAddr) {
    let mut config = QuicConfig::new(NodeId(id), localhost(), BTreeMap::new(), identity);
    config.accept_clients = true;
    let Started {
        transport, clients, ..
    } = QuicTransport::start(config, raft_net_quic::tokio_runtime().unwrap()).unwrap();
    let mut clients = clients.unwrap();
    tokio::spawn(async move {
        while let Some(conn) = clients.next().await {
            tokio::spawn(async move {
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    let Ok(data) = recv.read_to_end(1024).await else {
                        return;
                    };
                    let _ = send.write_all(&data).await;
                    let _ = send.finish();
                }
            });
        }
    });
    let addr = transport.local_addr().unwrap();
    (transport, addr)
}

/// One round trip on a new stream of `conn` (TLS 1.3: a refused client certificate
/// shows here, not at connect).
async fn ping(conn: &ClientConnection) -> Result<(), String> {
    let (mut send, mut recv) = conn.connection.open_bi().await.map_err(|e| e.to_string())?;
    send.write_all(b"ping").await.map_err(|e| e.to_string())?;
    let _ = send.finish();
    let back = tokio::time::timeout(Duration::from_secs(5), recv.read_to_end(1024))
        .await
        .map_err(|_| "no answer".to_string())?
        .map_err(|e| e.to_string())?;
    assert_eq!(back, b"ping");
    Ok(())
}

async fn connect(
    identity: &Identity,
    addr: std::net::SocketAddr,
) -> Result<ClientConnection, String> {
    connect_client(identity, addr, raft_net_quic::tokio_runtime().unwrap())
        .await
        .map_err(|e| e.to_string())
}

fn fingerprint_of_pem(pair: &PemPair) -> String {
    let id = Identity::from_pem(&pair.cert, pair).unwrap();
    CertInfo::parse(&id.chain[0]).unwrap().fingerprint()
}

fn presented(conn: &ClientConnection) -> String {
    CertInfo::parse(&peer_certificate(&conn.connection).unwrap())
        .unwrap()
        .fingerprint()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_certificate_is_presented_at_new_handshakes_and_old_connections_stay_up() {
    let pki = Pki::new();
    let old = tls::issue_node(&pki.ca, NodeId(1)).unwrap();
    let (node, addr) = echo_node(1, Identity::from_pem(&pki.ca.cert, &old).unwrap());
    let client = pki.client("app");
    let before = connect(&client, addr).await.unwrap();
    ping(&before).await.unwrap();
    assert_eq!(presented(&before), fingerprint_of_pem(&old));

    let new = tls::issue_node(&pki.ca, NodeId(1)).unwrap();
    node.reload(&Identity::from_pem(&pki.ca.cert, &new).unwrap())
        .unwrap();
    let after = connect(&client, addr).await.unwrap();
    ping(&after).await.unwrap();
    assert_eq!(presented(&after), fingerprint_of_pem(&new));
    // The connection made before the reload still works, on new streams too.
    ping(&before).await.unwrap();
    assert!(before.connection.close_reason().is_none());

    // A key that does not belong to the certificate: refused, nothing changes.
    let other = tls::issue_node(&pki.ca, NodeId(1)).unwrap();
    let mismatched = PemPair {
        cert: other.cert.clone(),
        key: new.key.clone(),
    };
    let e = node
        .reload(&Identity::from_pem(&pki.ca.cert, &mismatched).unwrap())
        .expect_err("a key that does not match its certificate is refused");
    assert!(e.to_string().to_lowercase().contains("key"), "{e}");
    let again = connect(&client, addr).await.unwrap();
    ping(&again).await.unwrap();
    assert_eq!(presented(&again), fingerprint_of_pem(&new));
}

/// Replacing the CA: first every node and client trusts a bundle of both CAs, then
/// the nodes' certificates move to the new CA. A client still trusting only the old
/// CA is refused after the second step (its CA bundle must be updated first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_is_replaced_through_a_bundle_holding_both() {
    let pki = Pki::new();
    let old_node = tls::issue_node(&pki.ca, NodeId(1)).unwrap();
    let (node, addr) = echo_node(1, Identity::from_pem(&pki.ca.cert, &old_node).unwrap());
    let new_ca = tls::generate_ca().unwrap();
    let bundle = format!("{}{}", pki.ca.cert, new_ca.cert);
    let new_client = Identity::from_pem(
        &bundle,
        &tls::issue_client(&new_ca, "app", raft_net_quic::CertRole::Client).unwrap(),
    )
    .unwrap();
    let old_client = pki.client("old");
    // Before: the node trusts only the old CA.
    if let Ok(conn) = connect(&new_client, addr).await {
        assert!(ping(&conn).await.is_err());
    }
    // Step 1: the node trusts both; its certificate is still the old CA's.
    node.reload(&Identity::from_pem(&bundle, &old_node).unwrap())
        .unwrap();
    ping(&connect(&new_client, addr).await.unwrap())
        .await
        .unwrap();
    ping(&connect(&old_client, addr).await.unwrap())
        .await
        .unwrap();
    // Step 2: the node's certificate is the new CA's.
    let new_node = tls::issue_node(&new_ca, NodeId(1)).unwrap();
    node.reload(&Identity::from_pem(&bundle, &new_node).unwrap())
        .unwrap();
    let conn = connect(&new_client, addr).await.unwrap();
    ping(&conn).await.unwrap();
    assert_eq!(presented(&conn), fingerprint_of_pem(&new_node));
    let e = connect(&old_client, addr)
        .await
        .err()
        .expect("a client that trusts only the old CA refuses the new certificate");
    assert!(e.contains("BadSignature"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_client_is_refused_at_its_next_connection_and_others_keep_working() {
    let pki = Pki::new();
    let node_identity = pki.node(1);
    let (node, addr) = echo_node(1, node_identity.clone());
    let alice = pki.client("alice");
    let bob = pki.client("bob");
    let alice_before = connect(&alice, addr).await.unwrap();
    ping(&alice_before).await.unwrap();
    let alice_fp = CertInfo::parse(&alice.chain[0]).unwrap().fingerprint();
    let deny = DenyList::parse(&format!("{alice_fp}\n")).unwrap();
    node.reload(&node_identity.clone().with_deny_list(deny))
        .unwrap();
    let e = match connect(&alice, addr).await {
        Err(e) => e,
        Ok(conn) => {
            ping(&conn).await.expect_err("alice is revoked");
            conn.connection
                .close_reason()
                .map(|r| r.to_string())
                .unwrap_or_default()
        }
    };
    assert!(e.contains("Revoked"), "the refusal says why: {e}");
    ping(&connect(&bob, addr).await.unwrap()).await.unwrap();
    // Revocation is checked at handshakes: the connection alice already had is not
    // re-checked by TLS (the server decides what to do with it).
    ping(&alice_before).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_node_is_disconnected_on_reload_and_cannot_reconnect() {
    let pki = Pki::new();
    let one_identity = pki.node(1);
    let one_fp = CertInfo::parse(&one_identity.chain[0])
        .unwrap()
        .fingerprint();
    let one = Peer::start(1, localhost(), one_identity);
    let two_identity = pki.node(2);
    let mut two = Peer::start(2, localhost(), two_identity.clone());
    introduce(&[&one, &two]);
    assert!(deliver(&one, &mut two, 1).await);
    assert!(two.transport.stats()[0].connected);

    let deny = DenyList::parse(&format!("# node 1's stolen laptop\n{one_fp}\n")).unwrap();
    two.transport
        .reload(&two_identity.with_deny_list(deny))
        .unwrap();
    // Node 2 closes the connection, and refuses node 1's redials (node 1 dials: 1 < 2).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        one.transport.send_message(NodeId(2), heartbeat(9));
        if let Some((from, m)) = two.recv(Duration::from_millis(20)).await {
            assert_ne!(
                round_of(&m),
                Some(9),
                "a revoked node got a message through as {from}"
            );
        }
    }
    let stats = two.transport.stats();
    assert!(!stats[0].connected, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dialer_refuses_a_revoked_node_it_dials() {
    let pki = Pki::new();
    let one_identity = pki.node(1);
    let two_identity = pki.node(2);
    let two_fp = CertInfo::parse(&two_identity.chain[0])
        .unwrap()
        .fingerprint();
    let deny = DenyList::parse(&format!("{two_fp}\n")).unwrap();
    let one = Peer::start(1, localhost(), one_identity.with_deny_list(deny));
    let mut two = Peer::start(2, localhost(), two_identity);
    introduce(&[&one, &two]);
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        one.transport.send_message(NodeId(2), heartbeat(9));
        assert!(two.recv(Duration::from_millis(20)).await.is_none());
    }
    assert!(!one.transport.stats()[0].connected);
}
