//! Answer tokens: what a `call.ring` push carries so that the phone it wakes can sign in
//! at once, without first asking the app's backend for a fresh token (the one it had may
//! have expired while it slept).
//!
//! `fca1.<payload>.<tag>`: the payload is base64url JSON `{"u":user,"c":call,"d":device,
//! "exp":unix}`, the tag base64url HMAC-SHA256 over `fca1.<payload>` with a key derived
//! from the TURN secret (`HMAC(turn secret, "firstcall answer token v1")`): every node of a
//! deployment shares that secret already, so a token minted by the node that posted the
//! push is accepted by whichever node the phone reaches, and the key is never the secret
//! itself. A token signs in as its user until `exp` (the ring timeout after the push):
//! long enough to answer, useless once the ring is over.

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use firstcall_signal::hub::TokenVerifier;
use firstcall_signal::protocol::UserId;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// The prefix that tells an answer token from the app's own tokens.
pub const PREFIX: &str = "fca1.";

/// Why an answer token was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Not `fca1.<payload>.<tag>`, or its payload is not the expected JSON.
    #[error("answer token malformed")]
    Malformed,
    /// The tag does not match: another deployment's, or altered.
    #[error("answer token signature does not verify")]
    Signature,
    /// Past its `exp`: the ring it was for is over.
    #[error("answer token expired")]
    Expired,
}

#[derive(Serialize, Deserialize)]
struct Payload {
    u: String,
    c: String,
    d: Option<String>,
    exp: u64,
}

/// Mints and verifies answer tokens.
#[derive(Clone)]
pub struct AnswerTokens {
    key: [u8; 32],
}

impl std::fmt::Debug for AnswerTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AnswerTokens(..)")
    }
}

impl AnswerTokens {
    /// Keyed from the deployment's TURN secret.
    pub fn from_turn_secret(secret: &str) -> AnswerTokens {
        let mut m = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
        m.update(b"firstcall answer token v1");
        AnswerTokens {
            key: m.finalize().into_bytes().into(),
        }
    }

    fn tag(&self, signed: &str) -> Hmac<Sha256> {
        let mut m = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        m.update(signed.as_bytes());
        m
    }

    /// A token for `user` (answering `call` on `device`), valid until `exp` (unix seconds).
    pub fn mint(&self, user: &str, call: &str, device: Option<&str>, exp: u64) -> String {
        let payload = Payload {
            u: user.to_owned(),
            c: call.to_owned(),
            d: device.map(str::to_owned),
            exp,
        };
        let json = serde_json::to_vec(&payload).expect("a struct of strings serializes");
        let signed = format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(json));
        let tag = URL_SAFE_NO_PAD.encode(self.tag(&signed).finalize().into_bytes());
        format!("{signed}.{tag}")
    }

    /// The user a token names, if it is ours, intact and not expired at `now_unix`.
    pub fn verify(&self, token: &str, now_unix: u64) -> Result<UserId, Refusal> {
        let (signed, tag) = token.rsplit_once('.').ok_or(Refusal::Malformed)?;
        let payload = signed.strip_prefix(PREFIX).ok_or(Refusal::Malformed)?;
        let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| Refusal::Malformed)?;
        // Constant time: the tag is checked before anything else is read.
        self.tag(signed).verify_slice(&tag).map_err(|_| Refusal::Signature)?;
        let json = URL_SAFE_NO_PAD.decode(payload).map_err(|_| Refusal::Malformed)?;
        let p: Payload = serde_json::from_slice(&json).map_err(|_| Refusal::Malformed)?;
        if p.exp < now_unix {
            return Err(Refusal::Expired);
        }
        UserId::parse(&p.u).ok_or(Refusal::Malformed)
    }
}

/// The hub's verifier: answer tokens by their prefix, everything else by the app's own
/// token settings.
pub struct WithAnswerTokens {
    /// The app's tokens.
    pub tokens: Arc<dyn TokenVerifier>,
    /// Answer tokens.
    pub answers: crate::reload::Live<AnswerTokens>,
}

impl TokenVerifier for WithAnswerTokens {
    fn verify(&self, token: &str, now_unix: u64) -> Result<UserId, String> {
        if token.starts_with(PREFIX) {
            return self.answers.load().verify(token, now_unix).map_err(|why| {
                tracing::info!(check = "answer_token", reason = %why, "token refused");
                why.to_string()
            });
        }
        self.tokens.verify(token, now_unix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_expiry_tampering_and_another_deployment() {
        let a = AnswerTokens::from_turn_secret("s");
        let t = a.mint("bob", "c1", Some("phone"), 1000);
        assert!(t.starts_with(PREFIX));
        assert_eq!(a.verify(&t, 1000).unwrap().as_str(), "bob");
        assert_eq!(a.verify(&t, 1001), Err(Refusal::Expired));
        assert_eq!(
            AnswerTokens::from_turn_secret("other").verify(&t, 0),
            Err(Refusal::Signature)
        );
        // Another user's payload under this tag.
        let (signed, tag) = t.rsplit_once('.').unwrap();
        let forged = URL_SAFE_NO_PAD.encode(br#"{"u":"mallory","c":"c1","d":null,"exp":9999999999}"#);
        assert_eq!(a.verify(&format!("{PREFIX}{forged}.{tag}"), 0), Err(Refusal::Signature));
        assert_eq!(a.verify(signed, 0), Err(Refusal::Malformed));
        assert_eq!(a.verify("fca1.", 0), Err(Refusal::Malformed));
        assert_eq!(a.verify("fca1.x.%%", 0), Err(Refusal::Malformed));
    }

    #[test]
    fn the_key_is_not_the_turn_secret() {
        let a = AnswerTokens::from_turn_secret("s");
        assert_ne!(&a.key[..], b"s");
        assert_ne!(a.key, AnswerTokens::from_turn_secret("t").key);
    }
}
