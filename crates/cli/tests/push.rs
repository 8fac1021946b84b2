//! Calls to sleeping phones against the real binary and a real HTTP receiver: a
//! backgrounded device gets its own `call.ring` push within a second of the invite
//! although its socket is open, and hears exactly once how the call ended.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(5);

/// (event, call, device) of everything received, in order.
fn events(got: &HookReceiver) -> Vec<(String, String, Value)> {
    got.requests()
        .iter()
        .map(|h| {
            (
                h.event().to_owned(),
                h.body["call"].as_str().unwrap_or("").to_owned(),
                h.body["device"].clone(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_backgrounded_phone_is_pushed_each_ring_and_hears_each_ending_once() {
    // Connections served at once (a sequential receiver held a second connection
    // until the first one's keep-alive timed out: the test's wait ran out first).
    let got = HookReceiver::ok();
    let url = got.url.clone();
    let server = start_firstcall(&["--webhook-url", &url, "--webhook-secret", "k"]);
    let mut phone = dev(&server, "bob", "phone").await;
    let mut laptop = dev(&server, "bob", "laptop").await;
    phone
        .send(json!({"type": "device.update", "push": {"provider": "apns-voip", "token": "voip-token"}, "state": "background"}))
        .await;
    // Frames of a session are handled in order: once this one's answer is back, the
    // update was handled too.
    phone.send(json!({"type": "call.hangup", "call": "none"})).await;
    let (answer, _) = phone.expect("error", T).await.unwrap();
    assert_eq!(answer["code"], "unknown_call");
    let mut alice = dev(&server, "alice", "a").await;
    let invited = Instant::now();
    alice
        .send(json!({"type": "call.invite", "call": "c1", "to": "bob", "media": "audio", "sdp": "o"}))
        .await;
    laptop.expect("call.incoming", T).await.unwrap();
    assert!(wait_until(T, || !got.requests().is_empty()), "no push");
    let first = got.requests()[0].clone();
    let (at, ring) = (first.at, first.body);
    assert!(
        at - invited < Duration::from_secs(1),
        "pushed {:?} after the invite",
        at - invited
    );
    assert_eq!(
        (ring["event"].clone(), ring["device"].clone(), ring["why"].clone()),
        (json!("call.ring"), json!("phone"), json!("background"))
    );
    assert_eq!(ring["push"], json!({"provider": "apns-voip", "token": "voip-token"}));
    alice.send(json!({"type": "call.cancel", "call": "c1"})).await;
    assert!(wait_until(T, || events(&got).len() >= 2));

    // Another caller; the laptop answers: the phone is told, once.
    let mut carol = dev(&server, "carol", "c").await;
    carol
        .send(json!({"type": "call.invite", "call": "c2", "to": "bob", "media": "audio", "sdp": "o"}))
        .await;
    laptop.expect("call.incoming", T).await.unwrap();
    laptop
        .send(json!({"type": "call.accept", "call": "c2", "sdp": "a"}))
        .await;
    carol.expect("call.accepted", T).await.unwrap();
    carol.send(json!({"type": "call.hangup", "call": "c2"})).await;
    laptop.expect("call.ended", T).await.unwrap();
    // Every event the server made is delivered: then the receiver has them all.
    let delivered = "firstcall_webhook_events_total{outcome=\"delivered\"}";
    assert!(wait_until(T, || server.metric(delivered) >= 4));
    assert!(wait_until(T, || events(&got).len() >= 4));
    let phone_json = json!("phone");
    assert_eq!(
        events(&got),
        [
            ("call.ring".into(), "c1".into(), phone_json.clone()),
            ("call.cancelled".into(), "c1".into(), phone_json.clone()),
            ("call.ring".into(), "c2".into(), phone_json.clone()),
            ("call.answered_elsewhere".into(), "c2".into(), phone_json),
        ]
    );
    assert_eq!(server.metric(delivered), 4, "nothing else was posted");
    drop(phone);
}

#[tokio::test]
async fn a_caller_who_cancels_and_calls_again_rings_the_phone_again_up_to_the_pair_burst() {
    // Before: one place per caller in the callee's 60 s window, so a second call from
    // the same caller within a minute (a mis-tap, then the real call) never woke the
    // phone. Now each pair gets --webhook-pair-burst (3) per window, spaced by
    // --webhook-pair-interval (1 s here, to keep the test short).
    let got = HookReceiver::ok();
    let url = got.url.clone();
    let interval = Duration::from_secs(1);
    let server = start_firstcall(&[
        "--webhook-url",
        &url,
        "--webhook-secret",
        "k",
        "--webhook-pair-interval",
        "1s",
    ]);
    let mut phone = backgrounded(&server, "bob", "phone", "t").await;
    let mut alice = dev(&server, "alice", "a").await;
    let delivered = "firstcall_webhook_events_total{outcome=\"delivered\"}";
    let coalesced = "firstcall_webhook_events_total{outcome=\"coalesced_pair\"}";
    let mut expected = vec![];
    for i in 1..=4u64 {
        let call = format!("c{i}");
        let placed = Instant::now();
        alice
            .send(json!({"type": "call.invite", "call": call, "to": "bob", "media": "audio", "sdp": "o"}))
            .await;
        // The invite was handled (its push decided now or just after).
        phone.expect("call.incoming", T).await.unwrap();
        alice.send(json!({"type": "call.cancel", "call": call})).await;
        if i <= 3 {
            expected.push(("call.ring".to_owned(), call.clone(), json!("phone")));
            expected.push(("call.cancelled".to_owned(), call.clone(), json!("phone")));
            let n = expected.len() as u64;
            assert!(wait_until(T, || server.metric(delivered) >= n), "call {i} not pushed");
        } else {
            // The post decision may follow the device's `call.incoming`: wait for it.
            assert!(
                wait_until(T, || server.metric(coalesced) == 1),
                "the fourth call is over the pair's burst"
            );
        }
        // The next call past the pair's spacing (the policy under test is about time).
        let spent = placed.elapsed();
        if spent < interval {
            tokio::time::sleep(interval - spent + Duration::from_millis(50)).await;
        }
    }
    assert_eq!(events(&got), expected);
    assert_eq!(server.metric(delivered), 6, "nothing else was posted");
    drop(phone);
}

#[tokio::test]
async fn a_sleeping_phone_answers_with_the_answer_token_of_its_push() {
    // The app's own tokens are HS256 with a secret the phone's stale token may not meet
    // any more; the push's answer token signs it in at once, on any node (keyed from the
    // TURN secret), until the ring would time out.
    let got = HookReceiver::ok();
    let url = got.url.clone();
    let server = start_firstcall(&[
        "--jwt-secret",
        "app-secret",
        "--turn-secret",
        "turn-secret",
        "--webhook-url",
        &url,
        "--webhook-secret",
        "k",
        "--ring-timeout",
        "30s",
    ]);
    let ws = ws_url(&server);
    let token = |user: &str| firstcall_server::tokens::mint_hs256("app-secret", user, unix_now(), 300).unwrap();
    let mut phone = firstcall_client::signal::SignalClient::connect(&ws, &token("bob"), "phone")
        .await
        .unwrap();
    phone
        .send(
            json!({"type": "device.update", "push": {"provider": "apns-voip", "token": "voip"}, "state": "background"}),
        )
        .await;
    phone.send(json!({"type": "call.hangup", "call": "none"})).await;
    phone.expect("error", T).await.unwrap();
    drop(phone); // the app is killed: no socket at all
    let mut alice = firstcall_client::signal::SignalClient::connect(&ws, &token("alice"), "a")
        .await
        .unwrap();
    alice
        .send(json!({"type": "call.invite", "call": "c1", "to": "bob", "media": "audio", "sdp": "offer"}))
        .await;
    assert!(
        wait_until(T, || events(&got).iter().any(|e| e.0 == "call.ring")),
        "no push"
    );
    let ring = got
        .requests()
        .into_iter()
        .find(|h| h.event() == "call.ring")
        .unwrap()
        .body;
    let answer = ring["answer_token"].as_str().expect("an answer token").to_owned();
    let expires = ring["answer_token_expires"].as_u64().expect("its expiry");
    let now = unix_now();
    assert!(
        (now + 29..=now + 31).contains(&expires),
        "lasts the ring timeout: {expires} vs {now}"
    );

    // Another deployment's token, and this one altered, are refused.
    let forged = firstcall_server::answer_token::AnswerTokens::from_turn_secret("other").mint(
        "bob",
        "c1",
        Some("phone"),
        expires,
    );
    assert!(firstcall_client::signal::SignalClient::connect(&ws, &forged, "phone")
        .await
        .is_err());
    let mut altered = answer.clone();
    altered.pop();
    altered.push(if answer.ends_with('A') { 'B' } else { 'A' });
    assert!(firstcall_client::signal::SignalClient::connect(&ws, &altered, "phone")
        .await
        .is_err());

    // The woken phone signs in with it, finds the ringing call, and answers.
    let mut woken = firstcall_client::signal::SignalClient::connect(&ws, &answer, "phone")
        .await
        .unwrap();
    let (incoming, _) = woken.expect("call.incoming", T).await.unwrap();
    assert_eq!(
        (incoming["call"].as_str(), incoming["from"].as_str()),
        (Some("c1"), Some("alice"))
    );
    woken
        .send(json!({"type": "call.accept", "call": "c1", "sdp": "answer"}))
        .await;
    let (accepted, _) = alice.expect("call.accepted", T).await.unwrap();
    assert_eq!(accepted["device"], "phone");
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}
