//! The real `firstcall` binary driven by coturn's own client tools (Debian `coturn`):
//! `turnutils_stunclient`, `turnutils_uclient` and `turnutils_peer`, as independent peers.

mod common;

use std::process::Command;
use std::time::Duration;

use common::coturn_tools::*;
use common::*;

const SECRET: &str = "integration-secret";

fn assert_zero_loss(flags: &[&str], with_peer: bool) {
    if !have_tool("turnutils_uclient") {
        return;
    }
    let server = if with_peer {
        start_firstcall(&["--turn-secret", SECRET, "--allow-peer", "127.0.0.1/32"])
    } else {
        // Client-to-client relaying needs no --allow-peer: our own relays stay reachable.
        start_firstcall(&["--turn-secret", SECRET])
    };
    let peer = with_peer.then(|| start_peer("127.0.0.1"));
    let (ok, r) = uclient(
        &server,
        flags,
        peer.as_ref().map(|p| p.addr),
        &["-W", SECRET, "-u", "alice"],
    );
    assert!(
        ok,
        "uclient {flags:?} failed:\n{}\nserver log:\n{}",
        r.output,
        server.log_text()
    );
    assert!(
        r.sent >= 80,
        "uclient {flags:?} sent only {} packets:\n{}",
        r.sent,
        r.output
    );
    assert_eq!(r.lost, 0, "uclient {flags:?} lost packets:\n{}", r.output);
    assert_eq!(r.received, r.sent, "uclient {flags:?}: received != sent:\n{}", r.output);
    assert!(server.metric("firstcall_turn_allocations_total") >= 2);
    assert!(server.metric("firstcall_turn_relayed_packets_total{direction=\"to_peer\"}") >= r.sent);
}

#[test]
fn udp_channels_to_peer() {
    assert_zero_loss(&[], true);
}

#[test]
fn udp_send_indications_to_peer() {
    assert_zero_loss(&["-s"], true);
}

#[test]
fn tcp_channels_to_peer() {
    assert_zero_loss(&["-t"], true);
}

#[test]
fn tcp_send_indications_to_peer() {
    assert_zero_loss(&["-t", "-s"], true);
}

#[test]
fn udp_client_to_client() {
    assert_zero_loss(&["-y"], false);
}

#[test]
fn tcp_client_to_client() {
    assert_zero_loss(&["-y", "-t"], false);
}

#[test]
fn stunclient_binding_reflects_loopback_address() {
    if !have_tool("turnutils_stunclient") {
        return;
    }
    let server = start_firstcall(&["--turn-secret", SECRET]);
    let out = run_bounded(
        Command::new("turnutils_stunclient").args(["-p", &server.turn.port().to_string(), "127.0.0.1"]),
        Duration::from_secs(20),
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("UDP reflexive addr: 127.0.0.1:"),
        "stunclient output:\n{text}"
    );
    assert!(server.metric("firstcall_turn_requests_total{method=\"binding\"}") >= 1);
}

#[test]
fn wrong_secret_is_refused() {
    if !have_tool("turnutils_uclient") {
        return;
    }
    let server = start_firstcall(&["--turn-secret", SECRET, "--allow-peer", "127.0.0.1/32"]);
    let peer = start_peer("127.0.0.1");
    let (ok, r) = uclient(&server, &[], Some(peer.addr), &["-W", "not-the-secret", "-u", "alice"]);
    assert!(!ok, "allocation with a wrong secret succeeded:\n{}", r.output);
    assert!(r.output.contains("Cannot complete Allocation"), "{}", r.output);
    assert!(server.metric("firstcall_turn_auth_failures_total{reason=\"bad_integrity\"}") >= 1);
    assert_eq!(server.metric("firstcall_turn_allocations_total"), 0);
}

#[test]
fn expired_credential_is_refused() {
    if !have_tool("turnutils_uclient") {
        return;
    }
    // A REST credential correctly signed with the server's secret, that expired in 2001.
    // uclient cannot set an expiry with -W, so it gets the username and password as a
    // plain long-term credential; the server still reads the REST expiry from the username.
    let username = "1000000000:alice";
    let password = firstcall_turn::auth::rest_password(&firstcall_turn::auth::Secret::new(SECRET), username);
    let server = start_firstcall(&["--turn-secret", SECRET, "--allow-peer", "127.0.0.1/32"]);
    let peer = start_peer("127.0.0.1");
    let (ok, r) = uclient(&server, &[], Some(peer.addr), &["-u", username, "-w", &password]);
    assert!(!ok, "allocation with an expired credential succeeded:\n{}", r.output);
    assert!(server.metric("firstcall_turn_auth_failures_total{reason=\"expired\"}") >= 1);
    assert_eq!(server.metric("firstcall_turn_allocations_total"), 0);

    // The same shape with a future expiry is accepted, so the refusal above was the expiry.
    let fresh = format!("{}:alice", 4_000_000_000u64);
    let password = firstcall_turn::auth::rest_password(&firstcall_turn::auth::Secret::new(SECRET), &fresh);
    let (ok, r) = uclient(&server, &[], Some(peer.addr), &["-u", &fresh, "-w", &password]);
    assert!(ok && r.lost == 0, "fresh credential refused:\n{}", r.output);
}

#[test]
fn loopback_peer_refused_unless_allowed() {
    if !have_tool("turnutils_uclient") {
        return;
    }
    let server = start_firstcall(&["--turn-secret", SECRET]);
    let peer = start_peer("127.0.0.1");
    let (ok, r) = uclient(&server, &[], Some(peer.addr), &["-W", SECRET, "-u", "alice"]);
    assert!(
        !ok || r.received == 0,
        "relayed to a loopback peer without --allow-peer:\n{}",
        r.output
    );
    assert!(r.output.contains("403"), "expected 403 Forbidden:\n{}", r.output);
    assert!(server.metric("firstcall_turn_peers_refused_total{reason=\"loopback\"}") >= 1);
    assert_eq!(
        server.metric("firstcall_turn_relayed_packets_total{direction=\"to_peer\"}"),
        0
    );
}

#[test]
fn tls_channels_to_peer() {
    if !have_tool("turnutils_uclient") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("firstcall-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    let tls_port = free_port();
    let tls_listen = format!("127.0.0.1:{tls_port}");
    let server = start_firstcall(&[
        "--turn-secret",
        SECRET,
        "--allow-peer",
        "127.0.0.1/32",
        "--tls-cert",
        cert_path.to_str().unwrap(),
        "--tls-key",
        key_path.to_str().unwrap(),
        "--turn-tls-listen",
        &tls_listen,
    ]);
    let peer = start_peer("127.0.0.1");
    let mut cmd = Command::new("turnutils_uclient");
    cmd.args(["-t", "-S", "-W", SECRET, "-u", "alice", "-p", &tls_port.to_string()])
        .args([
            "-n",
            "40",
            "-m",
            "2",
            "-l",
            "170",
            "-e",
            "127.0.0.1",
            "-r",
            &peer.addr.port().to_string(),
            "127.0.0.1",
        ]);
    let out = run_bounded(&mut cmd, Duration::from_secs(60));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "uclient over TLS failed:\n{text}\nserver log:\n{}",
        server.log_text()
    );
    assert!(text.contains("Total lost packets 0 "), "{text}");
    assert!(text.contains("tot_send_msgs=80"), "{text}");
    let log = server.log_text();
    assert!(
        log.contains("transport=\"tls\""),
        "allocations were not made over TLS:\n{log}"
    );
    let _ = std::fs::remove_dir_all(dir);
}
