//! The WebSocket driver for the signaling hub.
//!
//! One actor task owns the `Hub`; each socket has a reader (frames in) and a
//! writer (frames out through a bounded queue). A socket too slow to drain its
//! queue is cut: its frames stay unacknowledged in its session and are
//! replayed when the client resumes, so nothing is lost by cutting it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use firstcall_signal::hub::{ConnId, Hub, HubConfig, IceProvider, Output, TokenVerifier};
use firstcall_signal::metrics::SignalMetrics;
use firstcall_signal::protocol::{IceServer, UserId, MAX_FRAME};
use firstcall_turn::auth::{rest_credential, Secret};
use futures_util::{SinkExt, StreamExt};
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::sync::mpsc;

/// TURN credentials for welcomes and refreshes, coturn REST style.
pub struct TurnIce {
    /// Secret that mints credentials.
    pub secret: Secret,
    /// URIs handed out.
    pub uris: Vec<String>,
    /// Credential lifetime.
    pub ttl: Duration,
}

impl IceProvider for TurnIce {
    fn ice_servers(&self, user: &UserId, now_unix: u64) -> (Vec<IceServer>, u64) {
        let ttl = self.ttl.as_secs();
        let (username, credential) = rest_credential(&self.secret, user.as_str(), now_unix + ttl);
        let server = IceServer {
            urls: self.uris.clone(),
            username: Some(username),
            credential: Some(credential),
        };
        (vec![server], ttl)
    }
}

enum Input {
    Connect(ConnId, mpsc::Sender<Out>),
    Text(ConnId, String),
    Disconnect(ConnId),
    Online(tokio::sync::oneshot::Sender<Vec<UserId>>),
}

enum Out {
    Text(String),
    Close(u16, &'static str),
}

/// Handle to the hub actor.
#[derive(Clone)]
pub struct Signaling {
    tx: mpsc::Sender<Input>,
    next: Arc<AtomicU64>,
    /// The hub's counters.
    pub metrics: Arc<SignalMetrics>,
}

/// Frames queued per socket before it counts as too slow.
const SOCKET_QUEUE: usize = 1024;

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Signaling {
    /// Start the hub actor.
    pub fn start(
        config: HubConfig,
        tokens: Arc<dyn TokenVerifier>,
        ice: Arc<dyn IceProvider>,
        webhook: Option<crate::webhook::Webhook>,
    ) -> Signaling {
        let metrics = Arc::new(SignalMetrics::default());
        let hub = Hub::new(
            config,
            tokens,
            ice,
            metrics.clone(),
            StdRng::from_entropy(),
            Instant::now(),
            unix_now(),
        );
        let (tx, rx) = mpsc::channel(4096);
        tokio::spawn(run(hub, rx, webhook));
        Signaling {
            tx,
            next: Arc::new(AtomicU64::new(1)),
            metrics,
        }
    }

    /// Users with a socket attached now.
    pub async fn online(&self) -> Vec<UserId> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.tx.send(Input::Online(tx)).await.is_err() {
            return vec![];
        }
        rx.await.unwrap_or_default()
    }

    /// The `GET /v1/ws` handler.
    pub async fn upgrade(State(sig): State<Signaling>, ws: WebSocketUpgrade) -> Response {
        // Frames up to 4x the protocol limit reach the hub, which answers `too_large`;
        // beyond that the socket itself is refused.
        // tungstenite's default read buffer is 128 KiB and it zeroes the spare part on every
        // read: that memset was a quarter of the server's CPU per frame and made each idle
        // session hold 128 KiB. Signaling frames are small; larger ones just take more reads.
        ws.max_message_size(MAX_FRAME * 4)
            .max_frame_size(MAX_FRAME * 4)
            .read_buffer_size(4096)
            .on_upgrade(move |s| sig.socket(s))
    }

    async fn socket(self, ws: WebSocket) {
        let conn = ConnId(self.next.fetch_add(1, Ordering::Relaxed));
        let (out_tx, mut out_rx) = mpsc::channel::<Out>(SOCKET_QUEUE);
        if self.tx.send(Input::Connect(conn, out_tx)).await.is_err() {
            return;
        }
        let (mut sink, mut stream) = ws.split();
        let writer = tokio::spawn(async move {
            // Everything queued goes out in one write: under load a socket gets many frames
            // per wakeup, and one syscall each was most of the writer's cost.
            'outer: while let Some(first) = out_rx.recv().await {
                let mut next = Some(first);
                let mut batch = 0;
                while let Some(o) = next.take() {
                    match o {
                        Out::Text(t) => {
                            if sink.feed(Message::Text(t.into())).await.is_err() {
                                break 'outer;
                            }
                        }
                        Out::Close(code, reason) => {
                            let close = Message::Close(Some(CloseFrame {
                                code,
                                reason: reason.into(),
                            }));
                            let _ = sink.send(close).await;
                            break 'outer;
                        }
                    }
                    batch += 1;
                    if batch < 64 {
                        next = out_rx.try_recv().ok();
                    }
                }
                if sink.flush().await.is_err() {
                    break;
                }
            }
            let _ = sink.close().await;
        });
        while let Some(msg) = stream.next().await {
            let text = match msg {
                // Not `to_string()`, which formats through `Display`.
                Ok(Message::Text(t)) => t.as_str().to_owned(),
                Ok(Message::Binary(b)) => String::from_utf8_lossy(&b).into_owned(),
                Ok(Message::Close(_)) | Err(_) => break,
                Ok(_) => continue, // WebSocket-level ping/pong
            };
            if self.tx.send(Input::Text(conn, text)).await.is_err() {
                break;
            }
        }
        let _ = self.tx.send(Input::Disconnect(conn)).await;
        // Let queued frames (e.g. a final error) drain, bounded.
        let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
    }
}

async fn run(mut hub: Hub<StdRng>, mut rx: mpsc::Receiver<Input>, webhook: Option<crate::webhook::Webhook>) {
    let mut conns: HashMap<ConnId, mpsc::Sender<Out>> = HashMap::new();
    let mut last_anchor = Instant::now();
    // One timer, moved only when the hub's deadline changes: a fresh sleep per input
    // registered and cancelled a timer entry for every frame.
    let timer = tokio::time::sleep(Duration::from_secs(3600));
    tokio::pin!(timer);
    loop {
        let deadline = hub
            .poll_timeout()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        let deadline = tokio::time::Instant::from_std(deadline);
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        tokio::select! {
            input = rx.recv() => {
                let Some(input) = input else { return };
                let now = Instant::now();
                // Take what else is queued (bounded) before flushing outputs, so that a
                // burst is handled in one pass.
                let mut next = Some(input);
                let mut n = 0;
                while let Some(input) = next.take() {
                    match input {
                        Input::Connect(c, tx) => {
                            conns.insert(c, tx);
                            hub.handle_connect(c, now);
                        }
                        Input::Text(c, t) => hub.handle_text(c, &t, now),
                        Input::Disconnect(c) => {
                            conns.remove(&c);
                            hub.handle_disconnect(c, now);
                        }
                        Input::Online(reply) => {
                            let _ = reply.send(hub.online_users());
                        }
                    }
                    n += 1;
                    if n < 256 {
                        next = rx.try_recv().ok();
                    }
                }
            }
            _ = &mut timer => hub.handle_timeout(Instant::now()),
        }
        if last_anchor.elapsed() > Duration::from_secs(1) {
            last_anchor = Instant::now();
            hub.set_unix_time(last_anchor, unix_now());
        }
        let mut slow = Vec::new();
        while let Some(o) = hub.poll_output() {
            match o {
                Output::Send { conn, text } => {
                    if let Some(tx) = conns.get(&conn) {
                        if tx.try_send(Out::Text(text)).is_err() {
                            slow.push(conn);
                        }
                    }
                }
                Output::Close { conn, code, reason } => {
                    if let Some(tx) = conns.remove(&conn) {
                        let _ = tx.try_send(Out::Close(code, reason));
                    }
                }
                Output::Webhook { body } => match &webhook {
                    Some(w) => w.post(body),
                    None => tracing::debug!(%body, "no --webhook-url: pending call not pushed"),
                },
            }
        }
        for conn in slow {
            // Dropping the sender ends the writer; the session keeps the frames.
            if conns.remove(&conn).is_some() {
                tracing::info!(conn = conn.0, "socket too slow: cut, frames kept for resume");
                hub.metrics().count("sockets_cut", "slow");
                hub.handle_disconnect(conn, Instant::now());
            }
        }
    }
}
