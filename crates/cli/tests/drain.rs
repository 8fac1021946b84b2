//! SIGTERM drains: `/readyz` says 503, new sessions are refused with close code 1012,
//! sessions no call needs are sent elsewhere with 1012, live calls carry on until they
//! end (or `--drain-timeout`, or a second SIGTERM), and the process then exits 0.

mod common;

use std::time::Duration;

use common::*;
use firstcall_client::signal::{ClientError, SignalClient};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(5);
const SERVICE_RESTART: u16 = 1012;

/// Alice calling Bob, answered.
async fn in_call(server: &Server, call: &str) -> (SignalClient, SignalClient) {
    let mut alice = dev(server, "alice", "a").await;
    let mut bob = dev(server, "bob", "b").await;
    alice
        .send(json!({"type": "call.invite", "call": call, "to": "bob", "media": "audio", "sdp": "o"}))
        .await;
    bob.expect("call.incoming", T).await.unwrap();
    bob.send(json!({"type": "call.accept", "call": call, "sdp": "a"})).await;
    alice.expect("call.accepted", T).await.unwrap();
    (alice, bob)
}

fn cand(n: u32) -> Value {
    json!({"candidate": {"candidate": format!("candidate:{n} 1 udp 1 198.51.100.{n} 5000 typ srflx raddr 0.0.0.0 rport 0"), "sdpMid": "0", "sdpMLineIndex": 0, "usernameFragment": "u"}})
}

/// Read frames until the socket closes; its close code.
async fn closed_with(c: &mut SignalClient) -> Option<u16> {
    for _ in 0..100 {
        match c.next(T).await {
            Ok(_) => continue,
            Err(ClientError::Closed(code)) => return code,
            Err(e) => panic!("expected a close, got {e}"),
        }
    }
    panic!("no close after 100 frames");
}

fn draining(server: &Server) -> bool {
    matches!(http_get(server.http, "/readyz", &[]), Ok((503, b)) if b.contains("\"draining\""))
}

#[tokio::test]
async fn sigterm_sends_new_and_idle_sessions_elsewhere_and_waits_for_live_calls() {
    let mut server = start_firstcall(&["--drain-timeout", "60s"]);
    assert!(matches!(http_get(server.http, "/readyz", &[]), Ok((200, _))));
    let (mut alice, mut bob) = in_call(&server, "c1").await;
    let mut carol = dev(&server, "carol", "c").await;

    server.proc.signal("TERM");
    assert!(wait_until(T, || draining(&server)), "/readyz never said draining");
    let (status, health) = http_get(server.http, "/healthz", &[]).unwrap();
    assert_eq!(status, 200, "a draining node is alive: {health}");
    assert!(health.contains("\"draining\":true"), "{health}");

    // Carol is in no call: sent elsewhere.
    assert_eq!(closed_with(&mut carol).await, Some(SERVICE_RESTART));
    assert_eq!(server.metric("firstcall_signal_drain_closed_total{why=\"idle\"}"), 1);
    // Her session was ended with it: her resume is refused too, so she does not come back
    // here to be sent away again every tick.
    match carol.reconnect().await {
        Err(ClientError::Closed(code)) => assert_eq!(code, Some(SERVICE_RESTART)),
        other => panic!(
            "an idle session resumed on a draining node: {:?}",
            other.map(|_| carol.welcome.clone())
        ),
    }
    // A new session is refused, with the code that says "reconnect elsewhere".
    match SignalClient::connect(&ws_url(&server), "dev:dave", "d").await {
        Err(ClientError::Closed(code)) => assert_eq!(code, Some(SERVICE_RESTART)),
        Ok(_) => panic!("a new session was accepted while draining"),
        Err(e) => panic!("expected a refusal, got {e}"),
    }
    // The live call carries on, and a blip of Bob's socket resumes here.
    alice
        .send(json!({"type": "call.signal", "call": "c1", "data": cand(1)}))
        .await;
    let (sig, _) = bob.expect("call.signal", T).await.unwrap();
    assert_eq!(sig["data"], cand(1));
    bob.cut();
    bob.reconnect().await.expect("a resume is accepted while draining");
    assert_eq!(bob.welcome["resumed"], true);
    assert!(server.proc.alive(), "exited with a call live");
    // No new call starts here meanwhile.
    alice
        .send(json!({"type": "call.invite", "call": "c9", "to": "bob", "media": "audio", "sdp": "o"}))
        .await;
    let (refused, _) = alice.expect("error", T).await.unwrap();
    assert_eq!(refused["code"], "draining");

    alice.send(json!({"type": "call.hangup", "call": "c1"})).await;
    let (end, _) = bob.expect("call.ended", T).await.unwrap();
    assert_eq!(end["reason"], "hangup");
    let status = server
        .proc
        .exit_within(Duration::from_secs(10))
        .expect("no exit after the last call ended");
    assert!(status.success(), "exit status {status}");
    assert_eq!(closed_with(&mut alice).await, Some(SERVICE_RESTART));
    let log = server.log_text();
    assert!(log.contains("drained: no live call left"), "{log}");
}

#[tokio::test]
async fn the_drain_timeout_and_a_second_sigterm_end_the_wait() {
    // --drain-timeout: the call is cut with 1012 when it passes, and the exit is clean.
    let mut server = start_firstcall(&["--drain-timeout", "1s"]);
    let (mut alice, mut bob) = in_call(&server, "c2").await;
    server.proc.signal("TERM");
    let status = server
        .proc
        .exit_within(Duration::from_secs(10))
        .expect("no exit after the drain timeout");
    assert!(status.success(), "exit status {status}");
    assert_eq!(closed_with(&mut alice).await, Some(SERVICE_RESTART));
    assert_eq!(closed_with(&mut bob).await, Some(SERVICE_RESTART));
    assert!(server.log_text().contains("why=Timeout"), "{}", server.log_text());

    // A second SIGTERM does not wait for the hour-long drain.
    let mut server = start_firstcall(&["--drain-timeout", "1h"]);
    let (_alice, _bob) = in_call(&server, "c3").await;
    server.proc.signal("TERM");
    assert!(wait_until(T, || draining(&server)));
    assert!(server.proc.alive());
    server.proc.signal("TERM");
    let status = server
        .proc
        .exit_within(Duration::from_secs(10))
        .expect("a second SIGTERM did not stop it");
    assert!(status.success(), "exit status {status}");
    assert!(server.log_text().contains("why=Interrupted"), "{}", server.log_text());
}

/// Review finding: the exit dropped the webhooks still queued, so a `call.cancelled`
/// made just before a SIGTERM never reached the receiver and the phone rang on. The
/// exit now waits (bounded) for them.
#[tokio::test]
async fn webhooks_queued_at_sigterm_are_delivered_before_the_exit() {
    use std::sync::{Arc, OnceLock};
    let log: Arc<OnceLock<std::path::PathBuf>> = Arc::default();
    let l = log.clone();
    // The phone's ring is answered only once the server says it is flushing its webhooks
    // at the exit (bounded): its cancel is then still queued behind it.
    let hook = HookReceiver::start([127, 0, 0, 1].into(), move |h, _| {
        if h.event() == "call.ring" {
            wait_until(Duration::from_secs(10), || {
                l.get()
                    .and_then(|p| std::fs::read_to_string(p).ok())
                    .is_some_and(|t| t.contains("delivering the queued webhooks before the exit"))
            });
        }
        Reply::Status(204, vec![])
    });
    let mut server = start_firstcall(&["--drain-timeout", "60s", "--webhook-url", &hook.url]);
    log.set(server.log.clone()).unwrap();
    let _phone = backgrounded(&server, "bob", "phone", "voip").await;
    let mut alice = dev(&server, "alice", "a").await;
    alice
        .send(json!({"type": "call.invite", "call": "c1", "to": "bob", "media": "audio", "sdp": "o"}))
        .await;
    assert!(wait_until(T, || hook.requests().len() == 1), "no ring");
    alice.send(json!({"type": "call.cancel", "call": "c1"})).await;
    // The ring at the receiver, the cancel queued behind it.
    assert!(wait_until(T, || server.metric("firstcall_webhook_queued") == 2));
    server.proc.signal("TERM");
    let status = server.proc.exit_within(Duration::from_secs(20)).expect("no exit");
    assert!(status.success(), "exit status {status}");
    assert_eq!(hook.events(), ["call.ring", "call.cancelled"], "{}", server.log_text());
    assert_eq!(hook.requests()[1].answered, 204);
    assert!(server.log_text().contains("webhooks flushed"), "{}", server.log_text());
}
