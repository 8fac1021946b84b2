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

const RETRIES: &str = "firstcall_webhook_retries_total";
const QUEUED: &str = "firstcall_webhook_queued";

/// Every request of `hook` carries the same event id, in its header and its body, the
/// same body, and a valid signature.
fn same_event(hook: &HookReceiver, id: &str) {
    let got = hook.requests();
    for h in &got {
        assert_eq!(h.headers["x-firstcall-event-id"], id);
        assert_eq!(h.body["id"], id);
        assert_eq!(h.raw, got[0].raw, "a retry carries the same body");
        let ts: u64 = h.headers["x-firstcall-timestamp"].parse().unwrap();
        assert_eq!(
            h.headers["x-firstcall-signature"],
            firstcall_server::webhook::signature("k", ts, &h.raw)
        );
    }
}

/// Alice calls Bob, who has no device online: one `call.pending`.
async fn pending(server: &Server) -> firstcall_client::signal::SignalClient {
    let mut alice = dev(server, "alice", "a").await;
    alice
        .send(json!({"type": "call.invite", "call": "c1", "to": "bob", "media": "audio", "sdp": "o"}))
        .await;
    alice.expect("call.pending", T).await.unwrap();
    alice
}

#[tokio::test]
async fn a_503_is_retried_after_its_retry_after_with_the_same_event_id() {
    let hook = HookReceiver::start([127, 0, 0, 1].into(), |_, i| match i {
        0 => Reply::Status(503, vec![("Retry-After", "1".into())]),
        _ => Reply::Status(204, vec![]),
    });
    let server = start_firstcall(&["--webhook-url", &hook.url, "--webhook-secret", "k"]);
    let _alice = pending(&server).await;
    assert!(wait_until(T, || server.metric(DELIVERED) == 1), "{:?}", hook.events());
    let got = hook.requests();
    assert_eq!(got.len(), 2);
    same_event(&hook, "c1/-/call.pending");
    let gap = got[1].at - got[0].at;
    assert!(
        gap >= Duration::from_millis(950),
        "Retry-After: 1 not honoured: {gap:?}"
    );
    assert_eq!(server.metric(RETRIES), 1);
    assert_eq!(server.metric(QUEUED), 0);
}

#[tokio::test]
async fn a_dropped_connection_is_retried_with_the_same_event_id() {
    let hook = HookReceiver::start([127, 0, 0, 1].into(), |_, i| match i {
        0 => Reply::Drop,
        _ => Reply::Status(200, vec![]),
    });
    let server = start_firstcall(&["--webhook-url", &hook.url, "--webhook-secret", "k"]);
    let _alice = pending(&server).await;
    assert!(wait_until(T, || server.metric(DELIVERED) == 1), "{:?}", hook.events());
    assert_eq!(hook.requests().len(), 2);
    assert_eq!(hook.requests()[0].answered, 0, "the first was dropped unanswered");
    same_event(&hook, "c1/-/call.pending");
    assert_eq!(server.metric(RETRIES), 1);
    assert!(
        server.log_text().contains("webhook failed"),
        "the failed attempt is logged"
    );
}

#[tokio::test]
async fn a_400_is_not_retried() {
    let hook = HookReceiver::start([127, 0, 0, 1].into(), |h, _| match h.event() {
        "call.ring" => Reply::Status(400, vec![]),
        _ => Reply::Status(204, vec![]),
    });
    let server = start_firstcall(&["--webhook-url", &hook.url, "--webhook-secret", "k"]);
    let _phone = backgrounded(&server, "bob", "phone", "voip").await;
    let mut alice = dev(&server, "alice", "a").await;
    alice
        .send(json!({"type": "call.invite", "call": "c1", "to": "bob", "media": "audio", "sdp": "o"}))
        .await;
    alice.send(json!({"type": "call.cancel", "call": "c1"})).await;
    // The phone's events go in order: a retried ring would come before the cancel.
    assert!(wait_until(T, || server.metric(DELIVERED) == 1), "{:?}", hook.events());
    assert_eq!(hook.events(), ["call.ring", "call.cancelled"]);
    assert_eq!(server.metric("firstcall_webhook_events_total{outcome=\"rejected\"}"), 1);
    assert_eq!(server.metric(RETRIES), 0);
    let log = server.log_text();
    assert!(
        log.contains("webhook given up: the receiver refused it") && log.contains("status=400"),
        "{log}"
    );
}

/// A review found that a `call.ring` retry could arrive after the `call.cancelled`: a
/// device's events now go in order, each delivered (or given up) before the next; another
/// device's are not held up.
#[tokio::test]
async fn a_devices_events_arrive_in_order_across_a_retry_and_other_devices_go_on() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let cancel_queued = Arc::new(AtomicBool::new(false));
    let (flag, seen_tablet) = (cancel_queued.clone(), Arc::new(AtomicBool::new(false)));
    let seen = seen_tablet.clone();
    let hook = HookReceiver::start([127, 0, 0, 1].into(), move |h, _| {
        let phone = h.body["device"] == "phone";
        if !phone {
            seen.store(true, Ordering::SeqCst);
            return Reply::Status(204, vec![]);
        }
        if h.event() == "call.ring" && !flag.load(Ordering::SeqCst) {
            // The phone's first ring attempt: held until the test has its cancel queued
            // behind it (and the tablet's ring went by meanwhile), then failed.
            wait_until(T, || flag.load(Ordering::SeqCst));
            return Reply::Status(503, vec![]);
        }
        Reply::Status(204, vec![])
    });
    let server = start_firstcall(&["--webhook-url", &hook.url, "--webhook-secret", "k"]);
    let _phone = backgrounded(&server, "bob", "phone", "voip-phone").await;
    let _tablet = backgrounded(&server, "bob", "tablet", "voip-tablet").await;
    let mut alice = dev(&server, "alice", "a").await;
    alice
        .send(json!({"type": "call.invite", "call": "c1", "to": "bob", "media": "audio", "sdp": "o"}))
        .await;
    // The phone's ring is held at the receiver; the tablet's lane is not behind it.
    assert!(
        wait_until(T, || seen_tablet.load(Ordering::SeqCst)),
        "the tablet's ring waited for the phone's"
    );
    alice.send(json!({"type": "call.cancel", "call": "c1"})).await;
    // The phone's ring in flight and its cancel waiting behind it.
    assert!(
        wait_until(T, || server.metric(QUEUED) == 2),
        "queued: {}",
        server.metric(QUEUED)
    );
    cancel_queued.store(true, Ordering::SeqCst);
    assert!(wait_until(T, || server.metric(DELIVERED) == 4), "{:?}", hook.events());
    let phone: Vec<(String, u16)> = hook
        .requests()
        .iter()
        .filter(|h| h.body["device"] == "phone")
        .map(|h| (h.event().to_owned(), h.answered))
        .collect();
    assert_eq!(
        phone,
        [
            ("call.ring".to_owned(), 503),
            ("call.ring".to_owned(), 204),
            ("call.cancelled".to_owned(), 204)
        ]
    );
    assert_eq!(server.metric(RETRIES), 1);
    assert_eq!(server.metric(QUEUED), 0);
}
