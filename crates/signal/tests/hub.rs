//! The signaling hub driven by model clients with a fake clock.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use firstcall_signal::hub::{ConnId, Hub, HubConfig, IceProvider, Output, Party, TokenVerifier};
use firstcall_signal::metrics::SignalMetrics;
use firstcall_signal::protocol::{IceServer, UserId};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::{json, Value};

struct DevTokens;
impl TokenVerifier for DevTokens {
    fn verify(&self, token: &str, _now: u64) -> Result<UserId, String> {
        token
            .strip_prefix("dev:")
            .and_then(UserId::parse)
            .ok_or_else(|| "bad token".into())
    }
}

struct Ice;
impl IceProvider for Ice {
    fn ice_servers(&self, user: &UserId, now: u64) -> (Vec<IceServer>, u64) {
        let s = IceServer {
            urls: vec!["turn:192.0.2.1:3478".into()],
            username: Some(format!("{}:{user}", now + 600)),
            credential: Some("x".into()),
        };
        (vec![s], 600)
    }
}

/// A client behaving as the SDK must: numbered frames kept until acked, resumes, resends.
struct Client {
    user: String,
    device: String,
    conn: Option<ConnId>,
    session: Option<String>,
    out_seq: u64,
    unacked: VecDeque<(u64, Value)>,
    last_in: u64,
    /// Every sequenced frame processed, in order.
    got: Vec<Value>,
    /// Unsequenced frames (welcome, acks, errors before a session).
    control: Vec<Value>,
    closed_with: Option<u16>,
    /// Server pings received (answered at once).
    pings: usize,
}

impl Client {
    fn new(user: &str, device: &str) -> Self {
        Client {
            user: user.into(),
            device: device.into(),
            conn: None,
            session: None,
            out_seq: 0,
            unacked: VecDeque::new(),
            last_in: 0,
            got: vec![],
            control: vec![],
            closed_with: None,
            pings: 0,
        }
    }
    fn of_type(&self, t: &str) -> Vec<&Value> {
        self.got.iter().filter(|v| v["type"] == t).collect()
    }
}

/// The hub under test and a replica fed the same inputs. Every node of a cluster runs a
/// replica of the hub fed one log (docs/architecture.md), so every step must give the
/// same outputs on both, whatever order their maps (each seeded on its own) iterate in.
///
/// At every `advance` the replica is also rebuilt from the hub's snapshot (both reseeded
/// alike, as a cluster does at a checkpoint): a field a snapshot leaves out shows up as
/// a difference in a later output.
struct Twin {
    a: Hub<StdRng>,
    b: Hub<StdRng>,
    config: HubConfig,
    checkpoints: u64,
}

impl Twin {
    fn handle_connect(&mut self, conn: ConnId, now: Instant) {
        self.a.handle_connect(conn, now);
        self.b.handle_connect(conn, now);
    }
    fn handle_text(&mut self, conn: ConnId, text: &str, now: Instant) {
        self.a.handle_text(conn, text, now);
        self.b.handle_text(conn, text, now);
    }
    fn handle_disconnect(&mut self, conn: ConnId, now: Instant) {
        self.a.handle_disconnect(conn, now);
        self.b.handle_disconnect(conn, now);
    }
    fn handle_timeout(&mut self, now: Instant) {
        self.a.handle_timeout(now);
        self.b.handle_timeout(now);
    }
    fn poll_output(&mut self) -> Option<Output> {
        let (x, y) = (self.a.poll_output(), self.b.poll_output());
        assert_eq!(x, y, "the replica's output differs");
        x
    }
    fn poll_timeout(&self) -> Option<Instant> {
        let t = self.a.poll_timeout();
        assert_eq!(t, self.b.poll_timeout(), "the replica's next deadline differs");
        t
    }
    fn check_indexes(&self) -> Result<(), String> {
        self.a.check_indexes()?;
        self.b.check_indexes()
    }
    fn live_calls(&self) -> usize {
        assert_eq!(self.a.live_calls(), self.b.live_calls());
        self.a.live_calls()
    }
    fn call_count(&self) -> usize {
        self.a.call_count()
    }
    fn session_count(&self) -> usize {
        assert_eq!(self.a.session_count(), self.b.session_count());
        self.a.session_count()
    }
    fn timer_entries(&self) -> usize {
        self.a.timer_entries()
    }
    /// A cluster checkpoint: both reseeded, the replica rebuilt from the hub's snapshot,
    /// which must write back the same bytes.
    fn checkpoint(&mut self) {
        self.checkpoints += 1;
        let seed = 1000 + self.checkpoints;
        self.a.reseed(StdRng::seed_from_u64(seed));
        let bytes = self.a.to_snapshot().expect("snapshot");
        let restored = Hub::from_snapshot(
            &bytes,
            self.config.clone(),
            Arc::new(DevTokens),
            Arc::new(Ice),
            Arc::new(SignalMetrics::default()),
            StdRng::seed_from_u64(seed),
            self.a.now(),
        )
        .expect("restore");
        assert_eq!(
            String::from_utf8_lossy(&restored.to_snapshot().expect("snapshot of the restored hub")),
            String::from_utf8_lossy(&bytes),
            "a restored hub writes the snapshot it was restored from"
        );
        self.b = restored;
    }
    fn start_drain(&mut self, now: Instant) {
        self.a.start_drain(now);
        self.b.start_drain(now);
    }
    fn close_all(&mut self, now: Instant) {
        self.a.close_all(now);
        self.b.close_all(now);
    }
}

struct World {
    hub: Twin,
    now: Instant,
    clients: Vec<Client>,
    next_conn: u64,
    webhooks: Vec<Value>,
    /// Every [`Output::CallPeers`]: (caller, callee).
    answered: Vec<(Party, Party)>,
    metrics: Arc<SignalMetrics>,
    /// Clients acknowledge every frame at once with an `ack` frame (else never).
    auto_ack: bool,
}

impl World {
    fn new(cfg: HubConfig) -> Self {
        let now = Instant::now();
        let metrics = Arc::new(SignalMetrics::default());
        let hub = |cfg, metrics| {
            Hub::new(
                cfg,
                Arc::new(DevTokens),
                Arc::new(Ice),
                metrics,
                StdRng::seed_from_u64(1),
                now,
                1_800_000_000,
            )
        };
        let hub = Twin {
            a: hub(cfg.clone(), metrics.clone()),
            b: hub(cfg.clone(), Arc::new(SignalMetrics::default())),
            config: cfg,
            checkpoints: 0,
        };
        World {
            hub,
            now,
            clients: vec![],
            next_conn: 1,
            webhooks: vec![],
            answered: vec![],
            metrics,
            auto_ack: true,
        }
    }

    fn add(&mut self, user: &str, device: &str) -> usize {
        self.clients.push(Client::new(user, device));
        self.clients.len() - 1
    }

    /// Open a socket and say hello (resuming when the client has a session).
    fn connect(&mut self, i: usize) {
        let conn = ConnId(self.next_conn);
        self.next_conn += 1;
        self.hub.handle_connect(conn, self.now);
        let c = &mut self.clients[i];
        c.conn = Some(conn);
        c.closed_with = None;
        let mut hello = json!({"type": "hello", "token": format!("dev:{}", c.user), "device": c.device});
        if let Some(s) = &c.session {
            hello["resume"] = json!({"session": s, "last_seq": c.last_in});
        }
        self.hub.handle_text(conn, &hello.to_string(), self.now);
        self.pump();
    }

    /// The socket dies: anything the server queued for it and not yet delivered is lost.
    fn drop_conn(&mut self, i: usize) {
        if let Some(conn) = self.clients[i].conn.take() {
            self.pump_except(Some(conn));
            self.hub.handle_disconnect(conn, self.now);
            self.pump();
        }
    }

    /// Send a sequenced frame (queued while disconnected, like the SDK).
    fn send(&mut self, i: usize, mut frame: Value) -> u64 {
        let c = &mut self.clients[i];
        c.out_seq += 1;
        frame["seq"] = json!(c.out_seq);
        c.unacked.push_back((c.out_seq, frame.clone()));
        if let Some(conn) = c.conn {
            self.hub.handle_text(conn, &frame.to_string(), self.now);
            self.pump();
        }
        self.clients[i].out_seq
    }

    fn raw(&mut self, i: usize, text: &str) {
        let conn = self.clients[i].conn.expect("connected");
        self.hub.handle_text(conn, text, self.now);
        self.pump();
    }

    fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        while let Some(t) = self.hub.poll_timeout() {
            if t > end {
                break;
            }
            self.now = self.now.max(t);
            self.hub.handle_timeout(self.now);
            self.pump();
        }
        self.now = end;
        self.hub.checkpoint();
    }

    fn pump(&mut self) {
        self.pump_except(None)
    }

    /// Deliver outputs; frames for `lost` vanish (that socket is dying). Every step of
    /// every test ends here, so every step also checks the hub's lookup maps.
    fn pump_except(&mut self, lost: Option<ConnId>) {
        self.deliver(lost);
        if let Err(e) = self.hub.check_indexes() {
            panic!("hub indexes disagree with what they index: {e}");
        }
    }

    fn deliver(&mut self, lost: Option<ConnId>) {
        while let Some(o) = self.hub.poll_output() {
            match o {
                Output::Webhook { body } => self.webhooks.push(body),
                Output::CallPeers { caller, callee } => self.answered.push((caller, callee)),
                Output::Close { conn, code, .. } => {
                    if let Some(c) = self.clients.iter_mut().find(|c| c.conn == Some(conn)) {
                        c.conn = None;
                        c.closed_with = Some(code);
                    }
                }
                Output::Send { conn, text } => {
                    if Some(conn) == lost {
                        continue;
                    }
                    let Some(i) = self.clients.iter().position(|c| c.conn == Some(conn)) else {
                        continue;
                    };
                    let v: Value = serde_json::from_str(&text).expect("server frames are JSON");
                    if v["type"] == "ping" {
                        self.clients[i].pings += 1;
                        self.hub.handle_text(conn, r#"{"type":"pong"}"#, self.now);
                        continue;
                    }
                    let mut ack = None;
                    let mut resend = vec![];
                    {
                        let c = &mut self.clients[i];
                        // An ack riding on any frame (protocol.md), like an `ack` frame.
                        if let (Some(n), false) = (v["ack"].as_u64(), v["type"] == "ack") {
                            c.unacked.retain(|(q, _)| *q > n);
                        }
                        if v["type"] == "welcome" {
                            if v["resumed"] == true {
                                let done = v["last_seq"].as_u64().unwrap();
                                c.unacked.retain(|(q, _)| *q > done);
                            } else {
                                // New session: numbering restarts; unacked frames are resent
                                // (the protocol makes them idempotent).
                                c.last_in = 0;
                                let pending: Vec<Value> = c.unacked.drain(..).map(|(_, f)| f).collect();
                                c.out_seq = 0;
                                for mut f in pending {
                                    c.out_seq += 1;
                                    f["seq"] = json!(c.out_seq);
                                    c.unacked.push_back((c.out_seq, f));
                                }
                            }
                            c.session = Some(v["session"].as_str().unwrap().to_owned());
                            resend = c.unacked.iter().map(|(_, f)| f.to_string()).collect();
                            c.control.push(v);
                        } else if v["type"] == "ack" {
                            let n = v["seq"].as_u64().unwrap();
                            c.unacked.retain(|(q, _)| *q > n);
                            c.control.push(v);
                        } else if let Some(seq) = v["seq"].as_u64() {
                            assert!(seq <= c.last_in + 1, "server skipped from {} to {seq}", c.last_in);
                            if seq == c.last_in + 1 {
                                c.last_in = seq;
                                c.got.push(v);
                            }
                            ack = Some(c.last_in);
                        } else {
                            c.control.push(v);
                        }
                    }
                    for f in resend {
                        self.hub.handle_text(conn, &f, self.now);
                    }
                    if let Some(n) = ack.filter(|_| self.auto_ack) {
                        self.hub
                            .handle_text(conn, &json!({"type": "ack", "seq": n}).to_string(), self.now);
                    }
                }
            }
        }
    }
}

/// Alice and Bob, both connected, in call `call`: Alice invited, Bob accepted.
fn in_call(call: &str) -> (World, usize, usize) {
    let mut w = World::new(HubConfig::default());
    let (a, b) = (w.add("alice", "a"), w.add("bob", "b"));
    w.connect(a);
    w.connect(b);
    w.send(a, invite(call, "bob"));
    w.send(b, json!({"type": "call.accept", "call": call, "sdp": "v=0 answer"}));
    (w, a, b)
}

fn invite(call: &str, to: &str) -> Value {
    json!({"type": "call.invite", "call": call, "to": to, "media": "video", "sdp": "v=0 offer"})
}

fn cand(n: u32) -> Value {
    json!({"candidate": {"candidate": format!("candidate:{n} 1 udp 1 203.0.113.{n} 5000 typ relay"), "sdpMid": "0", "sdpMLineIndex": 0, "usernameFragment": "u"}})
}

fn signal(call: &str, data: Value) -> Value {
    json!({"type": "call.signal", "call": call, "data": data})
}

fn errors(c: &Client) -> Vec<String> {
    c.got
        .iter()
        .chain(c.control.iter())
        .filter(|v| v["type"] == "error")
        .map(|v| v["code"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn welcome_carries_ice_servers_and_bad_tokens_close_4003() {
    let mut w = World::new(HubConfig::default());
    let a = w.add("alice", "phone");
    w.connect(a);
    let welcome = &w.clients[a].control[0];
    assert_eq!(welcome["type"], "welcome");
    assert_eq!(welcome["resumed"], false);
    assert_eq!(welcome["user"], "alice");
    assert_eq!(welcome["ice_servers"][0]["urls"][0], "turn:192.0.2.1:3478");
    assert_eq!(welcome["ice_ttl"], 600);
    assert!(welcome["heartbeat_ms"].as_u64().unwrap() > 0);

    let m = w.add("mallory", "x");
    w.clients[m].user = "mallory bad".into();
    w.connect(m);
    assert_eq!(errors(&w.clients[m]), vec!["unauthorized"]);
    assert_eq!(w.clients[m].closed_with, Some(4003));
}

#[test]
fn ice_servers_are_refreshed_before_they_expire() {
    let mut w = World::new(HubConfig::default());
    let a = w.add("alice", "phone");
    w.connect(a);
    w.advance(Duration::from_secs(481));
    let fresh = w.clients[a].of_type("ice_servers");
    assert_eq!(fresh.len(), 1, "refreshed at 80% of the TTL");
    assert!(fresh[0]["ice_servers"][0]["username"]
        .as_str()
        .unwrap()
        .starts_with("1800001080:"));
}

#[test]
fn an_answer_and_a_resume_name_both_parties_and_their_sockets() {
    let mut w = World::new(HubConfig::default());
    let (a, b1, b2) = (w.add("alice", "a"), w.add("bob", "b1"), w.add("bob", "b2"));
    w.connect(a);
    w.connect(b1);
    w.connect(b2);
    w.send(a, invite("c1", "bob"));
    assert!(w.answered.is_empty(), "ringing is not answered");
    w.send(b2, json!({"type": "call.accept", "call": "c1", "sdp": "v=0 answer"}));
    let party = |w: &World, i: usize| Party {
        user: UserId::parse(&w.clients[i].user).unwrap(),
        conn: w.clients[i].conn,
        ip: None,
    };
    assert_eq!(w.answered, vec![(party(&w, a), party(&w, b2))]);
    // A repeated accept (a resend after a resume) answers nothing new.
    w.send(b2, json!({"type": "call.accept", "call": "c1", "sdp": "v=0 answer"}));
    assert_eq!(w.answered.len(), 1);
    // A caller offline at the answer has no socket to name.
    w.send(a, json!({"type": "call.hangup", "call": "c1"}));
    w.send(a, invite("c2", "bob"));
    w.drop_conn(a);
    w.send(b1, json!({"type": "call.accept", "call": "c2", "sdp": "v=0 answer"}));
    assert_eq!(w.answered.last().map(|(c, _)| c.conn), Some(None));
    assert_eq!(w.answered.last().map(|(_, c)| c.conn), Some(w.clients[b1].conn));
    // Back on a new socket (a resume, maybe from a new address), the caller's answered
    // call is named again with that socket; b2, not in a call, names none.
    let n = w.answered.len();
    w.connect(a);
    assert_eq!(w.answered.len(), n + 1);
    assert_eq!(w.answered[n], (party(&w, a), party(&w, b1)));
    w.drop_conn(b2);
    w.connect(b2);
    assert_eq!(w.answered.len(), n + 1);
}

#[test]
fn full_call_with_two_callee_devices() {
    let mut w = World::new(HubConfig::default());
    let (a, b1, b2) = (w.add("alice", "a"), w.add("bob", "b1"), w.add("bob", "b2"));
    for i in [a, b1, b2] {
        w.connect(i);
    }
    w.send(a, invite("c1", "bob"));
    w.send(a, signal("c1", cand(1)));
    for b in [b1, b2] {
        let inc = w.clients[b].of_type("call.incoming");
        assert_eq!(inc.len(), 1);
        assert_eq!(inc[0]["from"], "alice");
        assert_eq!(inc[0]["from_device"], "a");
        assert_eq!(inc[0]["sdp"], "v=0 offer");
        assert_eq!(
            w.clients[b].of_type("call.signal").len(),
            1,
            "caller candidates reach ringing devices"
        );
    }
    let ringing: Vec<_> = w.clients[a]
        .of_type("call.ringing")
        .iter()
        .map(|v| v["device"].clone())
        .collect();
    assert_eq!(
        ringing,
        vec![json!("b1"), json!("b2")],
        "one ringing per device that acked the incoming"
    );

    w.send(b2, json!({"type": "call.accept", "call": "c1", "sdp": "v=0 answer"}));
    let acc = w.clients[a].of_type("call.accepted");
    assert_eq!(
        (acc[0]["device"].clone(), acc[0]["sdp"].clone()),
        (json!("b2"), json!("v=0 answer"))
    );
    assert_eq!(w.clients[b1].of_type("call.ended")[0]["reason"], "answered_elsewhere");
    // b1 may no longer act on the call.
    w.send(b1, json!({"type": "call.accept", "call": "c1", "sdp": "x"}));
    assert_eq!(errors(&w.clients[b1]), vec!["not_participant"]);

    // After accept, signals flow only between caller and the answering device.
    w.send(b2, signal("c1", cand(2)));
    w.send(a, signal("c1", cand(3)));
    assert_eq!(w.clients[a].of_type("call.signal")[0]["from_device"], "b2");
    assert_eq!(w.clients[b2].of_type("call.signal").len(), 2);
    assert_eq!(w.clients[b1].of_type("call.signal").len(), 1);

    w.send(a, json!({"type": "call.connected", "call": "c1", "local": "relay", "remote": "srflx", "protocol": "udp", "ms": 900}));
    assert_eq!(w.metrics.get("pair_types", "relay-srflx"), 1);
    assert_eq!(w.metrics.get("first_attempt", "success"), 1);
    w.send(b2, json!({"type": "call.hangup", "call": "c1", "reason": "user"}));
    let ended = w.clients[a].of_type("call.ended");
    assert_eq!(
        (ended[0]["reason"].clone(), ended[0]["detail"].clone()),
        (json!("hangup"), json!("user"))
    );
    assert!(
        w.clients[b2].of_type("call.ended").is_empty(),
        "the one who hung up is not told"
    );
    assert_eq!(w.hub.call_count(), 0);
    // A repeated invite with the same id is a no-op.
    w.send(a, invite("c1", "bob"));
    assert_eq!(w.clients[b1].of_type("call.incoming").len(), 1);
}

#[test]
fn offline_callee_gets_pending_invite_and_held_signals_in_order() {
    let mut w = World::new(HubConfig::default());
    let (a, b) = (w.add("alice", "a"), w.add("bob", "b"));
    w.connect(a);
    w.send(a, invite("c2", "bob"));
    for n in 1..=3 {
        w.send(a, signal("c2", cand(n)));
    }
    w.send(a, signal("c2", json!({"end_of_candidates": true})));
    assert_eq!(w.clients[a].of_type("call.pending").len(), 1);
    assert_eq!(w.webhooks.len(), 1);
    assert_eq!(w.webhooks[0]["to"], "bob");

    w.advance(Duration::from_secs(5));
    w.connect(b);
    let types: Vec<_> = w.clients[b]
        .got
        .iter()
        .map(|v| v["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        types,
        [
            "call.incoming",
            "call.signal",
            "call.signal",
            "call.signal",
            "call.signal"
        ]
    );
    let order: Vec<_> = w.clients[b]
        .of_type("call.signal")
        .iter()
        .map(|v| v["data"].clone())
        .collect();
    assert_eq!(
        order,
        vec![cand(1), cand(2), cand(3), json!({"end_of_candidates": true})]
    );
    assert_eq!(w.clients[a].of_type("call.ringing").len(), 1);
}

#[test]
fn unanswered_calls_time_out_or_are_unreachable() {
    let mut w = World::new(HubConfig::default());
    let (a, b) = (w.add("alice", "a"), w.add("bob", "b"));
    w.connect(a);
    w.send(a, invite("never-online", "bob"));
    w.advance(Duration::from_secs(45));
    assert_eq!(w.clients[a].of_type("call.ended")[0]["reason"], "unreachable");
    w.connect(b);
    w.send(a, invite("no-answer", "bob"));
    w.advance(Duration::from_secs(44));
    assert_eq!(w.clients[a].of_type("call.ended").len(), 1);
    w.advance(Duration::from_secs(1));
    let ended = w.clients[a].of_type("call.ended");
    assert_eq!(ended[1]["reason"], "timeout");
    assert_eq!(w.clients[b].of_type("call.ended")[0]["reason"], "timeout");
}

#[test]
fn reject_cancel_busy_and_glare() {
    let mut w = World::new(HubConfig::default());
    let (a, b, c) = (w.add("alice", "a"), w.add("bob", "b"), w.add("carol", "c"));
    for i in [a, b, c] {
        w.connect(i);
    }
    w.send(a, invite("r1", "bob"));
    w.send(b, json!({"type": "call.reject", "call": "r1"}));
    assert_eq!(w.clients[a].of_type("call.ended")[0]["reason"], "rejected");
    w.send(a, invite("x1", "bob"));
    w.send(a, json!({"type": "call.cancel", "call": "x1"}));
    assert_eq!(
        w.clients[b].of_type("call.ended")[0]["reason"],
        "cancelled",
        "the rejecting device is not told of its own reject"
    );

    // Busy: bob is in a connected call with alice; carol calls bob.
    w.send(a, invite("live", "bob"));
    w.send(b, json!({"type": "call.accept", "call": "live", "sdp": "a"}));
    w.send(c, invite("late", "bob"));
    assert_eq!(w.clients[c].of_type("call.ended")[0]["reason"], "busy");
    assert!(w.clients[b]
        .of_type("call.incoming")
        .iter()
        .all(|v| v["call"] != "late"));
    w.send(a, json!({"type": "call.hangup", "call": "live"}));

    // Glare: alice and carol call each other; the lower id survives.
    w.send(a, invite("zz-from-alice", "carol"));
    w.send(c, invite("aa-from-carol", "alice"));
    assert_eq!(
        w.clients[a].of_type("call.ended").last().unwrap()["call"],
        "zz-from-alice"
    );
    assert_eq!(w.clients[a].of_type("call.ended").last().unwrap()["reason"], "glare");
    assert!(w.clients[a]
        .of_type("call.incoming")
        .iter()
        .any(|v| v["call"] == "aa-from-carol"));
    // And the other way round: the new invite has the higher id, so it loses.
    w.send(b, invite("bb", "carol"));
    w.send(c, invite("cc", "bob"));
    assert_eq!(w.clients[c].of_type("call.ended").last().unwrap()["call"], "cc");
    assert_eq!(w.clients[c].of_type("call.ended").last().unwrap()["reason"], "glare");
}

#[test]
fn refused_frames_get_errors_with_ref_and_change_nothing() {
    let mut w = World::new(HubConfig::default());
    let (a, b) = (w.add("alice", "a"), w.add("bob", "b"));
    w.connect(a);
    w.connect(b);
    let s = w.send(a, json!({"type": "call.teleport", "call": "x"}));
    let e = w.clients[a].of_type("error")[0].clone();
    assert_eq!((e["code"].clone(), e["ref"].clone()), (json!("unknown_type"), json!(s)));
    w.send(a, json!({"type": "call.accept", "call": "nope", "sdp": "x"}));
    w.send(a, json!({"type": "call.invite", "call": "c", "to": "bob"}));
    w.send(a, signal("nope", cand(1)));
    w.send(a, invite("ok", "bob"));
    w.send(b, signal("ok", json!({"bogus": 1})));
    w.send(a, json!({"type": "call.accept", "call": "ok", "sdp": "x"}));
    assert_eq!(
        errors(&w.clients[a]),
        [
            "unknown_type",
            "unknown_call",
            "bad_request",
            "unknown_call",
            "not_participant"
        ]
    );
    assert_eq!(errors(&w.clients[b]), ["bad_request"]);
    // Oversized frame: too_large, the connection stays usable.
    let big = json!({"type": "call.signal", "seq": w.clients[b].out_seq + 1, "call": "ok", "data": {"sdp": {"type": "offer", "sdp": "x".repeat(70_000)}}});
    w.clients[b].out_seq += 1;
    w.raw(b, &big.to_string());
    w.raw(b, "not json at all");
    w.clients[b].out_seq += 1;
    assert_eq!(errors(&w.clients[b]), ["bad_request", "too_large", "bad_request"]);
    w.send(b, json!({"type": "call.accept", "call": "ok", "sdp": "answer"}));
    assert_eq!(
        w.clients[a].of_type("call.accepted").len(),
        1,
        "still usable after refused frames"
    );
    assert!(w.clients[b].conn.is_some());
}

/// `call.signal` is read from the envelope's one parse; whatever that parse cannot vouch
/// for goes through the full parse, which names the fault, and changes nothing else.
#[test]
fn signal_frames_the_fast_path_cannot_vouch_for_are_refused_by_name() {
    let (mut w, a, b) = in_call("ok");
    let c = cand(1);
    let refused: Vec<(String, &str)> = vec![
        (
            format!(r#"{{"type":"call.signal","seq":S,"call":5,"data":{c}}}"#),
            "invalid type",
        ),
        (
            format!(r#"{{"type":"call.signal","seq":S,"data":{c}}}"#),
            "missing field `call`",
        ),
        (
            r#"{"type":"call.signal","seq":S,"call":"ok"}"#.to_owned(),
            "missing field `data`",
        ),
        (
            r#"{"type":"call.signal","seq":S,"call":"ok","data":null}"#.to_owned(),
            "data must be an object",
        ),
        (
            format!(r#"{{"type":"call.signal","seq":S,"call":"","data":{c}}}"#),
            "invalid CallId",
        ),
        (
            format!(r#"{{"type":"call.signal","seq":S,"call":"has space","data":{c}}}"#),
            "invalid CallId",
        ),
        (
            format!(r#"{{"type":"call.signal","seq":S,"call":"ok","call":"ok","data":{c}}}"#),
            r#"duplicate key "call""#,
        ),
        // Valid JSON, not a valid string: what a broken JS string serialises to. The
        // duplicate-key check reads every string, and names the fault.
        (
            format!(r#"{{"type":"call.signal","seq":S,"call":"\ud800","data":{c}}}"#),
            "unexpected end of hex escape",
        ),
    ];
    for (text, why) in &refused {
        w.clients[a].out_seq += 1;
        let seq = w.clients[a].out_seq;
        w.raw(a, &text.replace(":S,", &format!(":{seq},")));
        let e = w.clients[a]
            .of_type("error")
            .last()
            .copied()
            .cloned()
            .expect("an error frame");
        assert_eq!(
            (e["code"].as_str(), e["ref"].as_u64()),
            (Some("bad_request"), Some(seq)),
            "{text}"
        );
        let msg = e["message"].as_str().unwrap();
        assert!(msg.contains(why), "{text}: {msg:?} should name {why:?}");
    }
    assert_eq!(
        w.clients[b].of_type("call.signal").len(),
        0,
        "nothing refused was relayed"
    );
    // An escaped call id is the same id: relayed, with the id as the call knows it.
    w.clients[a].out_seq += 1;
    let seq = w.clients[a].out_seq;
    w.raw(
        a,
        &format!(r#"{{"type":"call.signal","seq":{seq},"call":"o\u006b","data":{c}}}"#),
    );
    let got = w.clients[b].of_type("call.signal");
    assert_eq!(got.len(), 1);
    assert_eq!((got[0]["call"].clone(), got[0]["data"].clone()), (json!("ok"), c));
    assert_eq!(
        errors(&w.clients[a]).len(),
        refused.len(),
        "the escaped id was not refused"
    );
    // Bad data is refused as such before anything looks at who sent it.
    let c3 = w.add("carol", "c");
    w.connect(c3);
    w.send(c3, signal("ok", json!({"bogus": 1})));
    w.send(c3, signal("ok", cand(2)));
    assert_eq!(errors(&w.clients[c3]), ["bad_request", "not_participant"]);
    assert_eq!(
        w.clients[b].of_type("call.signal").len(),
        1,
        "nothing from carol was relayed"
    );
}

#[test]
fn duplicate_seq_is_ignored_and_gap_closes_4002() {
    let mut w = World::new(HubConfig::default());
    let (a, b) = (w.add("alice", "a"), w.add("bob", "b"));
    w.connect(a);
    w.connect(b);
    w.send(a, invite("d", "bob"));
    let again = json!({"type": "call.signal", "seq": 2, "call": "d", "data": cand(1)});
    w.clients[a].out_seq = 2;
    w.raw(a, &again.to_string());
    w.raw(a, &again.to_string());
    assert_eq!(
        w.clients[b].of_type("call.signal").len(),
        1,
        "a repeated seq is processed once"
    );
    w.advance(Duration::from_millis(200));
    assert!(w.clients[a].control.iter().any(|v| v["type"] == "ack" && v["seq"] == 2));
    w.raw(
        a,
        &json!({"type": "call.signal", "seq": 9, "call": "d", "data": cand(2)}).to_string(),
    );
    assert_eq!(w.clients[a].closed_with, Some(4002));
    assert_eq!(errors(&w.clients[a]).last().unwrap(), "seq_gap");
    // The session survives: resume and carry on.
    w.connect(a);
    assert_eq!(
        w.clients[a].control.iter().rfind(|v| v["type"] == "welcome").unwrap()["resumed"],
        true
    );
}

#[test]
fn resume_replays_exactly_the_unacked_frames() {
    let mut w = World::new(HubConfig::default());
    let (a, b) = (w.add("alice", "a"), w.add("bob", "b"));
    w.connect(a);
    w.connect(b);
    w.send(a, invite("r", "bob"));
    // Bob's socket dies; alice keeps signalling; the frames wait in bob's session.
    w.drop_conn(b);
    for n in 1..=5 {
        w.send(a, signal("r", cand(n)));
    }
    w.advance(Duration::from_secs(30));
    w.connect(b);
    let welcome = w.clients[b]
        .control
        .iter()
        .rfind(|v| v["type"] == "welcome")
        .unwrap()
        .clone();
    assert_eq!(welcome["resumed"], true);
    let got: Vec<_> = w.clients[b]
        .of_type("call.signal")
        .iter()
        .map(|v| v["data"].clone())
        .collect();
    assert_eq!(got, (1..=5).map(cand).collect::<Vec<_>>());
    assert_eq!(w.metrics.get("replayed_frames", "total"), 5);
}

#[test]
fn expired_session_fails_its_calls_and_resume_says_so() {
    let (mut w, a, b) = in_call("e");
    w.drop_conn(b);
    w.advance(Duration::from_secs(60));
    assert_eq!(w.clients[a].of_type("call.ended")[0]["reason"], "failed");
    w.connect(b);
    let welcome = w.clients[b]
        .control
        .iter()
        .rfind(|v| v["type"] == "welcome")
        .unwrap()
        .clone();
    assert_eq!(
        welcome["resumed"], false,
        "an expired session cannot be resumed: never a silent gap"
    );
    assert_eq!(welcome["calls"], json!([]));
    assert_eq!(w.metrics.get("resumes", "failed"), 1);
}

#[test]
fn snapshot_lists_live_calls_on_a_fresh_session() {
    let (mut w, a, b) = in_call("snap");
    // Alice's app restarts: a new session for the same device, no resume.
    w.clients[a].session = None;
    w.drop_conn(a);
    w.connect(a);
    let welcome = w.clients[a]
        .control
        .iter()
        .rfind(|v| v["type"] == "welcome")
        .unwrap()
        .clone();
    assert_eq!(welcome["resumed"], false);
    assert_eq!(welcome["calls"][0]["call"], "snap");
    assert_eq!(welcome["calls"][0]["state"], "accepted");
    assert_eq!(welcome["calls"][0]["this_device"], true);
    // The call goes on with the new session.
    w.send(b, signal("snap", cand(7)));
    assert_eq!(w.clients[a].of_type("call.signal").len(), 1);
}

#[test]
fn no_hello_closes_4008_and_rate_limit_refuses() {
    let mut w = World::new(HubConfig {
        rate_burst: 5.0,
        rate_per_sec: 1.0,
        ..HubConfig::default()
    });
    w.hub.handle_connect(ConnId(999), w.now);
    w.advance(Duration::from_secs(10));
    assert!(
        std::iter::from_fn(|| w.hub.poll_output()).count() == 0,
        "outputs were pumped"
    );
    let (a, b) = (w.add("alice", "a"), w.add("bob", "b"));
    w.connect(a);
    w.connect(b);
    w.send(a, invite("rl", "bob"));
    for n in 0..6 {
        w.send(a, signal("rl", cand(n)));
    }
    assert_eq!(errors(&w.clients[a]).iter().filter(|e| *e == "rate_limited").count(), 2);
    assert_eq!(w.clients[b].of_type("call.signal").len(), 4);
}

#[test]
fn silent_socket_is_closed_after_three_heartbeats_and_frames_wait() {
    let mut w = World::new(HubConfig::default());
    let (a, b) = (w.add("alice", "a"), w.add("bob", "b"));
    w.connect(a);
    w.connect(b);
    // Bob's socket goes half-open: the server still thinks it is attached.
    let conn_b = w.clients[b].conn.take().unwrap();
    w.send(a, invite("h", "bob"));
    w.advance(Duration::from_secs(46));
    assert_eq!(
        w.metrics.get("calls_ended", "timeout"),
        1,
        "the call still ends explicitly"
    );
    let _ = conn_b;
    w.connect(b);
    let types: Vec<_> = w.clients[b]
        .got
        .iter()
        .map(|v| v["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(types, ["call.incoming", "call.ended"], "half-open socket lost nothing");
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]
    /// Any interleaving of socket drops, resumes, frames and time (within the session TTL)
    /// delivers every signal exactly once, in order, both ways.
    #[test]
    fn drops_and_resumes_lose_nothing_and_duplicate_nothing(ops in proptest::collection::vec(0u8..8, 1..80)) {
        let (mut w, a, b) = in_call("p");
        let (mut sent_a, mut sent_b) = (0u32, 0u32);
        // When each client lost its socket. Time that would take one to its session TTL
        // is not let pass: an expired session ends its calls and says so on resume,
        // which `expired_session_fails_its_calls_and_resume_says_so` checks.
        let ttl = HubConfig::default().session_ttl;
        let mut down_since: [Option<Instant>; 2] = [None, None];
        for op in ops {
            match op {
                0 => { sent_a += 1; w.send(a, signal("p", cand(sent_a))); }
                1 => { sent_b += 1; w.send(b, signal("p", cand(1000 + sent_b))); }
                2 | 3 => {
                    let (i, k) = if op == 2 { (a, 0) } else { (b, 1) };
                    if w.clients[i].conn.is_some() {
                        down_since[k] = Some(w.now);
                    }
                    w.drop_conn(i);
                }
                4 | 5 => {
                    let (i, k) = if op == 4 { (a, 0) } else { (b, 1) };
                    if w.clients[i].conn.is_none() {
                        w.connect(i);
                        down_since[k] = None;
                    }
                }
                _ => {
                    let d = if op == 6 { Duration::from_millis(150) } else { Duration::from_secs(5) };
                    if down_since.iter().flatten().all(|t| w.now + d - *t < ttl) {
                        w.advance(d);
                    }
                }
            }
        }
        for i in [a, b] {
            if w.clients[i].conn.is_none() { w.connect(i); }
        }
        w.advance(Duration::from_secs(1));
        let at_b: Vec<Value> = w.clients[b].of_type("call.signal").iter().map(|v| v["data"].clone()).collect();
        let at_a: Vec<Value> = w.clients[a].of_type("call.signal").iter().map(|v| v["data"].clone()).collect();
        proptest::prop_assert_eq!(at_b, (1..=sent_a).map(cand).collect::<Vec<_>>());
        proptest::prop_assert_eq!(at_a, (1..=sent_b).map(|n| cand(1000 + n)).collect::<Vec<_>>());
        proptest::prop_assert!(w.clients.iter().all(|c| c.unacked.is_empty()), "every client frame acknowledged");
        let _ = HashMap::<u8, u8>::new();
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]
    /// Three users on four devices invite, answer, refuse, hang up, lose sockets, start
    /// new sessions and let sessions expire, in any order. After every step the hub's
    /// per-user call lists and per-device sessions agree with the calls and sessions
    /// they index (checked in `pump`), and once every party has ended what it was in,
    /// no call is left in the hub.
    #[test]
    fn per_user_indexes_follow_calls_and_sessions(ops in proptest::collection::vec((0u8..10, 0usize..4, 0usize..3, 0usize..4), 1..120)) {
        let mut w = World::new(HubConfig::default());
        let users = ["alice", "bob", "carol"];
        let cl = [w.add("alice", "a"), w.add("bob", "b1"), w.add("bob", "b2"), w.add("carol", "c")];
        for i in cl {
            w.connect(i);
        }
        let ttl = HubConfig::default().session_ttl;
        for (op, who, user, call) in ops {
            let (i, id) = (cl[who], format!("k{call}"));
            match op {
                0 | 1 => { w.send(i, invite(&id, users[user])); }
                2 => { w.send(i, json!({"type": "call.accept", "call": id, "sdp": "v=0 answer"})); }
                3 => { w.send(i, json!({"type": "call.reject", "call": id})); }
                4 => { w.send(i, json!({"type": "call.cancel", "call": id})); }
                5 => { w.send(i, json!({"type": "call.hangup", "call": id})); }
                6 => w.drop_conn(i),
                7 => if w.clients[i].conn.is_none() { w.connect(i) },
                // The app restarts: a new session for the same device.
                8 => {
                    w.drop_conn(i);
                    w.clients[i].session = None;
                    w.connect(i);
                }
                _ => w.advance(if call == 0 { ttl + Duration::from_secs(1) } else { Duration::from_secs(5) }),
            }
        }
        // Everyone ends everything: no call is left for anyone to end, and none lingers.
        for i in cl {
            if w.clients[i].conn.is_none() {
                w.connect(i);
            }
            for k in 0..4 {
                for t in ["call.cancel", "call.reject", "call.hangup"] {
                    w.send(i, json!({"type": t, "call": format!("k{k}")}));
                }
            }
        }
        w.advance(Duration::from_secs(1));
        proptest::prop_assert_eq!(w.hub.live_calls(), 0);
    }
}

/// Alice and Bob in call `call`, settled, with the clients' automatic acks off so that
/// a test sees which acks ride and which go separately.
fn in_call_acking_by_hand(call: &str) -> (World, usize, usize) {
    let (mut w, a, b) = in_call(call);
    w.advance(Duration::from_secs(1));
    w.auto_ack = false;
    (w, a, b)
}

/// Separate `ack` frames client `i` has received.
fn separate_acks(w: &World, i: usize) -> usize {
    w.clients[i].control.iter().filter(|v| v["type"] == "ack").count()
}

#[test]
fn an_ack_timer_left_over_from_a_riding_ack_does_not_fire_for_a_later_frame() {
    // protocol.md: an ack owed to a client goes separately only when no frame has
    // carried it within the ack delay. A frame that arrives after an ack rode starts a
    // fresh delay of its own.
    let (mut w, a, b) = in_call_acking_by_hand("p");
    let acks_to_alice = |w: &World| separate_acks(w, a);
    let before = acks_to_alice(&w);
    let delay = HubConfig::default().ack_delay;
    w.send(a, signal("p", cand(1)));
    w.advance(delay / 4);
    w.send(b, signal("p", cand(2))); // carries the ack for cand 1
    w.advance(delay / 4);
    let second = w.send(a, signal("p", cand(3)));
    // The first frame's timer comes due now: nothing is owed for that frame any more.
    w.advance(delay / 2);
    assert_eq!(
        acks_to_alice(&w),
        before,
        "no separate ack before the second frame's own delay"
    );
    // The second frame's own delay runs out with nothing to carry its ack.
    w.advance(delay / 2);
    assert_eq!(acks_to_alice(&w), before + 1);
    let ack = w.clients[a].control.iter().rfind(|v| v["type"] == "ack").unwrap();
    assert_eq!(ack["seq"], json!(second));
}

#[test]
fn a_busy_session_keeps_one_ack_timer_not_one_per_frame() {
    // Alice and bob signal each other faster than the ack delay, so each ack owed rides
    // on the next frame the other way and leaves its timer entry behind. The entries
    // stay at one per session whatever the rate, and an ack owed at the end still goes.
    let (mut w, a, b) = in_call_acking_by_hand("p");
    let delay = HubConfig::default().ack_delay;
    w.advance(delay * 2);
    let base = w.hub.timer_entries();
    let (a0, b0) = (separate_acks(&w, a), separate_acks(&w, b));
    let mut last_b = 0;
    for n in 0..200 {
        w.send(a, signal("p", cand(n)));
        last_b = w.send(b, signal("p", cand(1000 + n)));
        w.advance(delay / 10);
        assert!(
            w.hub.timer_entries() <= base + 2,
            "frame {n}: {} timer entries, {base} before the burst",
            w.hub.timer_entries()
        );
    }
    assert_eq!(
        (separate_acks(&w, a), separate_acks(&w, b)),
        (a0, b0),
        "every ack rode on a frame"
    );
    // Bob's last frame is owed an ack that nothing carried: it goes alone, once.
    w.advance(delay * 3);
    assert_eq!((separate_acks(&w, a), separate_acks(&w, b)), (a0, b0 + 1));
    let ack = w.clients[b].control.iter().rfind(|v| v["type"] == "ack").unwrap();
    assert_eq!(ack["seq"], json!(last_b));
    assert_eq!(w.clients[a].of_type("call.signal").len(), 200);
    assert_eq!(w.clients[b].of_type("call.signal").len(), 200);
}

#[test]
fn acks_ride_on_frames_both_ways() {
    let (mut w, a, b) = in_call_acking_by_hand("p");
    let acks_to_alice = |w: &World| separate_acks(w, a);
    let before = acks_to_alice(&w);

    // Server -> client: alice's signal is owed an ack; bob's reply to her carries it, and
    // no separate ack frame follows.
    let sent = w.send(a, signal("p", cand(1)));
    w.send(b, signal("p", cand(2)));
    let reply = w.clients[a].of_type("call.signal").last().cloned().unwrap();
    assert_eq!(
        reply["ack"],
        json!(sent),
        "the frame to alice acknowledges her seq {sent}"
    );
    assert!(
        w.clients[a].unacked.is_empty(),
        "alice released her frames on the riding ack"
    );
    w.advance(Duration::from_secs(1));
    assert_eq!(acks_to_alice(&w), before, "no separate ack frame after a riding one");

    // Client -> server: the server keeps bob's four frames from alice (candidates 1, 3,
    // 4, 5) and alice's one from bob (candidate 2) until each acknowledges.
    for n in 3..=5 {
        w.send(a, signal("p", cand(n)));
    }
    let held = w.metrics.unacked.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(held, 5);
    let last = w.clients[b].last_in;
    w.send(
        b,
        json!({"type": "call.signal", "call": "p", "ack": last, "data": cand(6)}),
    );
    let now_held = w.metrics.unacked.load(std::sync::atomic::Ordering::Relaxed);
    // Bob's acknowledged frames went; his signal added one (unacknowledged) for alice.
    assert_eq!(now_held, 2, "the ack on bob's frame released his four");
    assert_eq!(w.clients[a].of_type("call.signal").last().unwrap()["data"], cand(6));
    assert!(errors(&w.clients[b]).is_empty());

    // A riding ack that is not a count is refused, by the frame's seq, and the frame
    // does nothing.
    let relayed = w.clients[a].of_type("call.signal").len();
    let seq = w.send(
        b,
        json!({"type": "call.signal", "call": "p", "ack": "7", "data": cand(7)}),
    );
    assert_eq!(errors(&w.clients[b]), vec!["bad_request"]);
    let err = w.clients[b].of_type("error").last().cloned().unwrap();
    assert_eq!(err["ref"], json!(seq));
    assert_eq!(
        w.clients[a].of_type("call.signal").len(),
        relayed,
        "the frame was not relayed"
    );
}

// ---- Limits (issue 17): each is hit, refused clearly, changes nothing else, counted.

use firstcall_signal::metrics::Limit;

/// The error frames client `i` got, as (code, ref, message).
fn error_frames(c: &Client) -> Vec<(String, Option<u64>, String)> {
    c.got
        .iter()
        .chain(c.control.iter())
        .filter(|v| v["type"] == "error")
        .map(|v| {
            (
                v["code"].as_str().unwrap().to_owned(),
                v["ref"].as_u64(),
                v["message"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Limits hit so far, by label, leaving out those never hit.
fn limits_hit(w: &World) -> Vec<(&'static str, u64)> {
    Limit::ALL
        .iter()
        .map(|l| (l.as_str(), w.metrics.limit_hits(*l)))
        .filter(|(_, n)| *n > 0)
        .collect()
}

/// An SDP signal whose `data` is about `bytes` long.
fn sdp_of(bytes: usize) -> Value {
    json!({"sdp": {"type": "offer", "sdp": "v".repeat(bytes)}})
}

#[test]
fn held_signals_are_capped_per_call_and_nothing_held_is_lost() {
    let mut w = World::new(HubConfig {
        max_held_signals_per_call: 5,
        ..HubConfig::default()
    });
    let (a, b1, b2) = (w.add("alice", "a"), w.add("bob", "b1"), w.add("bob", "b2"));
    w.connect(a);
    w.connect(b1);
    w.send(a, invite("h", "bob"));
    for n in 1..=5 {
        w.send(a, signal("h", cand(n)));
    }
    let refused = w.send(a, signal("h", cand(6)));
    let errs = error_frames(&w.clients[a]);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!((errs[0].0.as_str(), errs[0].1), ("held_full", Some(refused)));
    assert!(errs[0].2.contains("held_signals_per_call"), "{}", errs[0].2);
    assert_eq!(limits_hit(&w), [("held_signals_per_call", 1)]);
    assert_eq!(w.metrics.get("errors", "held_full"), 1);
    // The refused signal went nowhere; the five held reach a device that comes later.
    let data = |c: &Client| {
        c.of_type("call.signal")
            .iter()
            .map(|v| v["data"].clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(data(&w.clients[b1]), (1..=5).map(cand).collect::<Vec<_>>());
    w.connect(b2);
    assert_eq!(data(&w.clients[b2]), (1..=5).map(cand).collect::<Vec<_>>());
    assert_eq!(w.hub.live_calls(), 1, "the call still rings");
    // Once answered nothing is held, and signals flow past the cap.
    w.send(b1, json!({"type": "call.accept", "call": "h", "sdp": "answer"}));
    for n in 6..=12 {
        w.send(a, signal("h", cand(n)));
    }
    assert_eq!(data(&w.clients[b1]).len(), 12);
    assert_eq!(error_frames(&w.clients[a]).len(), 1);
}

#[test]
fn held_signal_bytes_are_capped_per_call_and_per_user() {
    let mut w = World::new(HubConfig {
        max_held_bytes_per_call: 10_000,
        max_held_bytes_per_user: 15_000,
        max_held_signals_per_user: 7,
        ..HubConfig::default()
    });
    let a = w.add("alice", "a");
    w.connect(a);
    w.send(a, invite("x", "bob"));
    w.send(a, invite("y", "carol"));
    // Bytes per call: 2 × ~4 KB fit, the third does not.
    w.send(a, signal("x", sdp_of(4_000)));
    w.send(a, signal("x", sdp_of(4_000)));
    let r1 = w.send(a, signal("x", sdp_of(4_000)));
    // Bytes per user: call y may hold 10 KB, but alice already holds ~8 KB.
    w.send(a, signal("y", sdp_of(4_000)));
    let r2 = w.send(a, signal("y", sdp_of(4_000)));
    // Count per user: 3 held so far; 4 small ones more reach 7, the next is refused.
    for n in 1..=4 {
        w.send(a, signal("y", cand(n)));
    }
    let r3 = w.send(a, signal("y", cand(5)));
    let errs: Vec<_> = error_frames(&w.clients[a])
        .into_iter()
        .map(|(code, r, msg)| (code, r, msg.split('(').nth(1).unwrap_or("").to_owned()))
        .collect();
    assert_eq!(
        errs,
        [
            (
                "held_full".into(),
                Some(r1),
                "held_bytes_per_call): send the rest once it is answered".into()
            ),
            (
                "held_full".into(),
                Some(r2),
                "held_bytes_per_user): send the rest once it is answered".into()
            ),
            (
                "held_full".into(),
                Some(r3),
                "held_signals_per_user): send the rest once it is answered".into()
            ),
        ]
    );
    assert_eq!(
        limits_hit(&w),
        [
            ("held_bytes_per_call", 1),
            ("held_signals_per_user", 1),
            ("held_bytes_per_user", 1)
        ]
    );
    // Both callees come online and get exactly what was held: 2 + 5 signals.
    let (b, c) = (w.add("bob", "b"), w.add("carol", "c"));
    w.connect(b);
    w.connect(c);
    assert_eq!(w.clients[b].of_type("call.signal").len(), 2);
    assert_eq!(w.clients[c].of_type("call.signal").len(), 5);
    // Ending call x frees its share: call y may hold more again.
    w.send(a, json!({"type": "call.cancel", "call": "x"}));
    w.send(a, signal("y", cand(9)));
    assert_eq!(w.clients[c].of_type("call.signal").len(), 6);
    assert_eq!(error_frames(&w.clients[a]).len(), 3);
}

#[test]
fn unacked_bytes_give_the_session_up_and_a_replay_shares_the_kept_frames() {
    let mut w = World::new(HubConfig {
        max_unacked_bytes: 100_000,
        ..HubConfig::default()
    });
    let (a, b) = (w.add("alice", "a"), w.add("bob", "b"));
    w.connect(a);
    w.connect(b);
    w.send(a, invite("u", "bob"));
    w.send(b, json!({"type": "call.accept", "call": "u", "sdp": "answer"}));
    w.drop_conn(b);
    // Under the cap: kept for the resume, and the replay shares the kept texts.
    for _ in 0..5 {
        w.send(a, signal("u", sdp_of(10_000)));
    }
    let conn = ConnId(10_000);
    w.hub.handle_connect(conn, w.now);
    let hello = json!({"type": "hello", "token": "dev:bob", "device": "b",
        "resume": {"session": w.clients[b].session.clone().unwrap(), "last_seq": w.clients[b].last_in}});
    w.hub.handle_text(conn, &hello.to_string(), w.now);
    let replay: Vec<Arc<str>> = std::iter::from_fn(|| w.hub.poll_output())
        .filter_map(|o| match o {
            Output::Send { text, .. } if text.contains("call.signal") => Some(text),
            _ => None,
        })
        .collect();
    assert_eq!(replay.len(), 5);
    assert!(
        replay.iter().all(|t| Arc::strong_count(t) == 2),
        "each replayed frame is the session's kept text, not a copy"
    );
    w.hub.handle_disconnect(conn, w.now);
    assert_eq!(w.metrics.get("sessions_ended", "unacked_overflow"), 0);
    // Over it: the session is given up as when the count overflows, and counted.
    for _ in 0..6 {
        w.send(a, signal("u", sdp_of(10_000)));
    }
    assert_eq!(limits_hit(&w), [("unacked_bytes", 1)]);
    assert_eq!(w.metrics.get("sessions_ended", "unacked_overflow"), 1);
    assert_eq!(w.clients[a].of_type("call.ended")[0]["reason"], "failed");
    assert_eq!(w.hub.session_count(), 1, "only alice's session is left");
    assert_eq!(
        w.metrics.unacked.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "the unacked gauge lost the given-up frames (alice acks hers)"
    );
}

#[test]
fn invites_a_fresh_session_has_no_room_for_do_not_give_it_up() {
    // 4 callers ring bob with large offers and held signals: more than one session of
    // his may hold unacknowledged.
    let mut w = World::new(HubConfig {
        max_unacked_bytes: 300_000,
        ..HubConfig::default()
    });
    let callers: Vec<usize> = (0..4).map(|n| w.add(&format!("m{n}"), "m")).collect();
    for (n, &m) in callers.iter().enumerate() {
        w.connect(m);
        let call = format!("c{n}");
        w.send(
            m,
            json!({"type": "call.invite", "call": call, "to": "bob", "media": "audio", "sdp": "o".repeat(60_000)}),
        );
        for _ in 0..2 {
            w.send(m, signal(&call, sdp_of(10_000)));
        }
    }
    let b = w.add("bob", "b");
    w.connect(b);
    // Three calls' frames fit (about 81 KB each), the fourth's do not: bob's session
    // lives, rings for three, and lists all four in its welcome.
    assert!(w.clients[b].conn.is_some());
    assert_eq!(w.metrics.get("sessions_ended", "unacked_overflow"), 0);
    assert_eq!(w.clients[b].of_type("call.incoming").len(), 3);
    assert_eq!(w.clients[b].of_type("call.signal").len(), 6);
    assert_eq!(w.clients[b].control[0]["calls"].as_array().unwrap().len(), 4);
    assert_eq!(limits_hit(&w), [("unacked_bytes_incoming", 1)]);
    let ringing: usize = callers
        .iter()
        .map(|&m| w.clients[m].of_type("call.ringing").len())
        .sum();
    assert_eq!(ringing, 3);
}

#[test]
fn error_frames_clip_what_they_echo() {
    let mut w = World::new(HubConfig::default());
    let a = w.add("alice", "a");
    w.connect(a);
    let long = "t".repeat(60_000);
    let s = w.send(a, json!({"type": long}));
    w.send(
        a,
        json!({"type": "call.invite", "call": "c", "to": "bob", "media": "m".repeat(60_000), "sdp": "o"}),
    );
    let errs = error_frames(&w.clients[a]);
    assert_eq!(errs[0].0, "unknown_type");
    assert_eq!(errs[0].1, Some(s));
    assert_eq!(errs[0].2, format!("unknown type \"{}…\"", "t".repeat(64)));
    // serde's own message quotes the bad value: the whole message is clipped.
    assert_eq!(errs[1].0, "bad_request");
    assert_eq!(errs[1].2.chars().count(), 257, "{}", errs[1].2);
    assert!(errs[1].2.ends_with('…'));
    assert!(w.clients[a].conn.is_some(), "the session goes on");
}

#[test]
fn invites_ringing_for_a_user_do_not_stop_them_calling_and_are_capped() {
    let mut w = World::new(HubConfig {
        max_calls_per_user: 2,
        max_ringing_per_callee: 3,
        ..HubConfig::default()
    });
    let (v, m1, m2, m3, c) = (
        w.add("victim", "v"),
        w.add("mallory1", "m"),
        w.add("mallory2", "m"),
        w.add("mallory3", "m"),
        w.add("carol", "c"),
    );
    for i in [v, m1, m2, m3, c] {
        w.connect(i);
    }
    // One ringing call per caller and callee: a second invite replaces the first, which
    // ends `cancelled` for the victim (review: two accounts with 8 invites each had kept
    // a callee busy for everyone).
    w.send(m1, invite("m1a", "victim"));
    w.send(m1, invite("m1b", "victim"));
    let ended = w.clients[v].of_type("call.ended");
    assert_eq!(
        (ended.len(), &ended[0]["call"], &ended[0]["reason"]),
        (1, &json!("m1a"), &json!("cancelled"))
    );
    w.send(m2, invite("m2a", "victim"));
    w.send(m3, invite("m3a", "victim"));
    // A fourth caller is past the per-callee cap: busy, and the victim hears nothing of it.
    w.send(c, invite("c0", "victim"));
    assert_eq!(w.clients[c].of_type("call.ended")[0]["call"], "c0");
    assert_eq!(w.clients[c].of_type("call.ended")[0]["reason"], "busy");
    assert_eq!(w.clients[v].of_type("call.incoming").len(), 4, "m1a, m1b, m2a, m3a");
    assert_eq!(limits_hit(&w), [("ringing_per_callee", 1)]);
    // A ringing call ending makes room for the next invite.
    w.send(m1, json!({"type": "call.cancel", "call": "m1b"}));
    w.send(m2, invite("m2c", "victim"));
    assert_eq!(w.clients[v].of_type("call.incoming").len(), 5);
    // The victim, rung three times, still places calls: up to its own limit of two.
    // (Not to mallory: an invite crossing theirs would be glare.)
    w.send(v, invite("v1", "carol"));
    w.send(v, invite("v2", "dave"));
    assert_eq!(w.clients[c].of_type("call.incoming").len(), 1);
    let s = w.send(v, invite("v3", "erin"));
    assert_eq!(
        error_frames(&w.clients[v]),
        [(
            "rate_limited".into(),
            Some(s),
            "at most 2 live calls (placed or answered) per user".into()
        )]
    );
    assert_eq!(w.metrics.limit_hits(Limit::CallsPerUser), 1);
    // An answered call counts: carol answers v1, then places one call, then no more.
    w.send(c, json!({"type": "call.accept", "call": "v1", "sdp": "a"}));
    w.send(c, invite("c1", "dave"));
    let s = w.send(c, invite("c2", "erin"));
    assert_eq!(error_frames(&w.clients[c])[0].1, Some(s));
    assert_eq!(w.metrics.limit_hits(Limit::CallsPerUser), 2);
}

#[test]
fn sessions_per_user_are_capped_at_hello() {
    let mut w = World::new(HubConfig {
        max_devices_per_user: 3,
        ..HubConfig::default()
    });
    let devs: Vec<usize> = (0..3).map(|n| w.add("alice", &format!("d{n}"))).collect();
    for &d in &devs {
        w.connect(d);
    }
    let extra = w.add("alice", "d3");
    w.connect(extra);
    let errs = error_frames(&w.clients[extra]);
    assert_eq!(errs.len(), 1);
    assert_eq!((errs[0].0.as_str(), errs[0].1), ("too_many_devices", None));
    assert_eq!(w.clients[extra].closed_with, Some(4009));
    assert!(w.clients[extra].session.is_none());
    assert_eq!(limits_hit(&w), [("devices_per_user", 1)]);
    assert_eq!(w.hub.session_count(), 3);
    assert!(devs.iter().all(|&d| w.clients[d].conn.is_some()), "the others carry on");
    // A device already counted may start a new session (it replaces its old one), and
    // a detached session still counts until it expires.
    w.clients[devs[0]].session = None;
    w.drop_conn(devs[0]);
    w.connect(devs[0]);
    assert!(w.clients[devs[0]].conn.is_some());
    w.drop_conn(devs[1]);
    w.connect(extra);
    assert_eq!(w.clients[extra].closed_with, Some(4009));
    w.advance(HubConfig::default().session_ttl);
    w.connect(extra);
    assert!(
        w.clients[extra].conn.is_some(),
        "room once the detached session expired"
    );
    assert_eq!(w.metrics.limit_hits(Limit::DevicesPerUser), 2);
    // Other users are not affected.
    let b = w.add("bob", "d0");
    w.connect(b);
    assert!(w.clients[b].conn.is_some());
}

#[test]
fn resumes_keep_one_heartbeat_and_one_refresh_per_session() {
    let mut w = World::new(HubConfig::default());
    let a = w.add("alice", "a");
    w.connect(a);
    w.advance(Duration::from_secs(11)); // the hello deadline entry is gone
    let settled = w.hub.timer_entries();
    for _ in 0..50 {
        w.drop_conn(a);
        w.connect(a);
    }
    w.advance(Duration::from_secs(11));
    assert_eq!(w.hub.timer_entries(), settled, "no timer entry per resume");
    assert_eq!(w.clients[a].control.iter().filter(|v| v["resumed"] == true).count(), 50);
    // 17 s after the last resume: one ping (at 15 s), not one per resume.
    w.advance(Duration::from_secs(6));
    assert_eq!(w.clients[a].pings, 1);
    // The credentials refresh once, 80% of the TTL after the last welcome's.
    w.advance(Duration::from_secs(480 - 17 - 1));
    assert_eq!(w.clients[a].of_type("ice_servers").len(), 0);
    w.advance(Duration::from_secs(1));
    assert_eq!(w.clients[a].of_type("ice_servers").len(), 1);
    w.advance(Duration::from_secs(60));
    assert_eq!(w.clients[a].of_type("ice_servers").len(), 1);
    // One ping every 15 s since the last resume.
    assert_eq!(w.clients[a].pings, 540 / 15);
}

#[test]
fn duplicate_keys_are_refused_on_every_path() {
    let (mut w, a, b) = in_call("d");
    let c = cand(1);
    for (text, key) in [
        // The scanner's path: an unknown envelope key, twice.
        (format!(r#"{{"type":"call.signal","x":1,"x":2,"seq":S,"call":"d","data":{c}}}"#), "x"),
        // Inside a candidate's data.
        (
            r#"{"type":"call.signal","seq":S,"call":"d","data":{"candidate":{"candidate":"candidate:1 1 udp 1 192.0.2.1 9 typ host","sdpMid":"0","sdpMid":"1"}}}"#.into(),
            "sdpMid",
        ),
        // Inside an SDP's data: a Value kept the last `type`, a peer might keep the first.
        (
            r#"{"type":"call.signal","seq":S,"call":"d","data":{"sdp":{"type":"offer","sdp":"v=0","type":"answer"}}}"#.into(),
            "type",
        ),
        // serde's path (an escaped key), twice the seq.
        (r#"{"typ\u0065":"call.hangup","seq":S,"seq":S,"call":"d"}"#.into(), "seq"),
        // A derive ignores unknown fields, twice or not.
        (r#"{"type":"call.hangup","seq":S,"call":"d","why":1,"why":2}"#.into(), "why"),
    ] {
        w.clients[a].out_seq += 1;
        let seq = w.clients[a].out_seq;
        w.raw(a, &text.replace(":S", &format!(":{seq}")));
        let e = error_frames(&w.clients[a]).pop().expect("an error");
        assert_eq!(
            (e.0.as_str(), e.1, e.2.as_str()),
            ("bad_request", Some(seq), format!("duplicate key {key:?}").as_str()),
            "{text}"
        );
    }
    assert_eq!(w.clients[b].of_type("call.signal").len(), 0, "nothing relayed");
    assert_eq!(w.hub.live_calls(), 1, "the hangup with a duplicate key did nothing");
    // The hello: a `Value` kept the last token.
    let m = w.add("mallory", "m");
    let conn = ConnId(5_000);
    w.clients[m].conn = Some(conn);
    w.hub.handle_connect(conn, w.now);
    w.raw(
        m,
        r#"{"type":"hello","token":"dev:mallory","device":"m","token":"dev:alice"}"#,
    );
    assert_eq!(
        error_frames(&w.clients[m]),
        [("bad_request".into(), None, r#"hello: duplicate key "token""#.into())]
    );
    assert_eq!(w.clients[m].closed_with, Some(4000));
    // The call goes on.
    w.send(a, signal("d", cand(2)));
    assert_eq!(w.clients[b].of_type("call.signal").len(), 1);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]
    /// A client frame with some key twice in any one object, wherever, is refused with
    /// `bad_request` naming the key, and nothing is relayed; the same frame without the
    /// duplicate is relayed.
    #[test]
    fn a_duplicate_key_anywhere_is_refused(
        depth in 0usize..4,
        key in proptest::sample::select(vec!["a", "sdpMid", "candidate", "type", "call", "data", "seq", "x\u{e9}"]),
        escape in proptest::bool::ANY,
    ) {
        let (mut w, a, b) = in_call("p");
        // `data` is an SDP signal whose `sdp` object has an extension object `ext` with
        // `depth` levels of `"n":{…}` in it, the innermost holding the duplicate.
        let mut inner = String::from(r#""z":0"#);
        let mut dup = format!(r#""{key}":1,{inner},"{}":2"#, if escape { key.replace('a', "\\u0061") } else { key.to_owned() });
        for _ in 0..depth {
            inner = format!(r#""n":{{{inner}}}"#);
            dup = format!(r#""n":{{{dup}}}"#);
        }
        let frame = |body: &str, seq: u64| {
            format!(r#"{{"type":"call.signal","seq":{seq},"call":"p","data":{{"sdp":{{"type":"offer","sdp":"v=0","ext":{{{body}}}}}}}}}"#)
        };
        w.clients[a].out_seq += 1;
        let seq = w.clients[a].out_seq;
        w.raw(a, &frame(&dup, seq));
        let e = error_frames(&w.clients[a]).pop();
        let dup_key_refused = e.as_ref().map(|e| (e.0.as_str(), e.1)) == Some(("bad_request", Some(seq)))
            && e.as_ref().is_some_and(|e| e.2.starts_with("duplicate key"));
        // Escaped or not, the key is the same key twice.
        proptest::prop_assert!(dup_key_refused, "{:?} for {}", e, frame(&dup, seq));
        proptest::prop_assert_eq!(w.clients[b].of_type("call.signal").len(), 0);
        w.clients[a].out_seq += 1;
        let seq = w.clients[a].out_seq;
        w.raw(a, &frame(&inner, seq));
        proptest::prop_assert_eq!(w.clients[b].of_type("call.signal").len(), 1);
    }
}

#[test]
fn ended_calls_and_invite_pairs_are_remembered_within_their_caps() {
    // Before: both maps held every call and pair of their window (10 and 2 minutes),
    // ~110 bytes per call: a soak of ordinary calls grew the server without bound
    // in call count (18.6 -> 49 MiB after 230,000 calls in 10 minutes).
    let mut w = World::new(HubConfig {
        max_ended_calls: 3,
        max_invite_pairs: 2,
        ..HubConfig::default()
    });
    let (a, b) = (w.add("alice", "a"), w.add("bob", "b"));
    w.connect(a);
    w.connect(b);
    for n in 0..5 {
        let call = format!("e{n}");
        w.send(a, invite(&call, if n % 2 == 0 { "bob" } else { "carol" }));
        w.send(a, json!({"type": "call.cancel", "call": call}));
    }
    assert_eq!(w.metrics.limit_hits(Limit::EndedCalls), 2, "e0 and e1 forgotten first");
    // A repeat of a remembered call is still a no-op; of a forgotten one, a new call.
    let rung = w.clients[b].of_type("call.incoming").len();
    w.send(a, invite("e4", "carol"));
    w.send(a, invite("e2", "bob"));
    assert_eq!(w.clients[b].of_type("call.incoming").len(), rung, "e2 is remembered");
    w.send(a, invite("e0", "bob"));
    assert_eq!(
        w.clients[b].of_type("call.incoming").len(),
        rung + 1,
        "e0 was forgotten"
    );
    // Two pairs at most: alice-bob and alice-carol, then alice-dave pushes one out.
    assert_eq!(w.metrics.limit_hits(Limit::InvitePairs), 0);
    w.send(a, invite("d1", "dave"));
    assert_eq!(w.metrics.limit_hits(Limit::InvitePairs), 1);
    assert!(w.clients[a].of_type("error").is_empty(), "nothing refused");
}

#[test]
fn an_ended_call_leaves_no_timer_behind() {
    let mut w = World::new(HubConfig::default());
    let (a, b) = (w.add("alice", "a"), w.add("bob", "b"));
    w.connect(a);
    w.connect(b);
    let base = w.hub.timer_entries();
    for n in 0..100 {
        let call = format!("t{n}");
        w.send(a, invite(&call, "bob"));
        w.send(a, json!({"type": "call.cancel", "call": call}));
    }
    // Acks owed to each side may hold one entry each; no ring timer per ended call.
    assert!(
        w.hub.timer_entries() <= base + 2,
        "{} timer entries, {base} before",
        w.hub.timer_entries()
    );
}

#[test]
fn a_camera_that_cannot_open_ends_the_call_as_media_failed_not_rejected() {
    for (caller_fails, answered) in [(false, false), (false, true), (true, false)] {
        let mut w = World::new(HubConfig::default());
        let (a, b) = (w.add("alice", "a"), w.add("bob", "b"));
        w.connect(a);
        w.connect(b);
        w.send(a, invite("m", "bob"));
        if answered {
            w.send(b, json!({"type": "call.accept", "call": "m", "sdp": "a"}));
        }
        let (failing, other) = if caller_fails { (a, b) } else { (b, a) };
        w.send(
            failing,
            json!({"type": "call.hangup", "call": "m", "reason": "media_failed"}),
        );
        let ended = w.clients[other].of_type("call.ended");
        assert_eq!(ended.len(), 1, "{caller_fails} {answered}");
        assert_eq!(
            ended[0]["reason"], "media_failed",
            "{caller_fails} {answered}: {}",
            ended[0]
        );
        assert_eq!(w.metrics.get("calls_ended", "media_failed"), 1);
        assert_eq!(w.metrics.get("calls_ended", "rejected"), 0);
    }
}

fn restore(call: &str, role: &str, peer: &str, peer_device: &str) -> Value {
    json!({"type": "call.restore", "call": call, "role": role, "peer": peer, "peer_device": peer_device, "media": "video"})
}

fn restored(c: &Client) -> Vec<bool> {
    c.of_type("call.restored")
        .iter()
        .map(|v| v["peer_back"].as_bool().unwrap())
        .collect()
}

/// A fresh hub is a restarted server: it never saw the call both sides still have.
#[test]
fn a_call_restored_by_both_sides_after_a_restart_is_live_again() {
    let mut w = World::new(HubConfig::default());
    let (a, b) = (w.add("alice", "a"), w.add("bob", "b"));
    w.connect(a);
    w.send(a, restore("c1", "caller", "bob", "b"));
    assert_eq!(restored(&w.clients[a]), [false], "waiting for Bob");
    // Bob's new session does not list Alice's claim (a claim shows nobody anything); his
    // SDK restores the call it still has because the snapshot lacks it.
    w.connect(b);
    assert_eq!(w.clients[b].control[0]["calls"], json!([]));
    // Alice's own sessions list it, as restoring (here after a blip and a resume).
    w.drop_conn(a);
    w.connect(a);
    let welcome = w.clients[a]
        .control
        .iter()
        .rev()
        .find(|v| v["type"] == "welcome")
        .unwrap();
    let snapshot = &welcome["calls"];
    assert_eq!(welcome["resumed"], true);
    assert_eq!(
        (
            snapshot[0]["call"].clone(),
            snapshot[0]["state"].clone(),
            snapshot[0]["role"].clone()
        ),
        (json!("c1"), json!("restoring"), json!("caller"))
    );
    // A one-sided claim names no parties on a resume: it must not let Alice's address
    // into Bob's relays (TURN peer grants).
    assert!(w.answered.is_empty(), "a claim names nobody");
    w.send(b, restore("c1", "callee", "alice", "a"));
    assert_eq!(restored(&w.clients[a]), [false, true]);
    assert_eq!(restored(&w.clients[b]), [true]);
    // Restored by both, it is an answered call: a resume names both parties.
    w.drop_conn(b);
    w.connect(b);
    assert_eq!(w.answered.len(), 1, "both sides stand in the restored call");
    // An ordinary answered call again: signals both ways, a hang-up reaches the other side.
    w.send(a, signal("c1", cand(1)));
    w.send(b, signal("c1", cand(2)));
    assert_eq!(w.clients[b].of_type("call.signal")[0]["data"], cand(1));
    assert_eq!(w.clients[a].of_type("call.signal")[0]["data"], cand(2));
    // A repeat (a resend after a blip) is answered again, and changes nothing.
    w.send(b, restore("c1", "callee", "alice", "a"));
    assert_eq!(restored(&w.clients[b]), [true, true]);
    w.send(a, json!({"type": "call.hangup", "call": "c1"}));
    let ended = w.clients[b].of_type("call.ended");
    assert_eq!((ended.len(), ended[0]["reason"].clone()), (1, json!("hangup")));
    assert!(errors(&w.clients[a]).is_empty() && errors(&w.clients[b]).is_empty());
    assert_eq!(w.metrics.get("restores", "completed"), 1);
    assert_eq!(w.metrics.get("restores", "repeated"), 1);
    assert_eq!(w.hub.live_calls(), 0);
}

#[test]
fn a_hangup_while_the_other_side_is_away_reaches_it_when_it_restores() {
    let mut w = World::new(HubConfig::default());
    let (a, b) = (w.add("alice", "a"), w.add("bob", "b"));
    w.connect(a);
    w.send(a, restore("c1", "caller", "bob", "b"));
    // Nobody to relay to yet: refused, not dropped.
    w.send(a, signal("c1", cand(1)));
    assert_eq!(errors(&w.clients[a]), ["unknown_call"]);
    w.send(a, json!({"type": "call.hangup", "call": "c1"}));
    assert_eq!(w.hub.live_calls(), 0);
    w.connect(b);
    assert!(w.clients[b].control[0]["calls"].as_array().unwrap().is_empty());
    w.send(b, restore("c1", "callee", "alice", "a"));
    let ended = w.clients[b].of_type("call.ended");
    assert_eq!((ended.len(), ended[0]["reason"].clone()), (1, json!("hangup")));
    assert!(restored(&w.clients[b]).is_empty());
    assert_eq!(w.metrics.get("restores", "ended_meanwhile"), 1);
    // Someone else's restore of that ended call learns nothing.
    let m = w.add("mallory", "m");
    w.connect(m);
    w.send(m, restore("c1", "callee", "alice", "a"));
    assert_eq!(errors(&w.clients[m]), ["not_participant"]);
    assert!(w.clients[m].of_type("call.ended").is_empty());
}

#[test]
fn a_restore_the_other_side_never_completes_ends_failed_after_the_session_ttl() {
    let cfg = HubConfig::default();
    let ttl = cfg.session_ttl;
    let mut w = World::new(cfg);
    let a = w.add("alice", "a");
    w.connect(a);
    w.send(a, restore("c1", "caller", "bob", "b"));
    w.advance(ttl - Duration::from_secs(1));
    assert!(w.clients[a].of_type("call.ended").is_empty());
    w.advance(Duration::from_secs(1));
    let ended = w.clients[a].of_type("call.ended");
    assert_eq!((ended.len(), ended[0]["reason"].clone()), (1, json!("failed")));
    assert_eq!(w.metrics.get("restores", "expired"), 1);
    assert_eq!(w.hub.live_calls(), 0);
}

#[test]
fn restore_claims_that_do_not_fit_are_refused_and_a_claim_makes_nobody_busy() {
    let mut w = World::new(HubConfig::default());
    let (a, b, m, c) = (
        w.add("alice", "a"),
        w.add("bob", "b"),
        w.add("mallory", "m"),
        w.add("carol", "c"),
    );
    for i in [a, b, m, c] {
        w.connect(i);
    }
    w.send(a, restore("c1", "caller", "bob", "b"));
    // Not the parties the call has, or the side already held by another device.
    w.send(m, restore("c1", "callee", "alice", "a"));
    w.send(m, restore("c1", "caller", "bob", "b"));
    assert_eq!(errors(&w.clients[m]), ["not_participant", "not_participant"]);
    let a2 = w.add("alice", "a2");
    w.connect(a2);
    w.send(a2, restore("c1", "caller", "bob", "b"));
    assert_eq!(errors(&w.clients[a2]), ["not_participant"]);
    w.send(a, restore("c1", "callee", "bob", "b"));
    assert_eq!(
        errors(&w.clients[a]),
        ["not_participant"],
        "the other role, same users swapped"
    );
    // Bob did not restore: Alice's claim names him, but he is not busy and his own
    // calls are not counted, nor was anything sent to him.
    assert!(w.clients[b].of_type("call.ended").is_empty() && w.clients[b].of_type("call.restored").is_empty());
    w.send(c, invite("c2", "bob"));
    assert_eq!(w.clients[b].of_type("call.incoming").len(), 1, "Bob rings: not busy");
    for n in 0..HubConfig::default().max_calls_per_user {
        w.send(b, invite(&format!("out{n}"), "nobody"));
    }
    assert!(errors(&w.clients[b]).is_empty(), "{:?}", errors(&w.clients[b]));
    // A call with oneself is no call.
    w.send(c, restore("c3", "caller", "carol", "c"));
    assert_eq!(errors(&w.clients[c]), ["bad_request"]);
    assert_eq!(w.metrics.get("restores", "refused"), 4);
}

fn report(call: &str, rtt_ms: f64, loss: f64) -> Value {
    json!({"type": "call.report", "call": call, "duration_ms": 60_000, "rtt_ms": rtt_ms, "loss": loss, "restarts": 0})
}

#[test]
fn each_side_reports_an_ended_call_once_into_the_quality_histograms() {
    let (mut w, a, b) = in_call("c1");
    // Not before it ended.
    w.send(a, report("c1", 50.0, 0.01));
    assert_eq!(errors(&w.clients[a]), ["bad_request"]);
    w.send(a, json!({"type": "call.hangup", "call": "c1"}));
    w.send(a, report("c1", 50.0, 0.01));
    w.send(b, report("c1", 150.0, 0.05));
    // A resend is counted once; figures out of range and strangers are refused.
    w.send(b, report("c1", 150.0, 0.05));
    w.send(b, report("c1", 50.0, 1.5));
    let m = w.add("mallory", "m");
    w.connect(m);
    w.send(m, report("c1", 50.0, 0.0));
    w.send(m, report("nope", 50.0, 0.0));
    assert_eq!(errors(&w.clients[a]), ["bad_request"]);
    assert_eq!(errors(&w.clients[b]), ["bad_request"]);
    assert_eq!(errors(&w.clients[m]), ["not_participant", "unknown_call"]);
    assert_eq!(w.metrics.get("call_reports", "recorded"), 2);
    assert_eq!(w.metrics.get("call_reports", "duplicate"), 1);
    assert_eq!((w.metrics.call_rtt.count(), w.metrics.call_loss.count()), (2, 2));
    let mut text = String::new();
    w.metrics.render(&mut text);
    for line in [
        "firstcall_call_rtt_seconds_bucket{le=\"0.05\"} 1",
        "firstcall_call_rtt_seconds_bucket{le=\"0.15\"} 2",
        "firstcall_call_rtt_seconds_sum 0.2",
        "firstcall_call_audio_loss_ratio_bucket{le=\"0.01\"} 1",
        "firstcall_call_audio_loss_ratio_bucket{le=\"0.05\"} 2",
        "firstcall_call_audio_loss_ratio_count 2",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} not in:\n{text}");
    }
}

fn register(push: Option<&str>, state: &str) -> Value {
    json!({"type": "device.update", "push": push.map(|t| json!({"provider": "apns-voip", "token": t})), "state": state})
}

/// The webhook events of one kind, as (event, device).
fn hooks(w: &World, event: &str) -> Vec<(String, Value)> {
    w.webhooks
        .iter()
        .filter(|b| b["event"] == event)
        .map(|b| (b["event"].as_str().unwrap().to_owned(), b["device"].clone()))
        .collect()
}

#[test]
fn devices_that_would_not_ring_by_their_socket_are_pushed_and_hear_how_the_call_ended_once() {
    let mut w = World::new(HubConfig::default());
    let a = w.add("alice", "a");
    let (b1, b2, b3) = (w.add("bob", "b1"), w.add("bob", "b2"), w.add("bob", "b3"));
    for i in [a, b1, b2, b3] {
        w.connect(i);
    }
    // b1 in front with a push target: its socket rings it. b2 in the background. b3's app
    // was killed: its session waits for a resume that will not come soon.
    w.send(b1, register(Some("t1"), "foreground"));
    w.send(b2, register(Some("t2"), "background"));
    w.send(b3, register(Some("t3"), "foreground"));
    w.drop_conn(b3);
    let mut inv = invite("c1", "bob");
    inv["meta"] = json!({"room": "standup"});
    w.send(a, inv);
    let rings: Vec<&Value> = w.webhooks.iter().filter(|b| b["event"] == "call.ring").collect();
    assert_eq!(
        rings[0]["meta"],
        json!({"room": "standup"}),
        "the phone shows the app's data"
    );
    let got: Vec<(Value, Value, Value)> = rings
        .iter()
        .map(|b| (b["device"].clone(), b["why"].clone(), b["push"]["token"].clone()))
        .collect();
    assert_eq!(
        got,
        [
            (json!("b2"), json!("background"), json!("t2")),
            (json!("b3"), json!("offline"), json!("t3"))
        ]
    );
    assert_eq!(rings[0]["from"], "alice");
    assert_eq!(rings[0]["media"], "video");
    assert_eq!(rings[0]["id"], "c1/b2/call.ring");
    // The backgrounded device still rings by its socket too.
    assert_eq!(w.clients[b2].of_type("call.incoming").len(), 1);
    w.send(a, json!({"type": "call.cancel", "call": "c1"}));
    assert_eq!(
        hooks(&w, "call.cancelled"),
        [
            ("call.cancelled".into(), json!("b2")),
            ("call.cancelled".into(), json!("b3"))
        ]
    );

    // Answered on b1: the pushed devices hear it once, and nothing more at the hang-up.
    w.send(a, invite("c2", "bob"));
    w.send(b1, json!({"type": "call.accept", "call": "c2", "sdp": "v=0 answer"}));
    w.send(a, json!({"type": "call.hangup", "call": "c2"}));
    assert_eq!(
        hooks(&w, "call.answered_elsewhere"),
        [
            ("call.answered_elsewhere".into(), json!("b2")),
            ("call.answered_elsewhere".into(), json!("b3"))
        ]
    );
    assert!(hooks(&w, "call.ended").is_empty());
    // A pushed device that answers is not told it was answered elsewhere.
    w.send(a, invite("c3", "bob"));
    w.send(b2, json!({"type": "call.accept", "call": "c3", "sdp": "v=0 answer"}));
    let elsewhere: Vec<Value> = w
        .webhooks
        .iter()
        .filter(|b| b["event"] == "call.answered_elsewhere" && b["call"] == "c3")
        .map(|b| b["device"].clone())
        .collect();
    assert_eq!(elsewhere, [json!("b3")]);
}

#[test]
fn a_silent_socket_is_pushed_and_a_missed_call_is_told_per_device_or_once() {
    let cfg = HubConfig::default();
    let (heartbeat, ring) = (cfg.heartbeat, cfg.ring_timeout);
    let mut w = World::new(cfg);
    let (a, b) = (w.add("alice", "a"), w.add("bob", "b"));
    w.connect(a);
    w.connect(b);
    w.send(b, register(Some("tb"), "foreground"));
    // Bob's phone went to sleep without closing its socket: nothing comes from it, the
    // server's pings go unanswered (a half-open socket, from the server's side).
    w.clients[b].conn = None;
    w.advance(heartbeat * 3 / 2 + Duration::from_secs(1));
    w.send(a, invite("c1", "bob"));
    let rings = w.webhooks.iter().filter(|b| b["event"] == "call.ring").count();
    assert_eq!(rings, 1);
    assert_eq!(
        w.webhooks.iter().find(|b| b["event"] == "call.ring").unwrap()["why"],
        "silent"
    );
    w.advance(ring);
    assert_eq!(hooks(&w, "call.missed"), [("call.missed".into(), json!("b"))]);
    // No device pushed (Carol registered none): the missed call is told once, for the
    // app's missed-call list.
    let c = w.add("carol", "c");
    w.connect(c);
    w.send(a, invite("c2", "carol"));
    w.advance(ring);
    let missed: Vec<(Value, Value)> = w
        .webhooks
        .iter()
        .filter(|b| b["event"] == "call.missed" && b["call"] == "c2")
        .map(|b| (b["to"].clone(), b["device"].clone()))
        .collect();
    assert_eq!(missed, [(json!("carol"), Value::Null)]);
}

#[test]
fn push_registrations_are_bounded_checked_and_can_be_removed() {
    let cfg = HubConfig {
        max_push_devices: 3,
        ..HubConfig::default()
    };
    let mut w = World::new(cfg);
    let a = w.add("alice", "a");
    w.connect(a);
    let devices: Vec<usize> = (0..4).map(|i| w.add("bob", &format!("b{i}"))).collect();
    for &d in &devices {
        w.connect(d);
        w.send(d, register(Some("tok"), "background"));
    }
    assert!(devices[..3].iter().all(|d| errors(&w.clients[*d]).is_empty()));
    assert_eq!(errors(&w.clients[devices[3]]), ["rate_limited"]);
    assert_eq!(w.metrics.limit_hits(firstcall_signal::metrics::Limit::PushDevices), 1);
    // Updating an existing registration is always allowed; `null` removes the target.
    w.send(devices[0], json!({"type": "device.update", "push": null}));
    w.send(devices[1], register(Some(&"x".repeat(5000)), "background"));
    assert_eq!(errors(&w.clients[devices[1]]), ["bad_request"]);
    w.send(
        devices[2],
        json!({"type": "device.update", "push": {"provider": "pigeon", "token": "t"}}),
    );
    assert_eq!(errors(&w.clients[devices[2]]), ["bad_request"]);
    w.send(a, invite("c1", "bob"));
    let pushed: Vec<Value> = w
        .webhooks
        .iter()
        .filter(|b| b["event"] == "call.ring")
        .map(|b| b["device"].clone())
        .collect();
    assert_eq!(
        pushed,
        [json!("b1"), json!("b2")],
        "b0 removed its target, b3 was never registered"
    );
}

/// An invite with the app's `meta`.
fn invite_meta(call: &str, to: &str, meta: Value) -> Value {
    let mut f = invite(call, to);
    f["meta"] = meta;
    f
}

#[test]
fn invite_meta_reaches_incoming_snapshots_and_the_webhook() {
    let mut w = World::new(HubConfig::default());
    let (a, b) = (w.add("alice", "a"), w.add("bob", "b"));
    w.connect(a);
    let meta = json!({"room": "standup", "ticket": 42, "nested": {"tags": ["x", "y"]}, "unicode": "café"});
    // Bob is offline: the webhook carries the meta, the held invite too.
    w.send(a, invite_meta("m1", "bob", meta.clone()));
    assert_eq!(w.webhooks.len(), 1);
    assert_eq!(w.webhooks[0]["meta"], meta);
    w.connect(b);
    let incoming = w.clients[b].of_type("call.incoming");
    assert_eq!(incoming.len(), 1);
    assert_eq!(incoming[0]["meta"], meta);
    // A second device of Bob's, and Alice's own resumed-elsewhere session: the
    // snapshot in their welcome holds it.
    let b2 = w.add("bob", "b2");
    w.connect(b2);
    assert_eq!(w.clients[b2].control[0]["calls"][0]["meta"], meta);
    assert_eq!(w.clients[b2].of_type("call.incoming")[0]["meta"], meta);
    w.send(b, json!({"type": "call.accept", "call": "m1", "sdp": "v=0 answer"}));
    let a2 = w.add("alice", "a2");
    w.connect(a2);
    let snap = &w.clients[a2].control[0]["calls"][0];
    assert_eq!((snap["state"].clone(), snap["meta"].clone()), (json!("accepted"), meta));
    // Without meta nothing changes on the wire: no `meta` key at all.
    w.send(a, json!({"type": "call.hangup", "call": "m1"}));
    w.send(a, invite("plain", "bob"));
    let plain = w.clients[b].of_type("call.incoming")[1].clone();
    assert_eq!(plain["call"], "plain");
    assert!(plain.get("meta").is_none(), "{plain}");
    assert!(errors(&w.clients[a]).is_empty(), "{:?}", errors(&w.clients[a]));
}

#[test]
fn invite_meta_is_an_object_of_at_most_4_kib_else_bad_request_and_nothing_changes() {
    let mut w = World::new(HubConfig::default());
    let (a, b) = (w.add("alice", "a"), w.add("bob", "b"));
    w.connect(a);
    w.connect(b);
    // `{"k":"…"}` is 8 bytes around the string: 4088 characters make 4096 exactly.
    let at_limit = json!({"k": "x".repeat(4088)});
    assert_eq!(at_limit.to_string().len(), 4096);
    let over = json!({"k": "x".repeat(4089)});
    let refused = [
        over,
        json!("a string"),
        json!(["an", "array"]),
        json!(7),
        json!({"k": "é".repeat(2045)}), // 4098 bytes, 2053 characters: bytes count
    ];
    for (n, meta) in refused.iter().enumerate() {
        let seq = w.send(a, invite_meta(&format!("bad{n}"), "bob", meta.clone()));
        let e = w.clients[a].of_type("error").last().cloned().expect("an error");
        assert_eq!(
            (e["code"].clone(), e["ref"].clone()),
            (json!("bad_request"), json!(seq)),
            "{meta}"
        );
    }
    let e = w.clients[a].of_type("error")[0]["message"].as_str().unwrap().to_owned();
    assert!(e.contains("4097") && e.contains("4096"), "{e}");
    // Nothing else happened: no call, no frame to Bob, no webhook, no call counted.
    assert!(w.clients[b].got.is_empty(), "{:?}", w.clients[b].got);
    assert!(w.webhooks.is_empty());
    assert_eq!(w.hub.call_count(), 0);
    // The refused id is free: the same invite with a good meta goes through.
    w.send(a, invite_meta("bad0", "bob", at_limit.clone()));
    w.send(a, invite_meta("ok", "bob", json!({})));
    let incoming = w.clients[b].of_type("call.incoming");
    assert_eq!(incoming.len(), 2);
    assert_eq!(incoming[0]["meta"], at_limit);
    assert_eq!(incoming[1]["meta"], json!({}));
    // `null` is the same as no meta.
    w.send(a, invite_meta("n", "carol", Value::Null));
    assert_eq!(w.clients[a].of_type("error").len(), refused.len());
}

/// A drain walks every session and socket (the hub's maps, which a replica iterates in
/// another order): both end the idle sessions and close every socket in the same order.
#[test]
fn a_drain_ends_idle_sessions_and_closes_sockets_alike_on_a_replica() {
    let (mut w, a, b) = in_call("d");
    let idle: Vec<usize> = (0..12).map(|n| w.add(&format!("idle{n}"), "x")).collect();
    for &i in &idle {
        w.connect(i);
    }
    w.hub.start_drain(w.now);
    w.pump();
    w.advance(Duration::from_secs(1));
    for &i in &idle {
        assert_eq!(
            w.clients[i].closed_with,
            Some(1012),
            "an idle session is sent elsewhere"
        );
    }
    assert!(
        w.clients[a].conn.is_some() && w.clients[b].conn.is_some(),
        "the call carries on"
    );
    w.hub.close_all(w.now);
    w.pump();
    assert_eq!(w.clients[a].closed_with, Some(1012));
    assert_eq!(w.clients[b].closed_with, Some(1012));
}
