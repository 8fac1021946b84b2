//! Protocol v1 over real WebSockets against the real binary.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::*;
use firstcall_client::signal::{ClientError, SignalClient};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(5);

/// Alice and Bob connected, and Bob's device ringing for Alice's `call`.
async fn ringing(server: &Server, call: &str, media: &str) -> (SignalClient, SignalClient) {
    let mut alice = dev(server, "alice", "a").await;
    let mut bob = dev(server, "bob", "b").await;
    alice
        .send(json!({"type": "call.invite", "call": call, "to": "bob", "media": media, "sdp": "o"}))
        .await;
    bob.expect("call.incoming", T).await.unwrap();
    (alice, bob)
}

fn cand(n: u32) -> Value {
    json!({"candidate": {"candidate": format!("candidate:{n} 1 udp 1 198.51.100.{n} 5000 typ srflx raddr 0.0.0.0 rport 0"), "sdpMid": "0", "sdpMLineIndex": 0, "usernameFragment": "u"}})
}

fn signal(call: &str, data: Value) -> Value {
    json!({"type": "call.signal", "call": call, "data": data})
}

#[tokio::test]
async fn welcome_hands_out_ice_servers_that_work_on_our_turn() {
    let server = start_firstcall(&["--turn-secret", "s"]);
    let c = dev(&server, "alice", "laptop").await;
    let w = &c.welcome;
    assert_eq!(w["user"], "alice");
    assert_eq!(w["resumed"], false);
    assert!(w["heartbeat_ms"].as_u64().unwrap() > 0);
    assert_eq!(w["ice_ttl"], 43_200);
    let ice = &w["ice_servers"][0];
    let urls: Vec<&str> = ice["urls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap())
        .collect();
    let port = server.turn.port();
    assert!(
        urls.contains(&format!("turn:127.0.0.1:{port}?transport=udp").as_str()),
        "{urls:?}"
    );
    assert!(
        urls.contains(&format!("turn:127.0.0.1:{port}?transport=tcp").as_str()),
        "{urls:?}"
    );
    assert!(urls.contains(&format!("stun:127.0.0.1:{port}").as_str()), "{urls:?}");
    // The credentials in the welcome allocate on the embedded TURN server.
    let relayed = allocate_with(
        server.turn,
        ice["username"].as_str().unwrap(),
        ice["credential"].as_str().unwrap(),
        "firstcall.test",
    );
    assert!((server.relay.0..=server.relay.1).contains(&relayed.port()));
    let (_, health) = http_get(server.http, "/healthz", &[]).unwrap();
    assert!(
        health.contains("\"dev_mode\":true") && health.contains("DEV MODE"),
        "{health}"
    );
}

#[tokio::test]
async fn jwt_mode_accepts_signed_tokens_and_refuses_others_with_4003() {
    let server = start_firstcall(&["--turn-secret", "s", "--jwt-secret", "jwt-key"]);
    let out = std::process::Command::new(firstcall_bin())
        .args(["token", "--jwt-secret", "jwt-key", "--user", "alice", "--ttl", "1h"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let c = SignalClient::connect(&ws_url(&server), &token, "d1")
        .await
        .expect("valid JWT accepted");
    assert_eq!(c.welcome["user"], "alice");
    let (status, _) = http_get(
        server.http,
        "/v1/turn-credentials",
        &[("Authorization", &format!("Bearer {token}"))],
    )
    .unwrap();
    assert_eq!(status, 200);

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expired = firstcall_server::tokens::mint_hs256("jwt-key", "alice", now - 7200, 3600).unwrap();
    let forged = firstcall_server::tokens::mint_hs256("other-key", "alice", now, 3600).unwrap();
    for bad in [expired.as_str(), forged.as_str(), "dev:alice"] {
        match SignalClient::connect(&ws_url(&server), bad, "d2").await {
            Err(ClientError::Closed(Some(4003))) => {}
            Err(e) => panic!("expected close 4003, got {e}"),
            Ok(_) => panic!("token {bad} accepted"),
        }
    }
    assert_eq!(http_get(server.http, "/v1/dev/token?user=alice", &[]).unwrap().0, 404);
    assert!(server.metric("firstcall_signal_errors_total{code=\"unauthorized\"}") >= 3);
}

#[tokio::test]
async fn a_call_from_invite_to_hangup_with_two_callee_devices() {
    let server = start_firstcall(&["--turn-secret", "s"]);
    let mut alice = dev(&server, "alice", "a").await;
    let mut bob1 = dev(&server, "bob", "b1").await;
    let mut bob2 = dev(&server, "bob", "b2").await;
    alice
        .send(json!({"type": "call.invite", "call": "call-1", "to": "bob", "media": "video", "sdp": "offer-sdp"}))
        .await;
    alice.send(signal("call-1", cand(1))).await;
    for b in [&mut bob1, &mut bob2] {
        let (inc, _) = b.expect("call.incoming", T).await.unwrap();
        assert_eq!(
            (inc["from"].clone(), inc["sdp"].clone()),
            (json!("alice"), json!("offer-sdp"))
        );
        let (sig, _) = b.expect("call.signal", T).await.unwrap();
        assert_eq!(sig["data"], cand(1));
    }
    let (r1, _) = alice.expect("call.ringing", T).await.unwrap();
    let (r2, _) = alice.expect("call.ringing", T).await.unwrap();
    let mut rang = [
        r1["device"].as_str().unwrap().to_owned(),
        r2["device"].as_str().unwrap().to_owned(),
    ];
    rang.sort();
    assert_eq!(rang, ["b1", "b2"]);

    bob2.send(json!({"type": "call.accept", "call": "call-1", "sdp": "answer-sdp"}))
        .await;
    let (acc, _) = alice.expect("call.accepted", T).await.unwrap();
    assert_eq!(
        (acc["device"].clone(), acc["sdp"].clone()),
        (json!("b2"), json!("answer-sdp"))
    );
    let (end1, _) = bob1.expect("call.ended", T).await.unwrap();
    assert_eq!(end1["reason"], "answered_elsewhere");
    bob2.send(signal("call-1", cand(2))).await;
    let (sig, _) = alice.expect("call.signal", T).await.unwrap();
    assert_eq!(
        (sig["from"].clone(), sig["from_device"].clone()),
        (json!("bob"), json!("b2"))
    );
    alice.send(json!({"type": "call.connected", "call": "call-1", "local": "srflx", "remote": "srflx", "protocol": "udp", "ms": 640})).await;
    alice
        .send(json!({"type": "call.hangup", "call": "call-1", "reason": "user"}))
        .await;
    let (end, _) = bob2.expect("call.ended", T).await.unwrap();
    assert_eq!(end["reason"], "hangup");
    assert!(wait_until(T, || server
        .metric("firstcall_signal_calls_ended_total{reason=\"hangup\"}")
        == 1));
    assert_eq!(
        server.metric("firstcall_signal_first_attempt_total{result=\"success\"}"),
        1
    );
    assert_eq!(
        server.metric("firstcall_signal_pair_types_total{pair=\"srflx-srflx\"}"),
        1
    );
    assert_eq!(server.metric("firstcall_signal_invite_to_connected_seconds_count"), 1);
}

#[tokio::test]
async fn refused_frames_get_errors_and_the_socket_stays_usable() {
    let server = start_firstcall(&["--turn-secret", "s"]);
    let mut a = dev(&server, "alice", "a").await;
    let seq = a.send(json!({"type": "call.fly", "call": "x"})).await;
    let (e, _) = a.expect("error", T).await.unwrap();
    assert_eq!(
        (e["code"].clone(), e["ref"].clone()),
        (json!("unknown_type"), json!(seq))
    );
    let huge =
        json!({"type": "call.signal", "call": "x", "data": {"sdp": {"type": "offer", "sdp": "x".repeat(100_000)}}});
    let seq = a.send(huge).await;
    let (e, _) = a.expect("error", T).await.unwrap();
    assert_eq!((e["code"].clone(), e["ref"].clone()), (json!("too_large"), json!(seq)));
    let seq = a.send(json!({"type": "call.accept", "call": "nope", "sdp": "x"})).await;
    let (e, _) = a.expect("error", T).await.unwrap();
    assert_eq!(
        (e["code"].clone(), e["ref"].clone()),
        (json!("unknown_call"), json!(seq))
    );
    // Still usable: an invite goes through.
    a.send(json!({"type": "call.invite", "call": "ok", "to": "bob", "media": "audio", "sdp": "o"}))
        .await;
    let (p, _) = a.expect("call.pending", T).await.unwrap();
    assert_eq!(p["call"], "ok");
}

#[tokio::test]
async fn offline_callee_triggers_a_signed_webhook_and_gets_the_invite_later() {
    let hook = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/push", hook.local_addr().unwrap());
    let server = start_firstcall(&[
        "--turn-secret",
        "s",
        "--webhook-url",
        &url,
        "--webhook-secret",
        "hook-key",
    ]);
    let mut alice = dev(&server, "alice", "a").await;
    alice
        .send(
            json!({"type": "call.invite", "call": "late", "to": "bob", "media": "audio", "sdp": "o",
                     "meta": {"subject": "the app's own data", "n": 1}}),
        )
        .await;
    alice.send(signal("late", cand(1))).await;
    alice.expect("call.pending", T).await.unwrap();

    let (mut sock, _) = tokio::task::spawn_blocking(move || hook.accept())
        .await
        .unwrap()
        .unwrap();
    sock.set_read_timeout(Some(T)).unwrap();
    let mut reader = BufReader::new(sock.try_clone().unwrap());
    let mut headers = std::collections::HashMap::new();
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.starts_with("POST /push "), "{line}");
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        if line.trim().is_empty() {
            break;
        }
        let (k, v) = line.split_once(':').unwrap();
        headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
    }
    let len: usize = headers["content-length"].parse().unwrap();
    let mut body = vec![0; len];
    reader.read_exact(&mut body).unwrap();
    std::io::Write::write_all(&mut sock, b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n").unwrap();
    let ts: u64 = headers["x-firstcall-timestamp"].parse().unwrap();
    assert_eq!(
        headers["x-firstcall-signature"],
        firstcall_server::webhook::signature("hook-key", ts, &body)
    );
    let event: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (event["event"].clone(), event["to"].clone(), event["from"].clone()),
        (json!("call.pending"), json!("bob"), json!("alice"))
    );
    // The invite's meta rides in the push (and in the invite, below).
    let meta = json!({"subject": "the app's own data", "n": 1});
    assert_eq!(event["meta"], meta);

    // Bob opens the app: the invite and the held candidate arrive, in order.
    let mut bob = dev(&server, "bob", "b").await;
    let (inc, skipped) = bob.expect("call.incoming", T).await.unwrap();
    assert!(skipped.is_empty());
    assert_eq!(inc["call"], "late");
    assert_eq!(inc["meta"], meta);
    assert_eq!(
        bob.welcome["calls"][0]["meta"], meta,
        "and in the welcome's calls snapshot"
    );
    let sig = bob.next(T).await.unwrap();
    assert_eq!(
        (sig["type"].clone(), sig["data"].clone()),
        (json!("call.signal"), cand(1))
    );
    alice.expect("call.ringing", T).await.unwrap();
}

#[tokio::test]
async fn resume_after_a_dead_socket_replays_what_was_missed() {
    let server = start_firstcall(&["--turn-secret", "s"]);
    let (mut alice, mut bob) = ringing(&server, "r", "audio").await;
    let session = bob.session().unwrap().to_owned();
    bob.cut();
    for n in 1..=4 {
        alice.send(signal("r", cand(n))).await;
    }
    bob.reconnect().await.unwrap();
    assert_eq!(bob.welcome["resumed"], true);
    assert_eq!(bob.session(), Some(session.as_str()));
    for n in 1..=4 {
        let (sig, _) = bob.expect("call.signal", T).await.unwrap();
        assert_eq!(sig["data"], cand(n));
    }
    assert!(wait_until(T, || server
        .metric("firstcall_signal_resumes_total{result=\"ok\"}")
        == 1));
}

/// Cut the callee's socket at a random point of call setup, hundreds of times:
/// every candidate arrives once and in order, and every call connects or ends
/// with an explicit reason.
#[tokio::test]
async fn callee_socket_cut_at_random_points_loses_nothing() {
    let runs: u64 = if std::env::var_os("FIRSTCALL_QUICK").is_some() {
        200
    } else {
        500
    };
    let server = start_firstcall(&["--turn-secret", "s"]);
    let started = Instant::now();
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    const STEPS: u64 = 15;
    for run in 0..runs {
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "chaos test over its time bound at run {run}"
        );
        let cut_at = next() % STEPS;
        let cut_twice = next() % 4 == 0;
        let second_cut = next() % STEPS;
        let (caller, callee, call) = (format!("a{run}"), format!("b{run}"), format!("call-{run}"));
        let mut a = dev(&server, &caller, "a").await;
        let mut b = dev(&server, &callee, "b").await;
        let mut step = 0u64;
        macro_rules! maybe_cut {
            () => {
                if step == cut_at || (cut_twice && step == second_cut) {
                    b.cut();
                    if next() % 2 == 0 {
                        tokio::time::sleep(Duration::from_millis(next() % 20)).await;
                    }
                    b.reconnect().await.expect("resume");
                    assert_eq!(b.welcome["resumed"], true, "run {run}: resume refused");
                }
                step += 1;
            };
        }
        a.send(json!({"type": "call.invite", "call": call, "to": callee, "media": "video", "sdp": "o"}))
            .await;
        for n in 1..=5 {
            a.send(signal(&call, cand(n))).await;
        }
        a.send(signal(&call, json!({"end_of_candidates": true}))).await;
        maybe_cut!();
        let (inc, _) = b
            .expect("call.incoming", T)
            .await
            .unwrap_or_else(|e| panic!("run {run}: incoming: {e}"));
        assert_eq!(inc["call"], call.as_str());
        let mut got = vec![];
        while got.len() < 6 {
            maybe_cut!();
            let v = b
                .next(T)
                .await
                .unwrap_or_else(|e| panic!("run {run}: callee recv: {e}"));
            assert_eq!(v["type"], "call.signal", "run {run}: unexpected {v}");
            got.push(v["data"].clone());
        }
        let want: Vec<Value> = (1..=5).map(cand).chain([json!({"end_of_candidates": true})]).collect();
        assert_eq!(got, want, "run {run} (cut at {cut_at}): caller candidates");
        maybe_cut!();
        b.send(json!({"type": "call.accept", "call": call, "sdp": "answer"}))
            .await;
        for n in 100..105 {
            maybe_cut!();
            b.send(signal(&call, cand(n))).await;
        }
        maybe_cut!();
        let (acc, _) = a
            .expect("call.accepted", T)
            .await
            .unwrap_or_else(|e| panic!("run {run}: accepted: {e}"));
        assert_eq!(acc["sdp"], "answer");
        let mut back = vec![];
        while back.len() < 5 {
            let v = a
                .next(T)
                .await
                .unwrap_or_else(|e| panic!("run {run}: caller recv: {e}"));
            if v["type"] == "call.ringing" {
                continue;
            }
            assert_eq!(v["type"], "call.signal", "run {run}: unexpected {v}");
            back.push(v["data"].clone());
        }
        assert_eq!(
            back,
            (100..105).map(cand).collect::<Vec<_>>(),
            "run {run} (cut at {cut_at}): callee candidates"
        );
        a.send(json!({"type": "call.connected", "call": call, "local": "host", "remote": "host", "protocol": "udp", "ms": 10})).await;
        a.send(json!({"type": "call.hangup", "call": call})).await;
        maybe_cut!();
        let (end, _) = b
            .expect("call.ended", T)
            .await
            .unwrap_or_else(|e| panic!("run {run}: ended: {e}"));
        assert_eq!(end["reason"], "hangup");
        assert_eq!(step, STEPS, "run {run}: every cut point lies on the path");
    }
    assert!(wait_until(T, || server
        .metric("firstcall_signal_calls_ended_total{reason=\"hangup\"}")
        == runs));
    eprintln!(
        "chaos: {runs} calls, every one connected and ended with hangup, in {:?}",
        started.elapsed()
    );
}

/// A callee that stops reading is cut once its socket's queue passes the limit, and
/// nothing is lost by cutting it: on resume, every frame arrives, in order.
#[tokio::test]
async fn a_socket_too_slow_to_read_is_cut_and_its_frames_replayed_on_resume() {
    // Room for the frames bob leaves unacknowledged: with the default 1 MiB the session
    // would be given up (unacked_overflow) long before the kernel's buffers fill.
    let server = start_firstcall(&["--turn-secret", "s", "--max-unacked-bytes", "33554432"]);
    let (mut alice, mut bob) = ringing(&server, "slow", "video").await;
    // Answered: a ringing call would hold at most 64 KiB of alice's signals.
    bob.send(json!({"type": "call.accept", "call": "slow", "sdp": "a"}))
        .await;
    alice.expect("call.accepted", T).await.unwrap();
    // Bob reads nothing from here on. Frames of ~60 KB fill the kernel's buffers (a few
    // MB on loopback) and then the server's 1 MiB queue for his socket; 190 of them stay
    // within the rate limit's burst.
    let fds = || std::fs::read_dir(format!("/proc/{}/fd", server.proc.pid())).map_or(0, |d| d.count());
    let fds_before = fds();
    let big = |n: usize| {
        signal(
            "slow",
            json!({"sdp": {"type": "offer", "sdp": format!("{n:04}{}", "x".repeat(60_000))}}),
        )
    };
    let cut = "firstcall_signal_sockets_cut_total{reason=\"slow\"}";
    let mut sent = 0;
    while sent < 190 && server.metric(cut) == 0 {
        for _ in 0..10 {
            alice.send(big(sent)).await;
            sent += 1;
        }
    }
    assert!(
        wait_until(T, || server.metric(cut) == 1),
        "bob was cut after {sent} frames"
    );
    assert!(sent > 10, "the cut needs a full queue, not {sent} frames");
    // The server let go of bob's socket by itself, though bob still reads nothing: a
    // peer that never reads again must not hold a task and a descriptor for ever.
    assert!(
        wait_until(T, || fds() == fds_before - 1),
        "bob's socket still open in the server ({} descriptors, {fds_before} before)",
        fds()
    );
    // Alice's socket was not affected: she still gets answers.
    let seq = alice.send(json!({"type": "call.fly", "call": "slow"})).await;
    let (e, _) = alice.expect("error", T).await.unwrap();
    assert_eq!(
        (e["code"].clone(), e["ref"].clone()),
        (json!("unknown_type"), json!(seq))
    );
    // The server closed bob's socket itself (no close frame could get through a full
    // buffer). What he reads until then is whole and in order, with no gap.
    let mut got = 0;
    let end = loop {
        match bob.next(T).await {
            Ok(v) if v["type"] == "call.signal" => {
                let sdp = v["data"]["sdp"]["sdp"].as_str().unwrap();
                assert_eq!(&sdp[..4], format!("{got:04}"), "frame {got} before the cut");
                got += 1;
            }
            Ok(_) => {}
            Err(e) => break e,
        }
    };
    // A gap ("server skipped") would be a Protocol error: frames after a refused one
    // must not go out.
    assert!(
        !matches!(end, ClientError::Timeout | ClientError::Protocol(_)),
        "the server closed bob's socket, with no gap before: {end:?}"
    );
    assert!(got < sent, "bob read all {sent} frames, so nothing was cut");
    // The replay (several MB here) is itself more than the socket's queue and what the
    // kernel takes at once: a resume may be cut again, after delivering at least the
    // queue's worth in order (websocket/outlet.rs). Bob resumes until he has them all,
    // with no gap and no repeat across resumes.
    let mut resumes = 0;
    while got < sent {
        resumes += 1;
        assert!(resumes <= 40, "{got} of {sent} frames after {resumes} resumes");
        bob.reconnect().await.unwrap();
        assert_eq!(bob.welcome["resumed"], true, "the session outlived the socket");
        while got < sent {
            match bob.expect("call.signal", T).await {
                Ok((sig, _)) => {
                    let sdp = sig["data"]["sdp"]["sdp"].as_str().unwrap();
                    assert_eq!(&sdp[..4], format!("{got:04}"), "frame {got} of {sent}, in order");
                    got += 1;
                }
                Err(ClientError::Timeout | ClientError::Protocol(_)) => panic!("stalled or a gap at {got}"),
                Err(_) => break, // cut again: resume
            }
        }
    }
}
