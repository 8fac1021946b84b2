//! The WebSocket driver for the signaling hub.
//!
//! The `Hub` sits behind one lock. Each socket has one task, which reads WebSocket
//! frames (RFC 6455, [`firstcall_signal::ws`]) and hands them to the hub itself; the
//! frames the hub sends are written straight to their sockets by the task that caused
//! them. A socket too slow to drain its queue is cut (closed without a close frame, which
//! could not get through): its frames stay unacknowledged in its session and are replayed
//! when the client resumes, so nothing is lost by cutting it.

use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use firstcall_signal::hub::{ConnId, Hub, HubConfig, IceProvider, Output, TokenVerifier};
use firstcall_signal::metrics::SignalMetrics;
use firstcall_signal::protocol::{IceServer, UserId, MAX_FRAME};
use firstcall_signal::ws::{self, Decoder, Message, OpCode, Role};
use firstcall_turn::auth::{rest_credential, Secret};
use hyper_util::rt::TokioIo;
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::tcp::{read_some, write_front};

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

/// Sockets by connection, looked up for every frame the hub sends (foldhash: the
/// keys are ours, and SipHash's cost buys nothing here).
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// The hub and the sockets it writes to, behind one lock.
struct Shared {
    hub: Hub<StdRng>,
    conns: HashMap<ConnId, Arc<Outlet>>,
    /// When the timer task will next wake, so that an earlier deadline can wake it.
    armed: Option<Instant>,
}

/// Handle to the hub.
///
/// Each socket's task calls the hub itself, under a lock held only for the call and for
/// appending the frames it produced to the recipients' outlets; once the frames of the
/// read are handled, still on the same task, each recipient's frames are written to its
/// socket. A relayed frame thus costs at most one read and one write and no task
/// hand-off: the writer task per socket that tungstenite's split needed was a channel
/// send, a wake-up and a poll per frame.
/// A timer task fires the hub's timers.
#[derive(Clone)]
pub struct Signaling {
    shared: Arc<Mutex<Shared>>,
    timer: Arc<Notify>,
    webhook: Option<crate::webhook::Webhook>,
    next: Arc<AtomicU64>,
    /// Bytes that may be queued for a socket while it is not taking what it already has
    /// (its kernel buffer full) before it counts as too slow and is cut
    /// (`--slow-socket-queue`). What the hub hands over in one go, such as the replay on
    /// resume, is queued whole whatever its size: it is bounded by the session's cap on
    /// unacknowledged frames, and cutting a socket for the server's own burst would only
    /// make the client resume into the same burst again.
    queue_limit: usize,
    /// The hub's counters.
    pub metrics: Arc<SignalMetrics>,
}

/// How long a closing socket gets to take its last frames and close its end.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// Bytes per read; a frame that does not fit is assembled across reads.
const READ_CHUNK: usize = 4096;

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// One socket's way out. The hub appends frames under its lock, so they queue in the
/// order it produced them; whichever task comes next writes from the front.
struct Outlet {
    sock: TcpStream,
    /// See [`Signaling::queue_limit`].
    limit: usize,
    out: Mutex<OutBuf>,
    /// Wakes the socket's own task: its socket would block, or it is to close.
    wake: Notify,
}

#[derive(Default)]
struct OutBuf {
    /// Encoded frames not yet taken by the kernel.
    bytes: Vec<u8>,
    /// The socket's task waits for it to become writable; others only append.
    blocked: bool,
    /// Bytes appended while `blocked`: what counts against the queue limit.
    backlog: usize,
    /// Already in a pending [`Writes`]' list of outlets to write.
    listed: bool,
    /// A close frame is queued: after it, nothing more is sent.
    closing: bool,
    /// A write failed: the peer is gone, drop whatever comes.
    failed: bool,
}

impl OutBuf {
    /// The socket is done (its peer gone, or cut): nothing more is queued or written.
    fn fail(&mut self) {
        self.failed = true;
        self.bytes = Vec::new();
    }
}

impl Outlet {
    fn lock(&self) -> std::sync::MutexGuard<'_, OutBuf> {
        // Nothing panics while holding it (appends and non-blocking writes).
        self.out.lock().expect("outlet lock poisoned by an earlier panic")
    }

    /// Queue one frame; false if the queue is over its limit (the frame is not queued).
    fn append(&self, b: &mut OutBuf, op: OpCode, payload: &[u8]) -> bool {
        if b.closing || b.failed {
            return true;
        }
        if b.blocked {
            b.backlog += payload.len();
            if b.backlog > self.limit {
                // Nothing after a refused frame may go out either: the client would see
                // a gap. The socket is done; its session keeps every frame for the resume.
                b.fail();
                return false;
            }
        }
        ws::encode(&mut b.bytes, op, payload, None);
        true
    }

    /// Write what is queued, unless the socket's task is already waiting to. Wakes the
    /// task when the socket would block, failed, or has sent its close frame.
    fn push(&self) {
        let mut b = self.lock();
        b.listed = false;
        if b.failed {
            self.wake.notify_one();
            return;
        }
        if b.blocked {
            // Its task waits to write; a close must reach it even so, or a peer that
            // never reads again would keep the socket open for ever.
            if b.closing {
                self.wake.notify_one();
            }
            return;
        }
        match write_queued(&self.sock, &mut b) {
            Ok(true) if !b.closing => {}
            Ok(drained) => {
                b.blocked = !drained;
                self.wake.notify_one();
            }
            Err(_) => {
                b.fail();
                self.wake.notify_one();
            }
        }
    }

    /// Queue the close frame, with a status code and reason if given; nothing is sent
    /// after it.
    fn queue_close(b: &mut OutBuf, status: Option<(u16, &str)>) {
        if b.closing || b.failed {
            return;
        }
        match status {
            Some((code, reason)) => ws::encode_close(&mut b.bytes, code, reason, None),
            None => ws::encode(&mut b.bytes, OpCode::Close, &[], None),
        }
        b.closing = true;
    }

    /// Answer a ping.
    fn pong(&self, payload: &[u8]) {
        // Over the limit, the pong fails the socket like any frame; `push` then tells
        // the socket's task, which ends it.
        let _ = self.append(&mut self.lock(), OpCode::Pong, payload);
        self.push();
    }

    /// Send our close frame.
    fn close(&self, status: Option<(u16, &str)>) {
        Outlet::queue_close(&mut self.lock(), status);
        self.push();
    }
}

/// Write from the front of the queue until it is empty (true) or the socket would
/// block (false).
fn write_queued(sock: &TcpStream, b: &mut OutBuf) -> std::io::Result<bool> {
    let drained = write_front(sock, &mut b.bytes);
    // What left came from the front: the backlog is at most what remains.
    b.backlog = b.backlog.min(b.bytes.len());
    // Give back a buffer a burst (or the welcome) grew, so that idle sockets stay
    // small; one relayed frame fits in what is kept.
    if b.bytes.is_empty() && b.bytes.capacity() > 512 {
        b.bytes = Vec::new();
    }
    drained
}

/// Why a socket's task stops reading.
#[derive(Debug)]
enum Stop {
    /// The peer closed TCP, or reading failed.
    Gone,
    /// The peer sent a close frame (answered) or broke the protocol (close frame sent).
    Closing,
    /// The hub closed the socket, and its close frame is out.
    Closed,
}

/// What hub calls left to do once the hub's lock is released.
#[derive(Default)]
struct Writes {
    /// Outlets with frames queued, each once (`OutBuf::listed`).
    touched: Vec<Arc<Outlet>>,
    /// Webhook bodies to post.
    hooks: Vec<serde_json::Value>,
    /// The hub's next deadline is earlier than the timer task's.
    wake_timer: bool,
}

impl Signaling {
    /// Start the hub and its timer task.
    pub fn start(
        config: HubConfig,
        tokens: Arc<dyn TokenVerifier>,
        ice: Arc<dyn IceProvider>,
        webhook: Option<crate::webhook::Webhook>,
        queue_limit: usize,
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
                conns: HashMap::default(),
                armed: None,
            })),
            timer: Arc::new(Notify::new()),
            webhook,
            next: Arc::new(AtomicU64::new(1)),
            queue_limit,
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

    /// Run `f` on the hub, queue everything it produced on the sockets' outlets (and
    /// post webhooks), write those sockets, and wake the timer task if the hub now has
    /// an earlier deadline.
    fn with_hub(&self, f: impl FnOnce(&mut Hub<StdRng>, &mut HashMap<ConnId, Arc<Outlet>>)) {
        let mut w = Writes::default();
        self.with_hub_into(&mut w, f);
        self.flush(w);
    }

    /// Run `f` on the hub and queue what it produced, leaving the writes (and webhooks,
    /// and the timer's wake-up) in `w` for [`Signaling::flush`].
    ///
    /// A socket's task calls the hub once per frame but writes only after the whole
    /// read: the frames one read held, to the same peer, then leave in one `sendto`. A
    /// read holds one frame unless its client sent several together or the server is
    /// behind; a frame then waits at most for the hub calls of the rest of its read
    /// (microseconds), and the syscalls per frame fall as the batch grows (1.85 frames
    /// per `sendto` at 139k frames/s on one core).
    fn with_hub_into(&self, w: &mut Writes, f: impl FnOnce(&mut Hub<StdRng>, &mut HashMap<ConnId, Arc<Outlet>>)) {
        let mut guard = self.lock();
        let s = &mut *guard;
        f(&mut s.hub, &mut s.conns);
        loop {
            let mut slow = Vec::new();
            while let Some(o) = s.hub.poll_output() {
                match o {
                    Output::Send { conn, text } => {
                        if let Some(outlet) = s.conns.get(&conn) {
                            let mut b = outlet.lock();
                            if !outlet.append(&mut b, OpCode::Text, text.as_bytes()) {
                                slow.push(conn);
                            } else if !b.listed {
                                b.listed = true;
                                w.touched.push(outlet.clone());
                            }
                        }
                    }
                    Output::Close { conn, code, reason } => {
                        if let Some(outlet) = s.conns.remove(&conn) {
                            let mut b = outlet.lock();
                            Outlet::queue_close(&mut b, Some((code, reason)));
                            if !b.listed {
                                b.listed = true;
                                drop(b);
                                w.touched.push(outlet);
                            }
                        }
                    }
                    Output::Webhook { body } => w.hooks.push(body),
                }
            }
            if slow.is_empty() {
                break;
            }
            for conn in slow {
                // `append` has failed the outlet; its task ends the socket. The
                // session keeps the frames for the resume.
                if let Some(outlet) = s.conns.remove(&conn) {
                    tracing::info!(conn = conn.0, "socket too slow: cut, frames kept for resume");
                    s.hub.metrics().count("sockets_cut", "slow");
                    s.hub.handle_disconnect(conn, Instant::now());
                    outlet.wake.notify_one();
                }
            }
        }
        let next = s.hub.poll_timeout();
        w.wake_timer |= next.is_some_and(|d| s.armed.is_none_or(|a| d < a));
    }

    /// Write the sockets `w` touched, wake the timer task if it must, post the webhooks.
    fn flush(&self, w: Writes) {
        for outlet in w.touched {
            outlet.push();
        }
        if w.wake_timer {
            self.timer.notify_one();
        }
        for body in w.hooks {
            match &self.webhook {
                Some(wh) => wh.post(body),
                None => tracing::debug!(%body, "no --webhook-url: pending call not pushed"),
            }
        }
    }

    /// The `GET /v1/ws` handler: the WebSocket opening handshake (RFC 6455 4.2).
    ///
    /// Done here rather than by axum's extractor so that the socket comes back as the
    /// plain `TcpStream`, which the hub's callers write to directly.
    pub async fn upgrade(State(sig): State<Signaling>, mut req: Request) -> Response {
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
        tokio::spawn(async move {
            let _slot = slot;
            match on_upgrade.await {
                Ok(up) => match hyper_util::server::conn::auto::upgrade::downcast::<TokioIo<TcpStream>>(up) {
                    Ok(parts) => {
                        // Copied out: the `Bytes` would keep hyper's whole read buffer
                        // (8 KiB) alive for the life of the socket.
                        let early = parts.read_buf.to_vec();
                        drop(parts.read_buf);
                        sig.socket(parts.io.into_inner(), early).await
                    }
                    // `serve` hands hyper TCP streams only; anything else is a bug here.
                    Err(_) => tracing::error!("upgraded connection is not a TCP stream: dropped"),
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

    async fn socket(self, sock: TcpStream, early: Vec<u8>) {
        let conn = ConnId(self.next.fetch_add(1, Ordering::Relaxed));
        let outlet = Arc::new(Outlet {
            sock,
            limit: self.queue_limit,
            out: Mutex::new(OutBuf::default()),
            wake: Notify::new(),
        });
        self.with_hub(|hub, conns| {
            conns.insert(conn, outlet.clone());
            hub.handle_connect(conn, Instant::now());
        });
        // Frames up to 4x the protocol limit reach the hub, which answers `too_large`;
        // beyond that the socket is closed with 1009.
        let mut dec = Decoder::new(Role::Server, MAX_FRAME * 4);
        // Bytes read but not yet a whole frame (usually none: then nothing is held).
        let mut pending = early;
        let mut stop = self.take_frames(conn, &outlet, &mut dec, &mut pending, None);
        let mut writing = false;
        // One waiter for the whole life of the socket, not one per loop turn.
        let woken = outlet.wake.notified();
        tokio::pin!(woken);
        while stop.is_none() {
            tokio::select! {
                biased;
                // Listened to even while waiting to write: a socket whose peer stopped
                // reading is exactly the one that gets cut or closed, and must not wait
                // for a writability that never comes.
                _ = &mut woken => {
                    woken.set(outlet.wake.notified());
                    let b = outlet.lock();
                    if b.failed {
                        stop = Some(Stop::Gone);
                    } else if b.closing {
                        // `linger` sends what is left of the queue, within its bound.
                        stop = Some(Stop::Closed);
                    } else {
                        writing = b.blocked;
                    }
                }
                r = outlet.sock.writable(), if writing => {
                    let mut b = outlet.lock();
                    if b.failed {
                        stop = Some(Stop::Gone);
                        continue;
                    }
                    match r.and_then(|_| write_queued(&outlet.sock, &mut b)) {
                        Ok(false) => {}
                        Ok(true) => {
                            b.blocked = false;
                            writing = false;
                            if b.closing {
                                stop = Some(Stop::Closed);
                            }
                        }
                        Err(_) => stop = Some(Stop::Gone),
                    }
                }
                r = outlet.sock.readable() => {
                    stop = match r {
                        Ok(()) => self.on_readable(conn, &outlet, &mut dec, &mut pending),
                        Err(_) => Some(Stop::Gone),
                    };
                }
            }
        }
        self.with_hub(|hub, conns| {
            conns.remove(&conn);
            hub.handle_disconnect(conn, Instant::now());
        });
        if !matches!(stop, Some(Stop::Gone)) {
            // RFC 6455 7.1.1: after the closing handshake the server closes TCP first.
            // Bounded: a peer that neither reads nor closes is dropped.
            let _ = tokio::time::timeout(CLOSE_LINGER, linger(&outlet)).await;
        }
    }

    /// Read what the socket has and hand every whole frame on.
    fn on_readable(&self, conn: ConnId, outlet: &Outlet, dec: &mut Decoder, pending: &mut Vec<u8>) -> Option<Stop> {
        let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
        match read_some(&outlet.sock, &mut chunk) {
            Ok([]) => Some(Stop::Gone),
            Ok(got) => self.take_frames(conn, outlet, dec, pending, Some(got)),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => None,
            Err(_) => Some(Stop::Gone),
        }
    }

    /// Decode the frames in `pending` followed by `fresh`, act on each, and keep the
    /// unfinished tail in `pending`. Fresh bytes are decoded where they lie when nothing
    /// is pending, the usual case.
    fn take_frames(
        &self,
        conn: ConnId,
        outlet: &Outlet,
        dec: &mut Decoder,
        pending: &mut Vec<u8>,
        fresh: Option<&mut [u8]>,
    ) -> Option<Stop> {
        match fresh {
            Some(f) if pending.is_empty() => {
                let (at, stop) = self.decode_all(conn, outlet, dec, f);
                if stop.is_none() {
                    pending.extend_from_slice(&f[at..]);
                }
                stop
            }
            fresh => {
                if let Some(f) = fresh {
                    pending.extend_from_slice(f);
                }
                let (at, stop) = self.decode_all(conn, outlet, dec, pending);
                pending.drain(..at);
                // A large frame's buffer goes once it is used up.
                if pending.is_empty() && pending.capacity() > READ_CHUNK {
                    *pending = Vec::new();
                }
                stop
            }
        }
    }

    /// Act on every whole frame at the front of `buf`; how many bytes they took.
    fn decode_all(&self, conn: ConnId, outlet: &Outlet, dec: &mut Decoder, buf: &mut [u8]) -> (usize, Option<Stop>) {
        let mut w = Writes::default();
        let mut at = 0;
        let stop = loop {
            match dec.decode(&mut buf[at..]) {
                Ok((_, 0)) => break None,
                Ok((msg, n)) => {
                    at += n;
                    if let Some(stop) = self.on_message(conn, outlet, msg, &mut w) {
                        break Some(stop);
                    }
                }
                Err(e) => {
                    tracing::info!(conn = conn.0, error = %e, code = e.close_code(), "WebSocket protocol error: closing");
                    self.metrics.count("sockets_cut", e.label());
                    outlet.close(Some((e.close_code(), &e.to_string())));
                    break Some(Stop::Closing);
                }
            }
        };
        self.flush(w);
        (at, stop)
    }

    /// Act on one message; what the hub sends in answer is left in `w`.
    fn on_message(&self, conn: ConnId, outlet: &Outlet, msg: Option<Message<'_>>, w: &mut Writes) -> Option<Stop> {
        match msg {
            None | Some(Message::Pong(_)) => None,
            Some(Message::Text(t)) => {
                self.with_hub_into(w, |hub, _| hub.handle_text(conn, t, Instant::now()));
                None
            }
            Some(Message::Binary(b)) => {
                let t = String::from_utf8_lossy(b);
                self.with_hub_into(w, |hub, _| hub.handle_text(conn, &t, Instant::now()));
                None
            }
            Some(Message::Ping(p)) => {
                outlet.pong(p);
                None
            }
            Some(Message::Close(c)) => {
                // 5.5.1: answer with a close frame, echoing the status code.
                outlet.close(c.map(|(code, _)| (code, "")));
                Some(Stop::Closing)
            }
        }
    }
}

/// Send what is still queued, close our half, and read until the peer closes its half.
async fn linger(outlet: &Outlet) {
    loop {
        {
            let mut b = outlet.lock();
            if b.failed {
                return;
            }
            match write_queued(&outlet.sock, &mut b) {
                Ok(true) => break,
                Ok(false) => {}
                Err(_) => return,
            }
        }
        if outlet.sock.writable().await.is_err() {
            return;
        }
    }
    let _ = socket2::SockRef::from(&outlet.sock).shutdown(std::net::Shutdown::Write);
    let mut sink = [0u8; 512];
    loop {
        if outlet.sock.readable().await.is_err() {
            return;
        }
        match outlet.sock.try_read(&mut sink) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
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
