//! The relay path through the real binary: nothing a client sends is lost on the way.

mod common;

use std::time::Duration;

use common::*;
use firstcall_client::turn::{Client, Credentials, Kind, Relayed};
use firstcall_turn::auth::{rest_credential, Secret};

/// Regression: the first datagram through a freshly opened relay socket used to be
/// dropped (`relay_send_would_block`), because tokio refused to send before its
/// reactor had seen the new socket writable. That first datagram is often a call's
/// first connectivity check, so every allocation here sends at once and must arrive.
#[test]
fn the_first_datagram_through_a_fresh_relay_arrives() {
    let server = start_firstcall(&["--turn-secret", "fresh"]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let (username, password) = rest_credential(&Secret::new("fresh"), "relay-test", now + 600);
    let creds = Credentials { username, password };
    const ROUNDS: usize = 30;
    let delivered = rt.block_on(async {
        let mut delivered = 0;
        // Every client stays open to the end: a closed client's port may come back as a
        // later client's, whose Allocate then rightly meets the old allocation (437).
        let mut keep = Vec::new();
        for i in 0..ROUNDS {
            let mut a = Client::connect(server.turn, &Kind::Udp, creds.clone()).await.unwrap();
            let mut b = Client::connect(server.turn, &Kind::Udp, creds.clone()).await.unwrap();
            let ra = a.allocate(None).await.unwrap().relayed;
            let rb = b.allocate(None).await.unwrap().relayed;
            b.permit(ra).await.unwrap();
            a.permit(rb).await.unwrap();
            let payload = format!("first-{i}").into_bytes();
            a.send_indication(rb, &payload).await.unwrap();
            // Generous bound: on loopback the datagram arrives in well under 1 ms, and a
            // lost one never does.
            match b.recv_relayed(Duration::from_secs(3)).await {
                Ok(Relayed::Data { peer, data }) if peer == ra && data == payload => delivered += 1,
                other => eprintln!("round {i}: {other:?}"),
            }
            keep.push((a, b));
        }
        delivered
    });
    assert_eq!(delivered, ROUNDS, "every first datagram must be relayed");
    for reason in [
        "relay_send_would_block",
        "client_send_would_block",
        "relay_send_error",
        "client_send_error",
    ] {
        assert_eq!(
            server.metric(&format!("firstcall_turn_dropped_total{{reason=\"{reason}\"}}")),
            0,
            "{reason}"
        );
    }
}
