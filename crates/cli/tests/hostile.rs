//! Hostile clients against the real binary: each test reproduces an attack that took
//! the service down or abused it, and asserts the bound that now holds.
//!
//! Attackers connect from 127.0.0.2 where the legitimate client (and the test's own
//! /healthz and /metrics reads) use 127.0.0.1: on one machine that is how "a stranger"
//! and "everyone else" differ to a per-address cap.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use firstcall_client::signal::SignalClient;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(5);

/// A TCP connection to `to` from `from` (any port).
fn connect_from(from: [u8; 4], to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    s.bind(&SocketAddr::from((from, 0)).into())?;
    s.connect_timeout(&to.into(), Duration::from_secs(2))?;
    Ok(s.into())
}

/// Whether the server has closed `s` (EOF or reset) within `within`.
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut b = [0u8; 1024];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue, // a response, or an error page: keep reading to the close
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return false
            }
            Err(_) => return true,
        }
    }
}

fn health(server: &Server) -> (u16, Value) {
    let (status, body) = http_get(server.http, "/healthz", &[]).expect("GET /healthz");
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

#[test]
fn a_trickled_header_and_an_idle_keep_alive_are_cut_at_the_header_timeout() {
    let server = start_firstcall(&["--http-header-timeout", "2s"]);
    // Before: 13 bytes trickled one every 5 s stayed open for the whole 65 s tried.
    let mut s = connect_from([127, 0, 0, 2], server.http).unwrap();
    let start = Instant::now();
    let head = b"GET /healthz HTTP/1.1\r\nHost: x\r\n";
    let mut cut = false;
    for b in head.iter().take(13) {
        if s.write_all(&[*b]).is_err() {
            cut = true;
            break;
        }
        // The attack's pace, not a synchronisation: one byte every 400 ms.
        std::thread::sleep(Duration::from_millis(400));
        if start.elapsed() > Duration::from_secs(8) {
            break;
        }
    }
    let cut = cut || closed_within(&mut s, Duration::from_secs(6));
    let took = start.elapsed();
    assert!(cut, "a header trickled for {took:?} is still open");
    assert!(took >= Duration::from_millis(1900), "cut before the timeout: {took:?}");
    assert!(took < Duration::from_secs(8), "cut only after {took:?}");

    // A keep-alive connection that goes quiet after one request is closed as well.
    let mut k = connect_from([127, 0, 0, 2], server.http).unwrap();
    k.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut r = BufReader::new(k.try_clone().unwrap());
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 200"), "{line}");
    let idle = Instant::now();
    assert!(
        closed_within(&mut k, Duration::from_secs(6)),
        "idle keep-alive kept open"
    );
    assert!(idle.elapsed() >= Duration::from_millis(1900), "{:?}", idle.elapsed());
    assert!(server.metric("firstcall_http_header_timeouts_total") >= 2);
}

#[test]
fn fifty_idle_connections_leave_health_and_turn_working_under_ulimit_256() {
    // Before: under `ulimit -n 64`, 50 idle connections made /healthz fail and a TURN
    // Allocate get 508, still 20 s later.
    let server = start_firstcall_nofile(256, &["--turn-secret", "s"]);
    let (status, h) = health(&server);
    assert_eq!(status, 200);
    // Half the descriptors for HTTP, a quarter of that per address.
    assert_eq!(h["max_connections"], 128, "{h}");
    let mut idle: Vec<TcpStream> = (0..50)
        .map(|_| connect_from([127, 0, 0, 2], server.http).unwrap())
        .collect();
    // The kernel completes every handshake; the server keeps 32 and closes the rest.
    let mut refused = 0;
    for s in &mut idle {
        if closed_within(s, Duration::from_millis(300)) {
            refused += 1;
        }
    }
    assert_eq!(refused, 50 - 32, "connections closed at once past the per-address cap");
    assert_eq!(
        server.metric("firstcall_http_connections_refused_total{reason=\"max_connections_per_ip\"}"),
        18
    );
    let (status, h) = health(&server);
    assert_eq!((status, h["status"].as_str()), (200, Some("ok")), "{h}");
    assert_eq!(h["connections"], 33, "32 idle and this request: {h}");
    let relayed = allocate(server.turn, "s", "firstcall.test");
    assert!(relayed.port() >= server.relay.0 && relayed.port() <= server.relay.1);
    drop(idle);
}

#[tokio::test]
async fn running_out_of_descriptors_degrades_health_and_spares_live_sessions() {
    // Caps above what the descriptors allow, on purpose: the kernel runs out first.
    let server = start_firstcall_nofile(
        96,
        &[
            "--turn-secret",
            "s",
            "--max-connections",
            "10000",
            "--max-connections-per-ip",
            "0",
        ],
    );
    let mut alice = SignalClient::connect(&format!("ws://{}/v1/ws", server.http), "dev:alice", "a")
        .await
        .unwrap();
    let relayed = allocate(server.turn, "s", "firstcall.test");
    let addr = server.http;
    let held = tokio::task::spawn_blocking(move || {
        let mut v = Vec::new();
        for _ in 0..120 {
            match connect_from([127, 0, 0, 2], addr) {
                Ok(s) => v.push(s),
                Err(_) => break,
            }
        }
        v
    })
    .await
    .unwrap();
    assert!(held.len() > 96, "only {} connections made", held.len());
    // The kernel queues connections the server has not accepted yet: hold them until the
    // server has met EMFILE itself (on a loaded machine it may accept them only after they
    // were dropped, and then each closes before the next arrives).
    let logged = wait_until(Duration::from_secs(10), || {
        server.log_text().contains("out of file descriptors")
    });
    assert!(logged, "no exhaustion logged while {} connections held", held.len());
    // The session carries on while the listener cannot accept.
    // (A sequenced frame with an answer of its own: the client swallows pongs.)
    alice.send(json!({"type": "call.hangup", "call": "none"})).await;
    let answer = match alice.next(T).await {
        Ok(p) => p,
        Err(e) => panic!(
            "no answer while descriptors are exhausted: {e}; log:\n{}",
            server.log_text()
        ),
    };
    assert_eq!(
        (answer["type"].as_str(), answer["code"].as_str()),
        (Some("error"), Some("unknown_call"))
    );
    drop(held);
    let ok = wait_until(
        Duration::from_secs(10),
        || matches!(http_get(server.http, "/healthz", &[]), Ok((200, b)) if b.contains("\"degraded\"")),
    );
    let (status, h) = health(&server);
    assert!(ok, "/healthz after exhaustion: {status} {h}");
    assert!(h["degraded"][0].as_str().unwrap().contains("file descriptors"), "{h}");
    assert!(server.metric("firstcall_http_accept_errors_total{reason=\"fd_exhausted\"}") >= 1);
    // Once the descriptors are back, TURN allocates again (a new relay port).
    assert_ne!(allocate(server.turn, "s", "firstcall.test"), relayed);
}

/// A WebSocket opening handshake from `from`; the socket once `101` came back.
fn websocket_from(from: [u8; 4], server: &Server) -> Option<TcpStream> {
    let mut s = connect_from(from, server.http).ok()?;
    s.write_all(
        b"GET /v1/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .ok()?;
    s.set_read_timeout(Some(T)).ok()?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).ok()?;
    head.starts_with(b"HTTP/1.1 101").then_some(s)
}

#[test]
fn websocket_sessions_count_against_the_per_address_cap_for_their_whole_life() {
    // Before: one token, 300 device ids -> 300 live sessions, from one address.
    let server = start_firstcall(&["--turn-secret", "s", "--max-connections-per-ip", "3"]);
    let held: Vec<TcpStream> = (0..3)
        .map(|i| websocket_from([127, 0, 0, 2], &server).unwrap_or_else(|| panic!("socket {i} refused")))
        .collect();
    // Upgraded, the three still hold their slots: a fourth is closed at once.
    assert!(websocket_from([127, 0, 0, 2], &server).is_none());
    assert_eq!(
        server.metric("firstcall_http_connections_refused_total{reason=\"max_connections_per_ip\"}"),
        1
    );
    // Another address is not affected; a slot frees when its socket goes.
    assert!(websocket_from([127, 0, 0, 3], &server).is_some());
    drop(held);
    assert!(wait_until(T, || websocket_from([127, 0, 0, 2], &server).is_some()));
}

#[test]
fn serve_without_a_token_setting_refuses_to_start_and_says_how_to_choose() {
    let out = std::process::Command::new(firstcall_bin())
        .args(["serve", "--data-dir"])
        .arg(std::env::temp_dir().join(format!("firstcall-nodev-{}", std::process::id())))
        .env_remove("FIRSTCALL_CONFIG")
        .env_remove("FIRSTCALL_JWT_SECRET")
        .env_remove("FIRSTCALL_DEV")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for hint in ["--jwt-secret", "--jwt-public-key", "--dev"] {
        assert!(err.contains(hint), "{err}");
    }
}

#[test]
fn dev_tokens_exist_only_in_dev_mode_and_a_dev_server_beyond_loopback_warns() {
    // Before: with no flag, /v1/dev/token minted a token for `admin` and `Bearer dev:ceo`
    // got TURN credentials.
    let server = start_firstcall(&["--turn-secret", "s", "--jwt-secret", "jwt"]);
    let (status, _) = http_get(server.http, "/v1/dev/token?user=admin", &[]).unwrap();
    assert_eq!(status, 404);
    let (status, _) = http_get(
        server.http,
        "/v1/turn-credentials",
        &[("Authorization", "Bearer dev:ceo")],
    )
    .unwrap();
    assert_eq!(status, 401);
    assert!(!server.log_text().contains("DEV MODE"));

    let dev = start_firstcall(&["--turn-secret", "s", "--dev"]);
    let (status, body) = http_get(dev.http, "/v1/dev/token?user=alice", &[]).unwrap();
    assert_eq!(status, 200, "{body}");
    let log = dev.log_text();
    assert!(log.contains("DEV MODE"), "{log}");
    assert!(
        !log.contains("BEYOND LOOPBACK"),
        "loopback is not beyond loopback: {log}"
    );

    // Listening on every address (TURN here), it says so loudly.
    let wide = start_firstcall_on(
        SocketAddr::from(([0, 0, 0, 0], free_port())),
        &["--turn-secret", "s", "--dev"],
    );
    assert!(wide.log_text().contains("BEYOND LOOPBACK"), "{}", wide.log_text());
}

/// A webhook receiver that answers 204 after `delay`, counting requests and the most
/// open at once.
struct Receiver {
    url: String,
    requests: Arc<AtomicUsize>,
    most_open: Arc<AtomicUsize>,
}

fn receiver(delay: Duration) -> Receiver {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/push", l.local_addr().unwrap());
    let requests = Arc::new(AtomicUsize::new(0));
    let open = Arc::new(AtomicUsize::new(0));
    let most_open = Arc::new(AtomicUsize::new(0));
    let (r, o, m) = (requests.clone(), open.clone(), most_open.clone());
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { return };
            let (r, o, m) = (r.clone(), o.clone(), m.clone());
            std::thread::spawn(move || {
                let now = o.fetch_add(1, Ordering::SeqCst) + 1;
                m.fetch_max(now, Ordering::SeqCst);
                let mut rd = BufReader::new(s.try_clone().unwrap());
                let mut len = 0;
                let mut line = String::new();
                while rd.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                    line.clear();
                }
                let mut body = vec![0; len];
                let _ = rd.read_exact(&mut body);
                r.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(delay);
                let _ = (&s).write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n");
                o.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    Receiver {
        url,
        requests,
        most_open,
    }
}

#[tokio::test]
async fn an_invite_and_cancel_flood_pushes_the_victim_at_most_the_pair_burst() {
    // Before: 100 invite+cancel pairs in 2.1 s made 100 webhook POSTs to one victim.
    // Now: one per --webhook-pair-interval (2 s), at most --webhook-pair-burst (3) per
    // --webhook-callee-window (60 s), however long the flood takes.
    let hook = receiver(Duration::ZERO);
    let server = start_firstcall(&["--turn-secret", "s", "--webhook-url", &hook.url]);
    let mut m = SignalClient::connect(&format!("ws://{}/v1/ws", server.http), "dev:mallory", "m")
        .await
        .unwrap();
    let started = Instant::now();
    for i in 0..100 {
        let call = format!("flood-{i}");
        m.send(json!({"type": "call.invite", "call": call, "to": "victim", "media": "audio", "sdp": "o"}))
            .await;
        m.expect("call.pending", T).await.unwrap();
        m.send(json!({"type": "call.cancel", "call": call})).await;
    }
    let took = started.elapsed();
    let sent = "firstcall_webhook_events_total{outcome=\"delivered\"}";
    let coalesced = "firstcall_webhook_events_total{outcome=\"coalesced_pair\"}";
    // Every invite is decided: posted (and delivered, the receiver answers at once) or
    // coalesced.
    assert!(wait_until(T, || server.metric(sent) + server.metric(coalesced) == 100));
    let pushed = server.metric(sent);
    let spaced = 1 + took.as_secs() / 2; // at most one per 2 s interval
    assert!((1..=spaced.min(3)).contains(&pushed), "{pushed} pushes in {took:?}");
    assert_eq!(hook.requests.load(Ordering::SeqCst) as u64, pushed);
}

#[tokio::test]
async fn webhook_posts_are_bounded_in_flight_and_in_queue() {
    // A receiver that takes 3 s per request; two in flight, four waiting at most.
    let hook = receiver(Duration::from_secs(3));
    let server = start_firstcall(&[
        "--turn-secret",
        "s",
        "--webhook-url",
        &hook.url,
        "--webhook-concurrency",
        "2",
        "--webhook-queue",
        "4",
    ]);
    // Ten callers, each to a callee of its own: nothing to coalesce.
    for i in 0..10 {
        let mut c = SignalClient::connect(&format!("ws://{}/v1/ws", server.http), &format!("dev:caller{i}"), "d")
            .await
            .unwrap();
        c.send(json!({"type": "call.invite", "call": format!("q{i}"), "to": format!("away{i}"), "media": "audio", "sdp": "o"}))
            .await;
        c.expect("call.pending", T).await.unwrap();
    }
    assert_eq!(
        server.metric("firstcall_webhook_events_total{outcome=\"queue_full\"}"),
        6
    );
    // Two in flight and two waiting (the receiver holds each for 3 s).
    assert_eq!(server.metric("firstcall_webhook_queued"), 4);
    let log = server.log_text();
    let dropped = log
        .lines()
        .find(|l| l.contains("webhook dropped: queue full"))
        .unwrap_or_else(|| panic!("no drop logged: {log}"));
    assert!(
        dropped.contains("event=\"call.pending\"") && dropped.contains("queue=4"),
        "{dropped}"
    );
    assert!(wait_until(Duration::from_secs(15), || {
        server.metric("firstcall_webhook_events_total{outcome=\"delivered\"}") == 4
    }));
    assert_eq!(hook.requests.load(Ordering::SeqCst), 4);
    assert_eq!(hook.most_open.load(Ordering::SeqCst), 2, "at most two POSTs at once");
    assert_eq!(server.metric("firstcall_webhook_queued"), 0);
}
