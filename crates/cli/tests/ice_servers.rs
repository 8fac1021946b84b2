//! ICE servers from configuration (issue 19 point 2), against the real binary:
//! `--ice-server` pointing at a real coturn that shares `--turn-secret`, `--public-host`
//! naming the embedded server's URIs (and its `turns:` certificate), `--no-turn` for a
//! signaling-only node, and bad URIs refused at start-up.
//!
//! Everything listens on and talks to 127.0.0.1 only. The `--no-turn` test hands out
//! documentation addresses (192.0.2.0/24) that nothing ever contacts.

mod common;

use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use firstcall_client::signal::SignalClient;
use firstcall_client::turn::{Client, Credentials, Kind};
use firstcall_turn::auth::{rest_credential, Secret};
use serde_json::{json, Value};

const SECRET: &str = "shared-rest-secret";
const COTURN_REALM: &str = "coturn.test";

/// A coturn on 127.0.0.1 with TURN REST credentials (`use-auth-secret`) on `SECRET`.
struct Coturn {
    _proc: Proc,
    port: u16,
    relay: (u16, u16),
    dir: PathBuf,
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start_coturn() -> Option<Coturn> {
    if !have_tool("turnserver") {
        return None;
    }
    let port = free_port();
    let alt = free_port();
    let relay = relay_range(50);
    let dir = std::env::temp_dir().join(format!("firstcall-coturn-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut c = Command::new("turnserver");
    c.args(["-n", "--listening-ip", "127.0.0.1", "--relay-ip", "127.0.0.1"])
        .args([
            "--listening-port",
            &port.to_string(),
            "--alt-listening-port",
            &alt.to_string(),
        ])
        .args(["--min-port", &relay.0.to_string(), "--max-port", &relay.1.to_string()])
        .args([
            "--use-auth-secret",
            "--static-auth-secret",
            SECRET,
            "--realm",
            COTURN_REALM,
        ])
        .args(["--no-cli", "--no-tls", "--no-dtls", "--log-file", "stdout"])
        .args(["--db", dir.join("turndb").to_str().unwrap()])
        .args(["--pidfile", dir.join("pid").to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut proc = Proc::spawn("turnserver", &mut c);
    // Ready when its UDP port is taken and its TCP port accepts.
    let ready = wait_until(Duration::from_secs(10), || {
        assert!(proc.alive(), "coturn exited during start-up");
        UdpSocket::bind(("127.0.0.1", port)).is_err() && TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    assert!(ready, "coturn did not listen on 127.0.0.1:{port}");
    Some(Coturn {
        _proc: proc,
        port,
        relay,
        dir,
    })
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The welcome of a new session of `user`.
fn welcome(http: SocketAddr, user: &str) -> Value {
    rt().block_on(async {
        let c = SignalClient::connect(&format!("ws://{http}/v1/ws"), &format!("dev:{user}"), "ice-test")
            .await
            .expect("welcome");
        c.welcome.clone()
    })
}

fn urls(server: &Value) -> Vec<String> {
    server["urls"]
        .as_array()
        .expect("urls")
        .iter()
        .map(|u| u.as_str().unwrap().to_owned())
        .collect()
}

/// Allocate on `addr` with `creds`; returns (relayed address, the realm that challenged).
fn allocate(addr: SocketAddr, kind: Kind, creds: Credentials) -> Result<(SocketAddr, String), String> {
    rt().block_on(async {
        let mut c = Client::connect(addr, &kind, creds).await.map_err(|e| e.to_string())?;
        c.timeout = Duration::from_secs(3);
        let a = c.allocate(Some(600)).await.map_err(|e| e.to_string())?;
        Ok((a.relayed, c.session.realm().unwrap_or_default().to_owned()))
    })
}

fn creds_of(server: &Value) -> Credentials {
    Credentials {
        username: server["username"].as_str().expect("username").to_owned(),
        password: server["credential"].as_str().expect("credential").to_owned(),
    }
}

#[test]
fn ice_server_coturn_allocates_with_the_credentials_firstcall_minted() {
    let Some(coturn) = start_coturn() else { return };
    let p = coturn.port;
    let (cot_udp, cot_tcp, cot_stun) = (
        format!("turn:127.0.0.1:{p}?transport=udp"),
        format!("turn:127.0.0.1:{p}?transport=tcp"),
        format!("stun:127.0.0.1:{p}"),
    );
    let server = start_firstcall(&[
        "--turn-secret",
        SECRET,
        "--ice-server",
        &cot_udp,
        "--ice-server",
        &cot_tcp,
        "--ice-server",
        &cot_stun,
    ]);
    let w = welcome(server.http, "alice");
    let ice = w["ice_servers"].as_array().expect("ice_servers").clone();
    assert_eq!(ice.len(), 3, "embedded, coturn TURN, coturn STUN: {ice:?}");
    // The embedded server's entry is as before.
    let own = server.turn.port();
    assert_eq!(
        urls(&ice[0]),
        [
            format!("stun:127.0.0.1:{own}"),
            format!("turn:127.0.0.1:{own}?transport=udp"),
            format!("turn:127.0.0.1:{own}?transport=tcp"),
        ]
    );
    // coturn's TURN URIs with the same REST credential; its STUN URI without any.
    assert_eq!(urls(&ice[1]), [cot_udp.clone(), cot_tcp.clone()]);
    assert_eq!(ice[1]["username"], ice[0]["username"]);
    assert_eq!(ice[1]["credential"], ice[0]["credential"]);
    assert!(ice[1]["username"].as_str().unwrap().ends_with(":alice"));
    assert_eq!(urls(&ice[2]), std::slice::from_ref(&cot_stun));
    assert!(ice[2].get("username").is_none() && ice[2].get("credential").is_none());

    // coturn takes them, over UDP and TCP: the realm of the challenge is coturn's, and
    // the relayed port lies in coturn's range.
    let addr = SocketAddr::from(([127, 0, 0, 1], p));
    for kind in [Kind::Udp, Kind::Tcp] {
        let (relayed, realm) = allocate(addr, kind, creds_of(&ice[1])).expect("coturn allocates");
        assert_eq!(realm, COTURN_REALM);
        assert_eq!(relayed.ip(), IpAddr::from([127, 0, 0, 1]));
        assert!(
            (coturn.relay.0..=coturn.relay.1).contains(&relayed.port()),
            "{relayed} outside coturn's {:?}",
            coturn.relay
        );
    }
    // Control: coturn does check them (a credential of another secret is refused).
    let (u, pw) = rest_credential(&Secret::new("another-secret"), "alice", 4_000_000_000);
    let e = allocate(
        addr,
        Kind::Udp,
        Credentials {
            username: u,
            password: pw,
        },
    )
    .expect_err("coturn refuses a credential of another secret");
    assert!(e.contains("401"), "{e}");

    // /v1/turn-credentials: every URI, and its credential works on coturn too.
    let (status, body) = http_get(
        server.http,
        "/v1/turn-credentials",
        &[("Authorization", "Bearer dev:bob")],
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let all: Vec<String> = urls(&ice[0])
        .into_iter()
        .chain([cot_udp.clone(), cot_tcp, cot_stun.clone()])
        .collect();
    assert_eq!(v["uris"], json!(all));
    let creds = Credentials {
        username: v["username"].as_str().unwrap().to_owned(),
        password: v["password"].as_str().unwrap().to_owned(),
    };
    let (_, realm) = allocate(addr, Kind::Udp, creds).expect("coturn allocates with the HTTP credential");
    assert_eq!(realm, COTURN_REALM);

    // `firstcall doctor --server` checks every URI the server hands out, coturn's included.
    let out = run_bounded(
        Command::new(firstcall_bin())
            .args(["doctor", "--server", &format!("http://{}", server.http)])
            .args(["--token", "dev:carol", "--json", "--timeout", "3"]),
        Duration::from_secs(120),
    );
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("doctor --json: {e}\n{}", String::from_utf8_lossy(&out.stdout)));
    let status_of = |target: &str, check: &str| -> Option<String> {
        report["checks"]
            .as_array()?
            .iter()
            .find(|c| c["target"] == target && c["check"] == check)
            .map(|c| c["status"].as_str().unwrap_or_default().to_owned())
    };
    for (target, check) in [
        (cot_udp.as_str(), "stun binding (udp)"),
        (cot_udp.as_str(), "allocate (udp)"),
        (cot_udp.as_str(), "credentials"),
        (cot_stun.as_str(), "stun binding (udp)"),
    ] {
        assert_eq!(
            status_of(target, check).as_deref(),
            Some("pass"),
            "doctor {check} on {target}: {:#}",
            report["checks"]
        );
    }
}

#[test]
fn public_host_names_the_embedded_uris_and_turns_validates_against_it() {
    const NAME: &str = "turn.firstcall.test";
    let dir = std::env::temp_dir().join(format!("firstcall-public-host-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cert = rcgen::generate_simple_self_signed(vec![NAME.into()]).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    let tls_port = free_port();
    let server = start_firstcall(&[
        "--turn-secret",
        SECRET,
        "--public-host",
        NAME,
        "--tls-cert",
        cert_path.to_str().unwrap(),
        "--tls-key",
        key_path.to_str().unwrap(),
        "--turn-tls-listen",
        &format!("127.0.0.1:{tls_port}"),
    ]);
    let p = server.turn.port();
    let expected = [
        format!("stun:{NAME}:{p}"),
        format!("turn:{NAME}:{p}?transport=udp"),
        format!("turn:{NAME}:{p}?transport=tcp"),
        format!("turns:{NAME}:{tls_port}?transport=tcp"),
    ];
    let w = welcome(server.http, "alice");
    assert_eq!(w["ice_servers"].as_array().unwrap().len(), 1);
    assert_eq!(urls(&w["ice_servers"][0]), expected);
    let (_, body) = http_get(
        server.http,
        "/v1/turn-credentials",
        &[("Authorization", "Bearer dev:alice")],
    )
    .unwrap();
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["uris"], json!(expected));

    // The turns: URI's name is the one the certificate is for: a TLS client verifying
    // that name (connecting to the address the name would resolve to) allocates; one
    // verifying the IP address, as it would with an IP in the URI, is refused.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let roots = Arc::new(roots);
    let tls_addr = SocketAddr::from(([127, 0, 0, 1], tls_port));
    let tls = |name: &str| Kind::Tls {
        server_name: name.to_owned(),
        roots: roots.clone(),
    };
    let (relayed, _) = allocate(tls_addr, tls(NAME), creds_of(&w["ice_servers"][0])).expect("turns: allocates");
    assert_eq!(
        relayed.ip(),
        IpAddr::from([127, 0, 0, 1]),
        "relayed addresses still carry the IP"
    );
    let e = allocate(tls_addr, tls("127.0.0.1"), creds_of(&w["ice_servers"][0]))
        .expect_err("the certificate is not for the IP address");
    assert!(e.to_lowercase().contains("certificate"), "{e}");
    let _ = std::fs::remove_dir_all(dir);
}

/// The local ports of `pid`'s sockets: (UDP ports, TCP listening ports).
fn sockets_of(pid: u32) -> (Vec<u16>, Vec<u16>) {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    let ports = |table: &str, listening_only: bool| -> Vec<u16> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        text.lines()
            .skip(1)
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let (local, state, inode) = (f.get(1)?, f.get(3)?, f.get(9)?);
                if !inodes.iter().any(|i| i == inode) || (listening_only && *state != "0A") {
                    return None;
                }
                u16::from_str_radix(local.rsplit(':').next()?, 16).ok()
            })
            .collect()
    };
    let mut udp = ports("udp", false);
    udp.extend(ports("udp6", false));
    let mut tcp = ports("tcp", true);
    tcp.extend(ports("tcp6", true));
    (udp, tcp)
}

/// `firstcall serve --dev --no-turn` on 127.0.0.1 with `extra`, healthy: (process, HTTP
/// address, log file, data dir).
fn serve_no_turn(extra: &[&str]) -> (Proc, SocketAddr, PathBuf, PathBuf) {
    let http = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let tag = format!("{}-{}", std::process::id(), http.port());
    let dir = std::env::temp_dir().join(format!("firstcall-no-turn-{tag}"));
    let log = std::env::temp_dir().join(format!("firstcall-no-turn-{tag}.log"));
    let mut proc = Proc::spawn(
        "firstcall",
        Command::new(firstcall_bin())
            .args(["serve", "--dev", "--no-turn", "--http-listen", &http.to_string()])
            .args(["--data-dir", dir.to_str().unwrap()])
            .args(extra)
            .env_remove("FIRSTCALL_CONFIG")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap()),
    );
    let ready = wait_until(Duration::from_secs(15), || {
        assert!(
            proc.alive(),
            "exited: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        matches!(http_get(http, "/healthz", &[]), Ok((200, _)))
    });
    assert!(
        ready,
        "not healthy: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    (proc, http, log, dir)
}

#[test]
fn no_turn_binds_no_turn_port_and_hands_out_only_the_configured_servers() {
    // Handed out, never contacted (documentation addresses and names).
    let (turn, stun) = ("turn:192.0.2.10:3478?transport=udp", "stun:stun.firstcall.test:3478");
    let (proc, http, log, dir) = serve_no_turn(&[
        "--turn-secret",
        SECRET,
        "--ice-server",
        turn,
        "--ice-server",
        stun,
        "--credential-ttl",
        "2s",
    ]);

    // No STUN/TURN socket at all: no UDP socket, and the only TCP listener is HTTP.
    let (udp, tcp) = sockets_of(proc.pid());
    assert!(udp.is_empty(), "UDP sockets on ports {udp:?}");
    assert_eq!(tcp, [http.port()], "TCP listeners");
    assert!(std::fs::read_to_string(&log).unwrap().contains("signaling only"));

    // Only the configured servers: TURN with a credential, STUN without.
    let expected = json!([
        {"urls": [turn]},
        {"urls": [stun]},
    ]);
    let check = |ice: &Value| {
        let ice = ice.as_array().expect("ice servers");
        assert_eq!(ice.len(), 2, "{ice:?}");
        assert_eq!(ice[0]["urls"], expected[0]["urls"]);
        assert!(ice[0]["username"].as_str().unwrap().ends_with(":alice"));
        assert!(ice[0]["credential"].is_string());
        assert_eq!(ice[1], expected[1]);
    };
    rt().block_on(async {
        let mut c = SignalClient::connect(&format!("ws://{http}/v1/ws"), "dev:alice", "ice-test")
            .await
            .expect("welcome");
        check(&c.welcome["ice_servers"]);
        assert_eq!(c.welcome["ice_ttl"], 2);
        // The refresh at 80 % of the TTL carries the same servers.
        let (fresh, _) = c
            .expect("ice_servers", Duration::from_secs(10))
            .await
            .expect("a refresh");
        check(&fresh["ice_servers"]);
    });
    let (_, body) = http_get(http, "/v1/turn-credentials", &[("Authorization", "Bearer dev:alice")]).unwrap();
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["uris"], json!([turn, stun]));
    let (_, metrics) = http_get(http, "/metrics", &[]).unwrap();
    assert!(metrics.contains("firstcall_signal_sessions_active"), "{metrics}");
    drop(proc);
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_file(log);
}

#[test]
fn no_turn_without_ice_servers_warns_and_doctor_says_what_is_missing() {
    let (proc, http, log, dir) = serve_no_turn(&[]);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("--no-turn without --ice-server"), "{text}");
    assert_eq!(welcome(http, "alice")["ice_servers"], json!([]));
    let (_, body) = http_get(http, "/v1/turn-credentials", &[("Authorization", "Bearer dev:alice")]).unwrap();
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["uris"], json!([]));
    let out = run_bounded(
        Command::new(firstcall_bin())
            .args(["doctor", "--server", &format!("http://{http}")])
            .args(["--token", "dev:carol", "--json", "--timeout", "3"]),
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).expect("doctor --json");
    let check = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == "ice servers in welcome")
        .cloned()
        .expect("the ice servers check");
    assert_eq!(check["status"], "fail");
    assert!(check["fix"].as_str().unwrap().contains("--ice-server"), "{check}");
    drop(proc);
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_file(log);
}

/// `firstcall serve` with `args`, expected to refuse to start: its stderr.
fn refused(args: &[&str], env: &[(&str, &str)]) -> String {
    let http = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let dir = std::env::temp_dir().join(format!("firstcall-bad-ice-{}", std::process::id()));
    let mut cmd = Command::new(firstcall_bin());
    cmd.args(["serve", "--dev", "--http-listen", &http.to_string()])
        .args(["--data-dir", dir.to_str().unwrap()])
        .args(args)
        .env_remove("FIRSTCALL_CONFIG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = run_bounded(&mut cmd, Duration::from_secs(20));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{args:?} started:\n{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!err.contains("firstcall listening"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
    err
}

#[test]
fn a_bad_ice_server_or_turn_flags_with_no_turn_fail_start_up_clearly() {
    for (uri, says) in [
        (
            "turn:turn.example.org:3478?transport=sctp",
            "only ?transport=udp or ?transport=tcp",
        ),
        ("turn:turn.example.org:99999", "port \"99999\" is not 1 to 65535"),
        ("turns://turn.example.org", "no // after the scheme"),
        ("http://turn.example.org", "is not stun, stuns, turn or turns"),
        ("turn:user@turn.example.org", "only host[:port]"),
        ("stun:stun.example.org?transport=udp", "takes no ?transport="),
    ] {
        let err = refused(&["--ice-server", uri], &[]);
        assert!(
            err.contains("--ice-server") && err.contains(uri) && err.contains(says),
            "{uri}: {err}"
        );
    }
    // The environment variable too, comma-separated; the bad one is named.
    let err = refused(
        &[],
        &[("FIRSTCALL_ICE_SERVER", "stun:stun.example.org,turn:bad_host:3478")],
    );
    assert!(err.contains("\"bad_host\" is not a host name"), "{err}");
    let err = refused(&["--public-host", "turn example"], &[]);
    assert!(err.contains("--public-host"), "{err}");
    let err = refused(
        &[
            "--no-turn",
            "--relay-ports",
            "50000-50010",
            "--turn-listen",
            "127.0.0.1:3478",
        ],
        &[],
    );
    assert!(
        err.contains("--no-turn") && err.contains("--turn-listen, --relay-ports"),
        "{err}"
    );
}
