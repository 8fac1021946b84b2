//! Bearer tokens: JWT (HS256 with a shared secret; RS256/ES256 and the rest of their
//! families with a public key) whose user claim (`sub` unless `--jwt-user-claim`) is the
//! user, or, in dev mode, dev tokens `dev:<user>`.
//!
//! Checks, in order: the JWT's shape, its algorithm against the allow-list, its signature,
//! `exp` (required), `nbf`, `aud` (when `--jwt-audience` is set: the token must carry one
//! of them), `iss` (when `--jwt-issuer` is set), the user claim. A refusal names the check
//! that failed ([`Refusal`]) to the client and in the server log. Time is what the caller
//! passes in, never the clock.

use std::collections::HashSet;
use std::sync::Arc;

use crate::jwks::Jwks;

use firstcall_signal::hub::TokenVerifier;
use firstcall_signal::protocol::UserId;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How tokens are checked.
pub enum Tokens {
    /// Any `dev:<user>` is accepted. Never for production.
    Dev,
    /// Signed JWTs.
    Jwt(Box<Jwt>),
}

/// Where a JWT verifier's keys come from.
enum KeySource {
    /// One key: a shared secret or a PEM public key.
    Fixed(DecodingKey),
    /// An identity provider's JWKS, by the token's `kid`.
    Jwks(Arc<Jwks>),
}

/// A JWT verifier: its key(s), its allowed algorithms and the claims it checks.
pub struct Jwt {
    key: KeySource,
    validation: Validation,
    user_claim: String,
}

/// What a deployment's tokens must carry, beyond a valid signature and `exp`.
#[derive(Clone, Debug, Default)]
pub struct Claims {
    /// Accepted audiences; empty: `aud` is not checked.
    pub audience: Vec<String>,
    /// The accepted issuer; `None`: `iss` is not checked.
    pub issuer: Option<String>,
    /// The claim naming the user (default `sub`).
    pub user_claim: Option<String>,
    /// Accepted algorithms; empty: the key's own (HS256, RS256 or ES256).
    pub algorithms: Vec<Algorithm>,
}

/// Why a token was refused: each variant is one check.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Dev mode and not `dev:<user>`.
    #[error("dev mode: token must be dev:<user>")]
    DevFormat,
    /// Not a JWT (three base64url parts with JSON inside).
    #[error("invalid token: not a JWT")]
    Malformed,
    /// The header's `alg` is not in the allow-list (or does not fit the key).
    #[error("invalid token: algorithm not accepted")]
    Algorithm,
    /// The signature does not verify with the configured key.
    #[error("invalid token: bad signature")]
    Signature,
    /// No `exp`.
    #[error("token has no exp: tokens must expire")]
    NoExp,
    /// `exp` is past (beyond the leeway).
    #[error("token expired")]
    Expired,
    /// `nbf` is ahead (beyond the leeway).
    #[error("token not yet valid")]
    NotYetValid,
    /// `aud` missing or none of the accepted audiences.
    #[error("token audience not accepted")]
    Audience,
    /// `iss` missing or not the accepted issuer.
    #[error("token issuer not accepted")]
    Issuer,
    /// The user claim is missing, not a string, or not a valid user id.
    #[error("token {0} claim is missing or not a valid user id")]
    UserClaim(String),
    /// The token's `kid` names no key of the JWKS (even after a fetch, if one was
    /// allowed).
    #[error("invalid token: unknown signing key (kid)")]
    UnknownKey,
}

impl Refusal {
    /// The check that failed, for logs and metrics.
    pub fn check(&self) -> &'static str {
        match self {
            Refusal::DevFormat => "dev_format",
            Refusal::Malformed => "malformed",
            Refusal::Algorithm => "algorithm",
            Refusal::Signature => "signature",
            Refusal::NoExp => "exp_missing",
            Refusal::Expired => "expired",
            Refusal::NotYetValid => "not_yet_valid",
            Refusal::Audience => "audience",
            Refusal::Issuer => "issuer",
            Refusal::UserClaim(_) => "user_claim",
            Refusal::UnknownKey => "unknown_key",
        }
    }
}

/// Why a key or a setting could not be used, or a token not signed.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The public key file is not a PEM RSA or EC public key.
    #[error("cannot load JWT public key {path}: {message}")]
    Key {
        /// File.
        path: String,
        /// Why.
        message: String,
    },
    /// `--jwt-algorithms` names an algorithm the key cannot verify.
    #[error("--jwt-algorithms: {0}")]
    Algorithms(String),
    /// Signing failed (bad secret).
    #[error("cannot sign token: {0}")]
    Sign(String),
}

#[derive(Debug, Serialize, Deserialize)]
struct MintedClaims {
    sub: String,
    #[serde(default)]
    exp: Option<u64>,
    #[serde(default)]
    nbf: Option<u64>,
    #[serde(default)]
    iat: Option<u64>,
}

/// Clock skew tolerated on `exp` and `nbf`.
const LEEWAY: u64 = 30;

/// Parse `--jwt-algorithms` names (`RS256`, `ES256`, ...).
pub fn parse_algorithms(names: &[String]) -> Result<Vec<Algorithm>, TokenError> {
    names
        .iter()
        .map(|n| {
            n.trim()
                .parse::<Algorithm>()
                .map_err(|_| TokenError::Algorithms(format!("unknown algorithm {n:?}")))
        })
        .collect()
}

impl Tokens {
    /// HS256 with a shared secret, checking nothing beyond the signature, `exp` and `sub`.
    pub fn hs256(secret: &str) -> Tokens {
        Tokens::with_secret(secret, Claims::default()).expect("HS256 fits a secret")
    }

    /// A shared secret (HS256, or the HMAC algorithms of `claims.algorithms`).
    pub fn with_secret(secret: &str, claims: Claims) -> Result<Tokens, TokenError> {
        Jwt::tokens(DecodingKey::from_secret(secret.as_bytes()), Algorithm::HS256, claims)
    }

    /// RS256 or ES256 (or the algorithms of `claims.algorithms` in the key's family)
    /// with a PEM public key.
    pub fn public_key(path: &std::path::Path) -> Result<Tokens, TokenError> {
        Tokens::with_public_key(path, Claims::default())
    }

    /// As [`Tokens::public_key`], checking `claims`.
    pub fn with_public_key(path: &std::path::Path, claims: Claims) -> Result<Tokens, TokenError> {
        let err = |m: String| TokenError::Key {
            path: path.display().to_string(),
            message: m,
        };
        let pem = std::fs::read(path).map_err(|e| err(e.to_string()))?;
        if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
            return Jwt::tokens(key, Algorithm::RS256, claims);
        }
        let key = DecodingKey::from_ec_pem(&pem).map_err(|e| err(format!("neither RSA nor EC: {e}")))?;
        Jwt::tokens(key, Algorithm::ES256, claims)
    }

    /// Keys from an identity provider's JWKS ([`Jwks`]), by the token's `kid`: RS256 and
    /// ES256 (or the algorithms of `claims.algorithms`, RSA or EC).
    pub fn with_jwks(jwks: Arc<Jwks>, claims: Claims) -> Result<Tokens, TokenError> {
        let algorithms = if claims.algorithms.is_empty() {
            vec![Algorithm::RS256, Algorithm::ES256]
        } else {
            claims.algorithms.clone()
        };
        if let Some(bad) = algorithms.iter().find(|a| family(**a) != 1 && family(**a) != 2) {
            return Err(TokenError::Algorithms(format!(
                "{bad:?} cannot be verified with JWKS keys (RSA or EC only)"
            )));
        }
        Ok(Tokens::Jwt(Box::new(Jwt::new(
            KeySource::Jwks(jwks),
            algorithms,
            claims,
        ))))
    }

    /// The JWKS the keys come from, with `--jwks-url`.
    pub fn jwks(&self) -> Option<&Arc<Jwks>> {
        match self {
            Tokens::Jwt(j) => match &j.key {
                KeySource::Jwks(k) => Some(k),
                KeySource::Fixed(_) => None,
            },
            Tokens::Dev => None,
        }
    }

    /// Dev mode?
    pub fn is_dev(&self) -> bool {
        matches!(self, Tokens::Dev)
    }

    /// The user a token names at `now_unix`, or the check it failed.
    pub fn user(&self, token: &str, now_unix: u64) -> Result<UserId, Refusal> {
        let r = match self {
            Tokens::Dev => token
                .strip_prefix("dev:")
                .and_then(UserId::parse)
                .ok_or(Refusal::DevFormat),
            Tokens::Jwt(j) => j.user(token, now_unix),
        };
        if let Err(why) = &r {
            tracing::info!(check = why.check(), reason = %why, "token refused");
        }
        r
    }
}

impl Jwt {
    fn tokens(key: DecodingKey, default: Algorithm, claims: Claims) -> Result<Tokens, TokenError> {
        let algorithms = if claims.algorithms.is_empty() {
            vec![default]
        } else {
            claims.algorithms.clone()
        };
        if let Some(bad) = algorithms.iter().find(|a| family(**a) != family(default)) {
            return Err(TokenError::Algorithms(format!(
                "{bad:?} cannot be verified with this key ({default:?} family)"
            )));
        }
        Ok(Tokens::Jwt(Box::new(Jwt::new(
            KeySource::Fixed(key),
            algorithms,
            claims,
        ))))
    }

    fn new(key: KeySource, algorithms: Vec<Algorithm>, claims: Claims) -> Jwt {
        let mut v = Validation::new(algorithms[0]);
        v.algorithms = algorithms;
        // Time claims are checked against the time passed in, not the clock.
        v.validate_exp = false;
        v.validate_nbf = false;
        v.required_spec_claims.clear();
        v.validate_aud = !claims.audience.is_empty();
        if v.validate_aud {
            v.aud = Some(claims.audience.iter().cloned().collect::<HashSet<_>>());
            v.required_spec_claims.insert("aud".into());
        }
        if let Some(iss) = &claims.issuer {
            v.iss = Some(HashSet::from([iss.clone()]));
            v.required_spec_claims.insert("iss".into());
        }
        Jwt {
            key,
            validation: v,
            user_claim: claims.user_claim.unwrap_or_else(|| "sub".into()),
        }
    }

    fn user(&self, token: &str, now_unix: u64) -> Result<UserId, Refusal> {
        let (found, narrowed);
        let (key, validation) = match &self.key {
            KeySource::Fixed(k) => (k, &self.validation),
            KeySource::Jwks(jwks) => {
                let header = jsonwebtoken::decode_header(token).map_err(|_| Refusal::Malformed)?;
                found = jwks
                    .key(header.kid.as_deref().unwrap_or(""))
                    .ok_or(Refusal::UnknownKey)?;
                // The allow-list holds RSA and EC algorithms; a key verifies only its
                // own family's (jsonwebtoken refuses a list that mixes families).
                let mut v = self.validation.clone();
                v.algorithms.retain(|a| a.family() == found.family());
                if v.algorithms.is_empty() {
                    return Err(Refusal::Algorithm);
                }
                narrowed = v;
                (&found, &narrowed)
            }
        };
        let data =
            jsonwebtoken::decode::<serde_json::Map<String, Value>>(token, key, validation).map_err(|e| {
                match e.kind() {
                    ErrorKind::InvalidSignature => Refusal::Signature,
                    ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => Refusal::Algorithm,
                    ErrorKind::InvalidAudience => Refusal::Audience,
                    ErrorKind::InvalidIssuer => Refusal::Issuer,
                    ErrorKind::MissingRequiredClaim(c) if c == "aud" => Refusal::Audience,
                    ErrorKind::MissingRequiredClaim(c) if c == "iss" => Refusal::Issuer,
                    _ => Refusal::Malformed,
                }
            })?;
        let c = data.claims;
        let time = |name: &str| c.get(name).and_then(Value::as_u64);
        // A token that never expires is a password that can never be revoked.
        let exp = time("exp").ok_or(Refusal::NoExp)?;
        if exp.saturating_add(LEEWAY) < now_unix {
            return Err(Refusal::Expired);
        }
        if time("nbf").is_some_and(|nbf| nbf > now_unix.saturating_add(LEEWAY)) {
            return Err(Refusal::NotYetValid);
        }
        c.get(&self.user_claim)
            .and_then(Value::as_str)
            .and_then(UserId::parse)
            .ok_or_else(|| Refusal::UserClaim(self.user_claim.clone()))
    }
}

/// An algorithm's key family: 0 HMAC, 1 RSA, 2 EC, 3 other.
fn family(a: Algorithm) -> u8 {
    use Algorithm::*;
    match a {
        HS256 | HS384 | HS512 => 0,
        RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => 1,
        ES256 | ES384 => 2,
        _ => 3, // EdDSA and any newer family: never one of our keys' defaults
    }
}

impl TokenVerifier for Tokens {
    fn verify(&self, token: &str, now_unix: u64) -> Result<UserId, String> {
        self.user(token, now_unix).map_err(|r| r.to_string())
    }
}

/// An HS256 token for `user` valid for `ttl_secs` from `now_unix` (`firstcall token`).
pub fn mint_hs256(secret: &str, user: &str, now_unix: u64, ttl_secs: u64) -> Result<String, TokenError> {
    let claims = MintedClaims {
        sub: user.to_owned(),
        exp: Some(now_unix + ttl_secs),
        nbf: None,
        iat: Some(now_unix),
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| TokenError::Sign(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hs256_round_trip_and_expiry_against_given_time() {
        let t = mint_hs256("k", "alice", 1000, 3600).unwrap();
        let v = Tokens::hs256("k");
        assert_eq!(v.user(&t, 1000).unwrap().as_str(), "alice");
        assert_eq!(v.user(&t, 4600 + LEEWAY).unwrap().as_str(), "alice");
        assert!(v.user(&t, 4601 + LEEWAY).unwrap_err() == Refusal::Expired);
        assert!(Tokens::hs256("other").user(&t, 1000).is_err());
        assert!(v.user("dev:alice", 1000).is_err(), "dev tokens only in dev mode");
    }

    #[test]
    fn a_token_without_exp_is_refused() {
        let claims = MintedClaims {
            sub: "alice".into(),
            exp: None,
            nbf: None,
            iat: Some(1000),
        };
        let t = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(b"k")).unwrap();
        assert_eq!(Tokens::hs256("k").user(&t, 1000).unwrap_err(), Refusal::NoExp);
        // `exp` far in the future is accepted, and does not overflow.
        let claims = MintedClaims {
            exp: Some(u64::MAX),
            ..claims
        };
        let t = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(b"k")).unwrap();
        assert_eq!(Tokens::hs256("k").user(&t, 1000).unwrap().as_str(), "alice");
    }

    #[test]
    fn es256_with_a_public_key_file() {
        // A P-256 key pair made here; the token is signed with the private half and
        // verified with the public PEM, as an app's own issuer would do.
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let dir = std::env::temp_dir().join(format!("firstcall-es256-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pub_path = dir.join("pub.pem");
        std::fs::write(&pub_path, kp.public_key_pem()).unwrap();
        let claims = MintedClaims {
            sub: "carol".into(),
            exp: Some(5000),
            nbf: None,
            iat: None,
        };
        let key = EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()).unwrap();
        let token = jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &key).unwrap();
        let v = Tokens::public_key(&pub_path).unwrap();
        assert_eq!(v.user(&token, 4000).unwrap().as_str(), "carol");
        assert!(v.user(&token, 6000).is_err(), "expired");
        // An HS256 token is not accepted by an ES256 verifier (no algorithm confusion).
        assert!(v.user(&mint_hs256("x", "carol", 4000, 100).unwrap(), 4000).is_err());
        assert!(Tokens::public_key(&dir.join("missing.pem")).is_err());
        let _ = std::fs::remove_dir_all(dir);
    }

    /// An RS256 key pair written as PEM files, and a token signer for it.
    fn rsa_pair(dir: &std::path::Path) -> (std::path::PathBuf, EncodingKey) {
        // A 2048-bit RSA key from openssl (rcgen here signs with ECDSA only).
        std::fs::create_dir_all(dir).unwrap();
        let key = dir.join("rsa.pem");
        let public = dir.join("rsa.pub.pem");
        let ok = std::process::Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
            ])
            .arg(&key)
            .status()
            .unwrap()
            .success()
            && std::process::Command::new("openssl")
                .args(["pkey", "-pubout", "-in"])
                .arg(&key)
                .arg("-out")
                .arg(&public)
                .status()
                .unwrap()
                .success();
        assert!(ok, "openssl");
        let enc = EncodingKey::from_rsa_pem(&std::fs::read(&key).unwrap()).unwrap();
        (public, enc)
    }

    /// A token shaped like a Keycloak access token: kid, aud list, iss, azp, typ.
    fn keycloak(key: &EncodingKey, alg: Algorithm, claims: serde_json::Value) -> String {
        let mut h = Header::new(alg);
        h.kid = Some("kc-2026".into());
        jsonwebtoken::encode(&h, &claims, key).unwrap()
    }

    #[test]
    fn audience_issuer_user_claim_and_algorithms_as_configured() {
        let dir = std::env::temp_dir().join(format!("firstcall-kc-{}", std::process::id()));
        let (public, key) = rsa_pair(&dir);
        let iss = "https://sso.example.org/realms/chat";
        let claims = |aud: serde_json::Value, iss: &str| {
            serde_json::json!({
                "exp": 5000, "iat": 1000, "sub": "f81d4fae-7dec", "preferred_username": "alice",
                "aud": aud, "iss": iss, "azp": "chat-app", "typ": "Bearer",
            })
        };
        let good = keycloak(
            &key,
            Algorithm::RS256,
            claims(serde_json::json!(["account", "firstcall"]), iss),
        );
        // Before: any token carrying `aud` was refused (InvalidAudience), with no setting.
        let plain = Tokens::public_key(&public).unwrap();
        assert_eq!(plain.user(&good, 2000).unwrap().as_str(), "f81d4fae-7dec");
        let strict = Tokens::with_public_key(
            &public,
            Claims {
                audience: vec!["firstcall".into()],
                issuer: Some(iss.into()),
                user_claim: Some("preferred_username".into()),
                algorithms: parse_algorithms(&["RS256".into(), "PS256".into()]).unwrap(),
            },
        )
        .unwrap();
        assert_eq!(strict.user(&good, 2000).unwrap().as_str(), "alice");
        let other_aud = keycloak(&key, Algorithm::RS256, claims(serde_json::json!("account"), iss));
        assert_eq!(strict.user(&other_aud, 2000).unwrap_err(), Refusal::Audience);
        let mut no_aud = claims(serde_json::json!("x"), iss);
        no_aud.as_object_mut().unwrap().remove("aud");
        let no_aud = keycloak(&key, Algorithm::RS256, no_aud);
        assert_eq!(strict.user(&no_aud, 2000).unwrap_err(), Refusal::Audience);
        let other_iss = keycloak(
            &key,
            Algorithm::RS256,
            claims(serde_json::json!("firstcall"), "https://evil"),
        );
        assert_eq!(strict.user(&other_iss, 2000).unwrap_err(), Refusal::Issuer);
        let mut nameless = claims(serde_json::json!("firstcall"), iss);
        nameless.as_object_mut().unwrap().remove("preferred_username");
        let nameless = keycloak(&key, Algorithm::RS256, nameless);
        assert_eq!(
            strict.user(&nameless, 2000).unwrap_err(),
            Refusal::UserClaim("preferred_username".into())
        );
        // RS384 is the key's family but not in the allow-list.
        let rs384 = keycloak(&key, Algorithm::RS384, claims(serde_json::json!("firstcall"), iss));
        assert_eq!(strict.user(&rs384, 2000).unwrap_err(), Refusal::Algorithm);
        assert_eq!(strict.user(&good, 6000).unwrap_err(), Refusal::Expired);
        assert_eq!(strict.user("a.b", 2000).unwrap_err(), Refusal::Malformed);
        // An allow-list outside the key's family is refused at start.
        let e = Tokens::with_public_key(
            &public,
            Claims {
                algorithms: vec![Algorithm::HS256],
                ..Claims::default()
            },
        );
        assert!(matches!(e, Err(TokenError::Algorithms(_))));
        assert!(parse_algorithms(&["none".into()]).is_err());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn each_refusal_names_its_check() {
        let v = Tokens::hs256("k");
        let t = mint_hs256("other", "alice", 1000, 100).unwrap();
        assert_eq!(v.user(&t, 1000).unwrap_err(), Refusal::Signature);
        assert_eq!(Refusal::Signature.check(), "signature");
        assert_eq!(Tokens::Dev.user("bob", 0).unwrap_err(), Refusal::DevFormat);
    }

    #[test]
    fn dev_tokens() {
        assert_eq!(Tokens::Dev.user("dev:bob", 0).unwrap().as_str(), "bob");
        assert!(Tokens::Dev.user("bob", 0).is_err());
        assert!(Tokens::Dev.user("dev:", 0).is_err());
    }
}
