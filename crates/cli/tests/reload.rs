//! SIGHUP: the `--config` file is read again and new TLS certificates, TURN secrets and
//! JWT keys apply without a restart, while sessions signed in before carry on. A file
//! that no longer resolves is refused and changes nothing. Real binary, real signal,
//! a real TLS client, real TURN allocations.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use firstcall_client::signal::SignalClient;
use firstcall_turn::auth::{rest_credential, Secret};
use serde_json::json;

const T: Duration = Duration::from_secs(5);

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn token(secret: &str, user: &str) -> String {
    firstcall_server::tokens::mint_hs256(secret, user, now(), 600).unwrap()
}

/// A self-signed certificate for localhost, written to `dir`: its DER.
fn write_cert(dir: &Path) -> Vec<u8> {
    let key = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(dir.join("cert.pem"), key.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.key_pair.serialize_pem()).unwrap();
    key.cert.der().to_vec()
}

/// The certificate the TLS listener at `addr` presents (the test trusts any: it only
/// reads which one).
fn presented_cert(addr: SocketAddr) -> Vec<u8> {
    #[derive(Debug)]
    struct Any;
    impl rustls::client::danger::ServerCertVerifier for Any {
        fn verify_server_cert(
            &self,
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &[rustls::pki_types::CertificateDer<'_>],
            _: &rustls::pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            rustls::crypto::ring::default_provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Any))
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(cfg), name).unwrap();
    let mut sock = TcpStream::connect_timeout(&addr, T).unwrap();
    sock.set_read_timeout(Some(T)).unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut sock).expect("TLS handshake");
    }
    conn.peer_certificates().expect("a certificate")[0].to_vec()
}

fn config(dir: &Path, jwt: &str, turn_secrets: &[&str]) -> String {
    format!(
        "jwt_secret = {jwt:?}\nturn_secret = {turn_secrets:?}\ntls_cert = {:?}\ntls_key = {:?}\n",
        dir.join("cert.pem"),
        dir.join("key.pem")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_new_certificate_turn_secret_and_jwt_key_and_keeps_sessions() {
    let dir = std::env::temp_dir().join(format!("firstcall-reload-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let cert_a = write_cert(&dir);
    let file = dir.join("firstcall.toml");
    std::fs::write(&file, config(&dir, "jwt-one", &["turn-one"])).unwrap();
    let tls_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let server = start_firstcall(&[
        "--config",
        file.to_str().unwrap(),
        "--turn-tls-listen",
        &tls_addr.to_string(),
        // A JWT flag, so the helper adds no --dev; the key itself is in the file.
        "--jwt-user-claim",
        "sub",
    ]);
    let realm = "firstcall.test";
    let url = ws_url(&server);
    assert_eq!(presented_cert(tls_addr), cert_a);
    let (u1, p1) = rest_credential(&Secret::new("turn-one"), "alice", now() + 600);
    try_allocate_with(server.turn, &u1, &p1, realm).expect("allocation with the first secret");
    let mut alice = SignalClient::connect(&url, &token("jwt-one", "alice"), "a")
        .await
        .unwrap();
    let mut bob = SignalClient::connect(&url, &token("jwt-one", "bob"), "b")
        .await
        .unwrap();

    // New key, new secret, new certificate: one SIGHUP.
    let cert_b = write_cert(&dir);
    assert_ne!(cert_a, cert_b);
    std::fs::write(&file, config(&dir, "jwt-two", &["turn-two"])).unwrap();
    server.proc.signal("HUP");
    assert!(
        wait_until(T, || server.metric("firstcall_config_reloads_total{result=\"ok\"}")
            == 1),
        "no reload; log:\n{}",
        server.log_text()
    );

    // The sessions signed in with the old key carry on: a call between them rings.
    alice
        .send(json!({"type": "call.invite", "call": "r1", "to": "bob", "media": "audio", "sdp": "o"}))
        .await;
    bob.expect("call.incoming", T)
        .await
        .expect("bob's session survived the reload");
    // New sign-ins: the new key only.
    assert!(SignalClient::connect(&url, &token("jwt-one", "carol"), "c")
        .await
        .is_err());
    SignalClient::connect(&url, &token("jwt-two", "carol"), "c")
        .await
        .expect("a token signed with the new key");
    // TURN: credentials minted now are the new secret's, and the old secret's are refused.
    let (status, body) = http_get(
        server.http,
        "/v1/turn-credentials",
        &[("Authorization", &format!("Bearer {}", token("jwt-two", "alice")))],
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let creds: serde_json::Value = serde_json::from_str(&body).unwrap();
    let (user, pass) = (creds["username"].as_str().unwrap(), creds["password"].as_str().unwrap());
    let expiry: u64 = user.split(':').next().unwrap().parse().unwrap();
    assert_eq!(rest_credential(&Secret::new("turn-two"), "alice", expiry).1, pass);
    try_allocate_with(server.turn, user, pass, realm).expect("allocation with the new secret");
    let (u1, p1) = rest_credential(&Secret::new("turn-one"), "alice", now() + 600);
    assert_eq!(try_allocate_with(server.turn, &u1, &p1, realm), Err(401));
    // TLS: new handshakes get the new certificate.
    assert_eq!(presented_cert(tls_addr), cert_b);

    // A file that no longer resolves: refused, counted, nothing changes.
    std::fs::write(&file, "jwt_secret = \"jwt-three\"\nturn_secret = 7\n").unwrap();
    server.proc.signal("HUP");
    assert!(wait_until(T, || server
        .metric("firstcall_config_reloads_total{result=\"failed\"}")
        == 1));
    assert!(server.log_text().contains("reload refused"));
    SignalClient::connect(&url, &token("jwt-two", "dave"), "d")
        .await
        .expect("the key in force is kept");
    assert_eq!(presented_cert(tls_addr), cert_b);
    // A change that needs a restart is named, and the rest still applies.
    std::fs::write(
        &file,
        format!("{}max_calls_per_user = 3\n", config(&dir, "jwt-four", &["turn-two"])),
    )
    .unwrap();
    server.proc.signal("HUP");
    assert!(wait_until(T, || server
        .metric("firstcall_config_reloads_total{result=\"ok\"}")
        == 2));
    assert!(
        wait_until(T, || server.log_text().contains("max_calls_per_user")),
        "{}",
        server.log_text()
    );
    SignalClient::connect(&url, &token("jwt-four", "erin"), "e")
        .await
        .unwrap();
    alice.send(json!({"type": "call.hangup", "call": "r1"})).await;
    bob.expect("call.ended", T)
        .await
        .expect("the hang-up still reaches bob");
    let _ = std::fs::remove_dir_all(&dir);
}
