//! Sessions: hello and resume, attaching and detaching sockets, heartbeats, acks, and
//! each session's sequenced outbox (kept until the client acknowledges it).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::RngCore;
use serde_json::{json, Value};

use crate::metrics::Limit;
use crate::protocol::*;

use super::call::CallState;
use super::ids::{CallKey, SessionKey};
use super::timer::{arm, Timer};
use super::wire::{ack_text, error_json, error_value};
use super::{ConnId, Hub, Output};

#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct Conn {
    pub(super) session: Option<SessionKey>,
    #[serde(with = "super::snapshot::at")]
    pub(super) last_rx: Instant,
    /// The client's address as the listener saw it, if the driver said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) ip: Option<std::net::IpAddr>,
}

#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct Session {
    pub(super) id: SessionId,
    pub(super) user: UserId,
    pub(super) device: DeviceId,
    pub(super) conn: Option<ConnId>,
    out_seq: u64,
    pub(super) unacked: VecDeque<(u64, Arc<str>)>,
    /// Bytes of the texts in `unacked`.
    pub(super) unacked_bytes: usize,
    pub(super) in_seq: u64,
    /// When the separate `ack` frame is due, if one is owed and no frame carried it yet.
    #[serde(with = "super::snapshot::opt_at")]
    ack_due: Option<Instant>,
    /// The deadline of this session's one `Timer::Ack` entry, if it has one. Timer
    /// entries are never removed, and an ack that rides on a frame leaves its entry
    /// behind; the entry then serves the next owed ack (re-armed at its deadline when it
    /// fires early) instead of a new entry per received frame, which had cost two timer
    /// tree operations per relayed frame.
    #[serde(with = "super::snapshot::opt_at")]
    ack_timer: Option<Instant>,
    #[serde(with = "super::snapshot::opt_at")]
    detached_at: Option<Instant>,
    /// The deadlines of this session's one `Timer::Heartbeat`, `Timer::Ice` and
    /// `Timer::Expire` entry, if it has one. A new deadline replaces the entry (see
    /// [`arm`]): a session has at most one of each however often it resumes, where
    /// every resume had added a heartbeat and a credential refresh of its own.
    #[serde(with = "super::snapshot::opt_at")]
    heartbeat_at: Option<Instant>,
    #[serde(with = "super::snapshot::opt_at")]
    ice_at: Option<Instant>,
    #[serde(with = "super::snapshot::opt_at")]
    expire_at: Option<Instant>,
    pub(super) awaiting_ring: Vec<(u64, CallKey)>,
    pub(super) tokens: f64,
    #[serde(with = "super::snapshot::at")]
    pub(super) tokens_at: Instant,
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
pub(super) enum SessionEnd {
    /// No resume within the session TTL.
    Ttl,
    /// Sent elsewhere by a drain (it had no live call).
    Drained,
    /// The same device said hello without resuming.
    Replaced,
    /// Too many (or too many bytes of) unacknowledged frames.
    UnackedOverflow,
}

impl SessionEnd {
    fn as_str(self) -> &'static str {
        match self {
            SessionEnd::Ttl => "ttl",
            SessionEnd::Drained => "drained",
            SessionEnd::Replaced => "replaced",
            SessionEnd::UnackedOverflow => "unacked_overflow",
        }
    }
}

impl<R: RngCore> Hub<R> {
    /// The first frame of `conn`: a hello, whose token `verified` already says (the
    /// driver verified it outside the hub, see [`Hub::handle_text_verified`]) or, when
    /// `None`, the hub's own verifier checks.
    pub(super) fn handle_hello(
        &mut self,
        conn: ConnId,
        text: &str,
        now: Instant,
        verified: Option<Result<UserId, String>>,
    ) {
        let reject = |this: &mut Self, code: ErrorCode, msg: &str, close_code: u16| {
            this.metrics.count("errors", code.as_str());
            this.out.push_back(Output::Send {
                conn,
                text: error_json(code, msg, None).into(),
            });
            this.out.push_back(Output::Close {
                conn,
                code: close_code,
                reason: match code {
                    ErrorCode::TooManyDevices => "too many devices",
                    ErrorCode::Draining => "server draining: reconnect",
                    _ => "bad hello",
                },
            });
            this.conns.remove(&conn);
        };
        let hello = match parse_hello(text) {
            Ok(h) => h,
            Err(HelloError::TooLarge) => {
                self.metrics.limit_hit(Limit::FrameSize);
                return reject(self, ErrorCode::TooLarge, "hello too large", close::PROTOCOL);
            }
            Err(HelloError::Bad(msg)) => return reject(self, ErrorCode::BadRequest, &msg, close::PROTOCOL),
        };
        let verified = match verified {
            Some(v) => v,
            None => self.tokens.verify(&hello.token, self.unix_now(now)),
        };
        let user = match verified {
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
            let (user, device) = (user.clone(), hello.device.clone());
            self.touch_push_device(&user, &device, now);
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
            // Back on a new socket, maybe from a new address: name the device's answered
            // calls again, for the other party's relay.
            let answered: Vec<CallKey> = self
                .calls_of(&user)
                .filter(|c| {
                    c.caller == (user.clone(), device.clone())
                        || (c.callee == user && c.accepted_device.as_ref() == Some(&device))
                })
                .map(|c| c.key)
                .collect();
            for ck in answered {
                self.call_peers(ck);
            }
            return;
        }
        if hello.resume.is_some() {
            self.metrics.count("resumes", "failed");
        }
        if self.draining {
            tracing::debug!(%user, device = %hello.device, "draining: new session refused");
            return reject(
                self,
                ErrorCode::Draining,
                "server draining for a restart: connect again (to another node where there is one)",
                close::SERVICE_RESTART,
            );
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
        let key = self.new_session_key();
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
        self.touch_push_device(&user, &hello.device, now);
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

    pub(super) fn detach(&mut self, key: SessionKey, now: Instant) {
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
    pub(super) fn consume_next(&mut self, key: SessionKey, now: Instant) -> Option<u64> {
        let s = self.sessions.get_mut(&key)?;
        s.in_seq += 1;
        let seq = s.in_seq;
        self.schedule_ack(key, now);
        Some(seq)
    }

    pub(super) fn schedule_ack(&mut self, key: SessionKey, now: Instant) {
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

    pub(super) fn handle_ack(&mut self, key: SessionKey, n: u64, _now: Instant) {
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
    pub(super) fn push(&mut self, key: SessionKey, mut frame: Value) -> Option<u64> {
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
    pub(super) fn push_with(&mut self, key: SessionKey, text: impl FnOnce(u64, Option<u64>) -> String) -> Option<u64> {
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

    pub(super) fn push_to(&mut self, who: &(UserId, DeviceId), frame: Value) -> Option<u64> {
        let key = self.device_session(&who.0, &who.1)?;
        self.push(key, frame)
    }

    /// The session a device has now, if any.
    pub(super) fn device_session(&self, user: &UserId, device: &DeviceId) -> Option<SessionKey> {
        self.devices.get(user)?.get(device).copied()
    }

    /// An `error` frame for a refused frame (its message clipped by [`error_value`]).
    pub(super) fn error(&mut self, key: SessionKey, code: ErrorCode, msg: &str, reference: Option<u64>) {
        self.metrics.count("errors", code.as_str());
        self.push(key, error_value(code, msg, reference));
    }

    pub(super) fn error_unsequenced(&mut self, conn: ConnId, code: ErrorCode, msg: &str) {
        self.metrics.count("errors", code.as_str());
        self.out.push_back(Output::Send {
            conn,
            text: error_json(code, msg, None).into(),
        });
    }

    pub(super) fn expire_session(&mut self, key: SessionKey, why: SessionEnd) {
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

    /// `Timer::Hello`: a socket that has not said hello by the deadline is closed.
    pub(super) fn on_hello_timer(&mut self, conn: ConnId) {
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

    /// `Timer::Ack`: the separate `ack` frame, if no frame to the session carried it.
    pub(super) fn on_ack_timer(&mut self, key: SessionKey, now: Instant) {
        let Some(s) = self.sessions.get_mut(&key) else { return };
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

    /// `Timer::Heartbeat`: ping the socket, or close it if it has gone silent.
    pub(super) fn on_heartbeat_timer(&mut self, key: SessionKey, now: Instant) {
        if let Some(s) = self.sessions.get_mut(&key) {
            s.heartbeat_at = None;
            self.heartbeat(key, now);
        }
    }

    /// `Timer::Expire`: end a session that has waited for a resume for the session TTL.
    pub(super) fn on_expire_timer(&mut self, key: SessionKey, now: Instant) {
        let Some(s) = self.sessions.get_mut(&key) else { return };
        s.expire_at = None;
        let due = s.detached_at.is_some_and(|d| d + self.config.session_ttl <= now);
        if due {
            self.expire_session(key, SessionEnd::Ttl);
        }
    }

    /// `Timer::Ice`: fresh ICE servers before the session's credentials lapse.
    pub(super) fn on_ice_timer(&mut self, key: SessionKey, now: Instant) {
        if let Some(s) = self.sessions.get_mut(&key) {
            s.ice_at = None;
            self.refresh_ice(key, now);
        }
    }
}

/// Why a first frame is not a hello.
pub(super) enum HelloError {
    /// Longer than [`MAX_FRAME`].
    TooLarge,
    /// Not a hello; the text says why.
    Bad(String),
}

/// The one decode of a first frame into a [`Hello`], used by the hub and by
/// [`hello_token`].
pub(super) fn parse_hello(text: &str) -> Result<Hello, HelloError> {
    if text.len() > MAX_FRAME {
        return Err(HelloError::TooLarge);
    }
    // A `Value` keeps the last of duplicate keys (of `token`, say), where another
    // reader would take the first: refused.
    if let Err(crate::keys::KeyError::Duplicate(k)) = crate::keys::check(text) {
        return Err(HelloError::Bad(format!("hello: duplicate key {k:?}")));
    }
    let v: Value =
        serde_json::from_str(text).map_err(|_| HelloError::Bad("first frame must be a JSON hello".into()))?;
    if v.get("type").and_then(Value::as_str) != Some("hello") {
        return Err(HelloError::Bad("first frame must be hello".into()));
    }
    serde_json::from_value(v).map_err(|e| HelloError::Bad(format!("hello: {e}")))
}

/// The token of a first frame the hub would take as a hello, so that a driver can
/// verify it outside the hub's lock (and, with several nodes, before the hello is
/// shared with the others) and hand the result to [`Hub::handle_text_verified`].
pub fn hello_token(text: &str) -> Option<String> {
    parse_hello(text).ok().map(|h| h.token)
}
