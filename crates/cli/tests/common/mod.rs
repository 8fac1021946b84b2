//! Shared helpers for tests that run the real `firstcall` binary.
//!
//! Everything here talks to 127.0.0.1 only, stops only processes it started
//! (by PID, on drop), and bounds every wait.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};

use firstcall_stun::{Attribute, Class, IntegrityKind, Message, MessageBuilder, Method, TransactionId};
use firstcall_turn::auth::{long_term_key, rest_credential, Secret};
use std::path::PathBuf;

pub mod coturn_tools;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

/// A child process killed (by its PID) when dropped.
pub struct Proc {
    child: Child,
    pub name: &'static str,
}

impl Proc {
    pub fn spawn(name: &'static str, cmd: &mut Command) -> Proc {
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc { child, name }
    }
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
    /// Its stdout, when spawned with `Stdio::piped()` (once).
    pub fn stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.stdout.take()
    }
    /// Still running?
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
    /// Send a signal (by this process's PID).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{sig} {}", self.pid());
    }
    /// The exit status, once it has exited within `timeout`.
    pub fn exit_within(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The ports tests hand to servers lie below the kernel's ephemeral range
/// (`net.ipv4.ip_local_port_range`, from 32768 by default): a port found free and
/// released before the server binds it could meanwhile become some outgoing
/// connection's source port ("Address already in use" at start-up, seen in CI), and
/// ports below that range are only ever taken by explicit binds, which here all come
/// from these two functions, apart per process.
const LISTEN_PORTS: std::ops::Range<u16> = 10_000..22_000;
const RELAY_PORTS: std::ops::Range<u16> = 22_000..32_000;

/// A loopback port free for both UDP and TCP (probed, then released), outside the
/// ephemeral range.
pub fn free_port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let span = LISTEN_PORTS.end - LISTEN_PORTS.start;
    let base = (std::process::id() % 16) as u16 * (span / 16);
    for _ in 0..200 {
        let port = LISTEN_PORTS.start + (base + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() && UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for both UDP and TCP after 200 tries");
}

/// A relay port range no other test in this process uses, outside the ephemeral range.
pub fn relay_range(size: u16) -> (u16, u16) {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let per_process = (RELAY_PORTS.end - RELAY_PORTS.start) / 10;
    let base = RELAY_PORTS.start + (std::process::id() % 10) as u16 * per_process;
    let start = base + NEXT.fetch_add(size, Ordering::Relaxed) % (per_process - size + 1);
    (start, start + size - 1)
}

/// Poll `cond` until it holds or `timeout` passes (a bounded wait on a real condition).
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

/// A plain HTTP/1.1 GET; returns (status, body).
pub fn http_get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let status = resp.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    // Chunked bodies: good enough to search in, which is all tests do.
    Ok((status, body))
}

/// A running `firstcall serve`.
pub struct Server {
    pub proc: Proc,
    pub http: SocketAddr,
    pub turn: SocketAddr,
    pub relay: (u16, u16),
    pub data_dir: PathBuf,
    pub log: PathBuf,
}

impl Server {
    /// Value of a Prometheus sample (exact name including labels), 0 when absent.
    pub fn metric(&self, sample: &str) -> u64 {
        let (_, body) = http_get(self.http, "/metrics", &[]).expect("GET /metrics");
        body.lines()
            .find_map(|l| l.strip_prefix(sample).and_then(|rest| rest.trim().parse::<f64>().ok()))
            .map_or(0, |v| v as u64)
    }
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait (15 s at most) until `/healthz` answers 200; a server that exits first, or
    /// is not healthy by then, fails the test with its log.
    pub fn wait_healthy(&mut self) {
        let http = self.http;
        let log = self.log.clone();
        let proc = &mut self.proc;
        let ready = wait_until(Duration::from_secs(15), || {
            assert!(
                proc.alive(),
                "firstcall exited during start-up; log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            matches!(http_get(http, "/healthz", &[]), Ok((200, _)))
        });
        assert!(
            ready,
            "firstcall not healthy within 15 s; log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

pub fn firstcall_bin() -> &'static str {
    env!("CARGO_BIN_EXE_firstcall")
}

/// Start `firstcall serve` on 127.0.0.1 with fresh ports and `extra` flags; waits for /healthz.
/// In dev mode (`dev:<user>` tokens) unless `extra` sets a JWT option or `--dev` itself.
pub fn start_firstcall(extra: &[&str]) -> Server {
    start_firstcall_on(SocketAddr::from(([127, 0, 0, 1], free_port())), extra)
}

/// As [`start_firstcall`], with the TURN listener on `turn`.
pub fn start_firstcall_on(turn: SocketAddr, extra: &[&str]) -> Server {
    start_firstcall_with(turn, relay_range(100), None, extra)
}

/// As [`start_firstcall_on`], with the relay port range `relay`.
pub fn start_firstcall_relays(turn: SocketAddr, relay: (u16, u16), extra: &[&str]) -> Server {
    start_firstcall_with(turn, relay, None, extra)
}

/// As [`start_firstcall`], with the open-files limit (soft and hard) set to `nofile`
/// by util-linux's `prlimit`, which then execs the server (same PID).
pub fn start_firstcall_nofile(nofile: u64, extra: &[&str]) -> Server {
    start_firstcall_with(
        SocketAddr::from(([127, 0, 0, 1], free_port())),
        relay_range(100),
        Some(nofile),
        extra,
    )
}

fn start_firstcall_with(turn: SocketAddr, relay: (u16, u16), nofile: Option<u64>, extra: &[&str]) -> Server {
    let mut server = spawn_firstcall_with(turn, relay, nofile, extra);
    server.wait_healthy();
    server
}

/// `firstcall serve` as [`start_firstcall`] starts it, without waiting for it to be
/// healthy ([`Server::wait_healthy`]): for a test that acts on it during its start.
pub fn spawn_firstcall(extra: &[&str]) -> Server {
    let turn = SocketAddr::from(([127, 0, 0, 1], free_port()));
    spawn_firstcall_with(turn, relay_range(100), None, extra)
}

fn spawn_firstcall_with(turn: SocketAddr, relay: (u16, u16), nofile: Option<u64>, extra: &[&str]) -> Server {
    let http = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let tag = format!("{}-{}", std::process::id(), turn.port());
    let data_dir = std::env::temp_dir().join(format!("firstcall-test-{tag}"));
    let log = std::env::temp_dir().join(format!("firstcall-test-{tag}.log"));
    let log_file = std::fs::File::create(&log).expect("create log file");
    let mut cmd = match nofile {
        None => Command::new(firstcall_bin()),
        Some(n) => {
            let mut c = Command::new("prlimit");
            c.arg(format!("--nofile={n}:{n}")).arg("--").arg(firstcall_bin());
            c
        }
    };
    cmd.args([
        "serve",
        "--http-listen",
        &http.to_string(),
        "--turn-listen",
        &turn.to_string(),
    ])
    .args(["--relay-ports", &format!("{}-{}", relay.0, relay.1)])
    .args(["--data-dir", data_dir.to_str().expect("utf-8 temp dir")])
    .args(["--realm", "firstcall.test", "--log", "debug"])
    .args(extra)
    .args(
        (!extra.iter().any(|a| a.starts_with("--jwt") || *a == "--dev"))
            .then_some("--dev")
            .iter(),
    )
    .env_remove("FIRSTCALL_CONFIG")
    .stdout(Stdio::null())
    .stderr(log_file);
    let proc = Proc::spawn("firstcall", &mut cmd);
    Server {
        proc,
        http,
        turn,
        relay,
        data_dir,
        log,
    }
}

/// Whether a tool is installed. Outside CI a missing tool skips the test (with a
/// message); in CI (`CI` set) it is a failure, so nothing is silently skipped there.
pub fn have_tool(name: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "{name} is required in CI (run scripts/install-deps)"
        );
        eprintln!("SKIP: {name} not installed (run scripts/install-deps)");
    }
    found
}

/// Run a command to completion with a time limit; kills it (by PID) on timeout.
pub fn run_bounded(cmd: &mut Command, limit: Duration) -> Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.expect("wait for child"),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("command timed out after {limit:?}: {cmd:?}");
        }
    }
}

/// Allocate over UDP with a REST credential; returns the XOR-RELAYED-ADDRESS.
pub fn allocate(turn: SocketAddr, secret: &str, realm: &str) -> SocketAddr {
    let (user, pass) = rest_credential(&Secret::new(secret), "alice", 4_000_000_000);
    allocate_with(turn, &user, &pass, realm)
}

/// Allocate over UDP with a username and password; returns the XOR-RELAYED-ADDRESS.
pub fn allocate_with(turn: SocketAddr, user: &str, pass: &str, realm: &str) -> SocketAddr {
    try_allocate_with(turn, user, pass, realm).unwrap_or_else(|code| panic!("allocate: error {code}"))
}

/// As [`allocate_with`]: the relayed address, or the error code of the authenticated
/// request.
pub fn try_allocate_with(turn: SocketAddr, user: &str, pass: &str, realm: &str) -> Result<SocketAddr, u16> {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut buf = [0u8; 1500];
    let mut b = MessageBuilder::new(Class::Request, Method::ALLOCATE, TransactionId([1; 12]));
    b.add(&Attribute::RequestedTransport(17));
    s.send_to(&b.finish(), turn).unwrap();
    let n = s.recv(&mut buf).unwrap();
    let challenge = Message::decode(&buf[..n]).unwrap();
    assert_eq!(challenge.error_code().map(|e| e.code), Some(401));
    assert_eq!(challenge.realm(), Some(realm));
    let nonce = challenge.nonce().unwrap().to_owned();
    let mut b = MessageBuilder::new(Class::Request, Method::ALLOCATE, TransactionId([2; 12]));
    b.add(&Attribute::RequestedTransport(17))
        .add(&Attribute::Username(user))
        .add(&Attribute::Realm(realm))
        .add(&Attribute::Nonce(&nonce))
        .add_integrity(IntegrityKind::Sha1, long_term_key(user, realm, pass).as_ref());
    s.send_to(&b.finish(), turn).unwrap();
    let n = s.recv(&mut buf).unwrap();
    let ok = Message::decode(&buf[..n]).unwrap();
    if ok.class() != Class::Success {
        return Err(ok.error_code().map_or(0, |e| e.code));
    }
    Ok(ok
        .find(|a| {
            if let Attribute::XorRelayedAddress(r) = a {
                Some(*r)
            } else {
                None
            }
        })
        .unwrap())
}

/// An unrelated user measuring the server's answer time while a flood runs: a
/// sequenced frame the hub answers at once (a hang-up of no call gets `unknown_call`),
/// every 20 ms, with `token`. On a thread and runtime of its own, so that the test's
/// flood (60 KB frames built and sent on the test's runtime) does not delay its
/// measurement. Returns the times once `stop` is set.
pub fn bystander(
    server: &Server,
    token: &str,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Vec<Duration>> {
    let url = format!("ws://{}/v1/ws", server.http);
    let token = token.to_owned();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut c = firstcall_client::signal::SignalClient::connect(&url, &token, "bystander")
                .await
                .expect("bystander connects");
            let _ = ready_tx.send(());
            let mut times = Vec::new();
            while !stop.load(Ordering::SeqCst) && times.len() < 20_000 {
                let t = Instant::now();
                c.send(serde_json::json!({"type": "call.hangup", "call": "nothing"}))
                    .await;
                let (e, _) = c
                    .expect("error", Duration::from_secs(5))
                    .await
                    .expect("the bystander's answer");
                assert_eq!(e["code"], "unknown_call");
                times.push(t.elapsed());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            times
        })
    });
    // Connected before the flood starts.
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("bystander connected");
    handle
}

/// The bystander's answer times over `window` with nothing else going on: the baseline
/// a flood's times are compared with (on a loaded machine both rise alike; what a
/// flood must not do is add to them).
pub fn bystander_calm(server: &Server, token: &str, window: Duration) -> Vec<Duration> {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watch = bystander(server, token, stop.clone());
    // The measurement window, not a synchronisation.
    std::thread::sleep(window);
    stop.store(true, Ordering::SeqCst);
    watch.join().expect("bystander")
}

/// The 99th percentile and the largest of `times`.
pub fn p99_max(times: &mut [Duration]) -> (Duration, Duration) {
    times.sort();
    let n = times.len();
    (times[(n * 99 / 100).min(n - 1)], times[n - 1])
}

/// The server's signaling WebSocket URL.
pub fn ws_url(server: &Server) -> String {
    format!("ws://{}/v1/ws", server.http)
}

/// A signaling session for `user` on `device` with a dev token (the server in dev mode).
pub async fn dev(server: &Server, user: &str, device: &str) -> firstcall_client::signal::SignalClient {
    firstcall_client::signal::SignalClient::connect(&ws_url(server), &format!("dev:{user}"), device)
        .await
        .expect("connect")
}

/// A session for `user` on `device` whose app is in the background with an APNs VoIP
/// target `token`: each call to `user` then pushes this device (`call.ring`, then how the
/// call ended). Returns once the server has handled the update.
pub async fn backgrounded(
    server: &Server,
    user: &str,
    device: &str,
    token: &str,
) -> firstcall_client::signal::SignalClient {
    let mut c = dev(server, user, device).await;
    c.send(serde_json::json!({"type": "device.update", "push": {"provider": "apns-voip", "token": token}, "state": "background"}))
        .await;
    // Frames of a session are handled in order: once this one's answer is back, the
    // update was handled too.
    c.send(serde_json::json!({"type": "call.hangup", "call": "none"})).await;
    let (answer, _) = c.expect("error", Duration::from_secs(5)).await.expect("an answer");
    assert_eq!(answer["code"], "unknown_call");
    c
}

/// One request a [`HookReceiver`] got.
#[derive(Clone, Debug)]
pub struct Hook {
    /// Request line, e.g. `POST /hook HTTP/1.1`.
    pub line: String,
    /// Headers, names lowercased.
    pub headers: std::collections::HashMap<String, String>,
    /// The raw body.
    pub raw: Vec<u8>,
    /// The body as JSON (`Null` if it is not).
    pub body: serde_json::Value,
    /// Which accepted connection it came on (0, 1, …).
    pub conn: usize,
    /// When its body had arrived.
    pub at: Instant,
    /// What the receiver answered (0: it dropped the connection unanswered); set once
    /// answered.
    pub answered: u16,
}

impl Hook {
    /// The body's `event`.
    pub fn event(&self) -> &str {
        self.body["event"].as_str().unwrap_or("")
    }
}

/// How a [`HookReceiver`] answers one request.
pub enum Reply {
    /// This status, with these headers and an empty body (keep-alive).
    Status(u16, Vec<(&'static str, String)>),
    /// Close the connection without an answer.
    Drop,
}

/// A webhook receiver: real HTTP/1.1 on a loopback socket, keep-alive, recording every
/// request in arrival order and answering as `reply` says (called with the request and
/// its index among all requests; it may block, bounded, to hold an answer back).
pub struct HookReceiver {
    pub url: String,
    pub port: u16,
    got: std::sync::Arc<std::sync::Mutex<Vec<Hook>>>,
    conns: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

type ReplyFn = dyn Fn(&Hook, usize) -> Reply + Send + Sync;

impl HookReceiver {
    /// On `ip` (`127.0.0.1`, `::1`), path `/hook`.
    pub fn start(ip: std::net::IpAddr, reply: impl Fn(&Hook, usize) -> Reply + Send + Sync + 'static) -> HookReceiver {
        use std::io::BufRead;
        use std::sync::atomic::AtomicUsize;
        use std::sync::{Arc, Mutex};
        let l = TcpListener::bind((ip, 0)).unwrap();
        let addr = l.local_addr().unwrap();
        let url = format!("http://{addr}/hook");
        let got: Arc<Mutex<Vec<Hook>>> = Arc::default();
        let conns = Arc::new(AtomicUsize::new(0));
        let reply: Arc<ReplyFn> = Arc::new(reply);
        let (g, c) = (got.clone(), conns.clone());
        std::thread::spawn(move || {
            // Bounded: the test's connections.
            for _ in 0..200 {
                let Ok((s, _)) = l.accept() else { return };
                let conn = c.fetch_add(1, Ordering::SeqCst);
                let (g, reply) = (g.clone(), reply.clone());
                std::thread::spawn(move || {
                    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    let mut r = std::io::BufReader::new(s.try_clone().unwrap());
                    let mut s = s;
                    // Keep-alive: requests until the client closes (bounded).
                    for _ in 0..200 {
                        let mut line = String::new();
                        if r.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let mut headers = std::collections::HashMap::new();
                        let mut h = String::new();
                        while r.read_line(&mut h).unwrap_or(0) > 0 && !h.trim().is_empty() {
                            if let Some((k, v)) = h.split_once(':') {
                                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
                            }
                            h.clear();
                        }
                        let len = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
                        let mut raw = vec![0; len];
                        if r.read_exact(&mut raw).is_err() {
                            return;
                        }
                        let hook = Hook {
                            line: line.trim().to_owned(),
                            headers,
                            body: serde_json::from_slice(&raw).unwrap_or_default(),
                            raw,
                            conn,
                            at: Instant::now(),
                            answered: 0,
                        };
                        let index = {
                            let mut g = g.lock().unwrap();
                            g.push(hook.clone());
                            g.len() - 1
                        };
                        match reply(&hook, index) {
                            Reply::Drop => return,
                            Reply::Status(code, extra) => {
                                let mut resp = format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\n");
                                for (k, v) in extra {
                                    resp.push_str(&format!("{k}: {v}\r\n"));
                                }
                                resp.push_str("\r\n");
                                g.lock().unwrap()[index].answered = code;
                                if s.write_all(resp.as_bytes()).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        HookReceiver {
            url,
            port: addr.port(),
            got,
            conns,
        }
    }

    /// Answering 204 to everything, on 127.0.0.1.
    pub fn ok() -> HookReceiver {
        HookReceiver::start([127, 0, 0, 1].into(), |_, _| Reply::Status(204, vec![]))
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Hook> {
        self.got.lock().unwrap().clone()
    }

    /// `event` of each request so far.
    pub fn events(&self) -> Vec<String> {
        self.requests().iter().map(|h| h.event().to_owned()).collect()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.conns.load(Ordering::SeqCst)
    }
}

/// The next datagram relayed to `turn` is a Data indication from `from` carrying `data`.
pub async fn expect_data(turn: &mut firstcall_client::turn::Client, from: SocketAddr, data: &[u8]) {
    match turn.recv_relayed(Duration::from_secs(5)).await {
        Ok(firstcall_client::turn::Relayed::Data { peer, data: got }) => {
            assert_eq!((peer, &got[..]), (from, data), "relayed datagram");
        }
        other => panic!(
            "expected {:?} from {from}, got {other:?}",
            String::from_utf8_lossy(data)
        ),
    }
}
