//! The signaling hub: sessions (seq/ack/resume), routing, and the server-owned
//! call state machine.
//!
//! # Driving contract
//!
//! The driver gives every WebSocket a [`ConnId`] and feeds the hub with
//! [`Hub::handle_connect`], [`Hub::handle_text`] (one per text frame) and
//! [`Hub::handle_disconnect`]; it calls [`Hub::handle_timeout`] when
//! [`Hub::poll_timeout`] is due, and after every call drains [`Hub::poll_output`]
//! in order: frames to write, connections to close, webhooks to post. The hub
//! never reads a clock (time is `now`; the wall clock for tokens is anchored with
//! [`Hub::set_unix_time`]) and takes its randomness from the injected `R`.
//!
//! # Never a silent drop
//!
//! Every server frame a session is sent is kept until the client acknowledges
//! it, whether or not a socket is attached; a resume replays exactly what is
//! unacknowledged. A frame the hub refuses gets an `error` naming its `seq`.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::RngCore;
use serde_json::{json, Map, Value};
use tracing::Span;

use crate::metrics::{Limit, SignalMetrics};
use crate::protocol::*;
use crate::recent::Recent;

/// Settings.
#[derive(Clone, Debug)]
pub struct HubConfig {
    /// How long a session without a socket is kept with its frames.
    pub session_ttl: Duration,
    /// How long a call rings before `timeout`/`unreachable`.
    pub ring_timeout: Duration,
    /// Server ping interval (told to clients as `heartbeat_ms`).
    pub heartbeat: Duration,
    /// Deadline for the first frame.
    pub hello_timeout: Duration,
    /// Acks are coalesced and sent at most this long after a frame.
    pub ack_delay: Duration,
    /// Most live calls one user may have placed or answered (invites ringing for the
    /// user do not count: see `max_ringing_per_callee`).
    pub max_calls_per_user: usize,
    /// Frames per second a session may send (sustained).
    pub rate_per_sec: f64,
    /// Burst allowance on top of the rate.
    pub rate_burst: f64,
    /// Unacknowledged frames a session may accumulate before it is given up.
    pub max_unacked: usize,
    /// Bytes of unacknowledged frames a session may accumulate before it is given up.
    /// A resume replays them, so this also bounds one replay.
    pub max_unacked_bytes: usize,
    /// Signals a caller may send while the call rings: they are held (and copied to
    /// every callee device that comes later). A real call sends 20-40 candidates and
    /// maybe an SDP before an answer.
    pub max_held_signals_per_call: usize,
    /// Bytes of `data` held for one ringing call.
    pub max_held_bytes_per_call: usize,
    /// Signals held over all the ringing calls one user placed.
    pub max_held_signals_per_user: usize,
    /// Bytes held over all the ringing calls one user placed.
    pub max_held_bytes_per_user: usize,
    /// Invites that may ring for one callee at once; one more ends `busy`.
    pub max_ringing_per_callee: usize,
    /// Sessions (devices, attached or awaiting a resume) one user may have; one more
    /// hello is refused with `too_many_devices` and close code 4009.
    pub max_devices_per_user: usize,
    /// Ended call ids remembered (10 minutes at most) so that a repeated invite stays a
    /// no-op; past it the oldest are forgotten first.
    pub max_ended_calls: usize,
    /// User pairs whose last invite is remembered (2 minutes at most) to tell a retry
    /// from a first attempt; past it the oldest are forgotten first.
    pub max_invite_pairs: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            session_ttl: Duration::from_secs(60),
            ring_timeout: Duration::from_secs(45),
            heartbeat: Duration::from_secs(15),
            hello_timeout: Duration::from_secs(10),
            ack_delay: Duration::from_millis(100),
            max_calls_per_user: 8,
            rate_per_sec: 100.0,
            rate_burst: 200.0,
            max_unacked: 4096,
            // 16 sessions per user at 1 MiB each bound one token to 16 MiB of frames
            // waiting for acknowledgement, and hold a resume's replay of several
            // full-size invites (64 KiB of SDP and 64 KiB of held signals each).
            max_unacked_bytes: 1 << 20,
            max_held_signals_per_call: 64,
            max_held_bytes_per_call: 64 << 10,
            max_held_signals_per_user: 256,
            max_held_bytes_per_user: 256 << 10,
            max_ringing_per_callee: 16,
            max_devices_per_user: 16,
            max_ended_calls: 16_384,
            max_invite_pairs: 16_384,
        }
    }
}

/// Verifies hello tokens.
pub trait TokenVerifier: Send + Sync {
    /// The user a token names, if it is valid at `now_unix`.
    fn verify(&self, token: &str, now_unix: u64) -> Result<UserId, String>;
}

/// Mints ICE servers (TURN credentials) for a user.
pub trait IceProvider: Send + Sync {
    /// ICE servers and the seconds they stay valid.
    fn ice_servers(&self, user: &UserId, now_unix: u64) -> (Vec<IceServer>, u64);
}

/// A WebSocket connection, numbered by the driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// Something for the driver to do.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    /// Write a text frame.
    Send {
        /// Connection.
        conn: ConnId,
        /// JSON text. Shared with the session's copy kept until it is acknowledged, so
        /// a frame and its replays on resume cost its bytes once in the hub.
        text: Arc<str>,
    },
    /// Close the socket with a WebSocket close code.
    Close {
        /// Connection.
        conn: ConnId,
        /// Close code (4000-4009).
        code: u16,
        /// Reason text.
        reason: &'static str,
    },
    /// POST this event to the webhook (a callee has no device online).
    Webhook {
        /// The JSON body.
        body: Value,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Hello(ConnId),
    Ack(u64),
    Heartbeat(u64),
    Expire(u64),
    Ring(u64),
    Ice(u64),
}

struct Conn {
    session: Option<SessionKey>,
    last_rx: Instant,
}

type SessionKey = u64;
type CallKey = u64;

struct Session {
    id: SessionId,
    user: UserId,
    device: DeviceId,
    conn: Option<ConnId>,
    out_seq: u64,
    unacked: VecDeque<(u64, Arc<str>)>,
    /// Bytes of the texts in `unacked`.
    unacked_bytes: usize,
    in_seq: u64,
    /// When the separate `ack` frame is due, if one is owed and no frame carried it yet.
    ack_due: Option<Instant>,
    /// The deadline of this session's one `Timer::Ack` entry, if it has one. Timer
    /// entries are never removed, and an ack that rides on a frame leaves its entry
    /// behind; the entry then serves the next owed ack (re-armed at its deadline when it
    /// fires early) instead of a new entry per received frame, which had cost two timer
    /// tree operations per relayed frame.
    ack_timer: Option<Instant>,
    detached_at: Option<Instant>,
    /// The deadlines of this session's one `Timer::Heartbeat`, `Timer::Ice` and
    /// `Timer::Expire` entry, if it has one. A new deadline replaces the entry (see
    /// [`arm`]): a session has at most one of each however often it resumes, where
    /// every resume had added a heartbeat and a credential refresh of its own.
    heartbeat_at: Option<Instant>,
    ice_at: Option<Instant>,
    expire_at: Option<Instant>,
    awaiting_ring: Vec<(u64, CallKey)>,
    tokens: f64,
    tokens_at: Instant,
}

impl Session {
    /// Forget the frames up to `n`, which the client has; how many there were.
    fn drop_acked(&mut self, n: u64) -> usize {
        let before = self.unacked.len();
        while let Some((_, t)) = self.unacked.front().filter(|(q, _)| *q <= n) {
            self.unacked_bytes -= t.len();
            self.unacked.pop_front();
        }
        before - self.unacked.len()
    }
}

/// Why a session ended, as counted in `sessions_ended{reason}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SessionEnd {
    /// No resume within the session TTL.
    Ttl,
    /// The same device said hello without resuming.
    Replaced,
    /// Too many (or too many bytes of) unacknowledged frames.
    UnackedOverflow,
}

impl SessionEnd {
    fn as_str(self) -> &'static str {
        match self {
            SessionEnd::Ttl => "ttl",
            SessionEnd::Replaced => "replaced",
            SessionEnd::UnackedOverflow => "unacked_overflow",
        }
    }
}

/// Set a session's one timer entry of a kind to `at`, replacing the entry it had.
fn arm(timers: &mut BTreeSet<(Instant, Timer)>, slot: &mut Option<Instant>, at: Instant, timer: Timer) {
    if let Some(old) = slot.replace(at) {
        timers.remove(&(old, timer));
    }
    timers.insert((at, timer));
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CallState {
    Ringing,
    Accepted,
    Connected,
}

struct Call {
    key: CallKey,
    id: CallId,
    caller: (UserId, DeviceId),
    callee: UserId,
    media: Media,
    offer: String,
    state: CallState,
    accepted_device: Option<DeviceId>,
    invited_at: Instant,
    /// Callee devices that were sent `call.incoming`, and whether they rang.
    devices: BTreeMap<DeviceId, bool>,
    /// The caller's signals while the call rings, for callee devices that come later;
    /// dropped once it is answered. Bounded by the `max_held_*` settings.
    caller_signals: Vec<Box<str>>,
    /// Bytes of `caller_signals`.
    held_bytes: usize,
    ever_online: bool,
    span: Span,
}

/// The hub's maps. foldhash, not SipHash: hashing was 8% of a relayed frame's
/// instructions. Keys are partly client-chosen (call ids, device ids); foldhash's seed
/// is random per process (from address-space layout and time), which its authors call
/// minimal DoS resistance: enough that keys cannot be chosen in advance to share a
/// bucket, not a guarantee against an attacker who can probe the server's timing.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// The hub. See the module docs.
pub struct Hub<R> {
    config: HubConfig,
    rng: R,
    tokens: Arc<dyn TokenVerifier>,
    ice: Arc<dyn IceProvider>,
    metrics: Arc<SignalMetrics>,
    conns: HashMap<ConnId, Conn>,
    sessions: HashMap<SessionKey, Session>,
    session_ids: HashMap<SessionId, SessionKey>,
    /// The session of each device, by user: looked up by borrowed ids on every relayed
    /// frame, which a map keyed by an owned `(UserId, DeviceId)` would make clone both.
    devices: HashMap<UserId, HashMap<DeviceId, SessionKey>>,
    calls: HashMap<CallKey, Call>,
    /// The live calls each user is in, as caller or callee. An invite's checks (the
    /// per-user limit, busy, glare), a new session's ringing calls and a session's end
    /// look at one user's calls: walking every call made each of them cost as much as
    /// the whole hub's load.
    user_calls: HashMap<UserId, Vec<CallKey>>,
    call_ids: HashMap<CallId, CallKey>,
    /// Recently ended calls: a repeated invite with their id stays a no-op.
    ended: Recent<CallId, ()>,
    /// Last invite time per unordered user pair, for first-attempt accounting.
    attempts: Recent<(UserId, UserId), bool>,
    timers: BTreeSet<(Instant, Timer)>,
    out: VecDeque<Output>,
    next_key: u64,
    unix_anchor: (Instant, u64),
    /// The latest `now` handed to any `handle_*` call.
    now: Instant,
    /// When `handle_timeout` next forgets ended calls and old attempts.
    next_sweep: Instant,
    /// The `ping` and `pong` frames, shared by every socket.
    ping: Arc<str>,
    pong: Arc<str>,
}

/// A refused frame: the error code and message sent back with its seq.
type Refusal = (ErrorCode, String);

fn refuse(code: ErrorCode, msg: impl Into<String>) -> Refusal {
    (code, msg.into())
}

/// A call ended this long ago is forgotten (a repeated invite then starts a new call).
const ENDED_MEMORY: Duration = Duration::from_secs(600);
/// Within this window a second invite between the same users means the first attempt failed.
const RETRY_WINDOW: Duration = Duration::from_secs(120);
/// How often ended calls and old attempts are forgotten (each at most this much late).
const SWEEP_EVERY: Duration = Duration::from_secs(1);

impl<R: RngCore> Hub<R> {
    /// A hub with no sessions.
    pub fn new(
        config: HubConfig,
        tokens: Arc<dyn TokenVerifier>,
        ice: Arc<dyn IceProvider>,
        metrics: Arc<SignalMetrics>,
        rng: R,
        now: Instant,
        unix_now: u64,
    ) -> Self {
        let (ended_cap, pairs_cap) = (config.max_ended_calls, config.max_invite_pairs);
        Hub {
            config,
            rng,
            tokens,
            ice,
            metrics,
            conns: HashMap::default(),
            sessions: HashMap::default(),
            session_ids: HashMap::default(),
            devices: HashMap::default(),
            calls: HashMap::default(),
            user_calls: HashMap::default(),
            call_ids: HashMap::default(),
            ended: Recent::new(ENDED_MEMORY, ended_cap),
            attempts: Recent::new(RETRY_WINDOW, pairs_cap),
            timers: BTreeSet::new(),
            out: VecDeque::new(),
            next_key: 1,
            unix_anchor: (now, unix_now),
            now,
            next_sweep: now,
            ping: r#"{"type":"ping"}"#.into(),
            pong: r#"{"type":"pong"}"#.into(),
        }
    }

    /// `heartbeat_ms` told to clients.
    pub fn config(&self) -> &HubConfig {
        &self.config
    }

    /// Re-anchor the wall clock.
    pub fn set_unix_time(&mut self, now: Instant, unix: u64) {
        self.unix_anchor = (now, unix);
    }

    /// Counters.
    pub fn metrics(&self) -> &Arc<SignalMetrics> {
        &self.metrics
    }

    /// Live sessions (attached or waiting for a resume).
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Users with at least one socket attached now, sorted.
    pub fn online_users(&self) -> Vec<UserId> {
        let mut v: Vec<UserId> = self
            .sessions
            .values()
            .filter(|s| s.conn.is_some())
            .map(|s| s.user.clone())
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// Live calls.
    pub fn call_count(&self) -> usize {
        self.calls.len()
    }

    /// A socket opened; it must say hello within the hello timeout.
    pub fn handle_connect(&mut self, conn: ConnId, now: Instant) {
        self.now = now;
        self.conns.insert(
            conn,
            Conn {
                session: None,
                last_rx: now,
            },
        );
        self.timers
            .insert((now + self.config.hello_timeout, Timer::Hello(conn)));
    }

    /// A socket closed (or failed). Its session, if any, waits for a resume.
    pub fn handle_disconnect(&mut self, conn: ConnId, now: Instant) {
        self.now = now;
        let Some(c) = self.conns.remove(&conn) else { return };
        if let Some(key) = c.session {
            self.detach(key, now);
        }
    }

    /// Next output for the driver.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When to call [`Hub::handle_timeout`].
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.first().map(|(t, _)| *t)
    }

    /// One text frame from `conn`.
    pub fn handle_text(&mut self, conn: ConnId, text: &str, now: Instant) {
        self.now = now;
        let Some(c) = self.conns.get_mut(&conn) else { return };
        c.last_rx = now;
        let Some(key) = c.session else {
            self.handle_hello(conn, text, now);
            return;
        };
        if text.len() > MAX_FRAME {
            self.metrics.limit_hit(Limit::FrameSize);
            let seq = self.consume_next(key, now);
            self.error(
                key,
                ErrorCode::TooLarge,
                &format!("frame of {} bytes exceeds {MAX_FRAME}", text.len()),
                seq,
            );
            return;
        }
        // The envelope straight from the text (the scanner vouches that no object in it
        // names a key twice); anything unusual about it is first checked for duplicate
        // keys, then goes through a `Value`, which tells "not JSON" from a missing or
        // non-numeric field.
        // `signal`: a `call.signal`'s call and data, from the envelope's one parse.
        let envelope = match crate::scan::envelope(text) {
            Some(e) => Some(e),
            None => match crate::keys::check(text) {
                Ok(()) => crate::scan::serde_envelope(text),
                Err(e) => {
                    // Like text that is not JSON: it takes the next seq, whatever its
                    // (perhaps duplicated) `seq` says.
                    let seq = self.consume_next(key, now);
                    self.error(key, ErrorCode::BadRequest, &e.to_string(), seq);
                    return;
                }
            },
        };
        let (typ, seq, ack, signal) = match envelope {
            Some(e) => {
                let signal = e.call.zip(e.data).map(|(call, data)| (call, data, e.candidate));
                (e.typ.unwrap_or(Cow::Borrowed("")), e.seq, e.ack, signal)
            }
            None => {
                let v: Value = match serde_json::from_str(text) {
                    Ok(v) => v,
                    Err(e) => {
                        let seq = self.consume_next(key, now);
                        self.error(key, ErrorCode::BadRequest, &format!("not JSON: {e}"), seq);
                        return;
                    }
                };
                let typ = v.get("type").and_then(Value::as_str).unwrap_or("").to_owned();
                let ack = match v.get("ack") {
                    None => None,
                    Some(a) => match a.as_u64() {
                        Some(n) => Some(n),
                        None if typ == "ack" => None,
                        None => {
                            let seq = self.consume_next(key, now);
                            self.error(key, ErrorCode::BadRequest, "ack must be a non-negative integer", seq);
                            return;
                        }
                    },
                };
                (Cow::Owned(typ), v.get("seq").and_then(Value::as_u64), ack, None)
            }
        };
        let typ = typ.as_ref();
        if let (Some(n), false) = (ack, typ == "ack") {
            self.handle_ack(key, n, now);
        }
        match typ {
            "ack" => {
                match seq {
                    Some(n) => self.handle_ack(key, n, now),
                    None => self.error_unsequenced(conn, ErrorCode::BadRequest, "ack needs a numeric seq"),
                }
                return;
            }
            "ping" => {
                self.out.push_back(Output::Send {
                    conn,
                    text: Arc::clone(&self.pong),
                });
                return;
            }
            "pong" => return,
            _ => {}
        }
        let Some(seq) = seq else {
            let seq = self.consume_next(key, now);
            self.error(key, ErrorCode::BadRequest, "frame needs a numeric seq", seq);
            return;
        };
        let Some(s) = self.sessions.get_mut(&key) else { return };
        if seq <= s.in_seq {
            // A resend the server already processed: acknowledge again, do nothing else.
            self.metrics.count("duplicate_frames", "total");
            self.schedule_ack(key, now);
            return;
        }
        if seq > s.in_seq + 1 {
            let expected = s.in_seq + 1;
            self.metrics.count("errors", ErrorCode::SeqGap.as_str());
            let msg = format!("expected seq {expected}, got {seq}");
            self.out.push_back(Output::Send {
                conn,
                text: error_json(ErrorCode::SeqGap, &msg, Some(seq)).into(),
            });
            self.out.push_back(Output::Close {
                conn,
                code: close::SEQ_GAP,
                reason: "seq gap",
            });
            if let Some(c) = self.conns.get_mut(&conn) {
                c.session = None;
            }
            self.detach(key, now);
            return;
        }
        s.in_seq = seq;
        // Token bucket: refill, then spend one.
        let elapsed = now.saturating_duration_since(s.tokens_at).as_secs_f64();
        s.tokens = (s.tokens + elapsed * self.config.rate_per_sec).min(self.config.rate_burst);
        s.tokens_at = now;
        let limited = s.tokens < 1.0;
        if !limited {
            s.tokens -= 1.0;
        }
        self.schedule_ack(key, now);
        if limited {
            self.metrics.limit_hit(Limit::FrameRate);
            self.error(key, ErrorCode::RateLimited, "too many frames; slow down", Some(seq));
            return;
        }
        if !CLIENT_TYPES.contains(&typ) {
            // Echoed clipped: a client's 60 KB type must not cost the server 60 KB again.
            let msg = format!("unknown type {:?}", clip(typ, MAX_ECHO));
            self.error(key, ErrorCode::UnknownType, &msg, Some(seq));
            return;
        }
        // Nearly every frame of a call. Anything the envelope did not vouch for (a
        // missing field, a call that is not a valid id string) goes through
        // `ClientFrame::parse`, which names the fault.
        let signal = signal
            .filter(|_| typ == "call.signal")
            .and_then(|(call, data, cand)| Some((json_string(call)?, data, cand)))
            .filter(|(call, _, _)| CallId::valid(call));
        let handled = match signal {
            Some((call, data, cand)) => self.handle_signal(key, &call, data, cand),
            _ => match ClientFrame::parse(typ, text) {
                Ok(frame) => self.handle_call_frame(key, frame, now),
                Err(e) => {
                    self.error(key, ErrorCode::BadRequest, &format!("{typ}: {e}"), Some(seq));
                    return;
                }
            },
        };
        if let Err((code, msg)) = handled {
            self.error(key, code, &msg, Some(seq));
        }
    }

    /// Fire what is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        while let Some(&(at, timer)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            match timer {
                Timer::Hello(conn) => {
                    if self.conns.get(&conn).is_some_and(|c| c.session.is_none()) {
                        self.out.push_back(Output::Send {
                            conn,
                            text: error_json(ErrorCode::BadRequest, "no hello within the deadline", None).into(),
                        });
                        self.out.push_back(Output::Close {
                            conn,
                            code: close::TIMEOUT,
                            reason: "no hello",
                        });
                        self.conns.remove(&conn);
                    }
                }
                Timer::Ack(key) => {
                    let Some(s) = self.sessions.get_mut(&key) else { continue };
                    s.ack_timer = None;
                    match s.ack_due {
                        // A frame to the session carried the ack.
                        None => {}
                        Some(d) if d <= now => {
                            s.ack_due = None;
                            if let Some(conn) = s.conn {
                                let text = ack_text(s.in_seq);
                                self.out.push_back(Output::Send { conn, text });
                            }
                        }
                        // The ack this entry was set for rode on a frame; a later one is
                        // owed, with a deadline of its own.
                        Some(d) => {
                            s.ack_timer = Some(d);
                            self.timers.insert((d, Timer::Ack(key)));
                        }
                    }
                }
                Timer::Heartbeat(key) => {
                    if let Some(s) = self.sessions.get_mut(&key) {
                        s.heartbeat_at = None;
                        self.heartbeat(key, now);
                    }
                }
                Timer::Expire(key) => {
                    let Some(s) = self.sessions.get_mut(&key) else { continue };
                    s.expire_at = None;
                    let due = s.detached_at.is_some_and(|d| d + self.config.session_ttl <= now);
                    if due {
                        self.expire_session(key, SessionEnd::Ttl);
                    }
                }
                Timer::Ring(ck) => {
                    if let Some(c) = self.calls.get(&ck) {
                        if c.state == CallState::Ringing {
                            let reason = if c.ever_online {
                                EndReason::Timeout
                            } else {
                                EndReason::Unreachable
                            };
                            self.end_call(ck, reason, None, None, now);
                        }
                    }
                }
                Timer::Ice(key) => {
                    if let Some(s) = self.sessions.get_mut(&key) {
                        s.ice_at = None;
                        self.refresh_ice(key, now);
                    }
                }
            }
        }
        // Swept once a second, not on every timer: the ack timers fire about every
        // millisecond under load, and each sweep walks both maps whole.
        if now >= self.next_sweep {
            self.next_sweep = now + SWEEP_EVERY;
            self.ended.sweep(now);
            self.attempts.sweep(now);
        }
    }

    /// Timer entries pending: tests check that they stay bounded per session.
    #[doc(hidden)]
    pub fn timer_entries(&self) -> usize {
        self.timers.len()
    }

    /// Live calls (ringing or answered).
    #[doc(hidden)]
    pub fn live_calls(&self) -> usize {
        self.calls.len()
    }

    /// Whether the lookup maps agree with what they index (`user_calls` with the calls,
    /// `devices` with the sessions), found by walking everything; tests call it after
    /// every step. The first disagreement, if any.
    #[doc(hidden)]
    pub fn check_indexes(&self) -> Result<(), String> {
        let mut want: HashMap<&UserId, Vec<CallKey>> = HashMap::default();
        for c in self.calls.values() {
            want.entry(&c.caller.0).or_default().push(c.key);
            want.entry(&c.callee).or_default().push(c.key);
        }
        let mut have: HashMap<&UserId, Vec<CallKey>> = HashMap::default();
        for (u, keys) in &self.user_calls {
            if keys.is_empty() {
                return Err(format!("user_calls keeps an empty list for {u}"));
            }
            have.insert(u, keys.clone());
        }
        for v in want.values_mut().chain(have.values_mut()) {
            v.sort_unstable();
        }
        if want != have {
            return Err(format!("user_calls {have:?}, calls say {want:?}"));
        }
        let mut want: HashMap<(&UserId, &DeviceId), SessionKey> = HashMap::default();
        for (k, s) in &self.sessions {
            if want.insert((&s.user, &s.device), *k).is_some() {
                return Err(format!("two sessions for device {} of {}", s.device, s.user));
            }
        }
        let have: HashMap<(&UserId, &DeviceId), SessionKey> = self
            .devices
            .iter()
            .flat_map(|(u, d)| d.iter().map(move |(dev, k)| ((u, dev), *k)))
            .collect();
        if self.devices.values().any(|d| d.is_empty()) || want != have {
            return Err(format!("devices {have:?}, sessions say {want:?}"));
        }
        Ok(())
    }

    fn unix_now(&self, now: Instant) -> u64 {
        let (at, unix) = self.unix_anchor;
        if now >= at {
            unix + (now - at).as_secs()
        } else {
            unix.saturating_sub((at - now).as_secs())
        }
    }

    /// Remember an ended call's id, so that a repeated invite with it stays a no-op.
    fn forget_later(&mut self, id: CallId, now: Instant) {
        if self.ended.insert(id, (), now) {
            self.metrics.limit_hit(Limit::EndedCalls);
        }
    }

    fn key(&mut self) -> u64 {
        self.next_key += 1;
        self.next_key
    }

    fn handle_hello(&mut self, conn: ConnId, text: &str, now: Instant) {
        let reject = |this: &mut Self, code: ErrorCode, msg: &str, close_code: u16| {
            this.metrics.count("errors", code.as_str());
            this.out.push_back(Output::Send {
                conn,
                text: error_json(code, msg, None).into(),
            });
            this.out.push_back(Output::Close {
                conn,
                code: close_code,
                reason: if code == ErrorCode::TooManyDevices {
                    "too many devices"
                } else {
                    "bad hello"
                },
            });
            this.conns.remove(&conn);
        };
        if text.len() > MAX_FRAME {
            self.metrics.limit_hit(Limit::FrameSize);
            return reject(self, ErrorCode::TooLarge, "hello too large", close::PROTOCOL);
        }
        // A `Value` keeps the last of duplicate keys (of `token`, say), where another
        // reader would take the first: refused.
        if let Err(crate::keys::KeyError::Duplicate(k)) = crate::keys::check(text) {
            let msg = format!("hello: duplicate key {k:?}");
            return reject(self, ErrorCode::BadRequest, &msg, close::PROTOCOL);
        }
        let v: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(_) => {
                return reject(
                    self,
                    ErrorCode::BadRequest,
                    "first frame must be a JSON hello",
                    close::PROTOCOL,
                )
            }
        };
        if v.get("type").and_then(Value::as_str) != Some("hello") {
            return reject(
                self,
                ErrorCode::BadRequest,
                "first frame must be hello",
                close::PROTOCOL,
            );
        }
        let hello: Hello = match serde_json::from_value(v) {
            Ok(h) => h,
            Err(e) => return reject(self, ErrorCode::BadRequest, &format!("hello: {e}"), close::PROTOCOL),
        };
        let user = match self.tokens.verify(&hello.token, self.unix_now(now)) {
            Ok(u) => u,
            Err(why) => return reject(self, ErrorCode::Unauthorized, &why, close::UNAUTHORIZED),
        };
        // Resume when the session is ours and still holds every frame after last_seq.
        let resumable = hello.resume.as_ref().and_then(|r| {
            let key = *self.session_ids.get(&r.session)?;
            let s = self.sessions.get(&key)?;
            let first_kept = s.unacked.front().map_or(s.out_seq + 1, |(q, _)| *q);
            let ok =
                s.user == user && s.device == hello.device && r.last_seq <= s.out_seq && r.last_seq + 1 >= first_kept;
            ok.then_some((key, r.last_seq))
        });
        if let Some((key, last_seq)) = resumable {
            self.metrics.count("resumes", "ok");
            self.attach(key, conn, now);
            let s = self.sessions.get_mut(&key).expect("resumable session exists");
            let acked = s.drop_acked(last_seq);
            self.metrics
                .unacked
                .fetch_sub(acked as i64, std::sync::atomic::Ordering::Relaxed);
            let welcome = self.welcome(key, true, now);
            self.out.push_back(Output::Send {
                conn,
                text: welcome.into(),
            });
            let s = self.sessions.get(&key).expect("resumable session exists");
            self.metrics.add("replayed_frames", "total", s.unacked.len() as u64);
            tracing::debug!(session = %s.id, user = %s.user, replayed = s.unacked.len(), bytes = s.unacked_bytes, "session resumed");
            // The replay shares the kept texts: at most `max_unacked_bytes`, not copied.
            for (_, text) in &s.unacked {
                self.out.push_back(Output::Send {
                    conn,
                    text: Arc::clone(text),
                });
            }
            self.ring_acked(key, last_seq);
            return;
        }
        if hello.resume.is_some() {
            self.metrics.count("resumes", "failed");
        }
        // A new session replaces any older one of the same device; a new device needs
        // room under the user's cap.
        match self.device_session(&user, &hello.device) {
            Some(old) => self.expire_session(old, SessionEnd::Replaced),
            None => {
                let max = self.config.max_devices_per_user;
                if self.devices.get(&user).is_some_and(|d| d.len() >= max) {
                    self.metrics.limit_hit(Limit::DevicesPerUser);
                    tracing::info!(%user, device = %hello.device, max, "too many devices: hello refused");
                    let msg = format!(
                        "user {user} has {max} sessions, the most one user may have: end one (or let it expire) first"
                    );
                    return reject(self, ErrorCode::TooManyDevices, &msg, close::TOO_MANY_DEVICES);
                }
            }
        }
        let key = self.key();
        let id = self.new_session_id();
        self.sessions.insert(
            key,
            Session {
                id: id.clone(),
                user: user.clone(),
                device: hello.device.clone(),
                conn: None,
                out_seq: 0,
                unacked: VecDeque::new(),
                unacked_bytes: 0,
                in_seq: 0,
                ack_due: None,
                ack_timer: None,
                detached_at: None,
                heartbeat_at: None,
                ice_at: None,
                expire_at: None,
                awaiting_ring: Vec::new(),
                tokens: self.config.rate_burst,
                tokens_at: now,
            },
        );
        self.session_ids.insert(id.clone(), key);
        self.devices
            .entry(user.clone())
            .or_default()
            .insert(hello.device.clone(), key);
        self.metrics.count("sessions", "created");
        self.metrics
            .sessions_active
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.attach(key, conn, now);
        let welcome = self.welcome(key, false, now);
        self.out.push_back(Output::Send {
            conn,
            text: welcome.into(),
        });
        tracing::debug!(session = %id, %user, device = %hello.device, "session created");
        // Calls waiting for this user ring on the new device right away.
        let waiting: Vec<CallKey> = self
            .calls_of(&user)
            .filter(|c| c.callee == user && c.state == CallState::Ringing)
            .map(|c| c.key)
            .collect();
        for ck in waiting {
            self.deliver_incoming(ck, key, now);
        }
    }

    fn new_session_id(&mut self) -> SessionId {
        let mut b = [0u8; 16];
        self.rng.fill_bytes(&mut b);
        let s: String = b.iter().map(|x| format!("{x:02x}")).collect();
        SessionId::parse(&s).expect("hex is a valid session id")
    }

    fn welcome(&mut self, key: SessionKey, resumed: bool, now: Instant) -> String {
        let unix = self.unix_now(now);
        let s = self.sessions.get_mut(&key).expect("welcome to a live session");
        let (ice, ttl) = self.ice.ice_servers(&s.user, unix);
        let refresh = Duration::from_secs((ttl * 4 / 5).max(1));
        arm(&mut self.timers, &mut s.ice_at, now + refresh, Timer::Ice(key));
        let s = &self.sessions[&key];
        let calls = self.snapshot(&s.user, &s.device);
        json!({
            "type": "welcome",
            "session": s.id,
            "user": s.user,
            "device": s.device,
            "resumed": resumed,
            "last_seq": s.in_seq,
            "ice_servers": ice,
            "ice_ttl": ttl,
            "calls": calls,
            "heartbeat_ms": self.config.heartbeat.as_millis() as u64,
        })
        .to_string()
    }

    fn snapshot(&self, user: &UserId, device: &DeviceId) -> Vec<Value> {
        let mut v: Vec<&Call> = self.calls_of(user).collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v.into_iter()
            .map(|c| {
                let caller = &c.caller.0 == user;
                json!({
                    "call": c.id,
                    "role": if caller { "caller" } else { "callee" },
                    "peer": if caller { &c.callee } else { &c.caller.0 },
                    "media": c.media,
                    "state": match c.state { CallState::Ringing => "ringing", CallState::Accepted => "accepted", CallState::Connected => "connected" },
                    "this_device": if caller { &c.caller.1 == device } else { c.accepted_device.as_ref() == Some(device) },
                })
            })
            .collect()
    }

    fn attach(&mut self, key: SessionKey, conn: ConnId, now: Instant) {
        let s = self.sessions.get_mut(&key).expect("attach to a live session");
        if let Some(old) = s.conn.replace(conn) {
            if old != conn {
                self.out.push_back(Output::Close {
                    conn: old,
                    code: close::REPLACED,
                    reason: "session taken over",
                });
                self.conns.remove(&old);
            }
        }
        s.detached_at = None;
        if let Some(at) = s.expire_at.take() {
            self.timers.remove(&(at, Timer::Expire(key)));
        }
        arm(
            &mut self.timers,
            &mut s.heartbeat_at,
            now + self.config.heartbeat,
            Timer::Heartbeat(key),
        );
        if let Some(c) = self.conns.get_mut(&conn) {
            c.session = Some(key);
        }
    }

    fn detach(&mut self, key: SessionKey, now: Instant) {
        if let Some(s) = self.sessions.get_mut(&key) {
            s.conn = None;
            s.detached_at = Some(now);
            arm(
                &mut self.timers,
                &mut s.expire_at,
                now + self.config.session_ttl,
                Timer::Expire(key),
            );
            tracing::debug!(session = %s.id, unacked = s.unacked.len(), "session detached");
        }
    }

    fn heartbeat(&mut self, key: SessionKey, now: Instant) {
        let Some(s) = self.sessions.get(&key) else { return };
        let Some(conn) = s.conn else { return };
        let silent = self
            .conns
            .get(&conn)
            .is_none_or(|c| now.saturating_duration_since(c.last_rx) >= self.config.heartbeat * 3);
        if silent {
            // Half-open socket: frames stay queued for the resume.
            self.out.push_back(Output::Close {
                conn,
                code: close::TIMEOUT,
                reason: "no heartbeat",
            });
            self.conns.remove(&conn);
            self.detach(key, now);
            return;
        }
        self.out.push_back(Output::Send {
            conn,
            text: Arc::clone(&self.ping),
        });
        if let Some(s) = self.sessions.get_mut(&key) {
            arm(
                &mut self.timers,
                &mut s.heartbeat_at,
                now + self.config.heartbeat,
                Timer::Heartbeat(key),
            );
        }
    }

    fn refresh_ice(&mut self, key: SessionKey, now: Instant) {
        let Some(s) = self.sessions.get(&key) else { return };
        let (ice, ttl) = self.ice.ice_servers(&s.user, self.unix_now(now));
        self.push(key, json!({"type": "ice_servers", "ice_servers": ice, "ice_ttl": ttl}));
        // The push may have given the session up.
        if let Some(s) = self.sessions.get_mut(&key) {
            let at = now + Duration::from_secs((ttl * 4 / 5).max(1));
            arm(&mut self.timers, &mut s.ice_at, at, Timer::Ice(key));
        }
    }

    /// The seq a refused, unparseable frame occupied (the next one expected).
    fn consume_next(&mut self, key: SessionKey, now: Instant) -> Option<u64> {
        let s = self.sessions.get_mut(&key)?;
        s.in_seq += 1;
        let seq = s.in_seq;
        self.schedule_ack(key, now);
        Some(seq)
    }

    fn schedule_ack(&mut self, key: SessionKey, now: Instant) {
        if let Some(s) = self.sessions.get_mut(&key) {
            if s.ack_due.is_none() {
                let due = now + self.config.ack_delay;
                s.ack_due = Some(due);
                if s.ack_timer.is_none() {
                    s.ack_timer = Some(due);
                    self.timers.insert((due, Timer::Ack(key)));
                }
            }
        }
    }

    fn handle_ack(&mut self, key: SessionKey, n: u64, _now: Instant) {
        let Some(s) = self.sessions.get_mut(&key) else { return };
        let acked = s.drop_acked(n);
        self.metrics
            .unacked
            .fetch_sub(acked as i64, std::sync::atomic::Ordering::Relaxed);
        self.ring_acked(key, n);
    }

    /// Devices that acknowledged `call.incoming` ring: tell the caller once per device.
    fn ring_acked(&mut self, key: SessionKey, n: u64) {
        let Some(s) = self.sessions.get_mut(&key) else { return };
        // The usual case, on every ack: no ring waits on one.
        if s.awaiting_ring.first().is_none_or(|(q, _)| *q > n) {
            return;
        }
        let device = s.device.clone();
        let (done, rest): (Vec<_>, Vec<_>) = s.awaiting_ring.drain(..).partition(|(q, _)| *q <= n);
        s.awaiting_ring = rest;
        for (_, ck) in done {
            let Some(c) = self.calls.get_mut(&ck) else { continue };
            if c.state != CallState::Ringing || c.devices.get(&device) == Some(&true) {
                continue;
            }
            c.devices.insert(device.clone(), true);
            let (span, call, caller) = (c.span.clone(), c.id.clone(), c.caller.clone());
            span.in_scope(|| tracing::info!(%device, "ringing"));
            self.push_to(&caller, json!({"type": "call.ringing", "call": call, "device": device}));
        }
    }

    /// Queue a sequenced frame for a session (and send it if a socket is attached).
    fn push(&mut self, key: SessionKey, mut frame: Value) -> Option<u64> {
        self.push_with(key, |seq, ack| {
            if let Value::Object(m) = &mut frame {
                m.insert("seq".into(), seq.into());
                if let Some(a) = ack {
                    m.insert("ack".into(), a.into());
                }
            }
            // Not `to_string()`: that goes through `Display` and a formatter, which cost
            // several reallocations per frame.
            serde_json::to_string(&frame).expect("a Value always serializes")
        })
    }

    /// Queue a sequenced frame that `text` writes given its seq and, when the session
    /// is owed an acknowledgement and has a socket, the ack to carry (which then replaces
    /// the separate `ack` frame).
    fn push_with(&mut self, key: SessionKey, text: impl FnOnce(u64, Option<u64>) -> String) -> Option<u64> {
        let s = self.sessions.get_mut(&key)?;
        s.out_seq += 1;
        let seq = s.out_seq;
        let ack = (s.ack_due.is_some() && s.conn.is_some()).then_some(s.in_seq);
        if ack.is_some() {
            s.ack_due = None;
        }
        // One copy of the text, shared by the socket's frame and the session's kept one
        // (as many allocations as the `String` and its clone were).
        let text: Arc<str> = text(seq, ack).into();
        s.unacked_bytes += text.len();
        if let Some(conn) = s.conn {
            self.out.push_back(Output::Send {
                conn,
                text: Arc::clone(&text),
            });
        }
        s.unacked.push_back((seq, text));
        self.metrics.unacked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // A client that never acknowledges cannot be kept forever.
        let over = if s.unacked.len() > self.config.max_unacked {
            Some(Limit::UnackedFrames)
        } else if s.unacked_bytes > self.config.max_unacked_bytes {
            Some(Limit::UnackedBytes)
        } else {
            None
        };
        if let Some(limit) = over {
            self.metrics.limit_hit(limit);
            tracing::info!(session = %s.id, user = %s.user, frames = s.unacked.len(), bytes = s.unacked_bytes, limit = limit.as_str(), "unacknowledged frames over the limit: session given up");
            self.expire_session(key, SessionEnd::UnackedOverflow);
        }
        Some(seq)
    }

    fn push_to(&mut self, who: &(UserId, DeviceId), frame: Value) -> Option<u64> {
        let key = self.device_session(&who.0, &who.1)?;
        self.push(key, frame)
    }

    /// The live calls `user` is in, oldest first.
    fn calls_of<'a>(&'a self, user: &UserId) -> impl Iterator<Item = &'a Call> + 'a {
        let keys = self.user_calls.get(user).map_or(&[][..], |k| &k[..]);
        // Every key in `user_calls` is a live call: `end_call` removes both together.
        keys.iter().filter_map(|k| self.calls.get(k))
    }

    /// The session a device has now, if any.
    fn device_session(&self, user: &UserId, device: &DeviceId) -> Option<SessionKey> {
        self.devices.get(user)?.get(device).copied()
    }

    /// Relay a signal to one session: `head` is the frame up to its seq
    /// ([`signal_head`]), the same whoever it goes to.
    fn push_signal(&mut self, key: SessionKey, head: String) {
        self.push_with(key, |seq, ack| signal_text(head, seq, ack));
    }

    /// An `error` frame for a refused frame (its message clipped by [`error_value`]).
    fn error(&mut self, key: SessionKey, code: ErrorCode, msg: &str, reference: Option<u64>) {
        self.metrics.count("errors", code.as_str());
        self.push(key, error_value(code, msg, reference));
    }

    fn error_unsequenced(&mut self, conn: ConnId, code: ErrorCode, msg: &str) {
        self.metrics.count("errors", code.as_str());
        self.out.push_back(Output::Send {
            conn,
            text: error_json(code, msg, None).into(),
        });
    }

    fn expire_session(&mut self, key: SessionKey, why: SessionEnd) {
        let Some(s) = self.sessions.remove(&key) else { return };
        // Its timer entries go with it.
        for (at, timer) in [
            (s.heartbeat_at, Timer::Heartbeat(key)),
            (s.ice_at, Timer::Ice(key)),
            (s.expire_at, Timer::Expire(key)),
            (s.ack_timer, Timer::Ack(key)),
        ] {
            if let Some(at) = at {
                self.timers.remove(&(at, timer));
            }
        }
        self.session_ids.remove(&s.id);
        if let Some(devices) = self.devices.get_mut(&s.user) {
            if devices.get(&s.device) == Some(&key) {
                devices.remove(&s.device);
                if devices.is_empty() {
                    self.devices.remove(&s.user);
                }
            }
        }
        if let Some(conn) = s.conn {
            self.out.push_back(Output::Close {
                conn,
                code: close::REPLACED,
                reason: "session ended",
            });
            self.conns.remove(&conn);
        }
        self.metrics
            .unacked
            .fetch_sub(s.unacked.len() as i64, std::sync::atomic::Ordering::Relaxed);
        self.metrics
            .sessions_active
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        self.metrics.count("sessions_ended", why.as_str());
        tracing::debug!(session = %s.id, user = %s.user, why = why.as_str(), lost = s.unacked.len(), "session ended");
        if why == SessionEnd::Replaced {
            // The same device is back with a new session: its calls carry on there.
            return;
        }
        let me = (s.user.clone(), s.device.clone());
        let gone: Vec<CallKey> = self
            .calls_of(&me.0)
            .filter(|c| c.caller == me || (c.callee == me.0 && c.accepted_device.as_ref() == Some(&me.1)))
            .map(|c| c.key)
            .collect();
        for ck in gone {
            // The other side learns the call failed, instead of waiting forever.
            self.end_call(ck, EndReason::Failed, None, Some(&me), self.now);
        }
    }

    fn handle_call_frame(&mut self, key: SessionKey, frame: ClientFrame, now: Instant) -> Result<(), Refusal> {
        if let ClientFrame::Signal { call, data } = &frame {
            return self.handle_signal(key, call.as_str(), data.get(), None);
        }
        let s = &self.sessions[&key];
        let me = (s.user.clone(), s.device.clone());
        if let ClientFrame::Invite { call, to, media, sdp } = frame {
            return self.invite(key, me, call, to, media, sdp, now);
        }
        let id = frame.call().clone();
        let Some(&ck) = self.call_ids.get(&id) else {
            if self.ended.contains_key(&id) {
                // Late frames for a call that just ended are harmless: nothing to do.
                return Ok(());
            }
            return Err(refuse(ErrorCode::UnknownCall, format!("no live call {id}")));
        };
        let c = &self.calls[&ck];
        let is_caller = c.caller == me;
        let is_callee_device = c.callee == me.0;
        let is_accepted = is_callee_device && c.accepted_device.as_ref() == Some(&me.1);
        match frame {
            ClientFrame::Invite { .. } | ClientFrame::Signal { .. } => unreachable!("handled above"),
            ClientFrame::Accept { sdp, .. } => {
                if !is_callee_device {
                    return Err(refuse(ErrorCode::NotParticipant, "only the callee can accept"));
                }
                if c.state != CallState::Ringing {
                    return if is_accepted {
                        Ok(())
                    } else {
                        Err(refuse(ErrorCode::NotParticipant, "already answered on another device"))
                    };
                }
                let c = self.calls.get_mut(&ck).expect("live call");
                c.state = CallState::Accepted;
                c.accepted_device = Some(me.1.clone());
                // A device that was never rung (an app answering from the push payload,
                // or a session with no room for the invite) is told when the call ends.
                c.devices.insert(me.1.clone(), true);
                // Held only for devices that ring later: none will now.
                c.caller_signals = Vec::new();
                c.held_bytes = 0;
                let others: Vec<DeviceId> = c.devices.keys().filter(|d| **d != me.1).cloned().collect();
                let (span, caller, callee) = (c.span.clone(), c.caller.clone(), c.callee.clone());
                span.in_scope(|| tracing::info!(device = %me.1, "accepted"));
                self.push_to(
                    &caller,
                    json!({"type": "call.accepted", "call": id, "device": me.1, "sdp": sdp}),
                );
                for d in others {
                    self.push_to(
                        &(callee.clone(), d),
                        json!({"type": "call.ended", "call": id, "reason": EndReason::AnsweredElsewhere}),
                    );
                }
                Ok(())
            }
            ClientFrame::Reject { .. } => {
                if !is_callee_device {
                    return Err(refuse(ErrorCode::NotParticipant, "only the callee can reject"));
                }
                if c.state != CallState::Ringing {
                    return Err(refuse(
                        ErrorCode::NotParticipant,
                        "call already answered: hang up instead",
                    ));
                }
                self.end_call(ck, EndReason::Rejected, None, Some(&me), now);
                Ok(())
            }
            ClientFrame::Cancel { .. } => {
                if !is_caller {
                    return Err(refuse(ErrorCode::NotParticipant, "only the caller can cancel"));
                }
                let reason = if c.state == CallState::Ringing {
                    EndReason::Cancelled
                } else {
                    EndReason::Hangup
                };
                self.end_call(ck, reason, None, Some(&me), now);
                Ok(())
            }
            ClientFrame::Hangup { reason, .. } => {
                let media_failed = reason == Some(HangupReason::MediaFailed);
                let end = match (c.state, is_caller, is_accepted, is_callee_device) {
                    // Not a refusal nor a cancel: the app could not open a camera or
                    // microphone, and both sides (and the metrics) are told so.
                    (CallState::Ringing, _, _, true) | (_, true, _, _) | (_, _, true, _) if media_failed => {
                        EndReason::MediaFailed
                    }
                    (CallState::Ringing, true, _, _) => EndReason::Cancelled,
                    (CallState::Ringing, false, _, true) => EndReason::Rejected,
                    (_, true, _, _) | (_, _, true, _) => EndReason::Hangup,
                    _ => return Err(refuse(ErrorCode::NotParticipant, "not a party of this call")),
                };
                self.end_call(ck, end, reason, Some(&me), now);
                Ok(())
            }
            ClientFrame::Connected {
                local,
                remote,
                protocol,
                ms,
                ..
            } => {
                if !(is_caller || is_accepted) {
                    return Err(refuse(ErrorCode::NotParticipant, "not a party of this call"));
                }
                if c.state == CallState::Ringing {
                    return Err(refuse(ErrorCode::BadRequest, "call not accepted yet"));
                }
                let c = self.calls.get_mut(&ck).expect("live call");
                if c.state == CallState::Accepted {
                    c.state = CallState::Connected;
                    let elapsed = now.saturating_duration_since(c.invited_at);
                    self.metrics.observe_connect(elapsed);
                    self.metrics.count("pair_types", pair_label(&local, &remote));
                    let pair = ordered(&c.caller.0, &c.callee);
                    let first = self.attempts.get(&pair).is_none_or(|(_, retried)| !retried);
                    self.metrics
                        .count("first_attempt", if first { "success" } else { "retry" });
                    c.span.in_scope(|| {
                        tracing::info!(%local, %remote, protocol = ?protocol, client_ms = ?ms, server_ms = elapsed.as_millis() as u64, first_attempt = first, "connected")
                    });
                }
                Ok(())
            }
        }
    }

    /// `call.signal`: relay `data` to the other party, verbatim. Works on the frame's
    /// borrowed call id and data: a relayed frame allocates only its copy on the way
    /// out (and, while the call rings, the copy kept for devices that come later).
    ///
    /// `candidate`: the candidate string when the envelope's scan already found `data`
    /// to be a trickled candidate (then `data` needs no second look).
    fn handle_signal(
        &mut self,
        key: SessionKey,
        call: &str,
        data: &str,
        candidate: Option<&str>,
    ) -> Result<(), Refusal> {
        let Some(&ck) = self.call_ids.get(call) else {
            if self.ended.contains_key(call) {
                // Late frames for a call that just ended are harmless: nothing to do.
                return Ok(());
            }
            return Err(refuse(ErrorCode::UnknownCall, format!("no live call {call}")));
        };
        let s = self.sessions.get(&key).expect("handle_text found the session");
        let c = self.calls.get(&ck).expect("every call id maps to a live call");
        let is_caller = c.caller.0 == s.user && c.caller.1 == s.device;
        let is_callee_device = c.callee == s.user;
        let is_accepted = is_callee_device && c.accepted_device.as_ref() == Some(&s.device);
        let kind = match candidate {
            Some(c) => SignalKind::Candidate(candidate_type(c)),
            None => validate_signal(data).map_err(|m| refuse(ErrorCode::BadRequest, m))?,
        };
        c.span
            .in_scope(|| tracing::debug!(from = %s.user, device = %s.device, kind = ?kind, "signal"));
        let ringing = c.state == CallState::Ringing;
        if is_caller && ringing {
            if let Some(limit) = self.held_limit(c, data.len()) {
                self.metrics.limit_hit(limit);
                c.span.in_scope(|| {
                    tracing::info!(
                        limit = limit.as_str(),
                        held = c.caller_signals.len(),
                        "held signals full: signal refused"
                    )
                });
                return Err(refuse(
                    ErrorCode::HeldFull,
                    format!(
                        "the ringing call holds as many signals as it may ({}): send the rest once it is answered",
                        limit.as_str()
                    ),
                ));
            }
        }
        // Where it goes: one session once the call is answered (no allocation), every
        // callee device that was told of the call while it rings.
        let (one, ringing_devices): (Option<SessionKey>, Vec<SessionKey>) = if is_caller {
            if ringing {
                let devices = c.devices.keys().filter_map(|d| self.device_session(&c.callee, d));
                (None, devices.collect())
            } else {
                let d = c.accepted_device.as_ref();
                (d.and_then(|d| self.device_session(&c.callee, d)), Vec::new())
            }
        } else if is_accepted || (is_callee_device && ringing && c.devices.contains_key(&s.device)) {
            (self.device_session(&c.caller.0, &c.caller.1), Vec::new())
        } else {
            return Err(refuse(ErrorCode::NotParticipant, "not a party of this call"));
        };
        let mut head = signal_head(&c.id, &s.user, &s.device, data);
        if is_caller && ringing {
            // Held with the invite for devices that come online later.
            let c = self.calls.get_mut(&ck).expect("looked up above");
            c.caller_signals.push(data.into());
            c.held_bytes += data.len();
        }
        let mut targets = one.into_iter().chain(ringing_devices).peekable();
        while let Some(t) = targets.next() {
            // The last (usually the only) recipient's frame is written over the head.
            let head = if targets.peek().is_some() {
                // With the head's room for the seq and ack, as `signal_head` sized it.
                let mut copy = String::with_capacity(head.capacity());
                copy.push_str(&head);
                copy
            } else {
                std::mem::take(&mut head)
            };
            self.push_signal(t, head);
        }
        Ok(())
    }

    /// The held-signal limit one more signal of `bytes` from the caller of ringing call
    /// `c` would pass, if any: per call, then over all the caller's ringing calls.
    fn held_limit(&self, c: &Call, bytes: usize) -> Option<Limit> {
        let cfg = &self.config;
        if c.caller_signals.len() >= cfg.max_held_signals_per_call {
            return Some(Limit::HeldSignalsPerCall);
        }
        if c.held_bytes + bytes > cfg.max_held_bytes_per_call {
            return Some(Limit::HeldBytesPerCall);
        }
        // The caller's other calls: at most `max_calls_per_user`, no allocation.
        let (n, b) = self
            .calls_of(&c.caller.0)
            .filter(|o| o.caller.0 == c.caller.0 && o.state == CallState::Ringing)
            .fold((0, 0), |(n, b), o| (n + o.caller_signals.len(), b + o.held_bytes));
        if n >= cfg.max_held_signals_per_user {
            return Some(Limit::HeldSignalsPerUser);
        }
        if b + bytes > cfg.max_held_bytes_per_user {
            return Some(Limit::HeldBytesPerUser);
        }
        None
    }

    #[allow(clippy::too_many_arguments)]
    fn invite(
        &mut self,
        key: SessionKey,
        me: (UserId, DeviceId),
        id: CallId,
        to: UserId,
        media: Media,
        sdp: String,
        now: Instant,
    ) -> Result<(), Refusal> {
        if let Some(ck) = self.call_ids.get(&id) {
            return if self.calls[ck].caller == me {
                Ok(())
            } else {
                Err(refuse(ErrorCode::BadRequest, "call id already in use"))
            };
        }
        if self.ended.contains_key(&id) {
            return Ok(()); // a repeat of an invite that already ended
        }
        if to == me.0 {
            return Err(refuse(ErrorCode::BadRequest, "cannot call yourself"));
        }
        // The calls this user placed or answered: invites ringing for them are someone
        // else's doing (capped per callee below), and must not stop them calling out.
        let live = self
            .calls_of(&me.0)
            .filter(|c| c.caller.0 == me.0 || c.state != CallState::Ringing)
            .count();
        if live >= self.config.max_calls_per_user {
            self.metrics.limit_hit(Limit::CallsPerUser);
            return Err(refuse(
                ErrorCode::RateLimited,
                format!(
                    "at most {} live calls (placed or answered) per user",
                    self.config.max_calls_per_user
                ),
            ));
        }
        let span = tracing::info_span!("call", call = %id, from = %me.0, to = %to, media = ?media);
        span.in_scope(|| tracing::info!(device = %me.1, "invite"));
        let pair = ordered(&me.0, &to);
        let retried = self.attempts.get(&pair).is_some_and(|(at, _)| *at + RETRY_WINDOW > now);
        if self.attempts.insert(pair, retried, now) {
            self.metrics.limit_hit(Limit::InvitePairs);
        }
        self.metrics.count("invites", "total");

        // One ringing call per caller and callee: a new invite (the user tried again, or
        // from another device) replaces the one still ringing, which ends `cancelled`.
        // Without it two accounts could fill the callee's ringing cap with 8 invites each
        // and keep every other caller's first call `busy`.
        let again: Vec<CallKey> = self
            .calls_of(&to)
            .filter(|c| c.state == CallState::Ringing && c.caller.0 == me.0 && c.callee == to)
            .map(|c| c.key)
            .collect();
        for ck in again {
            span.in_scope(|| tracing::info!("replaces the caller's call still ringing"));
            self.end_call(ck, EndReason::Cancelled, None, None, now);
        }
        let busy = self.calls_of(&to).any(|c| c.state != CallState::Ringing);
        // As many invites ring for the callee as may: to the caller, the callee is busy.
        let ringing_full = !busy
            && self
                .calls_of(&to)
                .filter(|c| c.callee == to && c.state == CallState::Ringing)
                .count()
                >= self.config.max_ringing_per_callee;
        if ringing_full {
            self.metrics.limit_hit(Limit::RingingPerCallee);
        }
        if busy || ringing_full {
            span.in_scope(|| tracing::info!(ringing_full, "callee busy"));
            self.forget_later(id.clone(), now);
            self.metrics.count("calls_ended", EndReason::Busy.as_str());
            self.push(
                key,
                json!({"type": "call.ended", "call": id, "reason": EndReason::Busy}),
            );
            return Ok(());
        }
        // Glare: crossing invites between the same two users; the lower call id wins.
        let crossing = self
            .calls_of(&to)
            .find(|c| c.state == CallState::Ringing && c.caller.0 == to && c.callee == me.0)
            .map(|c| (c.key, c.id.clone()));
        if let Some((other, other_id)) = crossing {
            if id < other_id {
                self.end_call(other, EndReason::Glare, None, None, now);
            } else {
                span.in_scope(|| tracing::info!(winner = %other_id, "glare: this invite loses"));
                self.forget_later(id.clone(), now);
                self.metrics.count("calls_ended", EndReason::Glare.as_str());
                self.push(
                    key,
                    json!({"type": "call.ended", "call": id, "reason": EndReason::Glare}),
                );
                return Ok(());
            }
        }
        let ck = self.key();
        // Session keys grow with time: oldest device first, deterministically.
        let mut targets: Vec<SessionKey> = self
            .devices
            .get(&to)
            .map(|d| d.values().copied().collect())
            .unwrap_or_default();
        targets.sort_unstable();
        let online = targets.iter().any(|k| self.sessions[k].conn.is_some());
        self.calls.insert(
            ck,
            Call {
                key: ck,
                id: id.clone(),
                caller: me.clone(),
                callee: to.clone(),
                media,
                offer: sdp,
                state: CallState::Ringing,
                accepted_device: None,
                invited_at: now,
                devices: BTreeMap::new(),
                caller_signals: Vec::new(),
                held_bytes: 0,
                ever_online: online,
                span: span.clone(),
            },
        );
        self.call_ids.insert(id.clone(), ck);
        // Never the same user twice: calling yourself was refused above.
        self.user_calls.entry(me.0.clone()).or_default().push(ck);
        self.user_calls.entry(to.clone()).or_default().push(ck);
        self.timers.insert((now + self.config.ring_timeout, Timer::Ring(ck)));
        for t in targets {
            self.deliver_incoming(ck, t, now);
        }
        if !online {
            span.in_scope(|| tracing::info!("callee has no device online: pending"));
            self.push(key, json!({"type": "call.pending", "call": id}));
            self.out.push_back(Output::Webhook {
                body: json!({"event": "call.pending", "call": id, "from": me.0, "to": to, "media": media}),
            });
        }
        Ok(())
    }

    /// Send `call.incoming` and every held caller signal to one callee session.
    ///
    /// Not when the frames would take the session past `max_unacked_bytes`: then it
    /// would be given up for what others sent it (invites with large offers and held
    /// signals, ringing for it at once), and a new session would meet the same frames.
    /// That device does not ring for this call; its other calls go on.
    fn deliver_incoming(&mut self, ck: CallKey, target: SessionKey, now: Instant) {
        let Some(s) = self.sessions.get(&target) else { return };
        let device = s.device.clone();
        let online = s.conn.is_some();
        let room = self.config.max_unacked_bytes.saturating_sub(s.unacked_bytes);
        let Some(c) = self.calls.get_mut(&ck) else { return };
        c.ever_online |= online;
        // The frames' sizes: the offer as JSON escapes it, the ids, and the envelopes.
        let ids = c.id.as_str().len() + c.caller.0.as_str().len() + c.caller.1.as_str().len();
        let offer = serde_json::to_string(&c.offer).map_or(c.offer.len() * 6, |t| t.len());
        let need = offer + ids + 160 + c.held_bytes + c.caller_signals.len() * (ids + 120);
        if need > room {
            self.metrics.limit_hit(Limit::UnackedBytesIncoming);
            c.span.in_scope(
                || tracing::info!(%device, need, room, "incoming not delivered: the session has no room for it"),
            );
            return;
        }
        c.devices.entry(device.clone()).or_insert(false);
        let incoming = json!({
            "type": "call.incoming", "call": c.id, "from": c.caller.0, "from_device": c.caller.1,
            "media": c.media, "sdp": c.offer,
        });
        // Taken for the loop, not copied: each frame is written once, for this session
        // (its seq is this session's), and the held signals go back to the call.
        let held = std::mem::take(&mut c.caller_signals);
        let (id, caller) = (c.id.clone(), c.caller.clone());
        c.span
            .in_scope(|| tracing::info!(%device, held = held.len(), held_bytes = c.held_bytes, "incoming delivered"));
        let _ = now;
        if let Some(seq) = self.push(target, incoming) {
            if let Some(s) = self.sessions.get_mut(&target) {
                s.awaiting_ring.push((seq, ck));
            }
        }
        for d in &held {
            self.push_signal(target, signal_head(&id, &caller.0, &caller.1, d));
        }
        if let Some(c) = self.calls.get_mut(&ck) {
            c.caller_signals = held;
        }
    }

    /// End a call: tell every party but `initiator`, forget it, count it.
    fn end_call(
        &mut self,
        ck: CallKey,
        reason: EndReason,
        detail: Option<HangupReason>,
        initiator: Option<&(UserId, DeviceId)>,
        now: Instant,
    ) {
        let Some(c) = self.calls.remove(&ck) else { return };
        // Its ring timer goes with it (else one entry per call stays for the ring timeout:
        // 45 s of every call's, at any call rate).
        self.timers
            .remove(&(c.invited_at + self.config.ring_timeout, Timer::Ring(ck)));
        self.call_ids.remove(&c.id);
        for user in [&c.caller.0, &c.callee] {
            if let Some(keys) = self.user_calls.get_mut(user) {
                keys.retain(|k| *k != ck);
                if keys.is_empty() {
                    self.user_calls.remove(user);
                }
            }
        }
        self.forget_later(c.id.clone(), now);
        self.metrics.count("calls_ended", reason.as_str());
        if reason != EndReason::Hangup || c.state != CallState::Connected {
            if let Some(retried) = self.attempts.get_mut(&ordered(&c.caller.0, &c.callee)) {
                *retried = true; // the next invite between them is a retry
            }
        } else if let Some(retried) = self.attempts.get_mut(&ordered(&c.caller.0, &c.callee)) {
            *retried = false;
        }
        c.span
            .in_scope(|| tracing::info!(reason = reason.as_str(), detail = ?detail, "ended"));
        let mut frame = json!({"type": "call.ended", "call": c.id, "reason": reason});
        if let Some(d) = detail {
            frame["detail"] = json!(d);
        }
        let mut parties = vec![c.caller.clone()];
        for d in c.devices.keys() {
            parties.push((c.callee.clone(), d.clone()));
        }
        for p in parties {
            if Some(&p) != initiator {
                self.push_to(&p, frame.clone());
            }
        }
    }
}

fn ordered(a: &UserId, b: &UserId) -> (UserId, UserId) {
    if a <= b {
        (a.clone(), b.clone())
    } else {
        (b.clone(), a.clone())
    }
}

fn pair_label(local: &str, remote: &str) -> &'static str {
    let t = |s: &str| match s {
        "host" => 0,
        "srflx" => 1,
        "prflx" => 2,
        "relay" => 3,
        _ => 4,
    };
    const L: [[&str; 5]; 5] = [
        ["host-host", "host-srflx", "host-prflx", "host-relay", "host-other"],
        ["srflx-host", "srflx-srflx", "srflx-prflx", "srflx-relay", "srflx-other"],
        ["prflx-host", "prflx-srflx", "prflx-prflx", "prflx-relay", "prflx-other"],
        ["relay-host", "relay-srflx", "relay-prflx", "relay-relay", "relay-other"],
        ["other-host", "other-srflx", "other-prflx", "other-relay", "other-other"],
    ];
    L[t(local)][t(remote)]
}

/// An `error` frame; `reference` is the seq of the refused frame. The message is
/// clipped to [`MAX_MESSAGE`] characters: it may quote client input.
pub fn error_value(code: ErrorCode, message: &str, reference: Option<u64>) -> Value {
    let mut m = Map::new();
    m.insert("type".into(), "error".into());
    m.insert("code".into(), json!(code));
    m.insert("message".into(), clip(message, MAX_MESSAGE).into());
    if let Some(r) = reference {
        m.insert("ref".into(), r.into());
    }
    Value::Object(m)
}

/// A relayed `call.signal` frame up to its seq: the same bytes for every recipient,
/// written once per frame. serde would write the same (the field order is the
/// protocol's); by hand it is a few copies, where serde cost a tenth of a relayed
/// frame's instructions.
fn signal_head(call: &CallId, from: &UserId, device: &DeviceId, data: &str) -> String {
    // 80 for the names, 48 for the seq and ack that `signal_text` adds.
    let mut h =
        String::with_capacity(128 + call.as_str().len() + from.as_str().len() + device.as_str().len() + data.len());
    h.push_str(r#"{"type":"call.signal","call":"#);
    json_str(&mut h, call.as_str());
    h.push_str(r#","from":"#);
    json_str(&mut h, from.as_str());
    h.push_str(r#","from_device":"#);
    json_str(&mut h, device.as_str());
    h.push_str(r#","data":"#);
    h.push_str(data);
    h
}

/// A relayed `call.signal` frame: its head ([`signal_head`], which has room for the
/// rest), seq and ack.
fn signal_text(head: String, seq: u64, ack: Option<u64>) -> String {
    let mut t = head;
    let mut n = itoa::Buffer::new();
    t.push_str(r#","seq":"#);
    t.push_str(n.format(seq));
    if let Some(a) = ack {
        t.push_str(r#","ack":"#);
        t.push_str(n.format(a));
    }
    t.push('}');
    t
}

/// The string a raw JSON value holds, borrowed when it has no escapes; `None` if it
/// is not a string (or not a valid one).
///
/// The unescaped case by hand: `serde_json::from_str::<Text>` gives the same answer for
/// ~180 more instructions per relayed frame (callgrind, 1.2% of the socket task's work).
fn json_string(r: &str) -> Option<Cow<'_, str>> {
    match r.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        // A raw value is whole JSON, so a string without a backslash ends at its only
        // other quote and holds no control characters.
        Some(inner) if !inner.contains('\\') => Some(Cow::Borrowed(inner)),
        _ => serde_json::from_str::<String>(r).ok().map(Cow::Owned),
    }
}

/// `s` as a JSON string. Ids are printable ASCII, so only a quote or a backslash needs
/// escaping, and serde does that rare case.
fn json_str(out: &mut String, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else {
        out.push_str(&serde_json::to_string(s).expect("a string always serializes"));
    }
}

/// `{"type":"ack","seq":N}`, written on the stack: one allocation, the shared text's.
fn ack_text(seq: u64) -> Arc<str> {
    let mut n = itoa::Buffer::new();
    let parts: [&str; 3] = [r#"{"type":"ack","seq":"#, n.format(seq), "}"];
    let mut buf = [0u8; 48];
    let mut len = 0;
    for p in parts {
        buf[len..len + p.len()].copy_from_slice(p.as_bytes());
        len += p.len();
    }
    Arc::from(std::str::from_utf8(&buf[..len]).expect("ASCII"))
}

fn error_json(code: ErrorCode, message: &str, reference: Option<u64>) -> String {
    error_value(code, message, reference).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    /// What serde wrote for a relayed signal before the frame was written by hand.
    fn serde_signal(
        call: &CallId,
        from: &UserId,
        device: &DeviceId,
        data: &RawValue,
        seq: u64,
        ack: Option<u64>,
    ) -> String {
        #[derive(serde::Serialize)]
        struct SignalOut<'a> {
            #[serde(rename = "type")]
            typ: &'static str,
            call: &'a CallId,
            from: &'a UserId,
            from_device: &'a DeviceId,
            data: &'a RawValue,
            seq: u64,
            #[serde(skip_serializing_if = "Option::is_none")]
            ack: Option<u64>,
        }
        let out = SignalOut {
            typ: "call.signal",
            call,
            from,
            from_device: device,
            data,
            seq,
            ack,
        };
        serde_json::to_string(&out).unwrap()
    }

    #[test]
    fn ack_frames_are_written_right() {
        for n in [0, 7, u64::MAX] {
            assert_eq!(&*ack_text(n), format!(r#"{{"type":"ack","seq":{n}}}"#));
        }
    }

    #[test]
    fn relayed_signal_is_the_bytes_serde_wrote() {
        let data = RawValue::from_string(
            r#"{"candidate":{"candidate":"candidate:1 1 udp 1 192.0.2.1 9 typ host","sdpMid":"0"}}"#.into(),
        )
        .unwrap();
        let (call, user, dev) = (
            CallId::parse("c-1").unwrap(),
            UserId::parse("alice").unwrap(),
            DeviceId::parse("d1").unwrap(),
        );
        let text = signal_text(signal_head(&call, &user, &dev, data.get()), 7, Some(3));
        assert_eq!(
            text,
            r#"{"type":"call.signal","call":"c-1","from":"alice","from_device":"d1","data":{"candidate":{"candidate":"candidate:1 1 udp 1 192.0.2.1 9 typ host","sdpMid":"0"}},"seq":7,"ack":3}"#
        );
        // Ids are printable ASCII, which includes the two characters JSON escapes.
        for (c, u, d) in [(r#"a"b"#, r"back\slash", r#"\""#), ("x", "~!{}", "0")] {
            let (call, user, dev) = (
                CallId::parse(c).unwrap(),
                UserId::parse(u).unwrap(),
                DeviceId::parse(d).unwrap(),
            );
            for (seq, ack) in [(1, None), (u64::MAX, Some(u64::MAX)), (10, Some(0))] {
                assert_eq!(
                    signal_text(signal_head(&call, &user, &dev, data.get()), seq, ack),
                    serde_signal(&call, &user, &dev, &data, seq, ack),
                    "{c} {u} {d} {seq} {ack:?}"
                );
            }
        }
    }
}
