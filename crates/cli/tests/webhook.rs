//! Webhook delivery against the real binary and a real HTTP receiver on loopback:
//! pooled keep-alive connections, the Host header, retries with the same event id,
//! order per device.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

const T: Duration = Duration::from_secs(5);
const DELIVERED: &str = "firstcall_webhook_events_total{outcome=\"delivered\"}";

#[tokio::test]
async fn events_reuse_one_keep_alive_connection() {
    let hook = HookReceiver::ok();
    let server = start_firstcall(&["--webhook-url", &hook.url, "--webhook-secret", "k"]);
    let _phone = backgrounded(&server, "bob", "phone", "voip").await;
    // Three callers (one pair each: nothing coalesced), one after the other: each event
    // is delivered (its answer read by the server) before the next is made, so each
    // finds the last one's connection idle in the pool.
    let mut n = 0;
    for caller in ["alice", "carol", "dave"] {
        let mut c = dev(&server, caller, "d").await;
        let call = format!("c-{caller}");
        c.send(json!({"type": "call.invite", "call": call, "to": "bob", "media": "audio", "sdp": "o"}))
            .await;
        n += 1;
        assert!(
            wait_until(T, || server.metric(DELIVERED) == n),
            "ring {n} not delivered"
        );
        c.send(json!({"type": "call.cancel", "call": call})).await;
        n += 1;
        assert!(
            wait_until(T, || server.metric(DELIVERED) == n),
            "cancel {n} not delivered"
        );
    }
    let got = hook.requests();
    assert_eq!(got.len(), 6, "{:?}", hook.events());
    assert_eq!(
        hook.connections(),
        1,
        "six events, one connection: {:?}",
        got.iter().map(|h| h.conn).collect::<Vec<_>>()
    );
    assert!(got
        .iter()
        .all(|h| h.headers.get("connection").is_none_or(|v| v != "close")));
}

/// The Host header names the port, and an IPv6 literal in brackets.
#[tokio::test]
async fn the_host_header_carries_the_port_and_ipv6_brackets() {
    for (ip, host) in [
        (std::net::IpAddr::from([127, 0, 0, 1]), "127.0.0.1"),
        (std::net::Ipv6Addr::LOCALHOST.into(), "[::1]"),
    ] {
        let hook = HookReceiver::start(ip, |_, _| Reply::Status(204, vec![]));
        let server = start_firstcall(&["--webhook-url", &hook.url, "--webhook-secret", "k"]);
        let mut alice = dev(&server, "alice", "a").await;
        // Bob has no device online: call.pending for him.
        alice
            .send(json!({"type": "call.invite", "call": "c1", "to": "bob", "media": "audio", "sdp": "o"}))
            .await;
        assert!(
            wait_until(T, || server.metric(DELIVERED) == 1),
            "not delivered to {}",
            hook.url
        );
        let got = hook.requests();
        assert_eq!(got[0].line, "POST /hook HTTP/1.1");
        assert_eq!(got[0].headers["host"], format!("{host}:{}", hook.port));
        assert_eq!(got[0].event(), "call.pending");
    }
}
