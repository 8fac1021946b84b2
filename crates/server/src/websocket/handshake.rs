//! The WebSocket opening handshake (RFC 6455 4.2), done by hand rather than by axum's
//! extractor so that the socket comes back as the plain `TcpStream` that
//! [`super::Outlet`]s write to directly (a TLS connection, `--http-tls`, through a
//! loopback bridge).

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::socket::{serve, Endpoint};

/// Answer a WebSocket opening handshake and, once the connection is upgraded, serve
/// the socket for `ep` on a task of its own.
pub fn upgrade<E: Endpoint>(ep: E, mut req: Request) -> Response {
    let accept = match handshake(req.method(), req.headers()) {
        Ok(a) => a,
        Err((status, why)) => {
            let mut r = (status, format!("{why}\n")).into_response();
            if status == StatusCode::UPGRADE_REQUIRED {
                r.headers_mut()
                    .insert(header::SEC_WEBSOCKET_VERSION, header::HeaderValue::from_static("13"));
            }
            return r;
        }
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    // The connection's place under the listener's caps, held for the socket's life.
    let slot = req.extensions_mut().remove::<crate::accept::ConnSlot>();
    // The client's address, for the hub's outputs that need it (TURN peer grants).
    let peer_ip = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip());
    tokio::spawn(async move {
        let _slot = slot;
        match on_upgrade.await {
            Ok(up) => match hyper_util::server::conn::auto::upgrade::downcast::<TokioIo<TcpStream>>(up) {
                Ok(parts) => {
                    // Copied out: the `Bytes` would keep hyper's whole read buffer
                    // (8 KiB) alive for the life of the socket.
                    let early = parts.read_buf.to_vec();
                    drop(parts.read_buf);
                    serve(ep, parts.io.into_inner(), early, peer_ip).await
                }
                // TLS (`--http-tls`): the socket task writes to a plain `TcpStream`, so the
                // TLS stream is bridged to one end of a loopback TCP pair and the task
                // serves the other. The upgraded stream yields hyper's buffered bytes first.
                Err(up) => match loopback_pair().await {
                    Ok((near, far)) => {
                        tokio::spawn(async move {
                            let mut tls = TokioIo::new(up);
                            let mut near = near;
                            let _ = tokio::io::copy_bidirectional(&mut tls, &mut near).await;
                        });
                        serve(ep, far, Vec::new(), peer_ip).await
                    }
                    Err(e) => tracing::warn!(error = %e, "no loopback pair for a TLS WebSocket: dropped"),
                },
            },
            Err(e) => tracing::debug!(error = %e, "WebSocket upgrade did not complete"),
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::UPGRADE, "websocket")
        .header(header::CONNECTION, "upgrade")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept)
        .body(Body::empty())
        .expect("static status and valid header values")
}

/// Two connected loopback TCP streams: (the bridge's end, the socket task's end).
async fn loopback_pair() -> std::io::Result<(TcpStream, TcpStream)> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let near = TcpStream::connect(listener.local_addr()?).await?;
    let want = near.local_addr()?;
    // Only our own connection: another local process could race to the port.
    for _ in 0..8 {
        let (far, from) = listener.accept().await?;
        if from == want {
            far.set_nodelay(true)?;
            near.set_nodelay(true)?;
            return Ok((near, far));
        }
    }
    Err(std::io::Error::other("loopback pair: foreign connections"))
}

/// Check a WebSocket opening handshake (RFC 6455 4.2.1) and compute its
/// `Sec-WebSocket-Accept`; a refusal carries its status and what was wrong.
fn handshake(method: &Method, h: &HeaderMap) -> Result<String, (StatusCode, &'static str)> {
    // 4.1: "The method of the request MUST be GET" (axum routes HEAD here too).
    if method != Method::GET {
        return Err((StatusCode::METHOD_NOT_ALLOWED, "the WebSocket handshake is a GET"));
    }
    let has_token = |name: header::HeaderName, token: &str| {
        h.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if !has_token(header::UPGRADE, "websocket") {
        return Err((
            StatusCode::BAD_REQUEST,
            "this is a WebSocket endpoint: `Upgrade: websocket` expected",
        ));
    }
    if !has_token(header::CONNECTION, "upgrade") {
        return Err((StatusCode::BAD_REQUEST, "`Connection: upgrade` expected"));
    }
    // 4.2.2: an unsupported version is answered with 426 and the versions we speak.
    if h.get(header::SEC_WEBSOCKET_VERSION).map(|v| v.as_bytes()) != Some(b"13") {
        return Err((StatusCode::UPGRADE_REQUIRED, "WebSocket version 13 expected"));
    }
    let key = h
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|k| k.as_bytes().trim_ascii())
        .filter(|k| {
            base64::engine::general_purpose::STANDARD
                .decode(k)
                .is_ok_and(|d| d.len() == 16)
        });
    match key {
        Some(key) => Ok(accept_key(key)),
        None => Err((
            StatusCode::BAD_REQUEST,
            "`Sec-WebSocket-Key` must be 16 bytes in base64",
        )),
    }
}

/// `Sec-WebSocket-Accept` for a client's key (RFC 6455 4.2.2, item 5.4).
fn accept_key(key: &[u8]) -> String {
    use sha1::Digest;
    let mut h = sha1::Sha1::new();
    h.update(key);
    h.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}
