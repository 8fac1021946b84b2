//! The WebSocket driver for the signaling hub.
//!
//! The `Hub` sits behind one lock; each socket has a reader, which hands its frames
//! to the hub itself, and a writer (frames out through a bounded queue). A socket too slow to drain its
//! queue is cut: its frames stay unacknowledged in its session and are
//! replayed when the client resumes, so nothing is lost by cutting it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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
use tokio::sync::{mpsc, Notify};

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

enum Out {
    Text(String),
    Close(u16, &'static str),
}

/// The hub and the sockets it writes to, behind one lock.
struct Shared {
    hub: Hub<StdRng>,
    conns: HashMap<ConnId, mpsc::Sender<Out>>,
    /// When the timer task will next wake, so that an earlier deadline can wake it.
    armed: Option<Instant>,
}

/// Handle to the hub.
///
/// Each socket's reader calls the hub itself, under a lock held only for the call and
/// for handing the outputs to the sockets' writer queues: no hop through an actor task,
/// which cost a channel send and a wake-up per frame. A timer task fires the hub's
/// timers.
#[derive(Clone)]
pub struct Signaling {
    shared: Arc<Mutex<Shared>>,
    timer: Arc<Notify>,
    webhook: Option<crate::webhook::Webhook>,
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
    /// Start the hub and its timer task.
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
        let sig = Signaling {
            shared: Arc::new(Mutex::new(Shared {
                hub,
                conns: HashMap::new(),
                armed: None,
            })),
            timer: Arc::new(Notify::new()),
            webhook,
            next: Arc::new(AtomicU64::new(1)),
            metrics,
        };
        tokio::spawn(timer_loop(sig.clone()));
        sig
    }

    /// Users with a socket attached now.
    pub async fn online(&self) -> Vec<UserId> {
        self.lock().hub.online_users()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        // A panic inside the hub is a bug that has already ended signaling; nothing
        // sensible can continue on its half-updated state.
        self.shared
            .lock()
            .expect("signaling hub lock poisoned by an earlier panic")
    }

    /// Run `f` on the hub, then hand everything it produced to the sockets (and the
    /// webhook), and wake the timer task if the hub now has an earlier deadline.
    fn with_hub(&self, f: impl FnOnce(&mut Hub<StdRng>, &mut HashMap<ConnId, mpsc::Sender<Out>>)) {
        let mut hooks = Vec::new();
        let wake = {
            let mut guard = self.lock();
            let s = &mut *guard;
            f(&mut s.hub, &mut s.conns);
            loop {
                let mut slow = Vec::new();
                while let Some(o) = s.hub.poll_output() {
                    match o {
                        Output::Send { conn, text } => {
                            if let Some(tx) = s.conns.get(&conn) {
                                if tx.try_send(Out::Text(text)).is_err() {
                                    slow.push(conn);
                                }
                            }
                        }
                        Output::Close { conn, code, reason } => {
                            if let Some(tx) = s.conns.remove(&conn) {
                                let _ = tx.try_send(Out::Close(code, reason));
                            }
                        }
                        Output::Webhook { body } => hooks.push(body),
                    }
                }
                if slow.is_empty() {
                    break;
                }
                for conn in slow {
                    // Dropping the sender ends the writer; the session keeps the frames.
                    if s.conns.remove(&conn).is_some() {
                        tracing::info!(conn = conn.0, "socket too slow: cut, frames kept for resume");
                        s.hub.metrics().count("sockets_cut", "slow");
                        s.hub.handle_disconnect(conn, Instant::now());
                    }
                }
            }
            let next = s.hub.poll_timeout();
            next.is_some_and(|d| s.armed.is_none_or(|a| d < a))
        };
        if wake {
            self.timer.notify_one();
        }
        for body in hooks {
            match &self.webhook {
                Some(w) => w.post(body),
                None => tracing::debug!(%body, "no --webhook-url: pending call not pushed"),
            }
        }
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
        self.with_hub(|hub, conns| {
            conns.insert(conn, out_tx);
            hub.handle_connect(conn, Instant::now());
        });
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
            self.with_hub(|hub, _| hub.handle_text(conn, &text, Instant::now()));
        }
        self.with_hub(|hub, conns| {
            conns.remove(&conn);
            hub.handle_disconnect(conn, Instant::now());
        });
        // Let queued frames (e.g. a final error) drain, bounded.
        let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
    }
}

/// Fire the hub's timers: sleep until its next deadline (at most a second, to keep its
/// wall clock anchored), or until a call on the hub set an earlier one.
async fn timer_loop(sig: Signaling) {
    let mut last_anchor = Instant::now();
    loop {
        let deadline = {
            let mut s = sig.lock();
            let cap = Instant::now() + Duration::from_secs(1);
            let d = s.hub.poll_timeout().map_or(cap, |d| d.min(cap));
            s.armed = Some(d);
            d
        };
        tokio::select! {
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)) => {
                let now = Instant::now();
                let anchor = now.duration_since(last_anchor) > Duration::from_secs(1);
                if anchor {
                    last_anchor = now;
                }
                sig.with_hub(|hub, _| {
                    if anchor {
                        hub.set_unix_time(now, unix_now());
                    }
                    hub.handle_timeout(now);
                });
            }
            _ = sig.timer.notified() => {}
        }
    }
}
