//! `--jwks-url`: tokens shaped like Keycloak's (kid, aud, iss, azp) verified with keys
//! fetched from a local JWKS server; a rotated key is fetched for its first token, and
//! unknown keys cannot make the server hammer the provider.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use common::*;
use firstcall_client::signal::{ClientError, SignalClient};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

/// A JWKS endpoint on loopback serving whatever `doc` holds, counting requests.
struct JwksServer {
    url: String,
    issuer: String,
    doc: Arc<Mutex<String>>,
    requests: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl JwksServer {
    fn start() -> JwksServer {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        l.set_nonblocking(true).unwrap();
        let doc = Arc::new(Mutex::new(String::from(r#"{"keys":[]}"#)));
        let requests = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (d, r, s) = (doc.clone(), requests.clone(), stop.clone());
        std::thread::spawn(move || {
            // Bounded: until the test ends (or five minutes).
            for _ in 0..30_000 {
                if s.load(Ordering::Relaxed) {
                    return;
                }
                let Ok((mut c, _)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                c.set_nonblocking(false).unwrap();
                c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                let mut reader = BufReader::new(c.try_clone().unwrap());
                let mut line = String::new();
                // The request line and headers, up to the blank line.
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) && !line.ends_with("\r\n\r\n") {}
                r.fetch_add(1, Ordering::SeqCst);
                let body = d.lock().unwrap().clone();
                let _ = write!(
                    c,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        let base = format!("http://127.0.0.1:{port}/realms/test");
        JwksServer {
            url: format!("{base}/protocol/openid-connect/certs"),
            issuer: base,
            doc,
            requests,
            stop,
        }
    }
    fn serve(&self, keys: &[&Key]) {
        let keys: Vec<Value> = keys.iter().map(|k| k.jwk()).collect();
        *self.doc.lock().unwrap() = json!({ "keys": keys }).to_string();
    }
    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// An ES256 signing key with its `kid`.
struct Key {
    kid: &'static str,
    pair: rcgen::KeyPair,
}

impl Key {
    fn new(kid: &'static str) -> Key {
        Key {
            kid,
            pair: rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap(),
        }
    }
    fn jwk(&self) -> Value {
        // The uncompressed point: 0x04, x, y.
        let raw = self.pair.public_key_raw();
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        json!({"kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": self.kid,
               "x": b64(&raw[1..33]), "y": b64(&raw[33..65])})
    }
    /// A token as Keycloak issues them.
    fn token(&self, jwks: &JwksServer, user: &str, aud: &str) -> String {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        let claims = json!({"sub": user, "exp": now + 300, "iat": now, "iss": jwks.issuer,
                            "aud": [aud, "account"], "azp": "web-app", "typ": "Bearer",
                            "preferred_username": user});
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some(self.kid.into());
        let key = EncodingKey::from_ec_pem(self.pair.serialize_pem().as_bytes()).unwrap();
        jsonwebtoken::encode(&h, &claims, &key).unwrap()
    }
}

async fn hello(server: &Server, token: &str) -> Result<SignalClient, ClientError> {
    SignalClient::connect(&format!("ws://{}/v1/ws", server.http), token, "d").await
}

#[tokio::test]
async fn keycloak_shaped_tokens_verify_with_jwks_keys_and_a_rotated_key_works_on_its_first_token() {
    let jwks = JwksServer::start();
    let (k1, k2, k3) = (Key::new("k1"), Key::new("k2"), Key::new("k3"));
    jwks.serve(&[&k1]);
    let server = start_firstcall(&[
        "--jwks-url",
        &jwks.url,
        "--jwt-audience",
        "firstcall",
        "--jwt-issuer",
        &jwks.issuer,
    ]);
    assert_eq!(jwks.requests(), 1, "fetched once at start");
    let alice = match hello(&server, &k1.token(&jwks, "alice", "firstcall")).await {
        Ok(c) => c,
        Err(e) => panic!("k1 token: {e}; log:\n{}", server.log_text()),
    };
    assert_eq!(alice.welcome["user"], "alice");
    assert_eq!(jwks.requests(), 1, "a known key needs no fetch");

    // The provider rotates: k2 is published and signs the next token, which is accepted
    // on its first attempt (one fetch, made before the hub saw the hello).
    jwks.serve(&[&k1, &k2]);
    let bob = hello(&server, &k2.token(&jwks, "bob", "firstcall"))
        .await
        .expect("k2 token");
    assert_eq!(bob.welcome["user"], "bob");
    assert_eq!(jwks.requests(), 2);

    // Made-up kids, three at once: refused, with one fetch between them (they wait for
    // the refetch bound together).
    let made_up = |n: usize| {
        let token = k3.token(&jwks, &format!("mallory{n}"), "firstcall");
        let server = &server;
        async move { hello(server, &token).await }
    };
    let (r1, r2, r3) = tokio::join!(made_up(1), made_up(2), made_up(3));
    for r in [r1, r2, r3] {
        match r {
            Err(ClientError::Closed(code)) => assert_eq!(code, Some(4003)),
            other => panic!("unknown key accepted: {:?}", other.map(|c| c.welcome.clone())),
        }
    }
    assert_eq!(jwks.requests(), 3, "one fetch for the three made-up kids");
    // Right after them the provider rotates again: the new key's first token waits for
    // the bound and is accepted; the made-up kids did not keep it out.
    let k4 = Key::new("k4");
    jwks.serve(&[&k1, &k2, &k4]);
    let dave = hello(&server, &k4.token(&jwks, "dave", "firstcall"))
        .await
        .expect("k4 token");
    assert_eq!(dave.welcome["user"], "dave");
    assert_eq!(jwks.requests(), 4);
    // A token for another audience (another client of the same realm) is refused too.
    match hello(&server, &k1.token(&jwks, "carol", "other-app")).await {
        Err(ClientError::Closed(code)) => assert_eq!(code, Some(4003)),
        other => panic!("wrong audience accepted: {:?}", other.map(|c| c.welcome.clone())),
    }
    let log = server.log_text();
    assert!(
        log.contains("check=\"unknown_key\"") || log.contains("check=unknown_key"),
        "{log}"
    );
    assert!(
        log.contains("check=\"audience\"") || log.contains("check=audience"),
        "{log}"
    );
}

#[test]
fn jwks_url_is_one_of_the_token_settings() {
    let jwks = JwksServer::start();
    let out = run_bounded(
        std::process::Command::new(firstcall_bin()).args([
            "serve",
            "--jwks-url",
            &jwks.url,
            "--jwt-secret",
            "s",
            "--http-listen",
            "127.0.0.1:0",
        ]),
        Duration::from_secs(10),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("give one of --jwt-secret, --jwt-public-key and --jwks-url"),
        "{err}"
    );
    let out = run_bounded(
        std::process::Command::new(firstcall_bin()).args(["serve", "--jwks-url", "ftp://x/keys"]),
        Duration::from_secs(10),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not an http(s) URL"), "{err}");
    let _ = std::io::stdout().flush();
}
