//! Invites: the checks a new call passes (limits, busy, glare), and `call.incoming`
//! with the held caller signals to each callee device.

use std::collections::BTreeMap;
use std::time::Instant;

use rand::RngCore;
use serde_json::json;

use crate::metrics::Limit;
use crate::protocol::*;

use super::call::{ordered, refuse, Call, CallState, Ended, Refusal};
use super::ids::{CallKey, SessionKey};
use super::timer::Timer;
use super::wire::signal_head;
use super::{Hub, Output, RETRY_WINDOW};

impl<R: RngCore> Hub<R> {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn invite(
        &mut self,
        key: SessionKey,
        me: (UserId, DeviceId),
        id: CallId,
        to: UserId,
        media: Media,
        sdp: String,
        meta: Option<serde_json::Map<String, serde_json::Value>>,
        now: Instant,
    ) -> Result<(), Refusal> {
        // The app's data rides along untouched, but bounded: checked before anything
        // else, so that a refused invite changes nothing.
        let meta = meta.map(serde_json::Value::Object);
        if let Some(m) = &meta {
            let len = serde_json::to_string(m).map_or(usize::MAX, |t| t.len());
            if len > MAX_META {
                return Err(refuse(
                    ErrorCode::BadRequest,
                    format!("meta is {len} bytes serialized: at most {MAX_META}"),
                ));
            }
        }
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
        self.room_for_a_call(&me.0)?;
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
        let busy = self
            .calls_of(&to)
            .any(|c| c.state != CallState::Ringing && c.holds(&to));
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
            let ended = Ended {
                caller: me.0.clone(),
                callee: to.clone(),
                reason: EndReason::Busy,
                detail: None,
                reported: [false; 2],
            };
            self.forget_later(id.clone(), ended, now);
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
                let ended = Ended {
                    caller: me.0.clone(),
                    callee: to.clone(),
                    reason: EndReason::Glare,
                    detail: None,
                    reported: [false; 2],
                };
                self.forget_later(id.clone(), ended, now);
                self.metrics.count("calls_ended", EndReason::Glare.as_str());
                self.push(
                    key,
                    json!({"type": "call.ended", "call": id, "reason": EndReason::Glare}),
                );
                return Ok(());
            }
        }
        let ck = self.new_call_key();
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
                meta,
                state: CallState::Ringing,
                accepted_device: None,
                invited_at: now,
                devices: BTreeMap::new(),
                caller_signals: Vec::new(),
                held_bytes: 0,
                ever_online: online,
                pushed: Vec::new(),
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
        self.ring_pushes(ck, now);
        if !online {
            span.in_scope(|| tracing::info!("callee has no device online: pending"));
            self.push(key, json!({"type": "call.pending", "call": id}));
            // Its idempotency id, in the per-device events' form (`-`: no device).
            let mut body = json!({"event": "call.pending", "id": format!("{id}/-/call.pending"), "call": id, "from": me.0, "to": to, "media": media});
            if let Some(meta) = self.calls.get(&ck).and_then(|c| c.meta.clone()) {
                body["meta"] = meta;
            }
            self.out.push_back(Output::Webhook { body });
        }
        Ok(())
    }

    /// Send `call.incoming` and every held caller signal to one callee session.
    ///
    /// Not when the frames would take the session past `max_unacked_bytes`: then it
    /// would be given up for what others sent it (invites with large offers and held
    /// signals, ringing for it at once), and a new session would meet the same frames.
    /// That device does not ring for this call; its other calls go on.
    pub(super) fn deliver_incoming(&mut self, ck: CallKey, target: SessionKey, now: Instant) {
        let Some(s) = self.sessions.get(&target) else { return };
        let device = s.device.clone();
        let online = s.conn.is_some();
        let room = self.config.max_unacked_bytes.saturating_sub(s.unacked_bytes);
        let Some(c) = self.calls.get_mut(&ck) else { return };
        c.ever_online |= online;
        // The frames' sizes: the offer as JSON escapes it, the ids, and the envelopes.
        let ids = c.id.as_str().len() + c.caller.0.as_str().len() + c.caller.1.as_str().len();
        let offer = serde_json::to_string(&c.offer).map_or(c.offer.len() * 6, |t| t.len());
        let meta = c.meta.as_ref().map_or(0, |m| m.to_string().len() + 8);
        let need = offer + meta + ids + 160 + c.held_bytes + c.caller_signals.len() * (ids + 120);
        if need > room {
            self.metrics.limit_hit(Limit::UnackedBytesIncoming);
            c.span.in_scope(
                || tracing::info!(%device, need, room, "incoming not delivered: the session has no room for it"),
            );
            return;
        }
        c.devices.entry(device.clone()).or_insert(false);
        let mut incoming = json!({
            "type": "call.incoming", "call": c.id, "from": c.caller.0, "from_device": c.caller.1,
            "media": c.media, "sdp": c.offer,
        });
        if let Some(meta) = &c.meta {
            incoming["meta"] = meta.clone();
        }
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
}
