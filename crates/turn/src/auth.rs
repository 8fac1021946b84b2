//! Long-term credentials (RFC 8489 §9.2, as TURN uses them per RFC 8656 §5),
//! the TURN REST scheme coturn calls `use-auth-secret`, and stateless nonces.
//!
//! Nothing here reads a clock or draws randomness: every check takes the Unix
//! time as an argument and the nonce key comes from the caller.
//!
//! Expiry rule, chosen to match coturn (`userdb.c`: accepted while
//! `!turn_time_before(ts, now)`): a REST credential whose expiry is `E` is
//! accepted at `now == E` and refused from `E + 1` on.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use hmac::{Hmac, Mac};
use md5::Md5;
use sha1::Sha1;
use sha2::{Digest, Sha256};

/// A TURN REST shared secret (coturn `static-auth-secret`). Its Debug output
/// shows only a short fingerprint, never the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wrap a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// True for the empty secret, which [`Authenticator`] refuses to use.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Eight hex digits telling secrets apart in logs during a rotation. Being
    /// a hash it can confirm a guess, so a weak, guessable secret is weak here too.
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        // Domain-separated so the value is useless as a hash of the secret elsewhere.
        h.update(b"firstcall secret fingerprint\0");
        h.update(self.0.as_bytes());
        h.finalize()[..4].iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({})", self.fingerprint())
    }
}

/// The MD5 long-term key (RFC 8489 §9.2.2), the only one TURN clients use
/// unless PASSWORD-ALGORITHM negotiates another.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct LongTermKey([u8; 16]);

impl LongTermKey {
    /// A key given directly, like coturn's `user=name:0x<hex key>`.
    pub fn from_bytes(b: [u8; 16]) -> Self {
        LongTermKey(b)
    }
}

impl AsRef<[u8]> for LongTermKey {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for LongTermKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LongTermKey(..)")
    }
}

/// The SHA-256 long-term key (RFC 8489 §9.2.2, PASSWORD-ALGORITHM 0x0002).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct LongTermKeySha256([u8; 32]);

impl AsRef<[u8]> for LongTermKeySha256 {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for LongTermKeySha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LongTermKeySha256(..)")
    }
}

/// key = MD5(username ":" realm ":" password).
///
/// The strings are hashed as the UTF-8 they are: SASLprep/OpaqueString is the
/// identity for the ASCII usernames and base64 passwords TURN REST produces,
/// and static users are expected to be configured already normalised.
pub fn long_term_key(username: &str, realm: &str, password: &str) -> LongTermKey {
    let mut h = Md5::new();
    feed_key_input(&mut h, username, realm, password);
    LongTermKey(h.finalize().into())
}

/// key = SHA-256(username ":" OpaqueString(realm) ":" OpaqueString(password)),
/// with OpaqueString taken as the identity (see [`long_term_key`]).
pub fn long_term_key_sha256(username: &str, realm: &str, password: &str) -> LongTermKeySha256 {
    let mut h = Sha256::new();
    feed_key_input(&mut h, username, realm, password);
    LongTermKeySha256(h.finalize().into())
}

/// password = base64(HMAC-SHA1(secret, username)), exactly as coturn's `use-auth-secret`.
pub fn rest_password(secret: &Secret, username: &str) -> String {
    let mut m = Hmac::<Sha1>::new_from_slice(secret.0.as_bytes()).expect("HMAC accepts keys of any length");
    m.update(username.as_bytes());
    STANDARD.encode(m.finalize().into_bytes())
}

/// A REST credential for `user` valid until `expiry_unix` inclusive:
/// (`"<expiry>:<user>"`, password).
pub fn rest_credential(secret: &Secret, user: &str, expiry_unix: u64) -> (String, String) {
    let username = format!("{expiry_unix}:{user}");
    let password = rest_password(secret, &username);
    (username, password)
}

/// A parsed REST username.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RestUsername<'a> {
    /// Last Unix second at which the credential is accepted.
    pub expiry_unix: u64,
    /// The user part; empty only for a bare `<expiry>`.
    pub user: &'a str,
}

/// Longest username accepted. RFC 8489 §14.3 requires USERNAME to be fewer
/// than 509 bytes; a little slack costs nothing and refuses nothing real.
pub const MAX_USERNAME_LEN: usize = 512;

/// Parse `<expiry>:<user>`, `<user>:<expiry>` or a bare `<expiry>`.
///
/// The expiry is the all-digit side; when both sides are digits the first wins
/// (coturn's timestamp-first default). The user part may itself contain colons:
/// timestamp-first splits at the first colon, user-first at the last. Returns
/// `None` for anything else, including an empty user next to a colon and
/// usernames longer than [`MAX_USERNAME_LEN`].
pub fn parse_rest_username(username: &str) -> Option<RestUsername<'_>> {
    if username.len() > MAX_USERNAME_LEN {
        return None;
    }
    let Some((first, rest)) = username.split_once(':') else {
        return parse_expiry(username).map(|expiry_unix| RestUsername { expiry_unix, user: "" });
    };
    if let (Some(expiry_unix), false) = (parse_expiry(first), rest.is_empty()) {
        return Some(RestUsername {
            expiry_unix,
            user: rest,
        });
    }
    let (user, last) = username.rsplit_once(':')?;
    match (parse_expiry(last), user.is_empty()) {
        (Some(expiry_unix), false) => Some(RestUsername { expiry_unix, user }),
        _ => None,
    }
}

/// Why a request cannot authenticate; [`AuthError::as_str`] is the metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum AuthError {
    /// A REST credential whose expiry has passed.
    #[error("credential expired")]
    Expired,
    /// Neither a static user nor a REST username (or REST is not configured).
    #[error("unknown user")]
    UnknownUser,
    /// The username is empty or too long to be a real one.
    #[error("malformed username")]
    Malformed,
    /// MESSAGE-INTEGRITY matched none of the candidate keys.
    #[error("message integrity does not match")]
    BadIntegrity,
    /// The nonce is ours but too old: answer 438 with a fresh one.
    #[error("stale nonce")]
    StaleNonce,
    /// The nonce is forged, tampered with or was issued to another client.
    #[error("bad nonce")]
    BadNonce,
    /// The request carried no credentials: the usual first round trip.
    #[error("missing credentials")]
    MissingCredentials,
}

impl AuthError {
    /// Every variant, for registering metric labels up front.
    pub const ALL: [AuthError; 7] = [
        AuthError::Expired,
        AuthError::UnknownUser,
        AuthError::Malformed,
        AuthError::BadIntegrity,
        AuthError::StaleNonce,
        AuthError::BadNonce,
        AuthError::MissingCredentials,
    ];

    /// snake_case metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthError::Expired => "expired",
            AuthError::UnknownUser => "unknown_user",
            AuthError::Malformed => "malformed",
            AuthError::BadIntegrity => "bad_integrity",
            AuthError::StaleNonce => "stale_nonce",
            AuthError::BadNonce => "bad_nonce",
            AuthError::MissingCredentials => "missing_credentials",
        }
    }
}

/// Maps usernames to candidate keys: REST usernames through every configured
/// secret (several at once, for rotation), static users through their password.
#[derive(Clone, Debug)]
pub struct Authenticator {
    realm: String,
    secrets: Vec<Secret>,
    static_users: HashMap<String, LongTermKey>,
}

impl Authenticator {
    /// `secrets` newest first; all of them are accepted. Empty secrets are
    /// dropped: HMAC under an empty key would let anyone mint credentials.
    /// Static users' keys are derived once here, so passwords are not kept.
    pub fn new(realm: impl Into<String>, secrets: Vec<Secret>, static_users: Vec<(String, String)>) -> Self {
        let realm = realm.into();
        let before = secrets.len();
        let secrets: Vec<Secret> = secrets.into_iter().filter(|s| !s.is_empty()).collect();
        if secrets.len() != before {
            tracing::warn!(dropped = before - secrets.len(), "ignoring empty TURN REST secrets");
        }
        let static_users = static_users
            .into_iter()
            .map(|(user, password)| {
                let key = long_term_key(&user, &realm, &password);
                (user, key)
            })
            .collect();
        Authenticator {
            realm,
            secrets,
            static_users,
        }
    }

    /// The realm sent in challenges and mixed into every key.
    pub fn realm(&self) -> &str {
        &self.realm
    }

    /// Whether any REST secret is configured.
    pub fn rest_enabled(&self) -> bool {
        !self.secrets.is_empty()
    }

    /// Candidate keys to try against MESSAGE-INTEGRITY: the static user's key
    /// (a static user shadows a REST-shaped name), or one key per secret,
    /// newest first, for a REST username whose expiry is not yet past
    /// (`now_unix <= expiry`, as coturn).
    pub fn keys_for(&self, username: &str, now_unix: u64) -> Result<Vec<LongTermKey>, AuthError> {
        if username.is_empty() || username.len() > MAX_USERNAME_LEN {
            return Err(AuthError::Malformed);
        }
        if let Some(key) = self.static_users.get(username) {
            return Ok(vec![*key]);
        }
        if self.secrets.is_empty() {
            return Err(AuthError::UnknownUser);
        }
        let rest = parse_rest_username(username).ok_or(AuthError::UnknownUser)?;
        if rest.expiry_unix < now_unix {
            return Err(AuthError::Expired);
        }
        Ok(self
            .secrets
            .iter()
            .map(|s| long_term_key(username, &self.realm, &rest_password(s, username)))
            .collect())
    }
}

/// Key for nonce MACs, drawn by the caller from its randomness source.
#[derive(Clone)]
pub struct NonceKey([u8; 32]);

impl NonceKey {
    /// Wrap 32 random bytes.
    pub fn from_bytes(b: [u8; 32]) -> Self {
        NonceKey(b)
    }
}

impl fmt::Debug for NonceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NonceKey(..)")
    }
}

/// Result of a nonce check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceCheck {
    /// Ours, for this client, and fresh.
    Valid,
    /// Ours and for this client, but older than the lifetime: answer 438.
    Stale,
    /// Not ours, tampered with, or issued to another client: answer 401.
    Invalid,
}

impl NonceCheck {
    /// The failure this result stands for, if any.
    pub fn error(self) -> Option<AuthError> {
        match self {
            NonceCheck::Valid => None,
            NonceCheck::Stale => Some(AuthError::StaleNonce),
            NonceCheck::Invalid => Some(AuthError::BadNonce),
        }
    }
}

/// Stateless nonces: `<issued_at, 16 lowercase hex>-<HMAC-SHA256, 43 base64url>`.
///
/// The MAC binds the issue time to the client's transport address, so the
/// server keeps no table and a nonce sniffed from one client is refused from
/// another. The encoding is canonical (fixed width, lowercase hex, unpadded
/// base64 with zero trailing bits), so exactly one string verifies per
/// (time, client). It starts with a hex digit, never with RFC 8489 §9.2's
/// "obMatN" cookie, so clients do not look for security-feature bits in it.
#[derive(Clone, Debug)]
pub struct Nonces {
    key: NonceKey,
    lifetime: Duration,
}

/// Hex digits of the issue time.
const NONCE_TS_LEN: usize = 16;
/// Whole nonce: time, '-', unpadded base64 of a 32-byte tag.
const NONCE_LEN: usize = NONCE_TS_LEN + 1 + 43;
/// How far in the future an authentic issue time may lie (clock steps between
/// issue and check) before the nonce is treated as not ours.
const NONCE_FUTURE_SLACK_SECS: u64 = 60;

impl Nonces {
    /// Nonces that go stale `lifetime` (whole seconds) after issue.
    pub fn new(key: NonceKey, lifetime: Duration) -> Self {
        Nonces { key, lifetime }
    }

    /// The configured lifetime.
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// A nonce for `client` issued at `now_unix`: printable ASCII of 60
    /// characters (RFC 8489 §14.10 requires fewer than 128).
    pub fn issue(&self, client: SocketAddr, now_unix: u64) -> String {
        let tag = self.mac(now_unix, client).finalize().into_bytes();
        format!("{now_unix:016x}-{}", URL_SAFE_NO_PAD.encode(tag))
    }

    /// Check a nonce presented by `client` at `now_unix`. A nonce is valid for
    /// `now_unix` in `[issued, issued + lifetime)` and stale from then on.
    pub fn check(&self, nonce: &str, client: SocketAddr, now_unix: u64) -> NonceCheck {
        let Some(issued) = self.verify(nonce, client) else {
            return NonceCheck::Invalid;
        };
        if issued > now_unix.saturating_add(NONCE_FUTURE_SLACK_SECS) {
            // Authentic yet from the future: the clock stepped back. Refusing
            // with 401 hands the client a nonce stamped with the new time.
            return NonceCheck::Invalid;
        }
        if now_unix.saturating_sub(issued) >= self.lifetime.as_secs() {
            NonceCheck::Stale
        } else {
            NonceCheck::Valid
        }
    }

    /// The issue time of an authentic nonce for `client`.
    fn verify(&self, nonce: &str, client: SocketAddr) -> Option<u64> {
        if nonce.len() != NONCE_LEN {
            return None;
        }
        let (ts, rest) = (nonce.get(..NONCE_TS_LEN)?, nonce.get(NONCE_TS_LEN..)?);
        let tag = rest.strip_prefix('-')?;
        // from_str_radix also takes '+' and uppercase; only our own spelling is authentic.
        if !ts.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return None;
        }
        let issued = u64::from_str_radix(ts, 16).ok()?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        self.mac(issued, client).verify_slice(&tag).ok()?;
        Some(issued)
    }

    fn mac(&self, issued: u64, client: SocketAddr) -> Hmac<Sha256> {
        let mut m = Hmac::<Sha256>::new_from_slice(&self.key.0).expect("HMAC accepts keys of any length");
        m.update(&issued.to_be_bytes());
        // The same peer may show up as IPv4 or IPv4-mapped IPv6 depending on the socket.
        match client.ip().to_canonical() {
            IpAddr::V4(ip) => {
                m.update(&[4]);
                m.update(&ip.octets());
            }
            IpAddr::V6(ip) => {
                m.update(&[6]);
                m.update(&ip.octets());
            }
        }
        m.update(&client.port().to_be_bytes());
        m
    }
}

/// The shared `username ":" realm ":" password` input of both key derivations.
fn feed_key_input(h: &mut impl Digest, username: &str, realm: &str, password: &str) {
    h.update(username.as_bytes());
    h.update(b":");
    h.update(realm.as_bytes());
    h.update(b":");
    h.update(password.as_bytes());
}

/// A REST timestamp: ASCII digits only (no sign, no spaces) that fit a u64.
fn parse_expiry(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn unhex(s: &str) -> Vec<u8> {
        let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        digits
            .chunks(2)
            .map(|p| {
                let p = std::str::from_utf8(p).expect("test vector is ASCII");
                u8::from_str_radix(p, 16).expect("test vector is hex")
            })
            .collect()
    }

    const CLIENT: &str = "198.51.100.1:5000";

    fn client() -> SocketAddr {
        CLIENT.parse().expect("literal address")
    }

    #[test]
    fn rest_password_matches_coturn_and_python() {
        // Golden value produced by an independent implementation, run while writing this test:
        // python3 -c 'import hmac,hashlib,base64;print(base64.b64encode(hmac.new(b"north",b"1433895918:alice",hashlib.sha1).digest()).decode())'
        assert_eq!(
            rest_password(&Secret::new("north"), "1433895918:alice"),
            "RqMvcGPYTJMGThVLSi4amT4zFtI="
        );
        assert_eq!(
            rest_credential(&Secret::new("north"), "alice", 1433895918),
            ("1433895918:alice".to_owned(), "RqMvcGPYTJMGThVLSi4amT4zFtI=".to_owned())
        );
    }

    /// RFC 5769 §2.4: username "マトリックス" (unchanged by SASLprep), password
    /// "TheMatrIX" after SASLprep, realm "example.org".
    const RFC5769_USER: &str = "\u{30DE}\u{30C8}\u{30EA}\u{30C3}\u{30AF}\u{30B9}";

    #[test]
    fn rfc5769_long_term_key() {
        // Golden values produced with python3 hashlib while writing this test:
        // u="\u30de\u30c8\u30ea\u30c3\u30af\u30b9"; hashlib.md5((u+":example.org:TheMatrIX").encode()).hexdigest()
        let k = long_term_key(RFC5769_USER, "example.org", "TheMatrIX");
        assert_eq!(hex(k.as_ref()), "e8ca7ad59d5eb0518e312911d2dab2a9");
        // Same input through hashlib.sha256.
        let k256 = long_term_key_sha256(RFC5769_USER, "example.org", "TheMatrIX");
        assert_eq!(
            hex(k256.as_ref()),
            "dd295a613b9058c3c23d6dc7165bda072304d989c9d0af3a8c7e184b4f9bb4a1"
        );
    }

    #[test]
    fn rfc5769_sample_request_verifies_with_our_key() {
        // The RFC's own MESSAGE-INTEGRITY over its §2.4 request is the third,
        // independent check: RFC 8489 §9.2.2 "the key for the HMAC is ... MD5(...)".
        let raw = unhex(
            "00010060 2112a442 78ad3433 c6ad72c0 29da412e
             00060012 e3839ee3 8388e383 aae38383 e382afe3 82b90000
             0015001c 662f2f34 39396b39 35346436 4f4c3334 6f4c3946 53547679 36347341
             0014000b 6578616d 706c652e 6f726700
             00080014 f6702465 6dd64a3e 02b8e071 2e85c9a2 8ca89666",
        );
        let m = firstcall_stun::Message::decode(&raw).expect("RFC 5769 sample decodes");
        let a = Authenticator::new("example.org", vec![], vec![(RFC5769_USER.into(), "TheMatrIX".into())]);
        let keys = a
            .keys_for(m.username().expect("sample has USERNAME"), 0)
            .expect("static user");
        assert!(m.verify_integrity(keys[0].as_ref()));
        assert!(!m.verify_integrity(long_term_key(RFC5769_USER, "example.org", "thematrix").as_ref()));
    }

    #[test]
    fn both_username_orders_parse() {
        let r = |expiry_unix, user| Some(RestUsername { expiry_unix, user });
        assert_eq!(parse_rest_username("1700000000:alice"), r(1_700_000_000, "alice"));
        assert_eq!(parse_rest_username("alice:1700000000"), r(1_700_000_000, "alice"));
        assert_eq!(parse_rest_username("1700000000"), r(1_700_000_000, ""), "bare form");
        assert_eq!(
            parse_rest_username("12:34"),
            r(12, "34"),
            "both numeric: first is the expiry"
        );
        assert_eq!(parse_rest_username("1700000000:a:b"), r(1_700_000_000, "a:b"));
        assert_eq!(parse_rest_username("a:b:1700000000"), r(1_700_000_000, "a:b"));
    }

    #[test]
    fn non_rest_usernames_are_refused() {
        for bad in [
            "",
            "alice",
            "alice:bob",
            "1700000000:",
            ":1700000000",
            ":",
            "+1700000000:alice",
            " 1700000000:alice",
            "alice:-5",
            "99999999999999999999999:alice", // does not fit u64
        ] {
            assert_eq!(parse_rest_username(bad), None, "{bad:?}");
        }
        let long = format!("1700000000:{}", "a".repeat(MAX_USERNAME_LEN));
        assert_eq!(parse_rest_username(&long), None, "longer than {MAX_USERNAME_LEN} bytes");
        let a = Authenticator::new("r", vec![Secret::new("s")], vec![]);
        assert_eq!(a.keys_for(&long, 0), Err(AuthError::Malformed));
        assert_eq!(a.keys_for("", 0), Err(AuthError::Malformed));
        assert_eq!(a.keys_for("alice", 0), Err(AuthError::UnknownUser));
    }

    #[test]
    fn expiry_is_inclusive_like_coturn() {
        let s = Secret::new("s");
        let a = Authenticator::new("r", vec![s.clone()], vec![]);
        for (username, password) in [
            rest_credential(&s, "alice", 1000),
            ("alice:1000".to_owned(), rest_password(&s, "alice:1000")),
        ] {
            let want = long_term_key(&username, "r", &password);
            assert_eq!(a.keys_for(&username, 999), Ok(vec![want]));
            assert_eq!(a.keys_for(&username, 1000), Ok(vec![want]), "accepted at expiry");
            assert_eq!(
                a.keys_for(&username, 1001),
                Err(AuthError::Expired),
                "refused at expiry+1"
            );
        }
    }

    #[test]
    fn rotation_accepts_old_secret_until_removed() {
        let (old, new) = (Secret::new("old"), Secret::new("new"));
        let (u, p) = rest_credential(&old, "alice", 5000);
        let want = long_term_key(&u, "r", &p);
        let both = Authenticator::new("r", vec![new.clone(), old], vec![]);
        let keys = both.keys_for(&u, 0).expect("REST username, not expired");
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[1], want, "newest secret first, old one second");
        let only_new = Authenticator::new("r", vec![new], vec![]);
        assert!(!only_new.keys_for(&u, 0).expect("still REST-shaped").contains(&want));
    }

    #[test]
    fn empty_secret_is_never_used() {
        let empty = Secret::new("");
        let (u, p) = rest_credential(&empty, "mallory", u64::MAX);
        let a = Authenticator::new("r", vec![empty], vec![]);
        assert!(!a.rest_enabled());
        assert_eq!(a.keys_for(&u, 0), Err(AuthError::UnknownUser));
        let b = Authenticator::new("r", vec![Secret::new(""), Secret::new("real")], vec![]);
        let keys = b.keys_for(&u, 0).expect("REST username");
        assert!(!keys.contains(&long_term_key(&u, "r", &p)));
    }

    #[test]
    fn static_users_use_their_password() {
        let a = Authenticator::new(
            "r",
            vec![Secret::new("s")],
            vec![("bob".into(), "pw".into()), ("1000:carol".into(), "pw2".into())],
        );
        assert_eq!(a.keys_for("bob", u64::MAX), Ok(vec![long_term_key("bob", "r", "pw")]));
        assert_eq!(
            a.keys_for("1000:carol", 2000),
            Ok(vec![long_term_key("1000:carol", "r", "pw2")]),
            "a static user shadows a REST-shaped name and never expires"
        );
        let no_rest = Authenticator::new("r", vec![], vec![("bob".into(), "pw".into())]);
        assert_eq!(
            no_rest.keys_for("1700000000:carol", 0),
            Err(AuthError::UnknownUser),
            "no secret: REST disabled"
        );
    }

    #[test]
    fn debug_hides_secrets_and_keys() {
        let a = Authenticator::new(
            "r",
            vec![Secret::new("hunter2-secret")],
            vec![("bob".into(), "pw-static".into())],
        );
        let shown = format!("{a:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains("pw-static"), "{shown}");
        assert!(shown.contains("LongTermKey(..)"), "{shown}");
        let n = format!(
            "{:?}",
            Nonces::new(NonceKey::from_bytes([0xab; 32]), Duration::from_secs(1))
        );
        assert!(n.contains("NonceKey(..)") && !n.contains("171"), "{n}");
        assert_ne!(Secret::new("a").fingerprint(), Secret::new("b").fingerprint());
    }

    #[test]
    fn metric_labels_are_distinct_snake_case() {
        let labels: std::collections::HashSet<_> = AuthError::ALL.iter().map(|e| e.as_str()).collect();
        assert_eq!(labels.len(), AuthError::ALL.len());
        assert!(labels
            .iter()
            .all(|l| l.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')));
        assert_eq!(NonceCheck::Stale.error(), Some(AuthError::StaleNonce));
        assert_eq!(NonceCheck::Invalid.error().map(AuthError::as_str), Some("bad_nonce"));
    }

    fn nonces(key: u8) -> Nonces {
        Nonces::new(NonceKey::from_bytes([key; 32]), Duration::from_secs(600))
    }

    // An issue time whose hex spelling has letters, so case changes are exercised.
    const ISSUED: u64 = 0x65f1_a2bc;

    #[test]
    fn nonce_valid_until_lifetime_then_stale() {
        let n = nonces(7);
        let nonce = n.issue(client(), ISSUED);
        // RFC 8489 §14.10: NONCE "MUST be fewer than 128 characters".
        assert!(nonce.len() < 128, "{nonce}");
        assert!(nonce.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\'));
        assert_eq!(n.check(&nonce, client(), ISSUED), NonceCheck::Valid);
        assert_eq!(n.check(&nonce, client(), ISSUED + 599), NonceCheck::Valid);
        assert_eq!(n.check(&nonce, client(), ISSUED + 600), NonceCheck::Stale);
        assert_eq!(n.check(&nonce, client(), u64::MAX), NonceCheck::Stale);
        assert_eq!(
            n.check(&nonce, client(), ISSUED - NONCE_FUTURE_SLACK_SECS),
            NonceCheck::Valid,
            "small clock step back tolerated"
        );
        assert_eq!(
            n.check(&nonce, client(), ISSUED - NONCE_FUTURE_SLACK_SECS - 1),
            NonceCheck::Invalid
        );
    }

    #[test]
    fn nonce_bound_to_client_transport_address() {
        let n = nonces(7);
        let nonce = n.issue(client(), ISSUED);
        for other in ["198.51.100.1:5001", "198.51.100.2:5000", "[2001:db8::1]:5000"] {
            let other: SocketAddr = other.parse().expect("literal address");
            assert_eq!(n.check(&nonce, other, ISSUED), NonceCheck::Invalid, "{other}");
        }
        let mapped: SocketAddr = "[::ffff:198.51.100.1]:5000".parse().expect("literal address");
        assert_eq!(
            n.check(&nonce, mapped, ISSUED),
            NonceCheck::Valid,
            "same peer, mapped form"
        );
    }

    #[test]
    fn nonce_is_stateless_and_keyed() {
        let nonce = nonces(7).issue(client(), ISSUED);
        assert_eq!(nonces(7).check(&nonce, client(), ISSUED + 1), NonceCheck::Valid);
        assert_eq!(nonces(8).check(&nonce, client(), ISSUED + 1), NonceCheck::Invalid);
    }

    #[test]
    fn nonce_tampered_anywhere_is_invalid() {
        let n = nonces(7);
        let nonce = n.issue(client(), ISSUED);
        // Every printable replacement at every position, including case flips and
        // '+' in the hex part that a lenient parser would read as the same time.
        for i in 0..nonce.len() {
            for c in b'!'..=b'~' {
                let mut b = nonce.clone().into_bytes();
                if b[i] == c {
                    continue;
                }
                b[i] = c;
                let t = String::from_utf8(b).expect("ASCII in, ASCII out");
                assert_eq!(n.check(&t, client(), ISSUED + 1), NonceCheck::Invalid, "{t}");
            }
        }
        for t in [
            String::new(),
            "garbage".into(),
            format!("{nonce}A"),
            nonce[..nonce.len() - 1].to_owned(),
            format!("{nonce}="),
            nonce.replacen('-', "é", 1),
            // Same byte length, but byte 16 is inside a multi-byte character.
            format!("{}é{}", &nonce[..15], &nonce[17..]),
        ] {
            assert_eq!(n.check(&t, client(), ISSUED + 1), NonceCheck::Invalid, "{t}");
        }
    }

    proptest! {
        #[test]
        fn nonce_check_never_panics(s in "\\PC{0,80}", now in any::<u64>()) {
            let n = nonces(1);
            prop_assert_ne!(n.check(&s, client(), now), NonceCheck::Valid);
        }

        #[test]
        fn minted_usernames_round_trip(user in "[^:]{1,40}", expiry in any::<u64>()) {
            let (username, _) = rest_credential(&Secret::new("k"), &user, expiry);
            let parsed = parse_rest_username(&username);
            let want = RestUsername { expiry_unix: expiry, user: user.as_str() };
            prop_assert_eq!(parsed, Some(want));
            // An all-digit user makes the flipped form ambiguous; timestamp-first decides it.
            if !user.bytes().all(|b| b.is_ascii_digit()) {
                let flipped = format!("{user}:{expiry}");
                prop_assert_eq!(parse_rest_username(&flipped), Some(want));
            }
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,600}") {
            if let Some(r) = parse_rest_username(&s) {
                prop_assert!(s.contains(&r.expiry_unix.to_string()));
                prop_assert_eq!(r.user.is_empty(), !s.contains(':'), "user empty exactly in the bare form");
            }
        }
    }
}
