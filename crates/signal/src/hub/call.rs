//! The server-owned call state machine: accept, reject, cancel, hangup, connected,
//! the relay of `call.signal`, and ending calls. Invites are in `invite.rs`.

use std::collections::BTreeMap;
use std::time::Instant;

use rand::RngCore;
use serde_json::{json, Value};
use tracing::Span;

use crate::metrics::Limit;
use crate::protocol::*;

use super::ids::{CallKey, SessionKey};
use super::timer::Timer;
use super::wire::{signal_head, signal_text};
use super::{Hub, Output, Party};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(super) enum CallState {
    Ringing,
    Accepted,
    Connected,
    /// Re-registered by one side after the server lost it (`call.restore`), waiting for
    /// the `missing` side to do the same (restore.rs).
    Restoring {
        missing: Role,
    },
}

impl CallState {
    /// As the `calls` snapshot names it.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            CallState::Ringing => "ringing",
            CallState::Accepted => "accepted",
            CallState::Connected => "connected",
            CallState::Restoring { .. } => "restoring",
        }
    }
}

/// What is remembered of an ended call (10 minutes at most, `--max-ended-calls`): that a
/// repeated invite stays a no-op, and what to tell a party that restores it late.
#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct Ended {
    pub(super) caller: UserId,
    pub(super) callee: UserId,
    pub(super) reason: EndReason,
    pub(super) detail: Option<HangupReason>,
    /// Whether the caller's and the callee's SDK reported the call (`call.report`).
    pub(super) reported: [bool; 2],
}

#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct Call {
    pub(super) key: CallKey,
    pub(super) id: CallId,
    pub(super) caller: (UserId, DeviceId),
    pub(super) callee: UserId,
    pub(super) media: Media,
    pub(super) offer: String,
    /// The app's data from the invite (`meta`), as it came: an object of at most
    /// `MAX_META` bytes serialized.
    pub(super) meta: Option<Value>,
    pub(super) state: CallState,
    pub(super) accepted_device: Option<DeviceId>,
    #[serde(with = "super::snapshot::at")]
    pub(super) invited_at: Instant,
    /// Callee devices that were sent `call.incoming`, and whether they rang.
    pub(super) devices: BTreeMap<DeviceId, bool>,
    /// The caller's signals while the call rings, for callee devices that come later;
    /// dropped once it is answered. Bounded by the `max_held_*` settings.
    pub(super) caller_signals: Vec<Box<str>>,
    /// Bytes of `caller_signals`.
    pub(super) held_bytes: usize,
    pub(super) ever_online: bool,
    /// Callee devices sent a `call.ring` push: each learns how the call ends (push.rs).
    pub(super) pushed: Vec<DeviceId>,
    /// Made again for a call restored from a snapshot (see `snapshot.rs`).
    #[serde(skip, default = "Span::none")]
    pub(super) span: Span,
}

impl Call {
    /// Whether `user` is in this call now: a party, and not the side a restoring call
    /// waits for (that side's presence is only the other side's claim, which must not
    /// make the user busy or count against the user's limits).
    pub(super) fn holds(&self, user: &UserId) -> bool {
        match self.state {
            CallState::Restoring { missing: Role::Caller } => self.callee == *user,
            CallState::Restoring { missing: Role::Callee } => self.caller.0 == *user,
            _ => self.caller.0 == *user || self.callee == *user,
        }
    }
}

/// A refused frame: the error code and message sent back with its seq.
pub(super) type Refusal = (ErrorCode, String);

pub(super) fn refuse(code: ErrorCode, msg: impl Into<String>) -> Refusal {
    (code, msg.into())
}

impl<R: RngCore> Hub<R> {
    /// Remember an ended call's id, so that a repeated invite with it stays a no-op.
    pub(super) fn forget_later(&mut self, id: CallId, ended: Ended, now: Instant) {
        if self.ended.insert(id, ended, now) {
            self.metrics.limit_hit(Limit::EndedCalls);
        }
    }

    pub(super) fn snapshot(&self, user: &UserId, device: &DeviceId) -> Vec<Value> {
        // Not a restoring call that only names this user (restore.rs): that is a claim.
        let mut v: Vec<&Call> = self.calls_of(user).filter(|c| c.holds(user)).collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v.into_iter()
            .map(|c| {
                let caller = &c.caller.0 == user;
                let mut entry = json!({
                    "call": c.id,
                    "role": if caller { "caller" } else { "callee" },
                    "peer": if caller { &c.callee } else { &c.caller.0 },
                    "media": c.media,
                    "state": c.state.as_str(),
                    "this_device": if caller { &c.caller.1 == device } else { c.accepted_device.as_ref() == Some(device) },
                });
                if let Some(meta) = &c.meta {
                    entry["meta"] = meta.clone();
                }
                entry
            })
            .collect()
    }

    /// Whether `user` may be in one more call (`--max-calls-per-user`): the calls it
    /// placed or answered count; invites ringing for it are someone else's doing (capped
    /// per callee), and a restoring call only naming it is a claim ([`Call::holds`]).
    pub(super) fn room_for_a_call(&self, user: &UserId) -> Result<(), Refusal> {
        let live = self
            .calls_of(user)
            .filter(|c| c.holds(user) && (c.caller.0 == *user || c.state != CallState::Ringing))
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
        Ok(())
    }

    /// Name an answered call's parties and their sockets ([`Output::CallPeers`]): only a
    /// call both sides stand in, answered by the callee (or restored by both). A call one
    /// side re-registered alone (`Restoring`) is that side's claim only, which must not
    /// let its address into the other's relays.
    pub(super) fn call_peers(&mut self, ck: CallKey) {
        let c = &self.calls[&ck];
        if !matches!(c.state, CallState::Accepted | CallState::Connected) {
            return;
        }
        let Some(device) = &c.accepted_device else { return };
        let party = |user: &UserId, device: &DeviceId| {
            let conn = self.device_session(user, device).and_then(|k| self.sessions[&k].conn);
            Party {
                user: user.clone(),
                conn,
                ip: conn.and_then(|c| self.conns.get(&c)).and_then(|c| c.ip),
            }
        };
        let peers = Output::CallPeers {
            caller: party(&c.caller.0, &c.caller.1),
            callee: party(&c.callee, device),
        };
        self.out.push_back(peers);
    }

    /// The live calls `user` is in, oldest first.
    pub(super) fn calls_of<'a>(&'a self, user: &UserId) -> impl Iterator<Item = &'a Call> + 'a {
        let keys = self.user_calls.get(user).map_or(&[][..], |k| &k[..]);
        // Every key in `user_calls` is a live call: `end_call` removes both together.
        keys.iter().filter_map(|k| self.calls.get(k))
    }

    /// Relay a signal to one session: `head` is the frame up to its seq
    /// ([`signal_head`]), the same whoever it goes to.
    pub(super) fn push_signal(&mut self, key: SessionKey, head: String) {
        self.push_with(key, |seq, ack| signal_text(head, seq, ack));
    }

    pub(super) fn handle_call_frame(
        &mut self,
        key: SessionKey,
        frame: ClientFrame,
        now: Instant,
    ) -> Result<(), Refusal> {
        if let ClientFrame::Signal { call, data } = &frame {
            return self.handle_signal(key, call.as_str(), data.get(), None);
        }
        let s = &self.sessions[&key];
        let me = (s.user.clone(), s.device.clone());
        if let ClientFrame::Invite {
            call,
            to,
            media,
            sdp,
            meta,
        } = frame
        {
            // A repeat of an invite already live here is not a new call.
            if !self.call_ids.contains_key(&call) {
                self.refuse_if_draining()?;
            }
            return self.invite(key, me, call, to, media, sdp, meta, now);
        }
        if let ClientFrame::Restore {
            call,
            role,
            peer,
            peer_device,
            media,
        } = frame
        {
            self.refuse_if_draining()?;
            return self.restore(key, me, call, role, peer, peer_device, media, now);
        }
        if let ClientFrame::Report {
            call,
            duration_ms,
            rtt_ms,
            loss,
            ..
        } = frame
        {
            return self.report(&me.0, &call, duration_ms, rtt_ms, loss);
        }
        if let ClientFrame::DeviceUpdate { push, state } = frame {
            return self.device_update(&me, push, state);
        }
        let id = frame.call().expect("every other frame names a call").clone();
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
            ClientFrame::Invite { .. }
            | ClientFrame::Signal { .. }
            | ClientFrame::Restore { .. }
            | ClientFrame::Report { .. }
            | ClientFrame::DeviceUpdate { .. } => {
                unreachable!("handled above")
            }
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
                let pushed = std::mem::take(&mut c.pushed);
                let (span, caller, callee) = (c.span.clone(), c.caller.clone(), c.callee.clone());
                span.in_scope(|| tracing::info!(device = %me.1, "accepted"));
                self.push_to(
                    &caller,
                    json!({"type": "call.accepted", "call": id, "device": me.1, "sdp": sdp}),
                );
                self.call_peers(ck);
                for d in others {
                    self.push_to(
                        &(callee.clone(), d),
                        json!({"type": "call.ended", "call": id, "reason": EndReason::AnsweredElsewhere}),
                    );
                }
                self.push_ended(
                    &id,
                    &caller.0,
                    &callee,
                    &pushed,
                    Some(&me.1),
                    EndReason::AnsweredElsewhere,
                );
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
    pub(super) fn handle_signal(
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
        if let CallState::Restoring { missing } = c.state {
            // No one to relay to: refused, not dropped.
            return Err(refuse(
                ErrorCode::UnknownCall,
                format!(
                    "call {call} is being restored: the {} has not restored it yet",
                    match missing {
                        Role::Caller => "caller",
                        Role::Callee => "callee",
                    }
                ),
            ));
        }
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

    /// End a call: tell every party but `initiator`, forget it, count it.
    pub(super) fn end_call(
        &mut self,
        ck: CallKey,
        reason: EndReason,
        detail: Option<HangupReason>,
        initiator: Option<&(UserId, DeviceId)>,
        now: Instant,
    ) {
        let Some(c) = self.calls.remove(&ck) else { return };
        // Its ring timer goes with it (else one entry per call stays for the ring timeout:
        // 45 s of every call's, at any call rate), and a restoring call's deadline.
        self.timers
            .remove(&(c.invited_at + self.config.ring_timeout, Timer::Ring(ck)));
        if let CallState::Restoring { .. } = c.state {
            self.timers
                .remove(&(c.invited_at + self.config.session_ttl, Timer::Restore(ck)));
        }
        self.call_ids.remove(&c.id);
        for user in [&c.caller.0, &c.callee] {
            if let Some(keys) = self.user_calls.get_mut(user) {
                keys.retain(|k| *k != ck);
                if keys.is_empty() {
                    self.user_calls.remove(user);
                }
            }
        }
        let ended = Ended {
            caller: c.caller.0.clone(),
            callee: c.callee.clone(),
            reason,
            detail,
            reported: [false; 2],
        };
        self.forget_later(c.id.clone(), ended, now);
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
        self.push_ended(&c.id, &c.caller.0, &c.callee, &c.pushed, None, reason);
        let frame = ended_frame(&c.id, reason, detail);
        // Not the side a restoring call waits for: its device is only a claim, and it
        // learns how the call ended when it restores.
        let mut parties = Vec::new();
        if c.state != (CallState::Restoring { missing: Role::Caller }) {
            parties.push(c.caller.clone());
        }
        if c.state != (CallState::Restoring { missing: Role::Callee }) {
            for d in c.devices.keys() {
                parties.push((c.callee.clone(), d.clone()));
            }
        }
        for p in parties {
            if Some(&p) != initiator {
                self.push_to(&p, frame.clone());
            }
        }
    }

    /// `Timer::Ring`: a call still ringing at the ring timeout ends `timeout`, or
    /// `unreachable` if no callee device was ever online.
    pub(super) fn on_ring_timer(&mut self, ck: CallKey, now: Instant) {
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
}

/// A `call.ended` frame (before its seq).
pub(super) fn ended_frame(id: &CallId, reason: EndReason, detail: Option<HangupReason>) -> Value {
    let mut frame = json!({"type": "call.ended", "call": id, "reason": reason});
    if let Some(d) = detail {
        frame["detail"] = json!(d);
    }
    frame
}

pub(super) fn ordered(a: &UserId, b: &UserId) -> (UserId, UserId) {
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
