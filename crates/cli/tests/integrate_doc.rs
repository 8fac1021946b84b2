//! docs/integrate.md's examples, run as written: the Node and Spring token minters' tokens open a
//! session, the config file for an existing coturn is what the welcome hands out, and the
//! Node webhook receiver verifies and prints the server's pushes; docs/webhooks.md's
//! receiver turns a ring and its cancel into the APNs and FCM requests it would send.
//! (integrate.md's TypeScript examples are type-checked by web/tests/sdk-package.test.mjs.)

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use firstcall_client::signal::SignalClient;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(5);

/// The code block of docs/integrate.md marked `file=<name>`, written to a temp dir.
fn example(name: &str, dir: &std::path::Path) -> PathBuf {
    example_in("integrate.md", name, dir)
}

/// The code block of docs/`doc` marked `file=<name>`, written to a temp dir.
fn example_in(doc: &str, name: &str, dir: &std::path::Path) -> PathBuf {
    let path = format!("{}/../../docs/{doc}", env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(&path).unwrap();
    let marker = format!(" file={name}\n");
    let start = doc
        .find(&marker)
        .unwrap_or_else(|| panic!("no block file={name} in {path}"))
        + marker.len();
    let end = start + doc[start..].find("\n```").expect("closed block");
    let path = dir.join(name);
    std::fs::write(&path, &doc[start..=end]).unwrap();
    path
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("firstcall-integrate-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[tokio::test]
async fn the_node_token_minter_opens_a_session_and_the_coturn_config_is_handed_out() {
    if !have_tool("node") {
        return;
    }
    let dir = temp_dir("mint");
    let minter = example("mint-token.mjs", &dir);
    let config = example("firstcall.toml", &dir);
    let out = run_bounded(
        Command::new("node")
            .arg(&minter)
            .arg("alice")
            .env("FIRSTCALL_JWT_SECRET", "s3cret"),
        T,
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let server = start_firstcall(&[
        "--config",
        config.to_str().unwrap(),
        "--jwt-secret",
        "s3cret",
        "--turn-secret",
        "t",
    ]);
    // The config asks for an audience: the minter's token has none, so it is refused...
    let url = format!("ws://{}/v1/ws", server.http);
    assert!(
        SignalClient::connect(&url, &token, "d").await.is_err(),
        "jwt_audience is checked"
    );
    drop(server);
    // ...and accepted by a server without that setting, with the coturn URIs handed out.
    let plain = dir.join("plain.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &plain,
        text.lines()
            .filter(|l| !l.starts_with("jwt_audience"))
            .collect::<Vec<_>>()
            .join("\n"),
    )
    .unwrap();
    let server = start_firstcall(&[
        "--config",
        plain.to_str().unwrap(),
        "--jwt-secret",
        "s3cret",
        "--turn-secret",
        "t",
    ]);
    let alice = SignalClient::connect(&format!("ws://{}/v1/ws", server.http), &token, "d")
        .await
        .expect("the minted token opens a session");
    assert_eq!(alice.welcome["user"], "alice");
    let urls: Vec<String> = alice.welcome["ice_servers"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| {
            s["urls"]
                .as_array()
                .unwrap()
                .iter()
                .map(|u| u.as_str().unwrap().to_owned())
        })
        .collect();
    for want in [
        "turn:turn.example.org:3478?transport=udp",
        "turn:turn.example.org:3478?transport=tcp",
        "turns:turn.example.org:5349?transport=tcp",
    ] {
        assert!(urls.iter().any(|u| u == want), "{want} not in {urls:?}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn the_node_webhook_receiver_verifies_and_prints_a_phones_ring() {
    if !have_tool("node") {
        return;
    }
    let dir = temp_dir("hook");
    let receiver = example("webhook-receiver.mjs", &dir);
    let port = free_port();
    let mut child = Proc::spawn(
        "webhook-receiver",
        Command::new("node")
            .arg(&receiver)
            .env("PORT", port.to_string())
            .env("WEBHOOK_SECRET", "hook-key")
            .stdout(Stdio::piped()),
    );
    let stdout = child.stdout().expect("piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok).take(10) {
            let _ = tx.send(line);
        }
    });
    // The receiver listens once node has started it: a TCP connect says so.
    assert!(wait_until(T, || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()));
    let url = format!("http://127.0.0.1:{port}/firstcall");
    let server = start_firstcall(&["--webhook-url", &url, "--webhook-secret", "hook-key"]);
    let ws = format!("ws://{}/v1/ws", server.http);
    let mut phone = SignalClient::connect(&ws, "dev:bob", "phone").await.unwrap();
    phone
        .send(json!({"type": "device.update", "push": {"provider": "apns-voip", "token": "voip-1"}, "state": "background"}))
        .await;
    phone.send(json!({"type": "call.hangup", "call": "none"})).await;
    phone.expect("error", T).await.unwrap();
    let mut alice = SignalClient::connect(&ws, "dev:alice", "a").await.unwrap();
    alice
        .send(json!({"type": "call.invite", "call": "c1", "to": "bob", "media": "audio", "sdp": "o"}))
        .await;
    let line = rx.recv_timeout(T).expect("the receiver printed the verified push");
    let printed: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        printed,
        json!({"event": "call.ring", "call": "c1", "device": "phone", "token": "voip-1"})
    );
    // A request with a bad signature is refused (401), and prints nothing.
    let (status, _) = http_post(port, "/firstcall", r#"{"event":"call.ring","id":"forged"}"#);
    assert_eq!(status, 401);
    assert!(
        rx.recv_timeout(Duration::from_millis(300)).is_err(),
        "a forged event was acted on"
    );
    drop(phone);
    let _ = std::fs::remove_dir_all(dir);
}

/// A plain HTTP/1.1 POST of `body` with a bogus signature; the status.
fn http_post(port: u16, path: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nX-Firstcall-Timestamp: 1\r\nX-Firstcall-Signature: sha256=00\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    let status = resp.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, resp)
}

#[tokio::test]
async fn the_push_receiver_turns_a_ring_and_its_cancel_into_apns_and_fcm_requests() {
    if !have_tool("node") {
        return;
    }
    let dir = temp_dir("push");
    let receiver = example_in("webhooks.md", "push-receiver.mjs", &dir);
    let port = free_port();
    let mut child = Proc::spawn(
        "push-receiver",
        Command::new("node")
            .arg(&receiver)
            .env("PORT", port.to_string())
            .env("WEBHOOK_SECRET", "hook-key")
            .env("APNS_TOPIC", "org.example.calls")
            .env("FCM_PROJECT", "calls-test")
            .stdout(Stdio::piped()),
    );
    let stdout = child.stdout().expect("piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok).take(10) {
            let _ = tx.send(line);
        }
    });
    assert!(wait_until(T, || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()));
    let url = format!("http://127.0.0.1:{port}/firstcall");
    let server = start_firstcall(&["--webhook-url", &url, "--webhook-secret", "hook-key"]);
    let ws = format!("ws://{}/v1/ws", server.http);
    let mut devices = Vec::new();
    for (device, provider, token) in [("iphone", "apns-voip", "voip-1"), ("pixel", "fcm", "fcm-1")] {
        let mut d = SignalClient::connect(&ws, "dev:bob", device).await.unwrap();
        d.send(json!({"type": "device.update", "push": {"provider": provider, "token": token}, "state": "background"}))
            .await;
        d.send(json!({"type": "call.hangup", "call": "none"})).await;
        d.expect("error", T).await.unwrap();
        devices.push(d);
    }
    let mut alice = SignalClient::connect(&ws, "dev:alice", "a").await.unwrap();
    alice
        .send(json!({"type": "call.invite", "call": "c1", "to": "bob", "media": "video", "sdp": "o"}))
        .await;
    alice.send(json!({"type": "call.cancel", "call": "c1"})).await;
    let mut printed: Vec<Value> = (0..4)
        .map(|_| serde_json::from_str(&rx.recv_timeout(T).expect("a push request printed")).unwrap())
        .collect();
    printed.sort_by_key(|p| p["id"].as_str().unwrap_or("").to_owned());
    let ids: Vec<&str> = printed.iter().map(|p| p["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        [
            "c1/iphone/call.cancelled",
            "c1/iphone/call.ring",
            "c1/pixel/call.cancelled",
            "c1/pixel/call.ring"
        ]
    );
    let apns = &printed[1]["request"];
    assert_eq!(apns["url"], "https://api.push.apple.com/3/device/voip-1");
    assert_eq!(apns["headers"]["apns-push-type"], "voip");
    assert_eq!(apns["headers"]["apns-topic"], "org.example.calls.voip");
    assert_eq!(
        (
            apns["body"]["event"].clone(),
            apns["body"]["from"].clone(),
            apns["body"]["media"].clone()
        ),
        (json!("call.ring"), json!("alice"), json!("video"))
    );
    assert_eq!(printed[0]["request"]["body"]["event"], "call.cancelled");
    let fcm = &printed[3]["request"];
    assert_eq!(
        fcm["url"],
        "https://fcm.googleapis.com/v1/projects/calls-test/messages:send"
    );
    assert_eq!(fcm["body"]["message"]["token"], "fcm-1");
    assert_eq!(fcm["body"]["message"]["android"]["priority"], "high");
    assert_eq!(fcm["body"]["message"]["data"]["event"], "call.ring");
    assert_eq!(printed[2]["request"]["body"]["message"]["data"]["reason"], "cancelled");
    drop(devices);
    let _ = std::fs::remove_dir_all(dir);
}

/// Stand-ins for the three Spring annotations the controller uses (same packages, names
/// and elements), so that `javac` compiles docs/integrate.md's controller unchanged
/// without Maven Central: what is tested is the minting code, not Spring.
const SPRING_STANDINS: &[(&str, &str)] = &[
    (
        "org/springframework/web/bind/annotation/RestController.java",
        "package org.springframework.web.bind.annotation;\n\
         @java.lang.annotation.Target(java.lang.annotation.ElementType.TYPE)\n\
         public @interface RestController {}\n",
    ),
    (
        "org/springframework/web/bind/annotation/GetMapping.java",
        "package org.springframework.web.bind.annotation;\n\
         @java.lang.annotation.Target(java.lang.annotation.ElementType.METHOD)\n\
         public @interface GetMapping { String[] value() default {}; String[] produces() default {}; }\n",
    ),
    (
        "org/springframework/beans/factory/annotation/Value.java",
        "package org.springframework.beans.factory.annotation;\n\
         @java.lang.annotation.Target(java.lang.annotation.ElementType.PARAMETER)\n\
         public @interface Value { String value(); }\n",
    ),
    (
        "Main.java",
        "public class Main { public static void main(String[] a) throws Exception {\n\
         System.out.println(new FirstcallTokenController(a[0]).token(() -> a[1])); } }\n",
    ),
];

#[tokio::test]
async fn the_spring_controller_mints_tokens_the_server_accepts() {
    if !have_tool("javac") {
        return;
    }
    let dir = temp_dir("spring");
    let controller = example("FirstcallTokenController.java", &dir);
    let mut sources = vec![controller];
    for (path, text) in SPRING_STANDINS {
        let p = dir.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        sources.push(p);
    }
    let classes = dir.join("classes");
    let out = run_bounded(
        Command::new("javac").arg("-d").arg(&classes).args(&sources),
        Duration::from_secs(120),
    );
    assert!(out.status.success(), "javac: {}", String::from_utf8_lossy(&out.stderr));
    let mint = |user: &str| {
        let out = run_bounded(
            Command::new("java")
                .arg("-cp")
                .arg(&classes)
                .args(["Main", "s3cret", user]),
            Duration::from_secs(60),
        );
        assert!(out.status.success(), "java: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let server = start_firstcall(&["--jwt-secret", "s3cret", "--turn-secret", "t"]);
    let url = format!("ws://{}/v1/ws", server.http);
    let alice = SignalClient::connect(&url, &mint("alice"), "d")
        .await
        .expect("the Spring controller's token opens a session");
    assert_eq!(alice.welcome["user"], "alice");
    // The user name is JSON-escaped, not pasted: a name with a quote stays one claim.
    let token = mint("al\"ice");
    let claims = token.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, claims).unwrap(),
    )
    .unwrap();
    assert_eq!(claims["sub"], "al\"ice");
    assert!(claims["exp"].as_u64().unwrap() > claims["iat"].as_u64().unwrap());
    // Signed with another secret: refused.
    let other = start_firstcall(&["--jwt-secret", "other", "--turn-secret", "t"]);
    assert!(
        SignalClient::connect(&format!("ws://{}/v1/ws", other.http), &mint("alice"), "d")
            .await
            .is_err()
    );
    let _ = std::fs::remove_dir_all(dir);
}
