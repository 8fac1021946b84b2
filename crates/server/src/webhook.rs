//! Signed webhook POSTs (a callee has no device online: the app can send a VoIP push).
//!
//! Body: JSON. Header `X-Firstcall-Signature: sha256=<hex HMAC-SHA256(secret, body)>`
//! and `X-Firstcall-Timestamp: <unix>` (also covered by the signature, as
//! `<timestamp>.<body>`, so a captured request cannot be replayed later).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// A webhook target.
#[derive(Clone)]
pub struct Webhook {
    url: Arc<Url>,
    secret: Arc<String>,
    tls: Option<tokio_rustls::TlsConnector>,
}

struct Url {
    https: bool,
    host: String,
    port: u16,
    path: String,
}

/// Why a webhook URL is unusable.
#[derive(Debug, thiserror::Error)]
#[error("--webhook-url {0:?}: expected http://host[:port]/path or https://...")]
pub struct BadUrl(String);

fn parse(url: &str) -> Result<Url, BadUrl> {
    let bad = || BadUrl(url.to_owned());
    let (https, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(bad());
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_owned()),
        None => (rest, "/".to_owned()),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => {
            (h.trim_matches(['[', ']']).to_owned(), p.parse().map_err(|_| bad())?)
        }
        _ => (
            authority.trim_matches(['[', ']']).to_owned(),
            if https { 443 } else { 80 },
        ),
    };
    if host.is_empty() {
        return Err(bad());
    }
    Ok(Url {
        https,
        host,
        port,
        path,
    })
}

/// `sha256=<hex>` over `<timestamp>.<body>`.
pub fn signature(secret: &str, timestamp: u64, body: &[u8]) -> String {
    let mut m = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    m.update(timestamp.to_string().as_bytes());
    m.update(b".");
    m.update(body);
    let tag = m.finalize().into_bytes();
    format!("sha256={}", tag.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

impl Webhook {
    /// A webhook posting to `url`, signed with `secret`.
    pub fn new(url: &str, secret: String) -> Result<Webhook, BadUrl> {
        let url = parse(url)?;
        let tls = url.https.then(|| {
            let roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("ring supports the default TLS versions")
                .with_root_certificates(roots)
                .with_no_client_auth();
            tokio_rustls::TlsConnector::from(Arc::new(cfg))
        });
        Ok(Webhook {
            url: Arc::new(url),
            secret: Arc::new(secret),
            tls,
        })
    }

    /// POST in the background; three attempts with backoff, each bounded.
    pub fn post(&self, body: Value) {
        let this = self.clone();
        tokio::spawn(async move {
            let body = body.to_string();
            for attempt in 1..=3u32 {
                match tokio::time::timeout(Duration::from_secs(5), this.send(&body)).await {
                    Ok(Ok(status)) if (200..300).contains(&status) => {
                        tracing::debug!(status, "webhook delivered");
                        return;
                    }
                    Ok(Ok(status)) => tracing::warn!(status, attempt, "webhook refused"),
                    Ok(Err(e)) => tracing::warn!(error = %e, attempt, "webhook failed"),
                    Err(_) => tracing::warn!(attempt, "webhook timed out"),
                }
                tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
            }
        });
    }

    async fn send(&self, body: &str) -> std::io::Result<u16> {
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let u = &self.url;
        let req = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nX-Firstcall-Timestamp: {ts}\r\nX-Firstcall-Signature: {}\r\nConnection: close\r\n\r\n{body}",
            u.path,
            u.host,
            body.len(),
            signature(&self.secret, ts, body.as_bytes()),
        );
        let tcp = TcpStream::connect((u.host.as_str(), u.port)).await?;
        match &self.tls {
            None => exchange(tcp, &req).await,
            Some(c) => {
                let name = rustls::pki_types::ServerName::try_from(u.host.clone())
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
                exchange(c.connect(name, tcp).await?, &req).await
            }
        }
    }
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, req: &str) -> std::io::Result<u16> {
    s.write_all(req.as_bytes()).await?;
    let mut head = vec![0u8; 64];
    let n = s.read(&mut head).await?;
    let line = String::from_utf8_lossy(&head[..n]);
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "no HTTP status line"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = parse("http://127.0.0.1:9000/hook").unwrap();
        assert_eq!(
            (u.https, u.host.as_str(), u.port, u.path.as_str()),
            (false, "127.0.0.1", 9000, "/hook")
        );
        let u = parse("https://push.example.org").unwrap();
        assert_eq!((u.https, u.port, u.path.as_str()), (true, 443, "/"));
        let u = parse("http://[::1]:8081/x").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 8081));
        assert!(parse("ftp://x").is_err());
        assert!(parse("http://:80/").is_err());
    }

    #[test]
    fn signature_is_hmac_sha256_of_timestamp_and_body() {
        // Cross-checked: python3 -c 'import hmac,hashlib;print(hmac.new(b"k",b"1700000000.{}",hashlib.sha256).hexdigest())'
        assert_eq!(
            signature("k", 1_700_000_000, b"{}"),
            format!(
                "sha256={}",
                "c6ef4734033cee2367414a0939385eca0397754aa7a59716da7463a9298b5146"
            )
        );
    }
}
