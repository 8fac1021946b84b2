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

// This file holds what the driver sees (the types, `Hub` and its entry points). Each
// part of the hub is an `impl Hub` block of its own: sessions and their sequenced
// outbox (`session`), the call state machine (`call`, `invite`), timers (`timer`), the
// typed session and call keys (`ids`), and the frame texts written by hand (`wire`).
mod call;
mod drain;
mod ids;
mod invite;
mod push;
mod report;
mod restore;
mod session;
pub(crate) mod snapshot;
mod timer;
mod wire;

use std::borrow::Cow;
use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::RngCore;
use serde_json::Value;

use crate::metrics::{Limit, SignalMetrics};
use crate::protocol::*;
use crate::recent::Recent;

use call::Call;
use ids::{CallKey, SessionKey};
use session::{Conn, Session};
use timer::Timer;
use wire::{error_json, json_string};

pub use drain::DRAIN_TICK;
pub use session::hello_token;
pub use snapshot::{SnapshotError, SNAPSHOT_VERSION};
pub use wire::error_value;

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
    /// Devices with a push target or an app state registered (`device.update`), over all
    /// users; kept across sessions. Past it a new device's registration is refused.
    pub max_push_devices: usize,
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
            max_push_devices: 100_000,
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
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
    /// The two parties of an answered call, once at the answer and again whenever one
    /// of them comes back on a new socket (a resume, often after a network change).
    /// Each party's ICE agent then checks the other's candidates, some through the
    /// other's TURN relay, which drops whatever arrives before its owner installed a
    /// permission: the driver may let each party's address (as its socket shows it)
    /// into the other's allocations ahead of that (`firstcall_turn::grants`).
    CallPeers {
        /// The caller: its user and its socket now, if connected.
        caller: Party,
        /// The callee's answering device.
        callee: Party,
    },
}

/// One side of a call, as [`Output::CallPeers`] names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Party {
    /// The user (TURN credentials minted here carry it).
    pub user: UserId,
    /// The device's socket, if it has one now.
    pub conn: Option<ConnId>,
    /// That socket's client address, if its driver gave one ([`Hub::handle_connect_from`]).
    pub ip: Option<std::net::IpAddr>,
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
    ended: Recent<CallId, call::Ended>,
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
    /// When `handle_timeout` next forgets old push registrations.
    next_push_sweep: Instant,
    /// Draining for a restart: new sessions are refused, idle ones sent elsewhere.
    draining: bool,
    /// Devices' push targets and app states, by user (push.rs).
    push_devices: HashMap<UserId, Vec<(DeviceId, push::DeviceRecord)>>,
    /// Entries in `push_devices`, over all users.
    push_count: usize,
    /// The `ping` and `pong` frames, shared by every socket.
    ping: Arc<str>,
    pong: Arc<str>,
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
            next_push_sweep: now,
            draining: false,
            push_devices: HashMap::default(),
            push_count: 0,
            ping: r#"{"type":"ping"}"#.into(),
            pong: r#"{"type":"pong"}"#.into(),
        }
    }

    /// The latest `now` handed to any `handle_*` call.
    pub fn now(&self) -> Instant {
        self.now
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
        self.handle_connect_from(conn, None, now)
    }

    /// As [`Hub::handle_connect`], from client address `ip` as the listener saw it: the
    /// hub names it in [`Output::CallPeers`], so that every node of a cluster knows it.
    pub fn handle_connect_from(&mut self, conn: ConnId, ip: Option<std::net::IpAddr>, now: Instant) {
        self.now = now;
        self.conns.insert(
            conn,
            Conn {
                session: None,
                last_rx: now,
                ip,
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

    /// The sockets the hub knows (said hello or not yet), in order.
    pub fn conn_ids(&self) -> Vec<ConnId> {
        let mut v: Vec<ConnId> = self.conns.keys().copied().collect();
        v.sort_unstable();
        v
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
        self.handle_text_verified(conn, text, now, None)
    }

    /// One text frame from `conn`; if it is the socket's hello, `verified` is what the
    /// driver's check of its token ([`hello_token`]) said, so that the hub (and its lock)
    /// does not wait for the check, and every replica of a cluster takes the same
    /// decision whatever its own key cache holds. `None`: the hub verifies it itself.
    pub fn handle_text_verified(
        &mut self,
        conn: ConnId,
        text: &str,
        now: Instant,
        verified: Option<Result<UserId, String>>,
    ) {
        self.now = now;
        let Some(c) = self.conns.get_mut(&conn) else { return };
        c.last_rx = now;
        let Some(key) = c.session else {
            self.handle_hello(conn, text, now, verified);
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
            self.fire(timer, now);
        }
        // Swept once a second, not on every timer: the ack timers fire about every
        // millisecond under load, and each sweep walks both maps whole.
        if now >= self.next_push_sweep {
            self.next_push_sweep = now + push::PUSH_SWEEP_EVERY;
            self.sweep_push_devices(now);
        }
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
}
