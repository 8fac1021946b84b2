//! `--http-tls`: the HTTP listener speaks HTTPS and WSS with `--tls-cert`/`--tls-key` (the
//! certificate TURN/TLS uses), so a browser on another machine gets a secure page, its
//! camera and microphone, without a proxy. Real binary, a real TLS client trusting the
//! test certificate, a real WebSocket upgrade over it.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::*;

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A TLS connection to `addr` trusting only `cert`, for the name `localhost`.
fn tls(addr: SocketAddr, cert: &rustls::pki_types::CertificateDer<'static>) -> std::io::Result<Tls> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone()).expect("test certificate");
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let conn = rustls::ClientConnection::new(Arc::new(cfg), name).map_err(std::io::Error::other)?;
    let sock = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    sock.set_read_timeout(Some(Duration::from_secs(5)))?;
    Ok(rustls::StreamOwned::new(conn, sock))
}

/// GET `path` over TLS: (status, body).
fn https_get(
    addr: SocketAddr,
    cert: &rustls::pki_types::CertificateDer<'static>,
    path: &str,
) -> std::io::Result<(u16, String)> {
    let mut s = tls(addr, cert)?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut out = Vec::new();
    // A close_notify-less close is an UnexpectedEof after the whole response.
    match s.read_to_end(&mut out) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !out.is_empty() => {}
        Err(e) => return Err(e),
    }
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// One masked client text frame (RFC 6455 5.2), payload under 64 KiB.
fn ws_text(payload: &str) -> Vec<u8> {
    let p = payload.as_bytes();
    let mask = [1u8, 2, 3, 4];
    let mut f = vec![0x81];
    if p.len() < 126 {
        f.push(0x80 | p.len() as u8);
    } else {
        f.push(0x80 | 126);
        f.extend_from_slice(&(p.len() as u16).to_be_bytes());
    }
    f.extend_from_slice(&mask);
    f.extend(p.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// One unmasked server frame's payload (text), payload under 64 KiB.
fn ws_read(s: &mut Tls) -> std::io::Result<String> {
    let mut head = [0u8; 2];
    s.read_exact(&mut head)?;
    let len = match head[1] & 0x7f {
        126 => {
            let mut l = [0u8; 2];
            s.read_exact(&mut l)?;
            u16::from_be_bytes(l) as usize
        }
        127 => return Err(std::io::Error::other("frame too large for this test")),
        n => n as usize,
    };
    let mut body = vec![0u8; len];
    s.read_exact(&mut body)?;
    Ok(String::from_utf8_lossy(&body).into_owned())
}

#[test]
fn https_and_wss_on_the_http_listener_with_the_turn_certificate() {
    let dir = std::env::temp_dir().join(format!("firstcall-https-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (cert_pem, key_pem) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_pem, key.cert.pem()).unwrap();
    std::fs::write(&key_pem, key.key_pair.serialize_pem()).unwrap();
    let cert = key.cert.der().clone();
    let http = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let (turn, turn_tls) = (free_port(), free_port());
    let mut cmd = Command::new(firstcall_bin());
    cmd.args(["serve", "--dev", "--http-listen", &http.to_string()])
        .args(["--turn-listen", &format!("127.0.0.1:{turn}")])
        .args(["--turn-tls-listen", &format!("127.0.0.1:{turn_tls}")])
        .args([
            "--tls-cert",
            cert_pem.to_str().unwrap(),
            "--tls-key",
            key_pem.to_str().unwrap(),
        ])
        .args(["--http-tls", "--metrics-listen", &metrics.to_string()])
        .args([
            "--relay-ports",
            "62100-62199",
            "--data-dir",
            dir.join("data").to_str().unwrap(),
        ])
        .env_remove("FIRSTCALL_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut server = Proc::spawn("firstcall", &mut cmd);
    let up = wait_until(Duration::from_secs(15), || {
        assert!(server.alive(), "firstcall exited at start");
        matches!(https_get(http, &cert, "/healthz"), Ok((200, _)))
    });
    assert!(up, "no https://…/healthz within 15 s");

    // The demo page and the SDK over https.
    let (status, page) = https_get(http, &cert, "/").unwrap();
    assert_eq!(status, 200);
    assert!(page.contains("<html") || page.contains("<!doctype"), "the demo page");
    assert_eq!(https_get(http, &cert, "/sdk/firstcall.js").unwrap().0, 200);

    // Signaling over wss: the upgrade, a hello, the welcome.
    let mut ws = tls(http, &cert).unwrap();
    write!(
        ws,
        "GET /v1/ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        ws.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "RFC 6455's accept key: {head}"
    );
    ws.write_all(&ws_text(r#"{"type":"hello","token":"dev:alice","device":"laptop"}"#))
        .unwrap();
    let welcome = ws_read(&mut ws).unwrap();
    assert!(welcome.contains(r#""type":"welcome""#), "{welcome}");

    // Plain HTTP to the TLS listener: no answer, a failed handshake counted.
    let mut plain = TcpStream::connect(http).unwrap();
    plain.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    plain.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut got = Vec::new();
    let _ = plain.read_to_end(&mut got);
    assert!(
        !String::from_utf8_lossy(&got).contains("200 OK"),
        "plain HTTP is not served"
    );
    let failures = || {
        http_get(metrics, "/metrics", &[])
            .ok()
            .and_then(|(_, body)| {
                body.lines()
                    .find_map(|l| l.strip_prefix("firstcall_http_tls_failures_total "))
                    .and_then(|v| v.trim().parse::<u64>().ok())
            })
            .unwrap_or(0)
    };
    assert!(
        wait_until(Duration::from_secs(5), || failures() >= 1),
        "tls_failures counted"
    );
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn http_tls_without_a_certificate_is_refused_at_start() {
    let out = Command::new(firstcall_bin())
        .args(["serve", "--dev", "--http-tls", "--http-listen", "127.0.0.1:0"])
        .env_remove("FIRSTCALL_CONFIG")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--http-tls") && err.contains("--tls-cert"), "{err}");
}
