//! Calls to sleeping phones against the real binary and a real HTTP receiver: a
//! backgrounded device gets its own `call.ring` push within a second of the invite
//! although its socket is open, and hears exactly once how the call ended.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(5);

/// Webhook events received, with when.
type Received = Arc<Mutex<Vec<(Instant, Value)>>>;

/// A webhook receiver on loopback answering 204 to each POST.
fn receiver() -> (String, Received) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", l.local_addr().unwrap());
    let got: Received = Arc::default();
    let g = got.clone();
    std::thread::spawn(move || {
        // Bounded: the test's events and their connections.
        for _ in 0..200 {
            let Ok((mut s, _)) = l.accept() else { return };
            s.set_read_timeout(Some(T)).unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            // Keep-alive or not: read requests until the client closes.
            for _ in 0..50 {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                let mut len = 0;
                loop {
                    line.clear();
                    if r.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                        break;
                    }
                    if let Some((k, v)) = line.split_once(':') {
                        if k.eq_ignore_ascii_case("content-length") {
                            len = v.trim().parse().unwrap_or(0);
                        }
                    }
                }
                let mut body = vec![0; len];
                if r.read_exact(&mut body).is_err() {
                    break;
                }
                if let Ok(v) = serde_json::from_slice(&body) {
                    g.lock().unwrap().push((Instant::now(), v));
                }
                if s.write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
                    .is_err()
                {
                    break;
                }
            }
        }
    });
    (url, got)
}

/// (event, call, device) of everything received, in order.
fn events(got: &Received) -> Vec<(String, String, Value)> {
    got.lock()
        .unwrap()
        .iter()
        .map(|(_, b)| {
            (
                b["event"].as_str().unwrap_or("").to_owned(),
                b["call"].as_str().unwrap_or("").to_owned(),
                b["device"].clone(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_backgrounded_phone_is_pushed_each_ring_and_hears_each_ending_once() {
    let (url, got) = receiver();
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
    assert!(wait_until(T, || !got.lock().unwrap().is_empty()), "no push");
    let (at, ring) = got.lock().unwrap()[0].clone();
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
