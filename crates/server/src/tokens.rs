//! Bearer tokens: JWT (HS256 with a shared secret; RS256/ES256 with a public key)
//! whose `sub` is the user, or, with no JWT settings, dev tokens `dev:<user>`.
//!
//! Expiry is checked against the time the caller passes in, never the clock.

use firstcall_signal::hub::TokenVerifier;
use firstcall_signal::protocol::UserId;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// How tokens are checked.
pub enum Tokens {
    /// Any `dev:<user>` is accepted. Never for production.
    Dev,
    /// Signed JWTs.
    Jwt {
        /// Verification key.
        key: DecodingKey,
        /// Accepted algorithms.
        algorithms: Vec<Algorithm>,
    },
}

/// Why a token was refused or a key could not be loaded.
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
    /// Signing failed (bad secret).
    #[error("cannot sign token: {0}")]
    Sign(String),
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
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

impl Tokens {
    /// HS256 with a shared secret.
    pub fn hs256(secret: &str) -> Tokens {
        Tokens::Jwt {
            key: DecodingKey::from_secret(secret.as_bytes()),
            algorithms: vec![Algorithm::HS256],
        }
    }

    /// RS256 or ES256 with a PEM public key.
    pub fn public_key(path: &std::path::Path) -> Result<Tokens, TokenError> {
        let err = |m: String| TokenError::Key {
            path: path.display().to_string(),
            message: m,
        };
        let pem = std::fs::read(path).map_err(|e| err(e.to_string()))?;
        if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
            return Ok(Tokens::Jwt {
                key,
                algorithms: vec![Algorithm::RS256],
            });
        }
        let key = DecodingKey::from_ec_pem(&pem).map_err(|e| err(format!("neither RSA nor EC: {e}")))?;
        Ok(Tokens::Jwt {
            key,
            algorithms: vec![Algorithm::ES256],
        })
    }

    /// Dev mode?
    pub fn is_dev(&self) -> bool {
        matches!(self, Tokens::Dev)
    }

    /// The user a token names at `now_unix`.
    pub fn user(&self, token: &str, now_unix: u64) -> Result<UserId, String> {
        match self {
            Tokens::Dev => token
                .strip_prefix("dev:")
                .and_then(UserId::parse)
                .ok_or_else(|| "dev mode: token must be dev:<user>".to_owned()),
            Tokens::Jwt { key, algorithms } => {
                let mut v = Validation::new(algorithms[0]);
                v.algorithms = algorithms.clone();
                // Time claims are checked below against the time passed in.
                v.validate_exp = false;
                v.validate_nbf = false;
                v.required_spec_claims.clear();
                v.required_spec_claims.insert("sub".into());
                let data = jsonwebtoken::decode::<Claims>(token, key, &v).map_err(|e| format!("invalid token: {e}"))?;
                let c = data.claims;
                // A token that never expires is a password that can never be revoked.
                let Some(exp) = c.exp else {
                    return Err("token has no exp: tokens must expire".into());
                };
                if exp.saturating_add(LEEWAY) < now_unix {
                    return Err("token expired".into());
                }
                if c.nbf.is_some_and(|nbf| nbf > now_unix + LEEWAY) {
                    return Err("token not yet valid".into());
                }
                UserId::parse(&c.sub).ok_or_else(|| "token sub is not a valid user id".into())
            }
        }
    }
}

impl TokenVerifier for Tokens {
    fn verify(&self, token: &str, now_unix: u64) -> Result<UserId, String> {
        self.user(token, now_unix)
    }
}

/// An HS256 token for `user` valid for `ttl_secs` from `now_unix` (`firstcall token`).
pub fn mint_hs256(secret: &str, user: &str, now_unix: u64, ttl_secs: u64) -> Result<String, TokenError> {
    let claims = Claims {
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
        assert!(v.user(&t, 4601 + LEEWAY).unwrap_err().contains("expired"));
        assert!(Tokens::hs256("other").user(&t, 1000).is_err());
        assert!(v.user("dev:alice", 1000).is_err(), "dev tokens only in dev mode");
    }

    #[test]
    fn a_token_without_exp_is_refused() {
        let claims = Claims {
            sub: "alice".into(),
            exp: None,
            nbf: None,
            iat: Some(1000),
        };
        let t = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(b"k")).unwrap();
        let e = Tokens::hs256("k").user(&t, 1000).unwrap_err();
        assert!(e.contains("no exp"), "{e}");
        // `exp` far in the future is accepted, and does not overflow.
        let claims = Claims {
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
        let claims = Claims {
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

    #[test]
    fn dev_tokens() {
        assert_eq!(Tokens::Dev.user("dev:bob", 0).unwrap().as_str(), "bob");
        assert!(Tokens::Dev.user("bob", 0).is_err());
        assert!(Tokens::Dev.user("dev:", 0).is_err());
    }
}
