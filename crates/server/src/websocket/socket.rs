//! The task of one WebSocket socket: it reads frames, decodes them with
//! [`firstcall_signal::ws`], hands each message to its [`Endpoint`] and answers the
//! control frames, and it writes the socket's queue when the kernel would not take it
//! at once.

use std::mem::MaybeUninit;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use firstcall_signal::hub::ConnId;
use firstcall_signal::metrics::SignalMetrics;
use firstcall_signal::ws::{Decoder, Message, Role, WsError};
use tokio::net::TcpStream;

use super::outlet::Outlet;
use crate::tcp::read_some;

/// How long a closing socket gets to take its last frames and close its end.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// Bytes per read; a frame that does not fit is assembled across reads.
const READ_CHUNK: usize = 4096;

/// The bounds of one socket.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest message read (whole, or its fragments together); beyond it the socket is
    /// closed with 1009.
    pub max_message: usize,
    /// Unsent bytes past which the socket is too slow and is cut
    /// (`--slow-socket-queue`).
    pub queue_limit: usize,
}

/// What a socket's messages do: the signaling hub, or an echo.
///
/// The socket's task calls it for every message of a read, then [`Endpoint::flush`]es
/// the batch those calls left, so that what they queued for any socket is written once
/// per read, still on the reading task (no hand-off per frame).
pub trait Endpoint: Clone + Send + Sync + 'static {
    /// Work the messages of one read leave to do once they are all handled.
    type Batch: Default;
    /// Bounds for a new socket.
    fn limits(&self) -> Limits;
    /// A socket opened: register its outlet; the id names it from now on.
    fn connect(&self, outlet: &Arc<Outlet>) -> ConnId;
    /// A text message.
    fn text(&self, conn: ConnId, outlet: &Arc<Outlet>, text: &str, batch: &mut Self::Batch);
    /// The socket's first text message (after its [`Endpoint::gate`], if any): the
    /// signaling hub's hello, whose token is verified here, on the socket's task and
    /// outside any lock.
    fn first_text(&self, conn: ConnId, outlet: &Arc<Outlet>, text: &str, batch: &mut Self::Batch) {
        self.text(conn, outlet, text, batch)
    }
    /// Slow work the socket's first text message needs before [`Endpoint::text`] takes it
    /// (fetching the key a token names), done by the socket's own task, outside any
    /// lock the endpoint holds; the socket reads nothing more meanwhile, so the messages
    /// stay in order. Bounded by [`GATE_TIMEOUT`]: the message is handed on when it ends.
    fn gate(&self, first: &str) -> Option<Gate> {
        let _ = first;
        None
    }
    /// A binary message; false refuses it, and the socket is closed with 1003 (RFC 6455
    /// 7.4.1: "a type of data it cannot accept"). Refused unless an endpoint takes them.
    fn binary(&self, conn: ConnId, outlet: &Arc<Outlet>, data: &[u8], batch: &mut Self::Batch) -> bool {
        let _ = (conn, outlet, data, batch);
        false
    }
    /// Do what the messages of a read left in `batch`.
    fn flush(&self, batch: Self::Batch);
    /// The socket is gone: forget it.
    fn disconnect(&self, conn: ConnId);
    /// Where cut sockets are counted (`sockets_cut`).
    fn metrics(&self) -> &SignalMetrics;
}

/// Why the server cut a socket: the `reason` label of `sockets_cut`.
#[derive(Clone, Copy, Debug)]
enum Cut {
    /// Its unsent bytes passed the queue limit (see `Outlet::bound`).
    Slow,
    /// A binary message to an endpoint that takes text only (closed with 1003).
    Binary,
    /// The peer broke RFC 6455 (closed with the error's code).
    Protocol(WsError),
}

impl Cut {
    fn label(self) -> &'static str {
        match self {
            Cut::Slow => "slow",
            Cut::Binary => "binary",
            Cut::Protocol(e) => e.label(),
        }
    }
}

/// Work a socket's first message waits for (see [`Endpoint::gate`]).
pub type Gate = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// The longest a first message waits for its gate (a JWKS fetch may wait for the
/// refetch bound, 5 s, and then take up to 5 s).
pub const GATE_TIMEOUT: Duration = Duration::from_secs(8);

/// The close reason sent with 1003.
const BINARY_REFUSED: &str = "binary messages are not accepted: send text";

/// Why a socket's task stops reading.
enum Stop {
    /// The peer closed TCP, or reading failed.
    Gone,
    /// The peer sent a close frame (answered) or broke the protocol (close frame sent).
    Closing,
    /// The endpoint closed the socket, and its close frame is out.
    Closed,
    /// The socket is too slow: its queue passed the limit.
    Slow,
    /// The first message waits for its gate; reading goes on once it is handed on.
    Gate(Gate, String),
}

/// Socket tasks running now, their closing handshake included.
static LIVE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Socket tasks running now (in this process), until each has sent its close frame and
/// lingered for the peer's: what a process about to exit waits for.
pub fn live_sockets() -> usize {
    LIVE.load(std::sync::atomic::Ordering::Acquire)
}

/// Counts one socket task for its whole life.
struct Live;

impl Live {
    fn new() -> Live {
        LIVE.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Live
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        LIVE.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Serve one upgraded socket until it closes; `early` holds the bytes read with the
/// handshake.
pub async fn serve<E: Endpoint>(ep: E, sock: TcpStream, early: Vec<u8>, peer_ip: Option<IpAddr>) {
    let _live = Live::new();
    let limits = ep.limits();
    let outlet = Arc::new(Outlet::new(sock, limits.queue_limit, peer_ip));
    let conn = ep.connect(&outlet);
    let mut dec = Decoder::new(Role::Server, limits.max_message);
    // Bytes read but not yet a whole frame (usually none: then nothing is held).
    let mut pending = early;
    let mut first = true;
    let mut stop = take_frames(&ep, conn, &outlet, &mut dec, &mut pending, None, &mut first);
    let mut writing = false;
    // One waiter for the whole life of the socket, not one per loop turn.
    let woken = outlet.wake.notified();
    tokio::pin!(woken);
    loop {
        if let Some(Stop::Gate(gate, text)) = stop {
            // Slow work for the first message, on this socket's task: nothing else
            // waits for it, and nothing after the message is read meanwhile.
            let _ = tokio::time::timeout(GATE_TIMEOUT, gate).await;
            let mut batch = E::Batch::default();
            ep.first_text(conn, &outlet, &text, &mut batch);
            ep.flush(batch);
            // Refused at once (as in `decode_all`): what came behind it is not read.
            stop = if outlet.is_closing() {
                Some(Stop::Closing)
            } else {
                take_frames(&ep, conn, &outlet, &mut dec, &mut pending, None, &mut first)
            };
            continue;
        }
        if stop.is_some() {
            break;
        }
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
                } else if b.slow {
                    // `linger` lets what is queued drain, within its bound.
                    stop = Some(Stop::Slow);
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
                if b.slow {
                    stop = Some(Stop::Slow);
                    continue;
                }
                match r.and_then(|_| outlet.write_queued(&mut b)) {
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
                    Ok(()) => on_readable(&ep, conn, &outlet, &mut dec, &mut pending, &mut first),
                    Err(_) => Some(Stop::Gone),
                };
            }
        }
    }
    ep.disconnect(conn);
    if matches!(stop, Some(Stop::Slow)) || outlet.lock().slow {
        // Counted here, whichever path cut it (the endpoint's frames, a pong, a close):
        // the task ends once, so each cut is counted and logged once.
        tracing::info!(
            conn = conn.0,
            limit = limits.queue_limit,
            "socket too slow: cut, frames kept for resume"
        );
        ep.metrics().count("sockets_cut", Cut::Slow.label());
    }
    if !matches!(stop, Some(Stop::Gone)) {
        // RFC 6455 7.1.1: after the closing handshake the server closes TCP first. A
        // slow socket gets the same chance to take what it has queued (no close frame:
        // the client resumes on seeing the socket end). Bounded: a peer that neither
        // reads nor closes is dropped.
        let _ = tokio::time::timeout(CLOSE_LINGER, linger(&outlet)).await;
    }
}

/// Read what the socket has and hand every whole frame on.
fn on_readable<E: Endpoint>(
    ep: &E,
    conn: ConnId,
    outlet: &Arc<Outlet>,
    dec: &mut Decoder,
    pending: &mut Vec<u8>,
    first: &mut bool,
) -> Option<Stop> {
    let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
    match read_some(&outlet.sock, &mut chunk) {
        Ok([]) => Some(Stop::Gone),
        Ok(got) => take_frames(ep, conn, outlet, dec, pending, Some(got), first),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => None,
        Err(_) => Some(Stop::Gone),
    }
}

/// Decode the frames in `pending` followed by `fresh`, act on each, and keep the
/// unfinished tail in `pending`. Fresh bytes are decoded where they lie when nothing
/// is pending, the usual case.
fn take_frames<E: Endpoint>(
    ep: &E,
    conn: ConnId,
    outlet: &Arc<Outlet>,
    dec: &mut Decoder,
    pending: &mut Vec<u8>,
    fresh: Option<&mut [u8]>,
    first: &mut bool,
) -> Option<Stop> {
    match fresh {
        Some(f) if pending.is_empty() => {
            let (at, stop) = decode_all(ep, conn, outlet, dec, f, first);
            // What follows a gated message is read after it.
            if matches!(stop, None | Some(Stop::Gate(..))) {
                pending.extend_from_slice(&f[at..]);
            }
            stop
        }
        fresh => {
            if let Some(f) = fresh {
                pending.extend_from_slice(f);
            }
            let (at, stop) = decode_all(ep, conn, outlet, dec, pending, first);
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
fn decode_all<E: Endpoint>(
    ep: &E,
    conn: ConnId,
    outlet: &Arc<Outlet>,
    dec: &mut Decoder,
    buf: &mut [u8],
    first: &mut bool,
) -> (usize, Option<Stop>) {
    let mut batch = E::Batch::default();
    let mut at = 0;
    let stop = loop {
        match dec.decode(&mut buf[at..]) {
            Ok((_, 0)) => break None,
            Ok((msg, n)) => {
                at += n;
                if let (true, Some(Message::Text(t))) = (*first, &msg) {
                    *first = false;
                    if let Some(gate) = ep.gate(t) {
                        break Some(Stop::Gate(gate, (*t).to_owned()));
                    }
                    ep.first_text(conn, outlet, t, &mut batch);
                    // Refused (a draining node closes at once): frames a client sent
                    // behind its hello (docs/protocol.md, "Frames behind the hello") are
                    // not taken for a hello of their own.
                    if outlet.is_closing() {
                        break Some(Stop::Closing);
                    }
                    continue;
                }
                if let Some(stop) = on_message(ep, conn, outlet, msg, &mut batch) {
                    break Some(stop);
                }
            }
            Err(e) => {
                tracing::info!(conn = conn.0, error = %e, code = e.close_code(), "WebSocket protocol error: closing");
                ep.metrics().count("sockets_cut", Cut::Protocol(e).label());
                outlet.close(Some((e.close_code(), &e.to_string())));
                break Some(Stop::Closing);
            }
        }
    };
    ep.flush(batch);
    (at, stop)
}

/// Act on one message; what the endpoint leaves to do is in `batch`.
fn on_message<E: Endpoint>(
    ep: &E,
    conn: ConnId,
    outlet: &Arc<Outlet>,
    msg: Option<Message<'_>>,
    batch: &mut E::Batch,
) -> Option<Stop> {
    match msg {
        None | Some(Message::Pong(_)) => None,
        Some(Message::Text(t)) => {
            ep.text(conn, outlet, t, batch);
            None
        }
        Some(Message::Binary(b)) => {
            if ep.binary(conn, outlet, b, batch) {
                return None;
            }
            tracing::info!(
                conn = conn.0,
                bytes = b.len(),
                "binary message refused: closing with 1003"
            );
            ep.metrics().count("sockets_cut", Cut::Binary.label());
            outlet.close(Some((1003, BINARY_REFUSED)));
            Some(Stop::Closing)
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

/// Send what is still queued, close our half, and read until the peer closes its half.
async fn linger(outlet: &Outlet) {
    loop {
        {
            let mut b = outlet.lock();
            if b.failed {
                return;
            }
            match outlet.write_queued(&mut b) {
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
