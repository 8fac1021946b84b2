//! `firstcall serve` as an operator sees it: config sources, advertised address,
//! the credentials endpoint and the metrics page.

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

#[test]
fn external_ip_is_advertised_in_relayed_address_and_ice_uris() {
    let server = start_firstcall(&["--turn-secret", "s", "--external-ip", "198.51.100.9"]);
    let relayed = allocate(server.turn, "s", "firstcall.test");
    assert_eq!(relayed.ip().to_string(), "198.51.100.9");
    assert!((server.relay.0..=server.relay.1).contains(&relayed.port()));

    let (status, body) = http_get(
        server.http,
        "/v1/turn-credentials",
        &[("Authorization", "Bearer dev:alice")],
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let port = server.turn.port();
    for uri in [
        format!("stun:198.51.100.9:{port}"),
        format!("turn:198.51.100.9:{port}?transport=udp"),
        format!("turn:198.51.100.9:{port}?transport=tcp"),
    ] {
        assert!(body.contains(&uri), "{uri} missing from {body}");
    }
    assert!(body.contains(":alice\""), "REST username names the user: {body}");
}

#[test]
fn credentials_need_a_token() {
    let server = start_firstcall(&["--turn-secret", "s"]);
    assert_eq!(http_get(server.http, "/v1/turn-credentials", &[]).unwrap().0, 401);
    let bad = [("Authorization", "Bearer nonsense")];
    assert_eq!(http_get(server.http, "/v1/turn-credentials", &bad).unwrap().0, 401);
}

#[test]
fn metrics_page_is_prometheus_text() {
    let server = start_firstcall(&["--turn-secret", "s"]);
    allocate(server.turn, "s", "firstcall.test");
    let (status, body) = http_get(server.http, "/metrics", &[]).unwrap();
    assert_eq!(status, 200);
    for family in [
        "firstcall_turn_allocations_total",
        "firstcall_turn_allocations_active",
        "firstcall_turn_relayed_packets_total",
        "firstcall_turn_relayed_bytes_total",
        "firstcall_turn_auth_failures_total",
        "firstcall_turn_peers_refused_total",
    ] {
        assert!(body.contains(&format!("# TYPE {family} ")), "{family} missing:\n{body}");
    }
    assert_eq!(server.metric("firstcall_turn_allocations_active"), 1);
    assert_eq!(
        server.metric("firstcall_turn_auth_failures_total{reason=\"missing_credentials\"}"),
        1
    );
}

/// Settings from the environment and from a TOML file reach the running server.
#[test]
fn env_and_config_file_configure_the_server() {
    let dir = std::env::temp_dir().join(format!("firstcall-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (http, turn) = (free_port(), free_port());
    let relay = relay_range(50);
    let file = dir.join("firstcall.toml");
    std::fs::write(
        &file,
        format!(
            "http_listen = \"127.0.0.1:{http}\"\nrealm = \"from-file\"\nturn_secret = [\"file-secret\"]\nrelay_ports = \"{}-{}\"\njwt_secret = \"file-jwt\"\n",
            relay.0, relay.1
        ),
    )
    .unwrap();
    let mut cmd = Command::new(firstcall_bin());
    cmd.args([
        "serve",
        "--config",
        file.to_str().unwrap(),
        "--data-dir",
        dir.join("data").to_str().unwrap(),
    ])
    .env("FIRSTCALL_TURN_LISTEN", format!("127.0.0.1:{turn}"))
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let mut proc = Proc::spawn("firstcall", &mut cmd);
    let http_addr = SocketAddr::from(([127, 0, 0, 1], http));
    assert!(wait_until(Duration::from_secs(15), || {
        assert!(proc.alive(), "firstcall exited");
        matches!(http_get(http_addr, "/healthz", &[]), Ok((200, _)))
    }));
    let relayed = allocate(SocketAddr::from(([127, 0, 0, 1], turn)), "file-secret", "from-file");
    assert!((relay.0..=relay.1).contains(&relayed.port()));
    drop(proc);

    // A typo in the file is refused at start, naming the key.
    std::fs::write(&file, "turn_lisen = \"127.0.0.1:1\"\n").unwrap();
    let out = Command::new(firstcall_bin())
        .args(["serve", "--config", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("turn_lisen"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn generated_secret_is_kept_in_the_data_dir_and_authenticates() {
    let first = start_firstcall(&[]);
    let secret = std::fs::read_to_string(first.data_dir.join("turn-secret")).expect("secret generated in data dir");
    allocate(first.turn, secret.trim(), "firstcall.test");
}
