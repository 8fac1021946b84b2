//! Signaling load: the same generator for firstcall (protocol v1) and for
//! nextcloud-spreed-signaling (its v1 `hello`/`message` protocol), so the two
//! servers are measured the same way.
//!
//! Throughput runs open loop: a scheduler offers frames at a fixed total rate,
//! spread round-robin over pairs of sessions in both directions; every frame
//! carries its send time, and the receiving side records delivery latency.
//! firstcall pairs are in a call (`call.signal` needs one); spreed pairs address
//! each other by session id (`message` to a session), the closest equivalent.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

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
    /// Load frames delivered to their recipient.
    pub received: AtomicU64,
    /// Error frames received (rate limits, refusals).
    pub errors: AtomicU64,
    /// Sockets that closed during the run.
    pub closed: AtomicU64,
    /// Delivery latencies, microseconds.
    pub latencies: Mutex<Vec<u32>>,
}

fn epoch() -> Instant {
    static E: OnceLock<Instant> = OnceLock::new();
    *E.get_or_init(Instant::now)
}

fn now_us() -> u64 {
    epoch().elapsed().as_micros() as u64
}

/// One open session: its writer queue and the id peers address it by.
pub struct Conn {
    tx: mpsc::UnboundedSender<Message>,
    /// firstcall: the user name; spreed: the public session id.
    pub address: String,
    /// Next outbound seq (firstcall only).
    seq: u64,
    /// The call this session signals on (firstcall only).
    call: String,
    /// What this session has received and acknowledged (firstcall only).
    acks: Arc<AckState>,
}

/// Loopback source address `i` (127.0.0.1 … 127.0.0.16) so that 50,000 connections
/// to one port do not run out of ephemeral ports.
fn source(i: usize) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (i % 16) as u8)), 0)
}

async fn ws_open(server: SocketAddr, path: &str, i: usize) -> Result<Ws, String> {
    let sock = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    sock.bind(source(i)).map_err(|e| format!("bind: {e}"))?;
    let tcp = sock.connect(server).await.map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    // A small read buffer: tungstenite zeroes the unused part of it on every read, and
    // the default 128 KiB made the generator, not the server, the bottleneck.
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let (ws, _) = tokio_tungstenite::client_async_with_config(format!("ws://{server}{path}"), tcp, Some(config))
        .await
        .map_err(|e| format!("websocket: {e}"))?;
    Ok(ws)
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

async fn next_text(ws: &mut Ws) -> Result<String, String> {
    loop {
        match tokio::time::timeout(Duration::from_secs(15), ws.next()).await {
            Err(_) => return Err("timed out".into()),
            Ok(None) => return Err("closed".into()),
            Ok(Some(Err(e))) => return Err(e.to_string()),
            Ok(Some(Ok(Message::Text(t)))) => return Ok(t.to_string()),
            Ok(Some(Ok(Message::Close(f)))) => return Err(format!("closed: {f:?}")),
            Ok(Some(Ok(_))) => {}
        }
    }
}

/// Open a session and say hello; returns the socket and the address peers use.
pub async fn hello(proto: &Proto, server: SocketAddr, i: usize) -> Result<(Ws, String), String> {
    match proto {
        Proto::Firstcall => {
            let mut ws = ws_open(server, "/v1/ws", i).await?;
            let user = format!("b{i}");
            let h = json!({"type": "hello", "token": format!("dev:{user}"), "device": "d"});
            ws.send(Message::text(h.to_string())).await.map_err(|e| e.to_string())?;
            loop {
                let t = next_text(&mut ws).await?;
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
            ws.send(Message::text(h.to_string())).await.map_err(|e| e.to_string())?;
            loop {
                let t = next_text(&mut ws).await?;
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
                while let Some(Ok(m)) = ws.next().await {
                    if let Message::Text(t) = m {
                        if t.contains(r#""type":"ping""#) {
                            let _ = ws.send(Message::text(r#"{"type":"pong"}"#)).await;
                        }
                    }
                }
            }));
        }
        i += conc;
    }
    Ok(out)
}

fn field_u64(t: &str, key: &str) -> Option<u64> {
    let at = t.find(key)? + key.len();
    let digits: String = t[at..].chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

/// What a connection has received (highest inbound seq) and acknowledged, shared with
/// the ack flusher.
#[derive(Default)]
struct AckState {
    last_in: AtomicU64,
    acked: AtomicU64,
}

fn ack_frame(seq: u64) -> Message {
    Message::text(format!(r#"{{"type":"ack","seq":{seq}}}"#))
}

/// Spawn the reader and writer of a load connection.
fn drive(proto: &Proto, ws: Ws, stats: Arc<Stats>) -> (mpsc::UnboundedSender<Message>, Arc<AckState>) {
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
    tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if sink.feed(m).await.is_err() {
                return;
            }
            while let Ok(m) = rx.try_recv() {
                if sink.feed(m).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
    });
    let acks = tx.clone();
    let firstcall = matches!(proto, Proto::Firstcall);
    let state = Arc::new(AckState::default());
    let st = state.clone();
    tokio::spawn(async move {
        // Acks are coalesced as the SDK does: every 32 frames here, and the rest by the
        // flusher in `open_pairs` (no per-frame timer: that was the generator's bottleneck).
        while let Some(m) = stream.next().await {
            let Ok(m) = m else { break };
            let Message::Text(t) = m else { continue };
            if let Some(sent) = field_u64(&t, r#""usernameFragment":""#) {
                let lat = now_us().saturating_sub(sent);
                stats.received.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut l) = stats.latencies.lock() {
                    l.push(lat.min(u32::MAX as u64) as u32);
                }
            } else if t.contains(r#""type":"error""#) {
                if stats.errors.fetch_add(1, Ordering::Relaxed) == 0 {
                    eprintln!("first error frame: {t}");
                }
            } else if t.contains(r#""type":"ping""#) {
                let _ = acks.send(Message::text(r#"{"type":"pong"}"#));
            }
            if firstcall && !t.contains(r#""type":"ack""#) {
                if let Some(seq) = field_u64(&t, r#""seq":"#) {
                    let last = st.last_in.fetch_max(seq, Ordering::Relaxed).max(seq);
                    if last - st.acked.load(Ordering::Relaxed) >= 32 {
                        st.acked.store(last, Ordering::Relaxed);
                        let _ = acks.send(ack_frame(last));
                    }
                }
            }
        }
        stats.closed.fetch_add(1, Ordering::Relaxed);
    });
    (tx, state)
}

/// Acknowledge, within 100 ms, whatever the per-32 acks left pending. A tenth of the
/// connections every 10 ms: acks for all of them at once would arrive at the server as
/// one burst that delays the frames behind it, which real clients do not do.
fn spawn_ack_flusher(conns: Vec<(mpsc::UnboundedSender<Message>, Arc<AckState>)>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        let slice = conns.len().div_ceil(10).max(1);
        let mut round = 0usize;
        loop {
            tick.tick().await;
            let mut live = 0;
            let from = (round % 10) * slice;
            round += 1;
            for (tx, st) in conns.iter().skip(from).take(slice) {
                if tx.is_closed() {
                    continue;
                }
                live += 1;
                let last = st.last_in.load(Ordering::Relaxed);
                if last > st.acked.load(Ordering::Relaxed) {
                    st.acked.store(last, Ordering::Relaxed);
                    let _ = tx.send(ack_frame(last));
                }
            }
            if live == 0 && conns.iter().all(|(tx, _)| tx.is_closed()) {
                return;
            }
        }
    });
}

/// Open `pairs` pairs of sessions ready to exchange load frames.
pub async fn open_pairs(
    proto: &Proto,
    server: SocketAddr,
    pairs: usize,
    stats: Arc<Stats>,
) -> Result<Vec<Conn>, String> {
    let mut conns = Vec::with_capacity(pairs * 2);
    let mut flush = Vec::with_capacity(pairs * 2);
    for p in 0..pairs {
        let (mut a, a_addr) = hello(proto, server, 2 * p).await?;
        let (mut b, b_addr) = hello(proto, server, 2 * p + 1).await?;
        let call = format!("00000000-0000-4000-8000-{:012x}", p);
        if let Proto::Firstcall = proto {
            // A call between the two, so that call.signal is accepted.
            let inv = json!({"type": "call.invite", "seq": 1, "call": call, "to": b_addr, "media": "audio", "sdp": "v=0\r\n"});
            a.send(Message::text(inv.to_string()))
                .await
                .map_err(|e| e.to_string())?;
            while !next_text(&mut b).await?.contains(r#""type":"call.incoming""#) {}
            let acc = json!({"type": "call.accept", "seq": 1, "call": call, "sdp": "v=0\r\n"});
            b.send(Message::text(acc.to_string()))
                .await
                .map_err(|e| e.to_string())?;
            loop {
                let t = next_text(&mut a).await?;
                if t.contains(r#""type":"call.accepted""#) {
                    break;
                }
                if t.contains(r#""type":"error""#) {
                    return Err(format!("call setup: {t}"));
                }
            }
        }
        // Each side's address is the other's recipient.
        let (atx, ast) = drive(proto, a, stats.clone());
        let (btx, bst) = drive(proto, b, stats.clone());
        flush.push((atx.clone(), ast.clone()));
        flush.push((btx.clone(), bst.clone()));
        conns.push(Conn {
            tx: atx,
            address: b_addr,
            seq: 1,
            call: call.clone(),
            acks: ast,
        });
        conns.push(Conn {
            tx: btx,
            address: a_addr,
            seq: 1,
            call,
            acks: bst,
        });
    }
    if let Proto::Firstcall = proto {
        spawn_ack_flusher(flush);
    }
    Ok(conns)
}

fn load_frame(proto: &Proto, c: &mut Conn) -> String {
    let cand = format!(
        r#"{{"candidate":{{"candidate":"candidate:1 1 udp 2122260223 192.0.2.1 9 typ host","sdpMid":"0","sdpMLineIndex":0,"usernameFragment":"{}"}}}}"#,
        now_us()
    );
    match proto {
        Proto::Firstcall => {
            c.seq += 1;
            // A pending ack rides on the frame, as the SDK does (protocol.md).
            let last = c.acks.last_in.load(Ordering::Relaxed);
            let ack = if last > c.acks.acked.load(Ordering::Relaxed) {
                c.acks.acked.store(last, Ordering::Relaxed);
                format!(r#","ack":{last}"#)
            } else {
                String::new()
            };
            format!(
                r#"{{"type":"call.signal","seq":{},"call":"{}"{ack},"data":{cand}}}"#,
                c.seq, c.call
            )
        }
        Proto::Spreed { .. } => format!(
            r#"{{"type":"message","message":{{"recipient":{{"type":"session","sessionid":"{}"}},"data":{cand}}}}}"#,
            c.address
        ),
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
    /// Error frames during the step.
    pub errors: u64,
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
    let recv0 = stats.received.load(Ordering::Relaxed);
    let err0 = stats.errors.load(Ordering::Relaxed);
    if let Ok(mut l) = stats.latencies.lock() {
        l.clear();
    }
    let start = Instant::now();
    let mut sent = 0u64;
    let mut next = 0usize;
    let n = conns.len();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while start.elapsed() < dur {
        tick.tick().await;
        let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
        while sent < due {
            let c = &mut conns[next];
            next = (next + 1) % n;
            let f = load_frame(proto, c);
            let _ = c.tx.send(Message::text(f));
            sent += 1;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let deadline = Instant::now() + grace;
    while stats.received.load(Ordering::Relaxed) - recv0 < sent && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let received = stats.received.load(Ordering::Relaxed) - recv0;
    let mut l = stats.latencies.lock().map(|l| l.clone()).unwrap_or_default();
    l.sort_unstable();
    let pct = |p: f64| {
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
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
        errors: stats.errors.load(Ordering::Relaxed) - err0,
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
