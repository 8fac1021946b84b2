//! A protocol v1 signaling client over WebSocket.

use std::collections::VecDeque;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::net::{IpAddr, SocketAddr};

use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The WebSocket could not be opened or failed.
    #[error("websocket: {0}")]
    Ws(#[from] tokio_tungstenite::tungstenite::Error),
    /// The server closed the connection (with its close code, if any).
    #[error("closed by server (code {0:?})")]
    Closed(Option<u16>),
    /// The server sent something that is not protocol v1.
    #[error("protocol: {0}")]
    Protocol(String),
    /// Nothing arrived in time.
    #[error("timed out")]
    Timeout,
    /// There is no socket: call `reconnect`.
    #[error("not connected")]
    NotConnected,
}

/// A signaling session.
pub struct SignalClient {
    url: String,
    token: String,
    device: String,
    ws: Option<Ws>,
    session: Option<String>,
    last_in: u64,
    out_seq: u64,
    unacked: VecDeque<(u64, String)>,
    /// The latest welcome.
    pub welcome: Value,
    /// Unsequenced error frames received (hello refusals).
    pub close_code: Option<u16>,
    /// The local address sockets are opened from (`ws://` only), if not the kernel's choice.
    local: Option<IpAddr>,
}

impl SignalClient {
    /// Connect and say hello.
    pub async fn connect(url: &str, token: &str, device: &str) -> Result<SignalClient, ClientError> {
        Self::open(url, token, device, None).await
    }

    /// As [`SignalClient::connect`], from local address `local` (a `ws://` URL): the
    /// server then sees this client at that address, as it would a client elsewhere.
    pub async fn connect_from(
        url: &str,
        token: &str,
        device: &str,
        local: IpAddr,
    ) -> Result<SignalClient, ClientError> {
        Self::open(url, token, device, Some(local)).await
    }

    async fn open(url: &str, token: &str, device: &str, local: Option<IpAddr>) -> Result<SignalClient, ClientError> {
        let mut c = SignalClient {
            url: url.to_owned(),
            token: token.to_owned(),
            device: device.to_owned(),
            ws: None,
            session: None,
            last_in: 0,
            out_seq: 0,
            unacked: VecDeque::new(),
            welcome: Value::Null,
            close_code: None,
            local,
        };
        c.reconnect().await?;
        Ok(c)
    }

    /// The token the next (re)connect's hello carries: a fresh one, for a resume after the
    /// old one expired (the server accepts a fresh token of the same user).
    pub fn set_token(&mut self, token: &str) {
        self.token = token.to_owned();
    }

    /// Where the next (re)connect goes: another node of the same cluster, say.
    pub fn set_url(&mut self, url: &str) {
        self.url = url.to_owned();
    }

    /// Where the next (re)connect's socket is opened from (a `ws://` URL): a client that
    /// moved to another network, say.
    pub fn set_local(&mut self, ip: IpAddr) {
        self.local = Some(ip);
    }

    /// The session id.
    pub fn session(&self) -> Option<&str> {
        self.session.as_deref()
    }

    /// Frames sent and not yet acknowledged.
    pub fn unacked(&self) -> usize {
        self.unacked.len()
    }

    /// The calls whose `call.invite` the server has not acknowledged: after a new
    /// session's welcome they go out again, so its `calls` cannot list them yet (for
    /// [`crate::call::Calls::handle_welcome`]).
    pub fn unprocessed_invites(&self) -> Vec<crate::call::CallId> {
        self.unacked
            .iter()
            .filter_map(|(_, f)| {
                let v: Value = serde_json::from_str(f).ok()?;
                if v["type"] != "call.invite" {
                    return None;
                }
                Some(crate::call::CallId(v["call"].as_str()?.to_owned()))
            })
            .collect()
    }

    /// Drop the socket abruptly, as a dead network would (no close frame).
    pub fn cut(&mut self) {
        self.ws = None;
    }

    /// Open a new socket, resume the session if there is one, resend what the
    /// server has not processed.
    pub async fn reconnect(&mut self) -> Result<(), ClientError> {
        // TCP_NODELAY: signaling frames are small and latency-bound; with Nagle, a frame
        // written right after the previous one (an ack, then the next request) waits for
        // the server's delayed ACK.
        let (mut ws, _) = match self.local {
            None => tokio_tungstenite::connect_async_with_config(self.url.as_str(), None, true).await?,
            Some(ip) => {
                let req = self.url.as_str().into_client_request()?;
                let (Some(host), Some("ws")) = (req.uri().host(), req.uri().scheme_str()) else {
                    return Err(ClientError::Protocol(format!(
                        "a local address needs a ws:// URL, not {}",
                        self.url
                    )));
                };
                let port = req.uri().port_u16().unwrap_or(80);
                let to = tokio::net::lookup_host((host.trim_matches(['[', ']']), port))
                    .await
                    .map_err(tungstenite::Error::Io)?
                    .find(|a| a.is_ipv4() == ip.is_ipv4())
                    .ok_or_else(|| ClientError::Protocol(format!("{host} has no address of {ip}'s family")))?;
                let sock = if ip.is_ipv4() {
                    TcpSocket::new_v4()
                } else {
                    TcpSocket::new_v6()
                }
                .map_err(tungstenite::Error::Io)?;
                sock.bind(SocketAddr::new(ip, 0)).map_err(tungstenite::Error::Io)?;
                let stream = sock.connect(to).await.map_err(tungstenite::Error::Io)?;
                stream.set_nodelay(true).map_err(tungstenite::Error::Io)?;
                tokio_tungstenite::client_async_with_config(req, MaybeTlsStream::Plain(stream), None).await?
            }
        };
        let mut hello = json!({"type": "hello", "token": self.token, "device": self.device});
        if let Some(s) = &self.session {
            hello["resume"] = json!({"session": s, "last_seq": self.last_in});
        }
        ws.send(Message::text(hello.to_string())).await?;
        let welcome = loop {
            match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
                Err(_) => return Err(ClientError::Timeout),
                Ok(None) => return Err(ClientError::Closed(None)),
                Ok(Some(Err(e))) => return Err(e.into()),
                Ok(Some(Ok(Message::Text(t)))) => {
                    let v: Value = serde_json::from_str(&t).map_err(|e| ClientError::Protocol(e.to_string()))?;
                    if v["type"] == "welcome" {
                        break v;
                    }
                    if v["type"] == "error" {
                        let code = match ws.next().await {
                            Some(Ok(Message::Close(Some(f)))) => Some(u16::from(f.code)),
                            _ => None,
                        };
                        self.close_code = code;
                        return Err(ClientError::Closed(code));
                    }
                }
                Ok(Some(Ok(Message::Close(f)))) => return Err(ClientError::Closed(f.map(|f| u16::from(f.code)))),
                Ok(Some(Ok(_))) => {}
            }
        };
        if welcome["resumed"] == true {
            let done = welcome["last_seq"].as_u64().unwrap_or(0);
            self.unacked.retain(|(q, _)| *q > done);
        } else {
            // A new session: inbound numbering restarts, and our unprocessed frames are
            // renumbered and resent (invites, accepts and signals are idempotent by id).
            self.last_in = 0;
            let pending: Vec<String> = self.unacked.drain(..).map(|(_, f)| f).collect();
            self.out_seq = 0;
            for f in pending {
                let mut v: Value = serde_json::from_str(&f).map_err(|e| ClientError::Protocol(e.to_string()))?;
                self.out_seq += 1;
                v["seq"] = json!(self.out_seq);
                self.unacked.push_back((self.out_seq, v.to_string()));
            }
        }
        self.session = welcome["session"].as_str().map(str::to_owned);
        self.welcome = welcome;
        for (_, f) in &self.unacked {
            ws.send(Message::text(f.clone())).await?;
        }
        self.ws = Some(ws);
        Ok(())
    }

    /// Send a frame (a seq is added). Without a socket it is kept for the next reconnect.
    pub async fn send(&mut self, mut frame: Value) -> u64 {
        self.out_seq += 1;
        frame["seq"] = json!(self.out_seq);
        let text = frame.to_string();
        self.unacked.push_back((self.out_seq, text.clone()));
        if let Some(ws) = &mut self.ws {
            if ws.send(Message::text(text)).await.is_err() {
                self.ws = None;
            }
        }
        self.out_seq
    }

    /// Send raw text as-is (for testing the server's handling of bad frames).
    pub async fn send_raw(&mut self, text: String) -> Result<(), ClientError> {
        let ws = self.ws.as_mut().ok_or(ClientError::NotConnected)?;
        ws.send(Message::text(text)).await?;
        Ok(())
    }

    /// The next application frame (sequenced, or an unsequenced error), acknowledging as it goes.
    pub async fn next(&mut self, timeout: Duration) -> Result<Value, ClientError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let ws = self.ws.as_mut().ok_or(ClientError::NotConnected)?;
            let msg = match tokio::time::timeout_at(deadline, ws.next()).await {
                Err(_) => return Err(ClientError::Timeout),
                Ok(m) => m,
            };
            let text = match msg {
                Some(Ok(Message::Text(t))) => t.to_string(),
                Some(Ok(Message::Close(f))) => {
                    self.ws = None;
                    self.close_code = f.map(|f| u16::from(f.code));
                    return Err(ClientError::Closed(self.close_code));
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => {
                    self.ws = None;
                    return Err(e.into());
                }
                None => {
                    self.ws = None;
                    return Err(ClientError::Closed(None));
                }
            };
            let v: Value = serde_json::from_str(&text).map_err(|e| ClientError::Protocol(e.to_string()))?;
            // An `ack` frame's seq, or an acknowledgement riding on any other frame.
            let acked = if v["type"] == "ack" { &v["seq"] } else { &v["ack"] };
            if let Some(n) = acked.as_u64() {
                self.unacked.retain(|(q, _)| *q > n);
            }
            match v["type"].as_str() {
                Some("ack") => {}
                Some("ping") => {
                    let _ = ws.send(Message::text(r#"{"type":"pong"}"#)).await;
                }
                Some("pong") => {}
                _ => match v["seq"].as_u64() {
                    Some(seq) if seq == self.last_in + 1 => {
                        self.last_in = seq;
                        let ack = json!({"type": "ack", "seq": seq}).to_string();
                        let _ = ws.send(Message::text(ack)).await;
                        return Ok(v);
                    }
                    Some(seq) if seq <= self.last_in => {} // replayed duplicate
                    Some(seq) => {
                        return Err(ClientError::Protocol(format!(
                            "server skipped from {} to {seq}",
                            self.last_in
                        )));
                    }
                    None => return Ok(v),
                },
            }
        }
    }

    /// Wait for the next frame of type `t`, returning it and every frame skipped on the way.
    pub async fn expect(&mut self, t: &str, timeout: Duration) -> Result<(Value, Vec<Value>), ClientError> {
        let mut skipped = vec![];
        loop {
            let v = self.next(timeout).await?;
            if v["type"] == t {
                return Ok((v, skipped));
            }
            skipped.push(v);
        }
    }
}
