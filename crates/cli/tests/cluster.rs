//! Several nodes on one Redis act as one: Debian's `redis-server` and three `firstcall
//! serve` processes on loopback ports, started here, with clients spread over them.
//! Calls span nodes, a resume lands on any node and replays exactly what was not
//! acknowledged, a node killed with SIGKILL or drained with SIGTERM hangs up nobody,
//! timers fire once, and Redis out of reach closes sockets with 1013 instead of losing
//! anything.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use firstcall_client::signal::{ClientError, SignalClient};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(10);
const SECRET: &str = "cluster-test-turn-secret";

/// A `redis-server` on a loopback port, killed (by PID) when dropped.
struct Redis {
    proc: Proc,
    port: u16,
    dir: PathBuf,
}

impl Redis {
    /// With an append-only file fsynced on every write when `aof`, else no persistence.
    fn start(port: u16, dir: PathBuf, aof: bool) -> Redis {
        std::fs::create_dir_all(&dir).unwrap();
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--dir", dir.to_str().unwrap()])
            .args(["--appendonly", if aof { "yes" } else { "no" }])
            .args(["--appendfsync", "always"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut proc = Proc::spawn("redis-server", &mut cmd);
        let up = wait_until(Duration::from_secs(10), || {
            assert!(proc.alive(), "redis-server exited at start");
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(up, "redis-server not listening within 10 s");
        Redis { proc, port, dir }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn redis_dir(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("firstcall-redis-{}-{tag}", std::process::id()))
}

/// A node of the cluster on `redis`.
fn node(redis: &Redis, extra: &[&str]) -> Server {
    let url = redis.url();
    let mut args = vec!["--redis-url", url.as_str(), "--turn-secret", SECRET];
    args.extend_from_slice(extra);
    start_firstcall(&args)
}

async fn on(server: &Server, user: &str, device: &str) -> SignalClient {
    dev(server, user, device).await
}

fn cand(n: u32) -> Value {
    json!({"candidate": {"candidate": format!("candidate:{n} 1 udp 1 198.51.100.{} 5000 typ srflx raddr 0.0.0.0 rport 0", n % 250 + 1), "sdpMid": "0", "sdpMLineIndex": 0, "usernameFragment": "u"}})
}

/// Alice (on `a`'s node) calls Bob (on `b`'s), and Bob answers.
async fn call(alice: &mut SignalClient, bob: &mut SignalClient, id: &str) {
    alice
        .send(json!({"type": "call.invite", "call": id, "to": "bob", "media": "audio", "sdp": "offer"}))
        .await;
    let (inc, _) = bob
        .expect("call.incoming", T)
        .await
        .expect("incoming on the other node");
    assert_eq!(inc["call"], id);
    bob.send(json!({"type": "call.accept", "call": id, "sdp": "answer"}))
        .await;
    let (acc, _) = alice
        .expect("call.accepted", T)
        .await
        .expect("accepted on the caller's node");
    assert_eq!(acc["sdp"], "answer");
}

/// Every `call.signal` `c` receives until `n` have come, their data in order.
async fn signals(c: &mut SignalClient, n: usize) -> Vec<Value> {
    let mut got = Vec::new();
    while got.len() < n {
        let (s, _) = c.expect("call.signal", T).await.expect("signal");
        got.push(s["data"].clone());
    }
    got
}

fn have_redis() -> bool {
    have_tool("redis-server")
}

#[tokio::test]
async fn calls_span_nodes_and_a_resume_on_any_node_replays_exactly_the_rest() {
    if !have_redis() {
        return;
    }
    let redis = Redis::start(free_port(), redis_dir("span"), false);
    let nodes = [node(&redis, &[]), node(&redis, &[]), node(&redis, &[])];
    let mut alice = on(&nodes[0], "alice", "a").await;
    let mut bob = on(&nodes[1], "bob", "b").await;
    call(&mut alice, &mut bob, "c1").await;
    for n in 1..=5 {
        alice
            .send(json!({"type": "call.signal", "call": "c1", "data": cand(n)}))
            .await;
    }
    assert_eq!(signals(&mut bob, 5).await, (1..=5).map(cand).collect::<Vec<_>>());

    // Bob's network drops; Alice goes on signalling; Bob comes back on the third node.
    bob.cut();
    for n in 6..=12 {
        alice
            .send(json!({"type": "call.signal", "call": "c1", "data": cand(n)}))
            .await;
    }
    bob.set_url(&ws_url(&nodes[2]));
    bob.reconnect().await.expect("resume on another node");
    assert_eq!(bob.welcome["resumed"], true, "{}", bob.welcome);
    assert_eq!(
        signals(&mut bob, 7).await,
        (6..=12).map(cand).collect::<Vec<_>>(),
        "each signal once, in order"
    );
    // And back the other way, then the hang-up reaches the caller's node.
    bob.send(json!({"type": "call.signal", "call": "c1", "data": cand(100)}))
        .await;
    assert_eq!(signals(&mut alice, 1).await, vec![cand(100)]);
    bob.send(json!({"type": "call.hangup", "call": "c1"})).await;
    let (end, _) = alice.expect("call.ended", T).await.unwrap();
    assert_eq!(end["reason"], "hangup");

    // Every node answers for credentials and metrics, and the credentials (one shared
    // secret) verify on any node's TURN server.
    for n in &nodes {
        let (status, body) =
            http_get(n.http, "/v1/turn-credentials", &[("Authorization", "Bearer dev:alice")]).unwrap();
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        let (user, pass) = (v["username"].as_str().unwrap(), v["password"].as_str().unwrap());
        for other in &nodes {
            allocate_with(other.turn, user, pass, "firstcall.test");
        }
        // The hub's counters are the cluster's: every replica counted the one call.
        assert_eq!(n.metric("firstcall_signal_calls_ended_total{reason=\"hangup\"}"), 1);
    }
}

#[tokio::test]
async fn a_node_killed_with_sigkill_hangs_up_nobody_and_timers_fire_once() {
    if !have_redis() {
        return;
    }
    let redis = Redis::start(free_port(), redis_dir("kill"), false);
    let mut nodes = vec![
        node(&redis, &["--ring-timeout", "3s"]),
        node(&redis, &["--ring-timeout", "3s"]),
        node(&redis, &["--ring-timeout", "3s"]),
    ];
    let mut alice = on(&nodes[1], "alice", "a").await;
    let mut bob = on(&nodes[0], "bob", "b").await;
    call(&mut alice, &mut bob, "k1").await;
    // Carol rings, on the node about to die; Dave calls nobody online.
    let mut carol = on(&nodes[0], "carol", "c").await;
    alice
        .send(json!({"type": "call.invite", "call": "k2", "to": "carol", "media": "video", "sdp": "o2"}))
        .await;
    carol.expect("call.incoming", T).await.unwrap();
    let mut dave = on(&nodes[2], "dave", "d").await;
    // Erin, idle on the node about to die, never comes back.
    let _erin = on(&nodes[0], "erin", "e").await;
    dave.send(json!({"type": "call.invite", "call": "k3", "to": "nobody", "media": "audio", "sdp": "o3"}))
        .await;

    // The first node (the leader: it started first) dies without a word.
    nodes[0].proc.signal("KILL");
    assert!(nodes[0].proc.exit_within(T).is_some());
    for n in 1..=4 {
        alice
            .send(json!({"type": "call.signal", "call": "k1", "data": cand(n)}))
            .await;
    }
    // Bob and Carol resume on the others.
    bob.cut();
    bob.set_url(&ws_url(&nodes[2]));
    bob.reconnect().await.expect("resume after the node's death");
    assert_eq!(bob.welcome["resumed"], true);
    assert_eq!(signals(&mut bob, 4).await, (1..=4).map(cand).collect::<Vec<_>>());
    carol.cut();
    carol.set_url(&ws_url(&nodes[1]));
    carol.reconnect().await.expect("resume after the node's death");
    carol
        .send(json!({"type": "call.accept", "call": "k2", "sdp": "a2"}))
        .await;
    let (acc, _) = alice.expect("call.accepted", T).await.unwrap();
    assert_eq!(acc["call"], "k2", "a call being set up still connects");

    // Dave's call times out once, though its timer's leader died (another takes the
    // lease within the heartbeat key's 5 s).
    let (end, _) = dave.expect("call.ended", Duration::from_secs(20)).await.unwrap();
    assert_eq!(end["call"], "k3");
    match dave.expect("call.ended", Duration::from_secs(2)).await {
        Err(ClientError::Timeout) => {}
        other => panic!("a second end: {other:?}"),
    }
    // The dead node's sockets (Erin's, which did not resume) are gone on every replica.
    let survivors = &nodes[1..];
    assert!(wait_until(T, || survivors
        .iter()
        .all(|n| n.log_text().contains("node gone"))));
    let online = |n: &Server| {
        http_get(n.http, "/v1/online", &[("Authorization", "Bearer dev:alice")])
            .unwrap()
            .1
    };
    for n in survivors {
        assert!(!online(n).contains("erin"), "{}", online(n));
        assert!(online(n).contains("carol"), "{}", online(n));
    }

    // A node restarted into the cluster catches up and serves the same calls.
    nodes.push(node(&redis, &["--ring-timeout", "3s"]));
    alice.cut();
    alice.set_url(&ws_url(&nodes[3]));
    alice.reconnect().await.expect("resume on a node that joined late");
    assert_eq!(alice.welcome["resumed"], true);
    alice.send(json!({"type": "call.hangup", "call": "k1"})).await;
    let (end, _) = bob.expect("call.ended", T).await.unwrap();
    assert_eq!(
        (end["call"].as_str(), end["reason"].as_str()),
        (Some("k1"), Some("hangup"))
    );
}

#[tokio::test]
async fn sigterm_on_a_node_sends_its_clients_to_the_others_and_drops_no_call() {
    if !have_redis() {
        return;
    }
    let redis = Redis::start(free_port(), redis_dir("drain"), false);
    let mut nodes = [node(&redis, &[]), node(&redis, &[])];
    let mut alice = on(&nodes[0], "alice", "a").await;
    let mut bob = on(&nodes[1], "bob", "b").await;
    call(&mut alice, &mut bob, "d1").await;
    nodes[1].proc.signal("TERM");
    // Bob is told to go elsewhere at once; the node exits without waiting for the call.
    match bob.next(T).await {
        Err(ClientError::Closed(code)) => assert_eq!(code, Some(1012)),
        other => panic!("expected 1012, got {other:?}"),
    }
    let status = nodes[1].proc.exit_within(T).expect("a drained node exits");
    assert!(status.success(), "{status}");
    bob.set_url(&ws_url(&nodes[0]));
    bob.reconnect().await.expect("resume on the node left");
    assert_eq!(bob.welcome["resumed"], true);
    alice
        .send(json!({"type": "call.signal", "call": "d1", "data": cand(1)}))
        .await;
    assert_eq!(signals(&mut bob, 1).await, vec![cand(1)]);
    bob.send(json!({"type": "call.hangup", "call": "d1"})).await;
    let (end, _) = alice.expect("call.ended", T).await.unwrap();
    assert_eq!(end["reason"], "hangup");
}

#[tokio::test]
async fn redis_out_of_reach_closes_sockets_with_1013_and_loses_nothing() {
    if !have_redis() {
        return;
    }
    let port = free_port();
    let dir = redis_dir("outage");
    let mut redis = Redis::start(port, dir.clone(), true);
    let nodes = [node(&redis, &[]), node(&redis, &[])];
    let mut alice = on(&nodes[0], "alice", "a").await;
    let mut bob = on(&nodes[1], "bob", "b").await;
    call(&mut alice, &mut bob, "r1").await;

    redis.proc.signal("KILL");
    assert!(redis.proc.exit_within(T).is_some());
    let ready = |n: &Server| http_get(n.http, "/readyz", &[]).unwrap();
    assert!(
        wait_until(T, || ready(&nodes[0]).1.contains("store_unreachable")),
        "/readyz: {:?}",
        ready(&nodes[0])
    );
    assert_eq!(ready(&nodes[0]).0, 503);
    // A frame that cannot be passed on closes its socket with 1013, and stays unacknowledged.
    alice
        .send(json!({"type": "call.signal", "call": "r1", "data": cand(1)}))
        .await;
    match alice.next(T).await {
        Err(ClientError::Closed(code)) => assert_eq!(code, Some(1013)),
        other => panic!("expected 1013, got {other:?}"),
    }
    assert!(alice.unacked() >= 1);
    assert!(nodes[0].metric("firstcall_signal_cluster_sockets_closed_total{reason=\"store_unreachable\"}") >= 1);

    // Redis comes back with its data (append-only file): the nodes reconnect, the
    // clients resume, and the signal arrives once.
    let redis2 = Redis::start(port, dir, true);
    assert!(wait_until(Duration::from_secs(15), || ready(&nodes[0]).0 == 200));
    // As the SDK does: a 1013 while the node's own connections come back is retried.
    let mut tries = 0;
    while let Err(e) = alice.reconnect().await {
        tries += 1;
        assert!(
            tries < 20 && matches!(e, ClientError::Closed(Some(1013))),
            "resume once Redis is back: {e}"
        );
        tokio::time::sleep(Duration::from_millis(100 * tries)).await;
    }
    assert_eq!(alice.welcome["resumed"], true);
    bob.cut();
    bob.reconnect().await.expect("resume once Redis is back");
    assert_eq!(signals(&mut bob, 1).await, vec![cand(1)]);
    alice.send(json!({"type": "call.hangup", "call": "r1"})).await;
    bob.expect("call.ended", T).await.unwrap();
    drop(redis2);
    let _ = SocketAddr::from(([127, 0, 0, 1], port));
}

#[tokio::test]
async fn redis_that_lost_the_log_makes_nodes_exit_to_rejoin() {
    if !have_redis() {
        return;
    }
    let port = free_port();
    let mut redis = Redis::start(port, redis_dir("lost"), false);
    let mut n = node(&redis, &[]);
    redis.proc.signal("KILL");
    assert!(redis.proc.exit_within(T).is_some());
    let _fresh = Redis::start(port, redis_dir("lost2"), false);
    let status = n
        .proc
        .exit_within(Duration::from_secs(15))
        .expect("the node notices the lost log");
    assert_eq!(status.code(), Some(75), "{}", n.log_text());
    assert!(
        n.log_text().contains("Redis lost the cluster's log"),
        "{}",
        n.log_text()
    );
}

/// Nodes come and go; clients reconnect to whichever are up.
struct Fleet {
    redis: Redis,
    nodes: Vec<Server>,
    /// The WebSocket URLs of the nodes up now.
    urls: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Fleet {
    fn new(tag: &str, n: usize) -> Fleet {
        let redis = Redis::start(free_port(), redis_dir(tag), false);
        let nodes: Vec<Server> = (0..n).map(|_| node(&redis, &[])).collect();
        let urls = nodes.iter().map(ws_url).collect();
        Fleet {
            redis,
            nodes,
            urls: std::sync::Arc::new(std::sync::Mutex::new(urls)),
        }
    }

    fn publish(&self) {
        *self.urls.lock().unwrap() = self.nodes.iter().map(ws_url).collect();
    }

    /// Replace node `i` with a new process (after it was killed or drained).
    fn replace(&mut self, i: usize) {
        self.nodes[i] = node(&self.redis, &[]);
        self.publish();
    }
}

/// A client that, like the SDK, reconnects and resumes whenever its socket fails, on any
/// node up (`urls`), a bounded number of times.
struct Peer {
    c: SignalClient,
    urls: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    pick: usize,
    reconnects: usize,
    /// Frames read while settling, for `expect`.
    pending: std::collections::VecDeque<Value>,
}

impl Peer {
    async fn new(urls: &std::sync::Arc<std::sync::Mutex<Vec<String>>>, user: &str, pick: usize) -> Peer {
        let mut last = None;
        for attempt in 0..50 {
            let url = {
                let u = urls.lock().unwrap();
                u[(pick + attempt) % u.len()].clone()
            };
            match SignalClient::connect(&url, &format!("dev:{user}"), "d").await {
                Ok(c) => {
                    return Peer {
                        c,
                        urls: urls.clone(),
                        pick,
                        reconnects: 0,
                        pending: Default::default(),
                    }
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{user} never connected: {last:?}");
    }

    async fn recover(&mut self) {
        for attempt in 0..100 {
            self.pick += 1;
            let url = {
                let u = self.urls.lock().unwrap();
                u[self.pick % u.len()].clone()
            };
            self.c.set_url(&url);
            match self.c.reconnect().await {
                Ok(()) => {
                    assert_eq!(
                        self.c.welcome["resumed"], true,
                        "a session was lost: {}",
                        self.c.welcome
                    );
                    self.reconnects += 1;
                    return;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50 * (attempt as u64 % 4 + 1))).await,
            }
        }
        panic!("no node took the resume after 100 tries");
    }

    /// Send, and wait until the server has acknowledged every frame sent (as the SDK
    /// does in the background: a frame whose socket died is sent again on the resume).
    async fn send(&mut self, frame: Value) {
        self.c.send(frame).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let mut quiet = 0;
        while self.c.unacked() > 0 {
            assert!(tokio::time::Instant::now() < deadline, "frames unacknowledged for 60 s");
            match self.c.next(Duration::from_secs(1)).await {
                Ok(v) => {
                    quiet = 0;
                    self.pending.push_back(v)
                }
                Err(ClientError::Timeout) if quiet < 3 => quiet += 1,
                Err(_) => {
                    quiet = 0;
                    self.recover().await
                }
            }
        }
    }

    /// The next frame of type `t`, riding out lost sockets.
    async fn expect(&mut self, t: &str) -> Value {
        while let Some(v) = self.pending.pop_front() {
            if v["type"] == t {
                return v;
            }
            assert_ne!(v["type"], "error", "error while waiting for {t}: {v}");
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            assert!(tokio::time::Instant::now() < deadline, "no {t} within 60 s");
            match self.c.next(Duration::from_secs(3)).await {
                Ok(v) if v["type"] == t => return v,
                Ok(v) if v["type"] == "error" => panic!("error while waiting for {t}: {v}"),
                Ok(_) => {}
                // Quiet for 3 s: the socket may be dead without a word (a killed node's
                // TCP is reset, but a half-open one is not): resume to find out.
                Err(ClientError::Timeout) => self.recover().await,
                Err(_) => self.recover().await,
            }
        }
    }
}

/// One call between two fresh users: invite, answer, `n` candidates each way (each
/// arriving once and in order), hang-up. The number of reconnects it rode out.
async fn one_call(urls: std::sync::Arc<std::sync::Mutex<Vec<String>>>, k: usize, n: u32) -> usize {
    let (a, b) = (format!("ca{k}"), format!("cb{k}"));
    let mut caller = Peer::new(&urls, &a, k).await;
    let mut callee = Peer::new(&urls, &b, k + 1).await;
    let id = format!("chaos{k}");
    caller
        .send(json!({"type": "call.invite", "call": id, "to": b, "media": "audio", "sdp": "offer"}))
        .await;
    for i in 1..=n {
        caller
            .send(json!({"type": "call.signal", "call": id, "data": cand(i)}))
            .await;
    }
    let inc = callee.expect("call.incoming").await;
    assert_eq!(inc["call"], id.as_str());
    callee
        .send(json!({"type": "call.accept", "call": id, "sdp": "answer"}))
        .await;
    for i in 1..=n {
        callee
            .send(json!({"type": "call.signal", "call": id, "data": cand(1000 + i)}))
            .await;
    }
    let acc = caller.expect("call.accepted").await;
    assert_eq!(acc["call"], id.as_str(), "the first attempt connects");
    let mut at_callee = Vec::new();
    // Signals sent before the answer ride in call.incoming's held list or come after it.
    if let Some(held) = inc["signals"].as_array() {
        at_callee.extend(held.iter().cloned());
    }
    while at_callee.len() < n as usize {
        at_callee.push(callee.expect("call.signal").await["data"].clone());
    }
    let mut at_caller = Vec::new();
    while at_caller.len() < n as usize {
        at_caller.push(caller.expect("call.signal").await["data"].clone());
    }
    assert_eq!(
        at_callee,
        (1..=n).map(cand).collect::<Vec<_>>(),
        "call {k}: caller's candidates once, in order"
    );
    assert_eq!(
        at_caller,
        (1..=n).map(|i| cand(1000 + i)).collect::<Vec<_>>(),
        "call {k}: callee's candidates once, in order"
    );
    caller.send(json!({"type": "call.hangup", "call": id})).await;
    let end = callee.expect("call.ended").await;
    assert_eq!(end["reason"], "hangup");
    caller.reconnects + callee.reconnects
}

/// How many calls the chaos test sets up: the 200 (about 5 minutes here), 60 in
/// the quick suite (`FIRSTCALL_QUICK`); `FIRSTCALL_CHAOS_CALLS` overrides.
fn chaos_calls() -> usize {
    let default = if std::env::var_os("FIRSTCALL_QUICK").is_some() {
        60
    } else {
        200
    };
    std::env::var("FIRSTCALL_CHAOS_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_calls_connect_first_time_while_nodes_are_killed_and_restarted() {
    if !have_redis() {
        return;
    }
    let mut fleet = Fleet::new("chaos", 3);
    let urls = fleet.urls.clone();
    let total = chaos_calls();
    let calls = tokio::spawn(async move {
        let mut reconnects = 0;
        let mut done = 0;
        // 10 calls at a time.
        let mut set = tokio::task::JoinSet::new();
        let mut next = 0;
        while done < total {
            while set.len() < 10 && next < total {
                set.spawn(one_call(urls.clone(), next, 5));
                next += 1;
            }
            reconnects += set.join_next().await.expect("a call").expect("a call panicked");
            done += 1;
        }
        reconnects
    });
    // Kill a node (SIGKILL) and start another every 2 s while the calls go on.
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
        | 1;
    eprintln!("chaos seed {seed}");
    let mut kills = 0;
    while !calls.is_finished() && kills < 60 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let victim = (seed % fleet.nodes.len() as u64) as usize;
        fleet.nodes[victim].proc.signal("KILL");
        assert!(fleet.nodes[victim].proc.exit_within(T).is_some());
        fleet.replace(victim);
        kills += 1;
    }
    let reconnects = calls.await.expect("the calls");
    eprintln!("chaos: {total} calls, {kills} nodes killed, {reconnects} reconnects ridden out");
    assert!(kills >= 1, "the calls ended before any node was killed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_every_node_drops_no_call() {
    if !have_redis() {
        return;
    }
    let mut fleet = Fleet::new("rolling", 3);
    let (done_tx, done_rx) = tokio::sync::watch::channel(false);
    let (up_tx, mut up_rx) = tokio::sync::mpsc::channel(50);
    let mut calls = tokio::task::JoinSet::new();
    for k in 0..50 {
        let (urls, mut done, up) = (fleet.urls.clone(), done_rx.clone(), up_tx.clone());
        // Each pair keeps its sockets alive as the SDK does (resuming at once when one
        // is closed), until the restarts are over; then the call must still be live.
        calls.spawn(async move {
            let mut a = Peer::new(&urls, &format!("ra{k}"), k).await;
            let mut b = Peer::new(&urls, &format!("rb{k}"), k + 1).await;
            let id = format!("roll{k}");
            a.send(json!({"type": "call.invite", "call": id, "to": format!("rb{k}"), "media": "audio", "sdp": "o"}))
                .await;
            b.expect("call.incoming").await;
            b.send(json!({"type": "call.accept", "call": id, "sdp": "a"})).await;
            a.expect("call.accepted").await;
            up.send(()).await.unwrap();
            while !*done.borrow() {
                for p in [&mut a, &mut b] {
                    match p.c.next(Duration::from_millis(100)).await {
                        Ok(v) => panic!("call {id}: unexpected {v}"),
                        Err(ClientError::Timeout) => {}
                        Err(_) => p.recover().await,
                    }
                }
                let _ = tokio::time::timeout(Duration::from_millis(50), done.changed()).await;
            }
            a.send(json!({"type": "call.signal", "call": id, "data": cand(7)}))
                .await;
            assert_eq!(b.expect("call.signal").await["data"], cand(7));
            b.send(json!({"type": "call.hangup", "call": id})).await;
            let end = a.expect("call.ended").await;
            assert_eq!(end["reason"], "hangup", "call {id} was live to the end");
            a.reconnects + b.reconnects
        });
    }
    for _ in 0..50 {
        up_rx.recv().await.expect("every call set up");
    }
    // Each node in turn: SIGTERM, its clients resume on the others, it exits 0, a new
    // process takes its place.
    for i in 0..fleet.nodes.len() {
        fleet.nodes[i].proc.signal("TERM");
        let status = fleet.nodes[i]
            .proc
            .exit_within(Duration::from_secs(20))
            .expect("drained node exits");
        assert!(status.success(), "{status}");
        fleet.replace(i);
    }
    done_tx.send(true).unwrap();
    let mut reconnects = 0;
    while let Some(r) = calls.join_next().await {
        reconnects += r.expect("a call failed");
    }
    eprintln!("rolling restart: 50 calls, 3 nodes replaced, {reconnects} resumes");
    assert!(reconnects >= 50, "each node's clients moved: {reconnects} resumes");
}

/// `redis-cli` against the test's Redis.
fn redis_cli(redis: &Redis, args: &[&str]) -> String {
    let out = run_bounded(
        Command::new("redis-cli")
            .args(["-p", &redis.port.to_string()])
            .args(args),
        Duration::from_secs(10),
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A node started before its Redis listens waits for it and joins, instead of exiting:
/// Redis and its nodes are often started together (a compose file, a host's boot).
#[tokio::test]
async fn a_node_started_before_redis_waits_for_it_and_joins() {
    if !have_redis() {
        return;
    }
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}/0");
    let mut n = spawn_firstcall(&["--redis-url", &url, "--turn-secret", SECRET]);
    let waiting = wait_until(T, || n.log_text().contains("cannot join the cluster yet"));
    assert!(waiting, "the node says it waits for Redis; log:\n{}", n.log_text());
    let redis = Redis::start(port, redis_dir("late"), false);
    n.wait_healthy();
    let mut alice = on(&n, "alice", "a").await;
    let mut bob = on(&n, "bob", "b").await;
    call(&mut alice, &mut bob, "l1").await;
    drop(redis);
}

/// A node waiting for its Redis stops at once on SIGTERM (exit 0), not after the
/// minute it would wait: an orchestrator's stop (10-30 s) would otherwise end in SIGKILL.
#[test]
fn a_node_waiting_for_redis_stops_at_once_on_sigterm() {
    let url = format!("redis://127.0.0.1:{}/0", free_port());
    let mut n = spawn_firstcall(&["--redis-url", &url, "--turn-secret", SECRET]);
    assert!(
        wait_until(T, || n.log_text().contains("cannot join the cluster yet")),
        "the node waits for Redis; log:\n{}",
        n.log_text()
    );
    n.proc.signal("TERM");
    let status = n.proc.exit_within(Duration::from_secs(3)).expect("stopped within 3 s");
    assert_eq!(status.code(), Some(0), "{}", n.log_text());
    assert!(n.log_text().contains("stopped during start-up"), "{}", n.log_text());
}

#[tokio::test]
async fn checkpoints_bound_the_log_and_a_node_joins_from_the_snapshot() {
    if !have_redis() || !have_tool("redis-cli") {
        return;
    }
    let redis = Redis::start(free_port(), redis_dir("checkpoint"), false);
    let every = ["--redis-checkpoint-every", "50"];
    let nodes = [node(&redis, &every), node(&redis, &every)];
    let mut alice = on(&nodes[0], "alice", "a").await;
    let mut bob = on(&nodes[1], "bob", "b").await;
    call(&mut alice, &mut bob, "cp1").await;
    // Signals (and their acks, both ways) in rounds while the log is read: once 300
    // entries were appended, checkpoints trim it to the entries since the one before the
    // last (two intervals, and what came in while a checkpoint went round).
    let xlen = || {
        redis_cli(&redis, &["XLEN", "firstcall:log"])
            .parse::<u64>()
            .unwrap_or(u64::MAX)
    };
    let added = || {
        let info = redis_cli(&redis, &["XINFO", "STREAM", "firstcall:log"]);
        let lines: Vec<&str> = info.lines().collect();
        lines
            .iter()
            .position(|l| *l == "entries-added")
            .and_then(|i| lines.get(i + 1)?.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no entries-added in XINFO STREAM: {info}"))
    };
    let mut sent = 0;
    for _round in 0..40 {
        for _ in 0..25 {
            sent += 1;
            alice
                .send(json!({"type": "call.signal", "call": "cp1", "data": cand(sent)}))
                .await;
        }
        assert_eq!(
            signals(&mut bob, 25).await,
            (sent - 24..=sent).map(cand).collect::<Vec<_>>()
        );
        if added() >= 300 && xlen() <= 200 {
            break;
        }
    }
    assert!(
        added() >= 300 && xlen() <= 200,
        "log not trimmed: {} of {} entries kept\n{}",
        xlen(),
        added(),
        nodes
            .iter()
            .map(|n| n
                .log_text()
                .lines()
                .filter(|l| l.contains("checkpoint")
                    || l.contains("cluster")
                    || l.contains("WARN")
                    || l.contains("ERROR"))
                .collect::<Vec<_>>()
                .join("\n"))
            .collect::<Vec<_>>()
            .join("\n---\n")
    );
    assert!(!redis_cli(&redis, &["HGET", "firstcall:snapshot", "id"]).is_empty());

    // Bob drops; Alice goes on; a third node joins from the snapshot (the log's start
    // is gone), and Bob resumes there with exactly what he missed.
    bob.cut();
    for n in 151..=160 {
        alice
            .send(json!({"type": "call.signal", "call": "cp1", "data": cand(n)}))
            .await;
    }
    let late = node(&redis, &every);
    assert!(
        late.log_text().contains("joined the cluster from its latest snapshot"),
        "{}",
        late.log_text()
    );
    bob.set_url(&ws_url(&late));
    bob.reconnect()
        .await
        .expect("resume on the node that joined from the snapshot");
    assert_eq!(bob.welcome["resumed"], true, "{}", bob.welcome);
    assert_eq!(
        signals(&mut bob, 10).await,
        (sent + 1..=sent + 10).map(cand).collect::<Vec<_>>()
    );
    bob.send(json!({"type": "call.hangup", "call": "cp1"})).await;
    let (end, _) = alice.expect("call.ended", T).await.unwrap();
    assert_eq!(end["reason"], "hangup");
}

#[tokio::test]
async fn a_webhook_is_posted_once_by_the_cluster_even_when_the_node_that_took_its_invite_dies() {
    if !have_redis() {
        return;
    }
    let got = HookReceiver::ok();
    let url = got.url.clone();
    let redis = Redis::start(free_port(), redis_dir("hooks"), false);
    let hook = ["--webhook-url", url.as_str(), "--webhook-secret", "k"];
    let mut nodes = vec![node(&redis, &hook), node(&redis, &hook), node(&redis, &hook)];
    let mut alice = on(&nodes[1], "alice", "a").await;
    alice
        .send(json!({"type": "call.invite", "call": "w1", "to": "carol", "media": "audio", "sdp": "o"}))
        .await;
    alice.expect("call.pending", T).await.expect("nobody online for carol");
    // The node that took the invite dies at once; the webhook is the cluster's.
    nodes[1].proc.signal("KILL");
    assert!(nodes[1].proc.exit_within(T).is_some());
    let pending = |call: &str| {
        got.requests()
            .iter()
            .filter(|h| h.event() == "call.pending" && h.body["call"] == call)
            .count()
    };
    assert!(
        wait_until(T, || pending("w1") >= 1),
        "the webhook was lost with its node"
    );
    // Another pending call after it, as a barrier: then the first came exactly once.
    alice.cut();
    alice.set_url(&ws_url(&nodes[2]));
    alice.reconnect().await.unwrap();
    alice
        .send(json!({"type": "call.invite", "call": "w2", "to": "dave", "media": "audio", "sdp": "o"}))
        .await;
    assert!(wait_until(T, || pending("w2") >= 1));
    assert_eq!(pending("w1"), 1, "posted once, not once per node: {:?}", got.events());
    assert_eq!(pending("w2"), 1);
    nodes.truncate(1);
}

#[tokio::test]
async fn a_webhook_the_leader_had_not_delivered_when_it_died_is_posted_by_the_next() {
    if !have_redis() {
        return;
    }
    // The receiver is down (503) until the leader is dead.
    let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let u = up.clone();
    let got = HookReceiver::start([127, 0, 0, 1].into(), move |_, _| {
        if u.load(std::sync::atomic::Ordering::SeqCst) {
            Reply::Status(204, vec![])
        } else {
            Reply::Status(503, vec![])
        }
    });
    let redis = Redis::start(free_port(), redis_dir("hookleader"), false);
    let hook = ["--webhook-url", got.url.as_str(), "--webhook-secret", "k"];
    // The first node takes the lease.
    let mut nodes = vec![node(&redis, &hook)];
    assert!(wait_until(T, || nodes[0].log_text().contains("leader=true")));
    nodes.push(node(&redis, &hook));
    let mut alice = on(&nodes[1], "alice", "a").await;
    alice
        .send(json!({"type": "call.invite", "call": "h1", "to": "carol", "media": "audio", "sdp": "o"}))
        .await;
    let tried = |status: u16| {
        got.requests()
            .iter()
            .filter(|h| h.body["call"] == "h1" && h.answered == status)
            .count()
    };
    assert!(
        wait_until(T, || tried(503) >= 1),
        "the leader never tried: {:?}",
        got.events()
    );
    // The leader dies with the webhook in its retry queue; the receiver comes back.
    nodes[0].proc.signal("KILL");
    assert!(nodes[0].proc.exit_within(T).is_some());
    up.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(
        wait_until(Duration::from_secs(30), || tried(204) >= 1),
        "the next leader did not post it: {:?}\n{}",
        got.events(),
        nodes[1]
            .log_text()
            .lines()
            .filter(|l| l.contains("lease") || l.contains("hook"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let ids: std::collections::HashSet<String> = got
        .requests()
        .iter()
        .filter(|h| h.body["call"] == "h1")
        .map(|h| h.headers.get("x-firstcall-event-id").cloned().unwrap_or_default())
        .collect();
    assert_eq!(
        ids.len(),
        1,
        "every attempt, by either leader, carries the one event id: {ids:?}"
    );
}

/// TURN peer grants with several nodes: a socket's address rides in the log's connect
/// entry, so every node knows every party's address and grants it on its own TURN
/// server. Bob signs in on node 2 from 127.0.0.2; once he answers Alice (on node 1), his
/// address reaches Alice's relays on node 1 (where his socket is not) and on node 2
/// before Alice asks for a permission. (Regressions: the log reader's copy of the driver
/// was made before the grants were set, so cluster nodes granted nothing; then a node
/// granted only its own sockets' addresses.)
#[tokio::test]
async fn an_answer_across_nodes_grants_the_callees_address_on_every_node() {
    use firstcall_client::turn::{Client, Credentials, Kind};
    use firstcall_turn::auth::{rest_credential, Secret};
    use std::net::{IpAddr, Ipv4Addr, UdpSocket};
    if !have_redis() {
        return;
    }
    let redis = Redis::start(free_port(), redis_dir("grants"), false);
    let flags = ["--allow-peer", "127.0.0.0/8", "--threads", "1"];
    let nodes = [node(&redis, &flags), node(&redis, &flags)];
    let bob_ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    let mut alice = on(&nodes[0], "alice", "a").await;
    let mut bob = SignalClient::connect_from(&ws_url(&nodes[1]), "dev:bob", "b", bob_ip)
        .await
        .expect("bob signs in on node 2 from 127.0.0.2");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let (username, password) = rest_credential(&Secret::new(SECRET), "alice", now + 600);
    let creds = Credentials { username, password };
    let mut turns = Vec::new();
    for n in &nodes {
        let mut t = Client::connect(n.turn, &Kind::Udp, creds.clone()).await.unwrap();
        let relayed = t.allocate(None).await.unwrap().relayed;
        turns.push((t, relayed));
    }
    call(&mut alice, &mut bob, "g1").await;
    let stored = "firstcall_turn_peer_grants_total{outcome=\"stored\"}";
    for (i, n) in nodes.iter().enumerate() {
        assert!(
            wait_until(T, || n.metric(stored) >= 1),
            "node {} stored Bob's grant",
            i + 1
        );
    }
    let from_bob = UdpSocket::bind(SocketAddr::new(bob_ip, 0)).unwrap();
    for (turn, relayed) in turns.iter_mut() {
        from_bob.send_to(b"check", *relayed).unwrap();
        expect_data(turn, from_bob.local_addr().unwrap(), b"check").await;
    }
}
