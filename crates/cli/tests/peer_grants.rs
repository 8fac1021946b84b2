//! Peer grants through the real binary: once a call is answered, the callee's address
//! (as its signaling socket shows it) reaches the caller's relay before the caller's
//! own CreatePermission, and nothing else does. The first ICE checks of a call through a
//! relay used to be dropped there (netsim captures, docs/netsim.md).

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use common::*;
use firstcall_client::signal::SignalClient;
use firstcall_client::turn::{Client, Credentials, Kind};
use firstcall_turn::auth::{rest_credential, Secret};
use serde_json::json;

const SECRET: &str = "grants";
const T: Duration = Duration::from_secs(5);
const CALLEE_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
const STRANGER_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));

fn creds(user: &str) -> Credentials {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is past 1970")
        .as_secs();
    let (username, password) = rest_credential(&Secret::new(SECRET), user, now + 600);
    Credentials { username, password }
}

fn udp_on(ip: IpAddr) -> UdpSocket {
    UdpSocket::bind(SocketAddr::new(ip, 0)).expect("a loopback UDP socket")
}

fn dropped_no_permission(server: &Server) -> u64 {
    server.metric("firstcall_turn_dropped_total{reason=\"no_permission\"}")
}

/// Alice holds a relay and calls Bob, whose signaling socket comes from 127.0.0.2; Bob
/// answers. Returns the server, Alice's TURN client and relayed address, and the two
/// signaling sessions (kept open for the call's life).
async fn answered_call(server: &Server) -> (Client, SocketAddr, SignalClient, SignalClient) {
    let mut alice = dev(server, "alice", "a").await;
    let mut bob = SignalClient::connect_from(&ws_url(server), "dev:bob", "b", CALLEE_IP)
        .await
        .expect("bob signs in from 127.0.0.2");
    let mut turn = Client::connect(server.turn, &Kind::Udp, creds("alice")).await.unwrap();
    let relayed = turn.allocate(None).await.unwrap().relayed;
    // Before the answer, Bob's address is dropped at Alice's relay (RFC 8656 §10.3).
    let before = dropped_no_permission(server);
    udp_on(CALLEE_IP).send_to(b"too early", relayed).unwrap();
    assert!(
        wait_until(T, || dropped_no_permission(server) > before),
        "the early datagram is dropped"
    );
    alice
        .send(json!({"type": "call.invite", "call": "g1", "to": "bob", "media": "audio", "sdp": "offer"}))
        .await;
    bob.expect("call.incoming", T).await.unwrap();
    bob.send(json!({"type": "call.accept", "call": "g1", "sdp": "answer"}))
        .await;
    alice.expect("call.accepted", T).await.unwrap();
    (turn, relayed, alice, bob)
}

#[test]
fn an_answer_lets_the_callees_address_reach_the_callers_relay_and_no_other() {
    let server = start_firstcall(&["--turn-secret", SECRET, "--allow-peer", "127.0.0.0/8", "--threads", "1"]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (mut turn, relayed, _alice, mut bob) = answered_call(&server).await;
        // Both directions stored on the one worker: Bob's address for Alice, Alice's
        // for Bob.
        assert!(
            wait_until(T, || server
                .metric("firstcall_turn_peer_grants_total{outcome=\"stored\"}")
                == 2),
            "two grants stored"
        );
        // A stranger is still dropped...
        let before = dropped_no_permission(&server);
        let stranger = udp_on(STRANGER_IP);
        stranger.send_to(b"stranger", relayed).unwrap();
        assert!(wait_until(T, || dropped_no_permission(&server) > before));
        // ...while Bob's address, from any port, reaches Alice without her asking.
        let callee = udp_on(CALLEE_IP);
        callee.send_to(b"check", relayed).unwrap();
        // From Bob's address, and nothing from the stranger first.
        expect_data(&mut turn, callee.local_addr().unwrap(), b"check").await;
        assert_eq!(
            server.metric("firstcall_turn_peer_grants_total{outcome=\"applied\"}"),
            1
        );
        // What was installed is the permission Alice would have asked for: her own
        // Send to Bob's address goes out through the relay.
        turn.send_indication(callee.local_addr().unwrap(), b"reply")
            .await
            .unwrap();
        callee.set_read_timeout(Some(T)).unwrap();
        let mut buf = [0u8; 64];
        let (n, from) = callee.recv_from(&mut buf).unwrap();
        assert_eq!((&buf[..n], from), (&b"reply"[..], relayed));
        // Bob's phone changes network mid-call: his session resumes from a new address,
        // which is granted to Alice's allocations in turn.
        let moved_ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 4));
        bob.cut();
        bob.set_local(moved_ip);
        bob.reconnect().await.unwrap();
        assert_eq!(bob.welcome["resumed"], true);
        assert!(
            wait_until(T, || server
                .metric("firstcall_turn_peer_grants_total{outcome=\"stored\"}")
                == 4),
            "the resume grants both parties' addresses again"
        );
        let moved = udp_on(moved_ip);
        moved.send_to(b"from the new network", relayed).unwrap();
        expect_data(&mut turn, moved.local_addr().unwrap(), b"from the new network").await;
    });
}

#[test]
fn with_grants_off_the_callees_address_waits_for_the_callers_permission() {
    let server = start_firstcall(&[
        "--turn-secret",
        SECRET,
        "--allow-peer",
        "127.0.0.0/8",
        "--threads",
        "1",
        "--turn-peer-grant-ttl",
        "0s",
    ]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (mut turn, relayed, _alice, _bob) = answered_call(&server).await;
        let before = dropped_no_permission(&server);
        let callee = udp_on(CALLEE_IP);
        callee.send_to(b"check", relayed).unwrap();
        assert!(
            wait_until(T, || dropped_no_permission(&server) > before),
            "dropped: no grant"
        );
        assert_eq!(server.metric("firstcall_turn_peer_grants_total{outcome=\"stored\"}"), 0);
        // Once Alice permits Bob's address herself, it passes.
        turn.permit(callee.local_addr().unwrap()).await.unwrap();
        callee.send_to(b"after", relayed).unwrap();
        expect_data(&mut turn, callee.local_addr().unwrap(), b"after").await;
    });
}
