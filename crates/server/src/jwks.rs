//! JWT verification keys from an identity provider's JWKS URL (`--jwks-url`: Keycloak's
//! `…/protocol/openid-connect/certs`, Auth0's `/.well-known/jwks.json`), by `kid`.
//!
//! Fetched at start and again when a token names a `kid` the cache does not hold (a key
//! rotation), such refetches at most once per [`MIN_REFETCH`] whatever tokens arrive: a
//! hello waits for the next allowed fetch, so a stream of made-up `kid`s can neither make
//! the server hammer the provider nor keep a rotated key out. The fetch runs on the
//! socket's own task before its hello reaches the hub ([`crate::websocket::Endpoint::gate`]),
//! never under the hub's lock, and the first token signed with a new key is accepted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::Uri;
use hyper_util::rt::TokioIo;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::DecodingKey;

/// The least time between two fetches for unknown `kid`s.
pub const MIN_REFETCH: Duration = Duration::from_secs(5);
/// The longest a fetch may take, connection included.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest JWKS document read.
const MAX_BODY: usize = 256 << 10;

/// Why the JWKS could not be fetched or used.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    /// The URL is not `http(s)://host[:port]/path`.
    #[error("--jwks-url {0:?}: not an http(s) URL with a host")]
    Url(String),
    /// Connecting, TLS, or HTTP failed.
    #[error("JWKS fetch from {url}: {message}")]
    Fetch {
        /// The URL.
        url: String,
        /// Why.
        message: String,
    },
    /// The document is not a JWKS, or holds no key usable here.
    #[error("JWKS from {url}: {message}")]
    Document {
        /// The URL.
        url: String,
        /// Why.
        message: String,
    },
}

/// The keys of one JWKS URL.
pub struct Jwks {
    url: Uri,
    https: bool,
    keys: RwLock<HashMap<String, DecodingKey>>,
    /// When the last fetch for an unknown `kid` started.
    last_fetch: Mutex<Option<Instant>>,
    /// One fetch at a time; a socket that waited for another's fetch finds its key.
    fetching: tokio::sync::Mutex<()>,
    tls: Option<tokio_rustls::TlsConnector>,
    /// Fetches made (ok or not), for metrics and tests.
    pub fetches: AtomicU64,
}

impl Jwks {
    /// Keys from `url`, none fetched yet.
    pub fn new(url: &str) -> Result<Jwks, JwksError> {
        let uri: Uri = url.parse().map_err(|_| JwksError::Url(url.into()))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(JwksError::Url(url.into())),
        };
        if uri.host().is_none_or(str::is_empty) {
            return Err(JwksError::Url(url.into()));
        }
        let tls = https.then(crate::web_pki_client);
        Ok(Jwks {
            url: uri,
            https,
            keys: RwLock::new(HashMap::new()),
            last_fetch: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
            tls,
            fetches: AtomicU64::new(0),
        })
    }

    /// The key named `kid` (`""`: a key published without a `kid`).
    pub fn key(&self, kid: &str) -> Option<DecodingKey> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).get(kid).cloned()
    }

    /// When the refetch bound allows the next fetch (now, if it does already).
    fn next_fetch(&self) -> Option<Instant> {
        let last = *self.last_fetch.lock().unwrap_or_else(|e| e.into_inner());
        last.map(|at| at + MIN_REFETCH).filter(|at| *at > Instant::now())
    }

    /// Fetch again if `kid` is unknown, once the refetch bound allows it: a hello
    /// naming a new key waits for the next allowed fetch (at most [`MIN_REFETCH`]), so
    /// made-up `kid`s that use the budget up cannot keep a rotated key out; they only
    /// make the provider see one fetch per [`MIN_REFETCH`].
    pub async fn refresh_for(self: Arc<Self>, kid: String) {
        if self.key(&kid).is_some() {
            return;
        }
        // One fetch at a time: the sockets waiting meanwhile find their key after it.
        let _one = self.fetching.lock().await;
        if self.key(&kid).is_some() {
            return;
        }
        if let Some(at) = self.next_fetch() {
            tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
        }
        *self.last_fetch.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        if let Err(e) = self.fetch().await {
            tracing::warn!(error = %e, %kid, "JWKS refetch for an unknown key failed");
        }
    }

    /// Fetch the document and replace the keys; how many keys it holds. The start-up
    /// fetch does not count against the refetch bound: a key rotated just after the
    /// start is still fetched for its first token.
    pub async fn fetch(&self) -> Result<usize, JwksError> {
        self.fetches.fetch_add(1, Relaxed);
        let body = tokio::time::timeout(FETCH_TIMEOUT, self.get())
            .await
            .map_err(|_| self.fetch_error(format!("no answer within {FETCH_TIMEOUT:?}")))??;
        let doc = |m: String| JwksError::Document {
            url: self.url.to_string(),
            message: m,
        };
        let set: JwkSet = serde_json::from_slice(&body).map_err(|e| doc(format!("not a JWKS: {e}")))?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            let kid = jwk.common.key_id.clone().unwrap_or_default();
            match DecodingKey::from_jwk(jwk) {
                Ok(k) => {
                    keys.insert(kid, k);
                }
                // An encryption key, or a key type we do not verify with: not ours.
                Err(e) => tracing::debug!(%kid, error = %e, "JWKS key skipped"),
            }
        }
        if keys.is_empty() {
            return Err(doc("no signing key usable here (RSA or EC P-256/P-384)".into()));
        }
        let n = keys.len();
        tracing::info!(url = %self.url, keys = n, kids = ?keys.keys().collect::<Vec<_>>(), "JWKS fetched");
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = keys;
        Ok(n)
    }

    fn fetch_error(&self, message: String) -> JwksError {
        JwksError::Fetch {
            url: self.url.to_string(),
            message,
        }
    }

    /// GET the URL: hyper's HTTP/1 client over one connection (plain or rustls).
    async fn get(&self) -> Result<Bytes, JwksError> {
        let host = self.url.host().expect("checked in new");
        let port = self.url.port_u16().unwrap_or(if self.https { 443 } else { 80 });
        // IPv6 literals come bracketed in the URI.
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let tcp = tokio::net::TcpStream::connect((bare, port))
            .await
            .map_err(|e| self.fetch_error(e.to_string()))?;
        let authority = self.url.authority().expect("checked in new").to_string();
        let req = hyper::Request::get(self.url.path_and_query().map_or("/", |p| p.as_str()))
            .header(hyper::header::HOST, authority)
            .header(hyper::header::ACCEPT, "application/json")
            .body(Empty::<Bytes>::new())
            .map_err(|e| self.fetch_error(e.to_string()))?;
        let resp = match &self.tls {
            Some(tls) => {
                let name = rustls::pki_types::ServerName::try_from(bare.to_owned())
                    .map_err(|e| self.fetch_error(e.to_string()))?;
                let stream = tls
                    .connect(name, tcp)
                    .await
                    .map_err(|e| self.fetch_error(e.to_string()))?;
                send(TokioIo::new(stream), req).await
            }
            None => send(TokioIo::new(tcp), req).await,
        }
        .map_err(|e| self.fetch_error(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(self.fetch_error(format!("HTTP {}", resp.status())));
        }
        let body = Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| self.fetch_error(format!("body: {e}")))?;
        Ok(body.to_bytes())
    }
}

async fn send<T>(
    io: T,
    req: hyper::Request<Empty<Bytes>>,
) -> Result<hyper::Response<hyper::body::Incoming>, hyper::Error>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    // The connection's task ends with the response (no keep-alive is asked for).
    tokio::spawn(conn);
    sender.send_request(req).await
}
