//! The signaling hub's limits (issue 17) against the real binary: each one is hit over
//! real WebSockets, the client gets the documented refusal, nothing else changes, and
//! `/metrics` counts it. Servers run with a JWT secret (not dev mode) and small limits.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use firstcall_client::signal::{ClientError, SignalClient};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(5);
const JWT: &str = "limits-test-key";

fn start(extra: &[&str]) -> Server {
    let mut args = vec!["--turn-secret", "s", "--jwt-secret", JWT];
    args.extend_from_slice(extra);
    start_firstcall(&args)
}

fn token(user: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    firstcall_server::tokens::mint_hs256(JWT, user, now, 3600).unwrap()
}

async fn client(server: &Server, user: &str, device: &str) -> SignalClient {
    SignalClient::connect(&ws_url(server), &token(user), device)
        .await
        .unwrap_or_else(|e| panic!("{user}/{device} cannot connect: {e}"))
}

fn limit_hits(server: &Server, limit: &str) -> u64 {
    server.metric(&format!("firstcall_signal_limits_hit_total{{limit=\"{limit}\"}}"))
}

fn cand(n: u32) -> Value {
    json!({"candidate": {"candidate": format!("candidate:{n} 1 udp 1 198.51.100.{n} 5000 typ host"), "sdpMid": "0"}})
}

fn signal(call: &str, data: Value) -> Value {
    json!({"type": "call.signal", "call": call, "data": data})
}

fn invite(call: &str, to: &str) -> Value {
    json!({"type": "call.invite", "call": call, "to": to, "media": "audio", "sdp": "o"})
}

/// The next `error` frame, with every frame skipped on the way.
async fn next_error(c: &mut SignalClient) -> (Value, Vec<Value>) {
    c.expect("error", T).await.expect("an error frame")
}

#[tokio::test]
async fn held_signals_are_capped_per_call_and_per_user() {
    let _shared = FLOODS.read().await;
    let server = start(&["--max-held-signals", "5", "--max-held-bytes-per-user", "20000"]);
    let mut alice = client(&server, "alice", "a").await;
    // Bob is offline: what alice signals while it rings is held for him.
    alice.send(invite("h1", "bob")).await;
    alice.expect("call.pending", T).await.unwrap();
    for n in 1..=5 {
        alice.send(signal("h1", cand(n))).await;
    }
    let refused = alice.send(signal("h1", cand(6))).await;
    let (e, _) = next_error(&mut alice).await;
    assert_eq!(
        (e["code"].clone(), e["ref"].clone()),
        (json!("held_full"), json!(refused))
    );
    assert!(e["message"].as_str().unwrap().contains("held_signals_per_call"), "{e}");
    assert_eq!(limit_hits(&server, "held_signals_per_call"), 1);
    // Per user, in bytes: a second ringing call may hold less than alice already does.
    alice.send(invite("h2", "carol")).await;
    alice.expect("call.pending", T).await.unwrap();
    let big = |n: usize| {
        signal(
            "h2",
            json!({"sdp": {"type": "offer", "sdp": format!("{n}{}", "x".repeat(15_000))}}),
        )
    };
    alice.send(big(1)).await;
    let refused = alice.send(big(2)).await;
    let (e, _) = next_error(&mut alice).await;
    assert_eq!(
        (e["code"].clone(), e["ref"].clone()),
        (json!("held_full"), json!(refused))
    );
    assert_eq!(limit_hits(&server, "held_bytes_per_user"), 1);
    // Nothing held was lost, and nothing refused was held: bob gets five, carol one.
    let mut bob = client(&server, "bob", "b").await;
    bob.expect("call.incoming", T).await.unwrap();
    for n in 1..=5 {
        let (s, _) = bob.expect("call.signal", T).await.unwrap();
        assert_eq!(s["data"], cand(n));
    }
    let mut carol = client(&server, "carol", "c").await;
    carol.expect("call.incoming", T).await.unwrap();
    let (s, _) = carol.expect("call.signal", T).await.unwrap();
    assert!(s["data"]["sdp"]["sdp"].as_str().unwrap().starts_with('1'));
    // Once answered, signals are relayed, not held, past the cap.
    bob.send(json!({"type": "call.accept", "call": "h1", "sdp": "a"})).await;
    alice.expect("call.accepted", T).await.unwrap();
    for n in 6..=12 {
        alice.send(signal("h1", cand(n))).await;
    }
    for n in 6..=12 {
        let (s, _) = bob.expect("call.signal", T).await.unwrap();
        assert_eq!(s["data"], cand(n));
    }
    assert!(matches!(
        bob.next(Duration::from_millis(300)).await,
        Err(ClientError::Timeout)
    ));
    assert!(matches!(
        carol.next(Duration::from_millis(100)).await,
        Err(ClientError::Timeout)
    ));
    assert_eq!(server.metric("firstcall_signal_errors_total{code=\"held_full\"}"), 2);
}

#[tokio::test]
async fn a_session_past_its_unacked_bytes_is_given_up() {
    let _shared = FLOODS.read().await;
    let server = start(&["--max-unacked-bytes", "300000"]);
    let mut alice = client(&server, "alice", "a").await;
    let mut bob = client(&server, "bob", "b").await;
    alice.send(invite("u", "bob")).await;
    bob.expect("call.incoming", T).await.unwrap();
    bob.send(json!({"type": "call.accept", "call": "u", "sdp": "a"})).await;
    alice.expect("call.accepted", T).await.unwrap();
    // Bob's network goes away; alice's frames wait in his session, up to 300 kB.
    bob.cut();
    let big = |n: usize| {
        signal(
            "u",
            json!({"sdp": {"type": "offer", "sdp": format!("{n}{}", "x".repeat(40_000))}}),
        )
    };
    for n in 0..6 {
        alice.send(big(n)).await;
    }
    let given_up = "firstcall_signal_sessions_ended_total{reason=\"unacked_overflow\"}";
    assert!(wait_until(T, || server.metric("firstcall_signal_unacked_frames") >= 6));
    assert_eq!(server.metric(given_up), 0, "six frames of 40 kB fit");
    for n in 6..9 {
        alice.send(big(n)).await;
    }
    assert!(wait_until(T, || server.metric(given_up) == 1));
    assert_eq!(limit_hits(&server, "unacked_bytes"), 1);
    assert_eq!(limit_hits(&server, "unacked_frames"), 0);
    let (ended, _) = alice.expect("call.ended", T).await.unwrap();
    assert_eq!(ended["reason"], "failed");
    bob.reconnect().await.unwrap();
    assert_eq!(bob.welcome["resumed"], false, "the session was given up, and says so");
}

#[tokio::test]
async fn error_frames_clip_what_they_echo() {
    let _shared = FLOODS.read().await;
    let server = start(&[]);
    let mut alice = client(&server, "alice", "a").await;
    let seq = alice.send(json!({"type": "t".repeat(60_000)})).await;
    let (e, _) = next_error(&mut alice).await;
    assert_eq!(
        (e["code"].clone(), e["ref"].clone()),
        (json!("unknown_type"), json!(seq))
    );
    assert_eq!(e["message"], format!("unknown type \"{}…\"", "t".repeat(64)));
    alice
        .send(json!({"type": "call.invite", "call": "c", "to": "bob", "media": "m".repeat(60_000), "sdp": "o"}))
        .await;
    let (e, _) = next_error(&mut alice).await;
    assert_eq!(e["code"], "bad_request");
    assert!(e["message"].as_str().unwrap().chars().count() <= 257, "{e}");
}

#[tokio::test]
async fn ringing_invites_do_not_stop_a_user_calling_and_are_capped_per_callee() {
    let _shared = FLOODS.read().await;
    let server = start(&["--max-calls-per-user", "2", "--max-ringing-per-callee", "3"]);
    let mut victim = client(&server, "victim", "v").await;
    let mut m1 = client(&server, "mallory1", "m").await;
    let mut m2 = client(&server, "mallory2", "m").await;
    let mut m3 = client(&server, "mallory3", "m").await;
    let mut m4 = client(&server, "mallory4", "m").await;
    // One ringing call per caller and callee: m1's second invite replaces its first.
    m1.send(invite("m1a", "victim")).await;
    m1.send(invite("m1b", "victim")).await;
    let (ended, _) = m1.expect("call.ended", T).await.unwrap();
    assert_eq!((&ended["call"], &ended["reason"]), (&json!("m1a"), &json!("cancelled")));
    m2.send(invite("m2a", "victim")).await;
    m3.send(invite("m3a", "victim")).await;
    for _ in 0..4 {
        victim.expect("call.incoming", T).await.unwrap();
    }
    // One more ringing invite than the victim may have: busy, and the victim is not rung.
    m4.send(invite("m4a", "victim")).await;
    let (ended, _) = m4.expect("call.ended", T).await.unwrap();
    assert_eq!(
        (ended["call"].clone(), ended["reason"].clone()),
        (json!("m4a"), json!("busy"))
    );
    assert_eq!(limit_hits(&server, "ringing_per_callee"), 1);
    // Rung three times (more than its own limit of two calls), the victim still calls.
    let mut carol = client(&server, "carol", "c").await;
    victim.send(invite("v1", "carol")).await;
    let (inc, _) = carol.expect("call.incoming", T).await.unwrap();
    assert_eq!(inc["from"], "victim");
    victim.send(invite("v2", "dave")).await;
    let refused = victim.send(invite("v3", "erin")).await;
    let (e, skipped) = next_error(&mut victim).await;
    assert!(skipped.iter().all(|v| v["type"] != "call.incoming"), "{skipped:?}");
    assert_eq!(
        (e["code"].clone(), e["ref"].clone()),
        (json!("rate_limited"), json!(refused))
    );
    assert_eq!(limit_hits(&server, "calls_per_user"), 1);
}

#[tokio::test]
async fn sessions_per_user_are_capped_at_hello_with_4009() {
    let _shared = FLOODS.read().await;
    let server = start(&["--max-devices-per-user", "2"]);
    let mut d1 = client(&server, "alice", "d1").await;
    let _d2 = client(&server, "alice", "d2").await;
    match SignalClient::connect(&ws_url(&server), &token("alice"), "d3").await {
        Err(ClientError::Closed(Some(4009))) => {}
        Err(e) => panic!("expected close 4009, got {e}"),
        Ok(_) => panic!("a third device was let in"),
    }
    assert_eq!(limit_hits(&server, "devices_per_user"), 1);
    assert_eq!(
        server.metric("firstcall_signal_errors_total{code=\"too_many_devices\"}"),
        1
    );
    assert_eq!(server.metric("firstcall_signal_sessions_active"), 2);
    // The devices already in carry on; a known device may start over; others may join.
    let _bob = client(&server, "bob", "d3").await;
    d1.send(json!({"type": "call.nope"})).await;
    next_error(&mut d1).await;
    let again = client(&server, "alice", "d1").await;
    assert_eq!(again.welcome["resumed"], false);
    assert_eq!(server.metric("firstcall_signal_sessions_active"), 3);
}

#[tokio::test]
async fn resumes_do_not_multiply_credential_refreshes() {
    let _shared = FLOODS.read().await;
    // Credentials live 5 s, so the welcome's are refreshed 4 s after it.
    let server = start(&["--credential-ttl", "5s"]);
    let mut alice = client(&server, "alice", "a").await;
    for _ in 0..20 {
        alice.cut();
        alice.reconnect().await.unwrap();
        assert_eq!(alice.welcome["resumed"], true);
    }
    // 6 s after the last welcome: one refresh (each resume used to add one of its own).
    let until = Instant::now() + Duration::from_secs(6);
    let mut refreshes = 0;
    loop {
        match alice.next(until.saturating_duration_since(Instant::now())).await {
            Ok(v) if v["type"] == "ice_servers" => refreshes += 1,
            Ok(v) => panic!("unexpected {v}"),
            Err(ClientError::Timeout) => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(refreshes, 1);
}

/// A raw WebSocket, the handshake done; `rcvbuf` shrinks its receive buffer (for a
/// peer that never reads).
fn raw_ws(server: &Server, rcvbuf: Option<usize>) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    if let Some(n) = rcvbuf {
        sock.set_recv_buffer_size(n).unwrap();
    }
    sock.connect(&server.http.into()).unwrap();
    let mut s: TcpStream = sock.into();
    s.set_read_timeout(Some(T)).unwrap();
    let req = format!(
        "GET /v1/ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        server.http
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b).unwrap();
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    s
}

/// Send one text frame (masked with zeros: the payload as is).
fn send_text(s: &mut TcpStream, text: &str) {
    let p = text.as_bytes();
    let mut f = vec![0x81];
    match p.len() {
        n @ 0..=125 => f.push(0x80 | n as u8),
        n => {
            f.push(0x80 | 126);
            f.extend_from_slice(&u16::try_from(n).unwrap().to_be_bytes());
        }
    }
    f.extend_from_slice(&[0, 0, 0, 0]);
    f.extend_from_slice(p);
    s.write_all(&f).unwrap();
}

/// The next frame: (opcode, payload).
fn read_frame(s: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut h = [0u8; 2];
    s.read_exact(&mut h).unwrap();
    let len = match h[1] & 0x7f {
        126 => {
            let mut l = [0u8; 2];
            s.read_exact(&mut l).unwrap();
            u16::from_be_bytes(l) as usize
        }
        127 => {
            let mut l = [0u8; 8];
            s.read_exact(&mut l).unwrap();
            u64::from_be_bytes(l) as usize
        }
        n => n as usize,
    };
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    (h[0] & 0x0f, body)
}

/// Send `hello` as written on a raw WebSocket: the error frame and close code it gets.
fn raw_hello(server: &Server, hello: &str) -> (Value, u16) {
    let mut s = raw_ws(server, None);
    send_text(&mut s, hello);
    let (op, text) = read_frame(&mut s);
    assert_eq!(op, 1);
    let (op, close) = read_frame(&mut s);
    assert_eq!(op, 8);
    (
        serde_json::from_slice(&text).unwrap(),
        u16::from_be_bytes([close[0], close[1]]),
    )
}

#[tokio::test]
async fn duplicate_keys_are_refused_in_the_hello_and_in_frames() {
    let _shared = FLOODS.read().await;
    let server = start(&[]);
    let (mallory, alice) = (token("mallory"), token("alice"));
    // A `Value` kept the last `token`: the hello would have been alice's.
    let hello = format!(r#"{{"type":"hello","token":"{mallory}","device":"m","token":"{alice}"}}"#);
    let (e, code) = raw_hello(&server, &hello);
    assert_eq!(e["code"], "bad_request");
    assert_eq!(e["message"], "hello: duplicate key \"token\"");
    assert_eq!(code, 4000);
    assert_eq!(server.metric("firstcall_signal_sessions_active"), 0);
    // A sequenced frame: refused by its seq, the session goes on.
    let mut a = client(&server, "alice", "a").await;
    let mut b = client(&server, "bob", "b").await;
    a.send(invite("d", "bob")).await;
    b.expect("call.incoming", T).await.unwrap();
    a.send_raw(
        r#"{"type":"call.signal","seq":2,"call":"d","data":{"sdp":{"type":"offer","sdp":"v=0","type":"answer"}}}"#
            .into(),
    )
    .await
    .unwrap();
    let (e, _) = next_error(&mut a).await;
    assert_eq!(
        (e["code"].clone(), e["ref"].clone(), e["message"].clone()),
        (json!("bad_request"), json!(2), json!("duplicate key \"type\""))
    );
    assert!(matches!(
        b.next(Duration::from_millis(300)).await,
        Err(ClientError::Timeout)
    ));
    assert!(server.metric("firstcall_signal_errors_total{code=\"bad_request\"}") >= 2);
}

// ---- Floods: the issue's bound on the server's memory growth (32 MiB) holds.

fn rss_mib(server: &Server) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.proc.pid())).unwrap();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    kb / 1024.0
}

/// `n` signals of ~60 KB on `call`, at 90/s (under the 100 frames/s rate limit, so each
/// one reaches the call logic).
async fn sixty_kb_signals(c: &mut SignalClient, call: &str, n: usize) {
    let mut tick = tokio::time::interval(Duration::from_millis(11));
    for i in 0..n {
        tick.tick().await;
        c.send(signal(
            call,
            json!({"sdp": {"type": "offer", "sdp": format!("{i}{}", "x".repeat(60_000))}}),
        ))
        .await;
    }
}

const BOUND_MIB: f64 = 32.0;

/// The floods run alone: every other test of this file takes this lock shared, a flood
/// takes it whole, so that the bystander's answer times measure the server under the
/// flood, not the other tests' servers on the same 2 cores.
static FLOODS: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// The issue's bound on what a flood may add to an unrelated user's answer time at p99
/// (before: 5.7 -> 242 ms for a ping during the held-signal flood). Added to the same
/// user's p99 measured just before the flood, so that a machine busy with other work
/// (both figures rise alike) does not fail the test, and a flood that slows others does.
const BYSTANDER_P99: Duration = Duration::from_millis(20);

/// The bystander's p99 with nothing going on (2 s, about 100 answers).
fn calm_p99(server: &Server) -> Duration {
    p99_max(&mut bystander_calm(server, &token("carol"), Duration::from_secs(2))).0
}

#[tokio::test]
async fn a_held_signal_flood_copied_to_late_devices_stays_bounded() {
    let _alone = FLOODS.write().await;
    let server = start(&[]);
    let mut alice = client(&server, "alice", "a").await;
    let calm = calm_p99(&server);
    let stop = Arc::new(AtomicBool::new(false));
    let watch = bystander(&server, &token("carol"), stop.clone());
    let before = rss_mib(&server);
    alice.send(invite("flood", "bob")).await;
    alice.expect("call.pending", T).await.unwrap();
    // 400 x 60 KB = 24 MB held before this bound, and a copy per late device.
    sixty_kb_signals(&mut alice, "flood", 400).await;
    let mut devices = Vec::new();
    for d in 0..3 {
        let mut s = raw_ws(&server, Some(4096));
        send_text(
            &mut s,
            &json!({"type": "hello", "token": token("bob"), "device": format!("b{d}")}).to_string(),
        );
        devices.push(s);
    }
    // Alice, the bystander and bob's three devices.
    assert!(wait_until(T, || server.metric("firstcall_signal_sessions_active") == 5));
    assert!(wait_until(T, || server
        .metric("firstcall_signal_errors_total{code=\"held_full\"}")
        == 399));
    let grown = rss_mib(&server) - before;
    assert!(grown < BOUND_MIB, "RSS grew {grown:.0} MiB");
    stop.store(true, Ordering::SeqCst);
    let (p99, max) = p99_max(&mut watch.join().unwrap());
    eprintln!("held flood: RSS grew {grown:.1} MiB; bystander p99 {p99:?} (calm {calm:?}), max {max:?}");
    assert!(
        p99 < calm + BYSTANDER_P99,
        "an unrelated user's answers took {p99:?} at p99 during the flood, {calm:?} before"
    );
}

#[tokio::test]
async fn a_resume_from_zero_on_a_socket_that_never_reads_stays_bounded() {
    let _alone = FLOODS.write().await;
    let server = start(&[]);
    let mut alice = client(&server, "alice", "a").await;
    let mut bob = client(&server, "bob", "b").await;
    alice.send(invite("r", "bob")).await;
    bob.expect("call.incoming", T).await.unwrap();
    bob.send(json!({"type": "call.accept", "call": "r", "sdp": "a"})).await;
    alice.expect("call.accepted", T).await.unwrap();
    let session = bob.session().unwrap().to_owned();
    bob.cut();
    let before = rss_mib(&server);
    // 600 x 60 KB = 36 MB kept for bob's resume before this bound, then replayed whole.
    sixty_kb_signals(&mut alice, "r", 600).await;
    let mut s = raw_ws(&server, Some(4096));
    let hello =
        json!({"type": "hello", "token": token("bob"), "device": "b", "resume": {"session": session, "last_seq": 0}});
    send_text(&mut s, &hello.to_string());
    assert!(wait_until(T, || server
        .metric("firstcall_signal_resumes_total{result=\"failed\"}")
        == 1));
    let grown = rss_mib(&server) - before;
    assert!(grown < BOUND_MIB, "RSS grew {grown:.0} MiB");
    assert_eq!(limit_hits(&server, "unacked_bytes"), 1);
    eprintln!("resume flood: RSS grew {grown:.1} MiB");
}

#[tokio::test]
async fn an_error_echo_flood_stays_bounded() {
    let _alone = FLOODS.write().await;
    let server = start(&[]);
    let calm = calm_p99(&server);
    let stop = Arc::new(AtomicBool::new(false));
    let watch = bystander(&server, &token("carol"), stop.clone());
    let before = rss_mib(&server);
    let mut m = raw_ws(&server, None);
    send_text(
        &mut m,
        &json!({"type": "hello", "token": token("mallory"), "device": "m"}).to_string(),
    );
    let (_, welcome) = read_frame(&mut m);
    assert!(String::from_utf8_lossy(&welcome).contains("welcome"));
    // 600 unknown types of 60 KB, the errors read (so no socket is cut) but never
    // acknowledged: 36 MB kept before the echo was clipped.
    let reader = std::thread::spawn({
        let mut r = m.try_clone().unwrap();
        move || {
            let mut errors = 0;
            while errors < 600 {
                let (op, p) = read_frame(&mut r);
                let v: Value = serde_json::from_slice(&p).unwrap_or_default();
                if op == 1 && v["type"] == "error" {
                    errors += 1;
                }
            }
        }
    });
    let t = "t".repeat(60_000);
    let mut tick = tokio::time::interval(Duration::from_millis(11));
    for seq in 1..=600 {
        tick.tick().await;
        send_text(&mut m, &json!({"type": t, "seq": seq}).to_string());
    }
    reader.join().unwrap();
    let grown = rss_mib(&server) - before;
    assert!(grown < BOUND_MIB, "RSS grew {grown:.0} MiB");
    stop.store(true, Ordering::SeqCst);
    let (p99, max) = p99_max(&mut watch.join().unwrap());
    // Mallory's 600 errors; the bystander acknowledged all of its own.
    assert!(wait_until(T, || server.metric("firstcall_signal_unacked_frames") == 600));
    eprintln!("echo flood: RSS grew {grown:.1} MiB; bystander p99 {p99:?} (calm {calm:?}), max {max:?}");
    assert!(
        p99 < calm + BYSTANDER_P99,
        "an unrelated user's answers took {p99:?} at p99 during the flood, {calm:?} before"
    );
}
