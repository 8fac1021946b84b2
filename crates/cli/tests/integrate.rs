//! An existing app's habits against the real binary (issue 19): its identity provider's
//! tokens (audience, issuer, another user claim, an algorithm allow-list), presence off
//! unless asked for, metrics on a listener of their own, JSON logs.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use firstcall_client::signal::{ClientError, SignalClient};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

const ISS: &str = "https://sso.example.org/realms/chat";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// An RSA key pair made by openssl in `dir`: (public PEM path, signing key).
fn rsa_pair(dir: &Path) -> (PathBuf, EncodingKey) {
    std::fs::create_dir_all(dir).unwrap();
    let (key, public) = (dir.join("idp.pem"), dir.join("idp.pub.pem"));
    let run = |args: &[&str]| assert!(Command::new("openssl").args(args).status().unwrap().success());
    run(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        key.to_str().unwrap(),
    ]);
    run(&[
        "pkey",
        "-pubout",
        "-in",
        key.to_str().unwrap(),
        "-out",
        public.to_str().unwrap(),
    ]);
    (
        public,
        EncodingKey::from_rsa_pem(&std::fs::read(&key).unwrap()).unwrap(),
    )
}

/// A token shaped like a Keycloak access token for `user`.
fn keycloak(key: &EncodingKey, user: &str, aud: Value, iss: &str, ttl: u64) -> String {
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some("kc-2026".into());
    let claims = json!({
        "exp": now() + ttl, "iat": now(), "sub": format!("uuid-of-{user}"),
        "preferred_username": user, "aud": aud, "iss": iss, "azp": "chat-app", "typ": "Bearer",
        "realm_access": {"roles": ["user"]},
    });
    jsonwebtoken::encode(&h, &claims, key).unwrap()
}

#[tokio::test]
async fn an_identity_providers_tokens_sign_in_with_audience_issuer_and_user_claim() {
    let dir = std::env::temp_dir().join(format!("firstcall-idp-{}", std::process::id()));
    let (public, key) = rsa_pair(&dir);
    let server = start_firstcall(&[
        "--turn-secret",
        "s",
        "--jwt-public-key",
        public.to_str().unwrap(),
        "--jwt-audience",
        "firstcall",
        "--jwt-issuer",
        ISS,
        "--jwt-user-claim",
        "preferred_username",
        "--jwt-algorithms",
        "RS256",
    ]);
    let url = format!("ws://{}/v1/ws", server.http);
    let good = keycloak(&key, "alice", json!(["account", "firstcall"]), ISS, 3600);
    let (status, body) = http_get(
        server.http,
        "/v1/turn-credentials",
        &[("Authorization", &format!("Bearer {good}"))],
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains(":alice"),
        "TURN username names the user claim's user: {body}"
    );
    let c = SignalClient::connect(&url, &good, "laptop").await.unwrap();
    assert_eq!(c.welcome["user"], "alice");

    // Each refusal names its check, to the client and in the log.
    for (token, check) in [
        (keycloak(&key, "bob", json!("account"), ISS, 3600), "audience"),
        (
            keycloak(&key, "bob", json!("firstcall"), "https://other", 3600),
            "issuer",
        ),
    ] {
        let (status, body) = http_get(
            server.http,
            "/v1/turn-credentials",
            &[("Authorization", &format!("Bearer {token}"))],
        )
        .unwrap();
        assert_eq!(status, 401, "{body}");
        assert!(body.contains(check), "{check}: {body}");
        let e = SignalClient::connect(&url, &token, "d").await.err().expect("refused");
        assert!(matches!(e, ClientError::Closed(Some(4003))), "{e:?}");
        assert!(
            server.log_text().contains(&format!("check=\"{check}\""))
                || server.log_text().contains(&format!("check={check}"))
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_resume_with_a_fresh_token_of_the_same_user_is_accepted() {
    let server = start_firstcall(&["--turn-secret", "s", "--jwt-secret", "k"]);
    let url = format!("ws://{}/v1/ws", server.http);
    let first = firstcall_server::tokens::mint_hs256("k", "alice", now(), 60).unwrap();
    let mut c = SignalClient::connect(&url, &first, "phone").await.unwrap();
    let session = c.session().unwrap().to_owned();
    c.cut();
    // The app fetched a new token meanwhile (the old one may have expired).
    let fresh = firstcall_server::tokens::mint_hs256("k", "alice", now(), 3600).unwrap();
    assert_ne!(first, fresh);
    c.set_token(&fresh);
    c.reconnect().await.unwrap();
    assert_eq!(c.welcome["resumed"], true);
    assert_eq!(c.session(), Some(session.as_str()));
    // Another user's token cannot take the session over.
    c.cut();
    c.set_token(&firstcall_server::tokens::mint_hs256("k", "mallory", now(), 3600).unwrap());
    c.reconnect().await.unwrap();
    assert_eq!(c.welcome["resumed"], false);
    assert_eq!(c.welcome["user"], "mallory");
}

#[test]
fn presence_is_off_with_real_tokens_and_on_in_dev_mode() {
    let server = start_firstcall(&["--turn-secret", "s", "--jwt-secret", "k"]);
    let t = firstcall_server::tokens::mint_hs256("k", "alice", now(), 60).unwrap();
    let auth = format!("Bearer {t}");
    let (status, body) = http_get(server.http, "/v1/online", &[("Authorization", &auth)]).unwrap();
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("presence_off"));
    let on = start_firstcall(&["--turn-secret", "s", "--jwt-secret", "k", "--presence", "all"]);
    assert_eq!(
        http_get(on.http, "/v1/online", &[("Authorization", &auth)]).unwrap().0,
        200
    );
    let dev = start_firstcall(&["--turn-secret", "s", "--dev"]);
    assert_eq!(
        http_get(dev.http, "/v1/online", &[("Authorization", "Bearer dev:a")])
            .unwrap()
            .0,
        200
    );
}

#[test]
fn metrics_on_their_own_listener_and_json_logs() {
    let port = free_port();
    let server = start_firstcall(&[
        "--turn-secret",
        "s",
        "--dev",
        "--metrics-listen",
        &format!("127.0.0.1:{port}"),
        "--log-format",
        "json",
    ]);
    let metrics = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    assert!(wait_until(Duration::from_secs(5), || matches!(
        http_get(metrics, "/metrics", &[]),
        Ok((200, b)) if b.contains("firstcall_http_connections")
    )));
    assert_eq!(http_get(server.http, "/metrics", &[]).unwrap().0, 404);
    let log = server.log_text();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty());
    for l in &lines {
        let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{l}");
    }
}
