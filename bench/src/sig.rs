//! Signaling load: the same generator for firstcall (protocol v1) and for
//! nextcloud-spreed-signaling (its v1 `hello`/`message` protocol), so the two
//! servers are measured the same way.
//!
//! Throughput runs open loop: a scheduler offers frames at a fixed total rate,
//! spread round-robin over pairs of sessions in both directions; every frame
//! carries its send time, and the receiving side records delivery latency.
//! firstcall pairs are in a call (`call.signal` needs one); spreed pairs address
//! each other by session id (`message` to a session), the closest equivalent.

use std::mem::MaybeUninit;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine;
use firstcall_client::load::{stamp_arrivals, stamp_wait_us, unix_now_ns};
use firstcall_server::tcp::{filled, read_once, write_front};
use firstcall_signal::ws::{self, Decoder, Message, OpCode, Role};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// Which server protocol to speak.
#[derive(Clone, Debug)]
pub enum Proto {
    /// firstcall protocol v1 at `/v1/ws`, dev tokens.
    Firstcall,
    /// nextcloud-spreed-signaling at `/spreed`; hellos are authorised by our fake backend at this URL.
    Spreed { backend: String },
}

/// Counters shared by every connection of a run.
#[derive(Default)]
pub struct Stats {
    /// Load frames of the current step delivered to their recipient.
    pub received: AtomicU64,
    /// When (`now_us`) the current step began: frames sent before it still arriving
    /// (after a step the server could not keep up with) are not counted in it.
    step_start_us: AtomicU64,
    /// Load frames delivered, whatever step sent them: tells when the links are quiet.
    pub delivered: AtomicU64,
    /// Error frames received (rate limits, refusals).
    pub errors: AtomicU64,
    /// Sockets that closed during the run.
    pub closed: AtomicU64,
    /// Load frames that reached a session other than the one they were addressed to
    /// (each names its recipient's index in `sdpMid`): counted as errors, never as
    /// received. A server that routes by a session number every node reuses delivers
    /// a frame for another node's session to its own session of that number.
    pub misdelivered: AtomicU64,
    /// Delivery latencies, microseconds: from the sender's `send` to the kernel's receive
    /// timestamp of the bytes at the recipient's socket (`SO_TIMESTAMPNS`), which leaves
    /// out how long they then waited for the generator's own thread.
    /// Both figures are pushed under one lock: it is taken once per delivered frame.
    pub latencies: Mutex<Latencies>,
}

/// Delivery latencies of a step, microseconds, in arrival order.
#[derive(Default)]
pub struct Latencies {
    /// To the kernel's receive timestamp (see `Stats::latencies`).
    pub stamped: Vec<u32>,
    /// Up to when the generator's task read the frame: the figure before receive
    /// timestamps, which counts the generator's own queueing too.
    pub as_read: Vec<u32>,
}

fn epoch() -> Instant {
    static E: OnceLock<Instant> = OnceLock::new();
    *E.get_or_init(Instant::now)
}

fn now_us() -> u64 {
    epoch().elapsed().as_micros() as u64
}

/// Read once, as `firstcall_server::tcp::read_some` does, and say how long, in
/// microseconds, the last bytes read had been waiting in the socket: the kernel's
/// receive timestamp (`SO_TIMESTAMPNS`, taken as the bytes reached this host's stack)
/// against the clock now. 0 when the socket gives no timestamp.
///
/// That wait is the generator's own queueing (its one thread busy with other sockets),
/// not the server's; subtracted from a frame's latency, what is left ends when the
/// server's bytes reached the recipient.
fn read_stamped<'b>(sock: &TcpStream, buf: &'b mut [MaybeUninit<u8>]) -> std::io::Result<(&'b mut [u8], u64)> {
    use std::os::fd::AsRawFd;
    let len = buf.len();
    let (n, lag) = read_once(sock, len, || {
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: len,
        };
        // Room for one SCM_TIMESTAMPNS message, aligned for cmsghdr.
        let mut control = [0u64; 8];
        // SAFETY: zeroed msghdr is a valid "no name, no flags" value; the pointers set
        // below outlive the call.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control) as _;
        // SAFETY: the descriptor is open for the life of `sock`; msg points at live buffers.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, 0) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the kernel just filled msg_control/msg_controllen.
        let lag = unsafe { stamp_wait_us(&msg, unix_now_ns()) };
        Ok((n as usize, lag))
    })?;
    // SAFETY: `recvmsg` returned `n`, the count of bytes it wrote at the front of `buf`.
    Ok((unsafe { filled(buf, n) }, lag))
}

/// One open session, driven: its link and the id peers address it by.
pub struct Conn {
    link: Arc<Link>,
    /// firstcall: the user name; spreed: the public session id.
    pub address: String,
    /// Next outbound seq (firstcall only).
    seq: u64,
    /// The call this session signals on (firstcall only).
    call: String,
    /// The index of the session this one sends to (its pair's other half), which each
    /// load frame names so that its receiver can check it was meant for it.
    to: u32,
    /// What this session has received and acknowledged (firstcall only).
    acks: Arc<AckState>,
}

/// Loopback source address `i` (127.0.0.1 … 127.0.0.16) so that 50,000 connections
/// to one port do not run out of ephemeral ports.
fn source(i: usize) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (i % 16) as u8)), 0)
}

/// Masking keys for the frames one connection sends (RFC 6455 5.3), from xorshift:
/// the generator needs keys that vary, not secrecy.
struct Mask(u64);

impl Mask {
    fn new(seed: usize) -> Mask {
        Mask(0x9e37_79b9_7f4a_7c15 ^ (seed as u64).wrapping_mul(0xbf58_476d_1ce4_e5b9) | 1)
    }

    fn next(&mut self) -> [u8; 4] {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 as u32).to_ne_bytes()
    }
}

/// A client WebSocket over TCP, spoken with the server's own RFC 6455 codec
/// (`firstcall_signal::ws`) from the client side, used while sessions are set up.
///
/// The load generator writes frames to the socket itself, without a writer task per
/// connection: a generator whose every frame cost a channel send and a task wake-up
/// ran out of CPU before the server did.
pub struct Ws {
    sock: TcpStream,
    dec: Decoder,
    /// Bytes read but not yet decoded.
    buf: Vec<u8>,
    mask: Mask,
}

async fn ws_open(server: SocketAddr, path: &str, i: usize) -> Result<Ws, String> {
    let sock = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    sock.bind(source(i)).map_err(|e| format!("bind: {e}"))?;
    let mut sock = sock.connect(server).await.map_err(|e| format!("connect: {e}"))?;
    let _ = sock.set_nodelay(true);
    let mut mask = Mask::new(i);
    let key: Vec<u8> = (0..4).flat_map(|_| mask.next()).collect();
    let key = base64::engine::general_purpose::STANDARD.encode(key);
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {server}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    sock.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("upgrade request: {e}"))?;
    let mut buf = Vec::with_capacity(1024);
    let head = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                return Ok(p + 4);
            }
            if buf.len() > 16 * 1024 {
                return Err("upgrade response headers over 16 KiB".to_string());
            }
            let mut chunk = [0u8; 1024];
            match sock.read(&mut chunk).await {
                Ok(0) => return Err("closed during the upgrade".to_string()),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(format!("upgrade response: {e}")),
            }
        }
    })
    .await
    .map_err(|_| "upgrade timed out".to_string())??;
    let status = String::from_utf8_lossy(&buf[..head]);
    if !status.starts_with("HTTP/1.1 101") {
        return Err(format!("upgrade refused: {}", status.lines().next().unwrap_or("")));
    }
    buf.drain(..head);
    Ok(Ws {
        sock,
        dec: Decoder::new(Role::Client, 1 << 20),
        buf,
        mask,
    })
}

/// What the next message asks of its reader.
enum Got {
    Text(String),
    Ping(Vec<u8>),
    Closed(String),
    Other,
}

fn got(m: Option<Message<'_>>) -> Got {
    match m {
        Some(Message::Text(t)) => Got::Text(t.to_owned()),
        Some(Message::Ping(p)) => Got::Ping(p.to_vec()),
        Some(Message::Close(c)) => Got::Closed(format!("closed: {c:?}")),
        _ => Got::Other,
    }
}

impl Ws {
    async fn send_text(&mut self, t: &str) -> Result<(), String> {
        let mut f = Vec::with_capacity(t.len() + 8);
        ws::encode(&mut f, OpCode::Text, t.as_bytes(), Some(self.mask.next()));
        self.sock.write_all(&f).await.map_err(|e| e.to_string())
    }

    /// The next text message, answering pings on the way; `None` waits for ever.
    async fn next_text_within(&mut self, limit: Option<Duration>) -> Result<String, String> {
        let deadline = limit.map(|l| tokio::time::Instant::now() + l);
        loop {
            let (m, n) = self.dec.decode(&mut self.buf).map_err(|e| e.to_string())?;
            if n > 0 {
                let g = got(m);
                self.buf.drain(..n);
                match g {
                    Got::Text(t) => return Ok(t),
                    Got::Closed(why) => return Err(why),
                    Got::Ping(p) => {
                        let mut f = vec![];
                        ws::encode(&mut f, OpCode::Pong, &p, Some(self.mask.next()));
                        self.sock.write_all(&f).await.map_err(|e| e.to_string())?;
                    }
                    Got::Other => {}
                }
                continue;
            }
            let mut chunk = [0u8; 4096];
            let read = self.sock.read(&mut chunk);
            let r = match deadline {
                Some(d) => tokio::time::timeout_at(d, read)
                    .await
                    .map_err(|_| "timed out".to_string())?,
                None => read.await,
            };
            match r {
                Ok(0) => return Err("closed".into()),
                Ok(k) => self.buf.extend_from_slice(&chunk[..k]),
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    async fn next_text(&mut self) -> Result<String, String> {
        self.next_text_within(Some(Duration::from_secs(15))).await
    }
}

/// A driven connection's socket, written by whoever sends (the step loop, the ack
/// flusher, its own reader) and read by its reader task.
struct Link {
    sock: TcpStream,
    out: Mutex<LinkOut>,
    /// Wakes the reader task when the socket would block: it then waits to write.
    wake: tokio::sync::Notify,
    closed: AtomicBool,
}

struct LinkOut {
    /// Encoded frames the kernel has not taken yet.
    bytes: Vec<u8>,
    blocked: bool,
    dead: bool,
    mask: Mask,
}

impl Link {
    fn send_text(&self, t: &str) {
        let Ok(mut o) = self.out.lock() else { return };
        if o.dead {
            return;
        }
        let key = o.mask.next();
        ws::encode(&mut o.bytes, OpCode::Text, t.as_bytes(), Some(key));
        if o.blocked {
            return;
        }
        match write_front(&self.sock, &mut o.bytes) {
            Ok(true) => {}
            Ok(false) => {
                o.blocked = true;
                self.wake.notify_one();
            }
            Err(_) => {
                o.dead = true;
                o.bytes.clear();
            }
        }
    }
}

/// Open a session and say hello; returns the socket and the address peers use.
pub async fn hello(proto: &Proto, server: SocketAddr, i: usize) -> Result<(Ws, String), String> {
    match proto {
        Proto::Firstcall => {
            let mut ws = ws_open(server, "/v1/ws", i).await?;
            // The process id keeps users apart between runs against one server: a user
            // whose call from the run before is still live would be busy.
            let user = format!("b{}-{i}", std::process::id());
            let h = json!({"type": "hello", "token": format!("dev:{user}"), "device": "d"});
            ws.send_text(&h.to_string()).await?;
            loop {
                let t = ws.next_text().await?;
                let v: Value = serde_json::from_str(&t).map_err(|e| e.to_string())?;
                match v["type"].as_str() {
                    Some("welcome") => return Ok((ws, user)),
                    Some("error") => return Err(format!("refused: {t}")),
                    _ => {}
                }
            }
        }
        Proto::Spreed { backend } => {
            let mut ws = ws_open(server, "/spreed", i).await?;
            let h = json!({"type": "hello", "hello": {"version": "1.0", "auth": {"url": backend, "params": {"n": i}}}});
            ws.send_text(&h.to_string()).await?;
            loop {
                let t = ws.next_text().await?;
                let v: Value = serde_json::from_str(&t).map_err(|e| e.to_string())?;
                match v["type"].as_str() {
                    Some("hello") => {
                        let id = v["hello"]["sessionid"].as_str().ok_or("hello without sessionid")?;
                        return Ok((ws, id.to_owned()));
                    }
                    Some("error") => return Err(format!("refused: {t}")),
                    _ => {}
                }
            }
        }
    }
}

/// Open `n` idle sessions, `conc` at a time. They answer pings until dropped.
pub async fn open_idle(
    proto: &Proto,
    server: SocketAddr,
    n: usize,
    conc: usize,
) -> Result<Vec<tokio::task::JoinHandle<()>>, String> {
    let mut out = Vec::with_capacity(n);
    let mut i = 0;
    while i < n {
        let mut set = tokio::task::JoinSet::new();
        for k in i..(i + conc).min(n) {
            let proto = proto.clone();
            set.spawn(async move { hello(&proto, server, k).await });
        }
        while let Some(r) = set.join_next().await {
            let (mut ws, _) = r.map_err(|e| e.to_string())??;
            out.push(tokio::spawn(async move {
                // Reading answers WebSocket pings; firstcall's JSON pings get a pong.
                while let Ok(t) = ws.next_text_within(None).await {
                    if t.contains(r#""type":"ping""#) && ws.send_text(r#"{"type":"pong"}"#).await.is_err() {
                        return;
                    }
                }
            }));
        }
        i += conc;
    }
    Ok(out)
}

fn field_u64(t: &str, key: &str) -> Option<u64> {
    digits_at(t, t.find(key)? + key.len())
}

/// A field whose number the reader takes from every delivered frame, searched for from
/// the end (where both are) with a searcher built once: `str::find` and `rfind` build
/// one per call, which was 1,500 of the reader's instructions per frame (callgrind).
struct LastField {
    key: &'static str,
    finder: OnceLock<memchr::memmem::FinderRev<'static>>,
}

impl LastField {
    const fn new(key: &'static str) -> Self {
        LastField {
            key,
            finder: OnceLock::new(),
        }
    }

    /// The number after the last occurrence of the key in `t`.
    fn in_text(&self, t: &str) -> Option<u64> {
        let f = self.finder.get_or_init(|| memchr::memmem::FinderRev::new(self.key));
        digits_at(t, f.rfind(t.as_bytes())? + self.key.len())
    }
}

/// The send time a load frame carries in its `usernameFragment`.
static SENT_US: LastField = LastField::new(r#""usernameFragment":""#);
/// A relayed frame's seq: its last field but its ack (the server writes them last).
static SEQ: LastField = LastField::new(r#","seq":"#);
/// The index of the session a load frame is meant for, in its candidate's `sdpMid`.
static TO: LastField = LastField::new(r#""sdpMid":""#);

/// The decimal number that starts at `at` in `t`, without allocating: the generator
/// reads two per delivered frame and must cost less than the server it loads.
fn digits_at(t: &str, at: usize) -> Option<u64> {
    let digits = t.as_bytes().get(at..)?;
    let n = digits.iter().take_while(|b| b.is_ascii_digit()).count();
    if n == 0 {
        return None;
    }
    digits[..n]
        .iter()
        .try_fold(0u64, |v, d| v.checked_mul(10)?.checked_add(u64::from(d - b'0')))
}

/// What a connection has received (highest inbound seq) and acknowledged, shared with
/// the ack flusher.
///
/// Acks follow the browser SDK (`scheduleAck` in web/sdk/src/firstcall.ts): a pending
/// ack rides on the next frame the session sends, and only one still pending 50 ms
/// after the first frame it covers goes out as an `ack` frame of its own. A generator
/// that acked more often than the SDK would load the server with frames no real
/// client sends.
#[derive(Default)]
struct AckState {
    last_in: AtomicU64,
    acked: AtomicU64,
    /// When (`now_us`) the oldest unacknowledged frame arrived; 0 when none waits.
    pending_since: AtomicU64,
}

/// The SDK's ack delay.
const ACK_DELAY_US: u64 = 50_000;

impl AckState {
    /// A sequenced frame arrived.
    fn received(&self, seq: u64) {
        self.last_in.fetch_max(seq, Ordering::SeqCst);
        // The clock is read only when this frame starts the wait (a clock read was a
        // few per cent of the generator, and most frames find an ack pending).
        if self.pending_since.load(Ordering::SeqCst) == 0 {
            let _ = self
                .pending_since
                .compare_exchange(0, now_us().max(1), Ordering::SeqCst, Ordering::SeqCst);
        }
    }

    /// Take the pending ack, if any, to send now: the seq it acknowledges.
    ///
    /// The pending mark is cleared before `last_in` is read, so a frame arriving in
    /// between either is covered by this ack or marks a new pending one: none is left
    /// unacknowledged with nothing pending. That needs one order over the four accesses
    /// (`received` raises, then marks), hence `SeqCst`.
    fn take(&self) -> Option<u64> {
        self.pending_since.store(0, Ordering::SeqCst);
        let last = self.last_in.load(Ordering::SeqCst);
        (self.acked.fetch_max(last, Ordering::SeqCst) < last).then_some(last)
    }

    /// Whether a pending ack has waited out the SDK's delay.
    fn due(&self, now: u64) -> bool {
        let since = self.pending_since.load(Ordering::Relaxed);
        since != 0 && now.saturating_sub(since) >= ACK_DELAY_US
    }
}

fn ack_frame(seq: u64) -> String {
    format!(r#"{{"type":"ack","seq":{seq}}}"#)
}

/// Make `ws` a load connection: a reader task records deliveries and acks; frames go
/// out through the returned link.
/// `me`: this session's index, which the load frames meant for it name.
fn drive(proto: &Proto, ws: Ws, me: u32, stats: Arc<Stats>) -> (Arc<Link>, Arc<AckState>) {
    let Ws {
        sock,
        mut dec,
        mut buf,
        mask,
    } = ws;
    if let Err(e) = stamp_arrivals(&sock) {
        // Latencies then count the generator's own queueing too (as `Latencies::as_read`).
        eprintln!("SO_TIMESTAMPNS refused ({e}): latencies include the generator's queueing");
    }
    let link = Arc::new(Link {
        sock,
        out: Mutex::new(LinkOut {
            bytes: Vec::new(),
            blocked: false,
            dead: false,
            mask,
        }),
        wake: tokio::sync::Notify::new(),
        closed: AtomicBool::new(false),
    });
    let firstcall = matches!(proto, Proto::Firstcall);
    let state = Arc::new(AckState::default());
    let (l, st) = (link.clone(), state.clone());
    tokio::spawn(async move {
        // Acks are coalesced as the SDK does (see `AckState`): they ride on load frames or
        // go out from the flusher in `open_pairs` (one timer task for all connections,
        // not one per frame: that was the generator's bottleneck).
        // `lag_us`: how long the read's bytes had waited in the socket (see `read_stamped`).
        let on_text = |t: &str, lag_us: u64| {
            if let Some(sent) = SENT_US.in_text(t) {
                if TO.in_text(t) != Some(u64::from(me)) {
                    if stats.misdelivered.fetch_add(1, Ordering::Relaxed) == 0 {
                        eprintln!("first frame delivered to the wrong session (this is {me}): {t}");
                    }
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                let now = now_us();
                stats.delivered.fetch_add(1, Ordering::Relaxed);
                if sent >= stats.step_start_us.load(Ordering::Relaxed) {
                    stats.received.fetch_add(1, Ordering::Relaxed);
                    let app = now.saturating_sub(sent);
                    if let Ok(mut v) = stats.latencies.lock() {
                        v.stamped.push(app.saturating_sub(lag_us).min(u32::MAX as u64) as u32);
                        v.as_read.push(app.min(u32::MAX as u64) as u32);
                    }
                }
                if firstcall {
                    if let Some(seq) = SEQ.in_text(t) {
                        st.received(seq);
                    }
                }
                return;
            }
            if t.contains(r#""type":"error""#) {
                if stats.errors.fetch_add(1, Ordering::Relaxed) == 0 {
                    eprintln!("first error frame: {t}");
                }
            } else if t.contains(r#""type":"ping""#) {
                l.send_text(r#"{"type":"pong"}"#);
            }
            if firstcall && !t.contains(r#""type":"ack""#) {
                if let Some(seq) = field_u64(t, r#""seq":"#) {
                    st.received(seq);
                }
            }
        };
        let mut writing = false;
        let woken = l.wake.notified();
        tokio::pin!(woken);
        'conn: loop {
            tokio::select! {
                biased;
                _ = &mut woken, if !writing => {
                    woken.set(l.wake.notified());
                    writing = l.out.lock().map(|o| o.blocked).unwrap_or(false);
                }
                r = l.sock.writable(), if writing => {
                    let Ok(mut o) = l.out.lock() else { break };
                    match r.and_then(|_| write_front(&l.sock, &mut o.bytes)) {
                        Ok(true) => {
                            o.blocked = false;
                            writing = false;
                        }
                        Ok(false) => {}
                        Err(_) => break,
                    }
                }
                r = l.sock.readable() => {
                    if r.is_err() {
                        break;
                    }
                    // Read into one chunk on the stack, warm in the cache, then append.
                    // (A 16 KiB buffer per connection, read into in place, cost the
                    // generator more: 2,000 cold buffers.)
                    let mut chunk = [MaybeUninit::<u8>::uninit(); 4096];
                    let lag_us = match read_stamped(&l.sock, &mut chunk) {
                        Ok(([], _)) => break,
                        Ok((got, lag)) => {
                            buf.extend_from_slice(got);
                            lag
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                        Err(_) => break,
                    };
                    let mut at = 0;
                    loop {
                        match dec.decode(&mut buf[at..]) {
                            Ok((_, 0)) => break,
                            Ok((m, n)) => {
                                at += n;
                                match m {
                                    Some(Message::Text(t)) => on_text(t, lag_us),
                                    Some(Message::Close(_)) => break 'conn,
                                    _ => {}
                                }
                            }
                            Err(e) => {
                                eprintln!("server broke the WebSocket protocol: {e}");
                                break 'conn;
                            }
                        }
                    }
                    buf.drain(..at);
                }
            }
        }
        l.closed.store(true, Ordering::Relaxed);
        stats.closed.fetch_add(1, Ordering::Relaxed);
    });
    (link, state)
}

/// Send the acks that nothing rode on within the SDK's delay, as its timer does: the
/// connections are checked every 5 ms, so such an ack leaves 50 to 55 ms after the first
/// frame it covers (the SDK: 50 ms), spread over time as the frames were.
fn spawn_ack_flusher(conns: Vec<(Arc<Link>, Arc<AckState>)>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        loop {
            tick.tick().await;
            let now = now_us();
            let mut open = false;
            for (link, st) in &conns {
                if link.closed.load(Ordering::Relaxed) {
                    continue;
                }
                open = true;
                if st.due(now) {
                    if let Some(last) = st.take() {
                        link.send_text(&ack_frame(last));
                    }
                }
            }
            if !open {
                return;
            }
        }
    });
}

/// Open `pairs` pairs of sessions ready to exchange load frames: the first of each pair
/// on `servers[0]`, the second on the last of `servers` (another node of a cluster).
pub async fn open_pairs(
    proto: &Proto,
    servers: &[SocketAddr],
    pairs: usize,
    stats: Arc<Stats>,
) -> Result<Vec<Conn>, String> {
    let mut conns = Vec::with_capacity(pairs * 2);
    let mut flush = Vec::with_capacity(pairs * 2);
    let (first, last) = (servers[0], servers[servers.len() - 1]);
    if let (Proto::Spreed { .. }, true) = (proto, first != last) {
        spreed_disjoint_sids(proto, last, pairs).await?;
    }
    for p in 0..pairs {
        let (mut a, a_addr) = hello(proto, first, 2 * p).await?;
        let (mut b, b_addr) = hello(proto, last, 2 * p + 1).await?;
        // Per process too: call ids are the server's, live until the call ends.
        let call = format!("{:08x}-0000-4000-8000-{:012x}", std::process::id(), p);
        if let Proto::Firstcall = proto {
            // A call between the two, so that call.signal is accepted.
            let inv = json!({"type": "call.invite", "seq": 1, "call": call, "to": b_addr, "media": "audio", "sdp": "v=0\r\n"});
            a.send_text(&inv.to_string()).await?;
            while !b.next_text().await?.contains(r#""type":"call.incoming""#) {}
            let acc = json!({"type": "call.accept", "seq": 1, "call": call, "sdp": "v=0\r\n"});
            b.send_text(&acc.to_string()).await?;
            loop {
                let t = a.next_text().await?;
                if t.contains(r#""type":"call.accepted""#) {
                    break;
                }
                if t.contains(r#""type":"error""#) {
                    return Err(format!("call setup: {t}"));
                }
            }
        }
        // Each side's address is the other's recipient.
        let (ai, bi) = (2 * p as u32, 2 * p as u32 + 1);
        let (atx, ast) = drive(proto, a, ai, stats.clone());
        let (btx, bst) = drive(proto, b, bi, stats.clone());
        flush.push((atx.clone(), ast.clone()));
        flush.push((btx.clone(), bst.clone()));
        conns.push(Conn {
            link: atx,
            address: b_addr,
            seq: 1,
            call: call.clone(),
            to: bi,
            acks: ast,
        });
        conns.push(Conn {
            link: btx,
            address: a_addr,
            seq: 1,
            call,
            to: ai,
            acks: bst,
        });
    }
    if let Proto::Firstcall = proto {
        spawn_ack_flusher(flush);
    }
    Ok(conns)
}

/// nextcloud-spreed-signaling 0.4.1 (Debian's) finds a message's recipient by the
/// session number inside its public id, a counter every process starts at 1
/// (`h.clients[data.Sid]` in hub.go; fixed upstream in 1.0.0, commit 36710c8): a frame
/// for another node's session n goes to this node's own session n, never over NATS.
/// Numbering the last node's sessions after the first node's (open `n` there and end
/// them) sends every frame across; the receivers' check (`Stats::misdelivered`) says
/// whether it did.
async fn spreed_disjoint_sids(proto: &Proto, server: SocketAddr, n: usize) -> Result<(), String> {
    for i in 0..n {
        let (mut ws, _) = hello(proto, server, 1_000_000 + i).await?;
        ws.send_text(r#"{"type":"bye","bye":{}}"#).await?;
        // Until the server closes: the session is gone from its table.
        while ws.next_text().await.is_ok() {}
    }
    Ok(())
}

/// One load frame: a trickled candidate whose `usernameFragment` carries the send time.
/// Written into one buffer (no formatting machinery): the generator's cost per frame
/// bounds the rate it can offer.
fn load_frame(proto: &Proto, c: &mut Conn) -> String {
    match proto {
        Proto::Firstcall => {
            c.seq += 1;
            // A pending ack rides on the frame, as the SDK does (protocol.md).
            frame_text(proto, &c.call, c.to, c.seq, c.acks.take(), now_us())
        }
        Proto::Spreed { .. } => frame_text(proto, &c.address, c.to, 0, None, now_us()),
    }
}

/// A load frame to `to` (firstcall: the call; spreed: the recipient session), meant for
/// the session of index `to_index` (its `sdpMid`), sent at `sent_us`; `seq` and `ack`
/// are firstcall's.
fn frame_text(proto: &Proto, to: &str, to_index: u32, seq: u64, ack: Option<u64>, sent_us: u64) -> String {
    let mut f = String::with_capacity(320);
    let mut n = itoa::Buffer::new();
    match proto {
        Proto::Firstcall => {
            f.push_str(r#"{"type":"call.signal","seq":"#);
            f.push_str(n.format(seq));
            f.push_str(r#","call":""#);
            f.push_str(to);
            f.push('"');
            if let Some(last) = ack {
                f.push_str(r#","ack":"#);
                f.push_str(n.format(last));
            }
            f.push_str(r#","data":"#);
        }
        Proto::Spreed { .. } => {
            f.push_str(r#"{"type":"message","message":{"recipient":{"type":"session","sessionid":""#);
            f.push_str(to);
            f.push_str(r#""},"data":"#);
        }
    }
    f.push_str(r#"{"candidate":{"candidate":"candidate:1 1 udp 2122260223 192.0.2.1 9 typ host","sdpMid":""#);
    f.push_str(n.format(to_index));
    f.push_str(r#"","sdpMLineIndex":0,"usernameFragment":""#);
    f.push_str(n.format(sent_us));
    f.push_str(r#""}}}"#);
    if let Proto::Spreed { .. } = proto {
        f.push('}');
    }
    f
}

/// Keeps the generator's thread polling, never sleeping, while it lives: a task that
/// only yields, so that the runtime polls its sockets without blocking (epoll with no
/// timeout) between the other tasks. A frame then reaches a reader that is already
/// running instead of waking a sleeping one.
pub struct Polling(Arc<AtomicBool>);

impl Polling {
    /// Start polling; it stops when the guard is dropped.
    pub fn start() -> Polling {
        let stop = Arc::new(AtomicBool::new(false));
        let done = stop.clone();
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                tokio::task::yield_now().await;
            }
        });
        Polling(stop)
    }
}

impl Drop for Polling {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Result of one offered-rate step.
pub struct Step {
    /// Frames sent.
    pub sent: u64,
    /// Frames delivered before the grace period ended.
    pub received: u64,
    /// Seconds the sending took.
    pub secs: f64,
    /// Latency percentiles, milliseconds: p50, p99, max.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// p50 up to when the generator read the frame (`Latencies::as_read`).
    pub app_p50_ms: f64,
    /// p99 of the same.
    pub app_p99_ms: f64,
    /// Error frames during the step (misdelivered frames included).
    pub errors: u64,
    /// Load frames delivered to another session than their recipient.
    pub misdelivered: u64,
    /// Most frames sent in one turn of the send loop (nominally `rate / 1000`): a turn
    /// that comes late sends everything due since, as one burst.
    pub max_burst: u64,
    /// Longest gap between two turns of the send loop, milliseconds (nominally 1): how
    /// long the generator itself stalled.
    pub max_gap_ms: f64,
}

/// Wait until no load frame has arrived for 100 ms (at most `limit`): a step the server
/// fell behind in leaves frames queued, which a step run straight after would queue
/// behind.
pub async fn settle(stats: &Stats, limit: Duration) {
    let end = Instant::now() + limit;
    let mut seen = stats.delivered.load(Ordering::Relaxed);
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = stats.delivered.load(Ordering::Relaxed);
        if now == seen {
            return;
        }
        seen = now;
    }
}

/// Offer `rate` frames/s for `dur`, round-robin over `conns`, then wait up to
/// `grace` for stragglers.
pub async fn run_step(
    proto: &Proto,
    conns: &mut [Conn],
    stats: &Stats,
    rate: u64,
    dur: Duration,
    grace: Duration,
) -> Step {
    let err0 = stats.errors.load(Ordering::Relaxed);
    let mis0 = stats.misdelivered.load(Ordering::Relaxed);
    if let Ok(mut l) = stats.latencies.lock() {
        l.stamped.clear();
        l.as_read.clear();
    }
    stats.step_start_us.store(now_us(), Ordering::Relaxed);
    let recv0 = stats.received.load(Ordering::Relaxed);
    let start = Instant::now();
    let mut sent = 0u64;
    let mut next = 0usize;
    let n = conns.len();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let (mut max_burst, mut max_gap, mut last) = (0, Duration::ZERO, Instant::now());
    while start.elapsed() < dur {
        tick.tick().await;
        let now = Instant::now();
        max_gap = max_gap.max(now - last);
        last = now;
        let due = ((now - start).as_secs_f64() * rate as f64) as u64;
        max_burst = max_burst.max(due.saturating_sub(sent));
        while sent < due {
            let c = &mut conns[next];
            next = (next + 1) % n;
            let f = load_frame(proto, c);
            c.link.send_text(&f);
            sent += 1;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let deadline = Instant::now() + grace;
    while stats.received.load(Ordering::Relaxed) - recv0 < sent && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let received = stats.received.load(Ordering::Relaxed) - recv0;
    let (mut l, mut app) = stats
        .latencies
        .lock()
        .map(|l| (l.stamped.clone(), l.as_read.clone()))
        .unwrap_or_default();
    l.sort_unstable();
    app.sort_unstable();
    let pct = |l: &[u32], p: f64| {
        if l.is_empty() {
            0.0
        } else {
            l[((l.len() - 1) as f64 * p) as usize] as f64 / 1000.0
        }
    };
    Step {
        sent,
        received,
        secs,
        p50_ms: pct(&l, 0.5),
        p99_ms: pct(&l, 0.99),
        app_p50_ms: pct(&app, 0.5),
        app_p99_ms: pct(&app, 0.99),
        errors: stats.errors.load(Ordering::Relaxed) - err0,
        misdelivered: stats.misdelivered.load(Ordering::Relaxed) - mis0,
        max_burst,
        max_gap_ms: max_gap.as_secs_f64() * 1e3,
    }
}

/// A stand-in for the Nextcloud backend that spreed asks to authorise each hello:
/// every request is answered "ok" for a user named after the hello's params.
pub async fn fake_spreed_backend(bind: SocketAddr) -> std::io::Result<SocketAddr> {
    let l = TcpListener::bind(bind).await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::with_capacity(2048);
                loop {
                    // Keep-alive: serve requests until the server closes.
                    let mut chunk = [0u8; 4096];
                    let head_end = loop {
                        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break p + 4;
                        }
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                    let len = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    while buf.len() < head_end + len {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let body: Value = serde_json::from_slice(&buf[head_end..head_end + len]).unwrap_or(Value::Null);
                    buf.drain(..head_end + len);
                    let user = format!("u{}", body["auth"]["params"]["n"].as_u64().unwrap_or(0));
                    let data = json!({"ocs": {"meta": {"status": "ok", "statuscode": 200, "message": "OK"},
                        "data": {"type": "auth", "auth": {"version": "1.0", "userid": user, "user": {}}}}})
                    .to_string();
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{data}",
                        data.len()
                    );
                    if s.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    #[test]
    fn load_frames_are_the_json_each_server_expects() {
        let cand = |t: u64| json!({"candidate": {"candidate": "candidate:1 1 udp 2122260223 192.0.2.1 9 typ host", "sdpMid": "3", "sdpMLineIndex": 0, "usernameFragment": t.to_string()}});
        let parse = |t: String| serde_json::from_str::<Value>(&t).unwrap();
        assert_eq!(
            parse(frame_text(&Proto::Firstcall, "c-1", 3, 7, Some(5), 123)),
            json!({"type": "call.signal", "seq": 7, "call": "c-1", "ack": 5, "data": cand(123)})
        );
        assert_eq!(
            parse(frame_text(&Proto::Firstcall, "c-1", 3, 8, None, u64::MAX)),
            json!({"type": "call.signal", "seq": 8, "call": "c-1", "data": cand(u64::MAX)})
        );
        let spreed = Proto::Spreed { backend: String::new() };
        assert_eq!(
            parse(frame_text(&spreed, "sess", 3, 0, None, 9)),
            json!({"type": "message", "message": {"recipient": {"type": "session", "sessionid": "sess"}, "data": cand(9)}})
        );
    }

    #[test]
    fn numbers_are_read_where_they_start() {
        let t = r#"{"type":"call.signal","data":{"usernameFragment":"1234"},"seq":42,"ack":7}"#;
        assert_eq!(field_u64(t, r#""usernameFragment":""#), Some(1234));
        assert_eq!(SENT_US.in_text(t), Some(1234));
        assert_eq!(SEQ.in_text(t), Some(42));
        assert_eq!(SENT_US.in_text(r#"{"type":"ack","seq":3}"#), None);
        assert_eq!(field_u64(t, r#""seq":"#), Some(42));
        assert_eq!(digits_at(t, t.rfind(r#","ack":"#).unwrap() + 7), Some(7));
        assert_eq!(field_u64(t, r#""type":"#), None, "no digits there");
        assert_eq!(field_u64(t, "absent"), None);
        assert_eq!(digits_at("18446744073709551615", 0), Some(u64::MAX));
        assert_eq!(
            digits_at("99999999999999999999", 0),
            None,
            "past u64 is refused, not wrapped"
        );
        assert_eq!(digits_at("1", 5), None, "past the end");
    }

    #[test]
    fn acks_ride_on_frames_and_go_alone_only_after_the_sdk_delay() {
        let st = AckState::default();
        assert_eq!(st.take(), None, "nothing received, nothing to ack");
        st.received(3);
        st.received(2);
        let since = st.pending_since.load(Ordering::Relaxed);
        assert!(since > 0);
        assert!(!st.due(since + ACK_DELAY_US - 1), "not before the SDK's 50 ms");
        assert!(st.due(since + ACK_DELAY_US));
        // Riding on a frame: the highest seq, once.
        assert_eq!(st.take(), Some(3));
        assert_eq!(st.take(), None);
        assert!(!st.due(u64::MAX), "nothing pending after the ack left");
        // A frame marks a new pending ack, timed from its own arrival.
        st.received(4);
        assert!(st.pending_since.load(Ordering::Relaxed) >= since);
        assert_eq!(st.take(), Some(4));
    }
}
