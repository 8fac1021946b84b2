//! Calls that outlive the server: `call.restore` re-registers a call whose media still
//! flows after the server lost it (a restart, or a node gone), one side at a time. See
//! docs/protocol.md, "Calls that outlive the server".
//!
//! The server never saw the call, so it cannot check a claim against it: a restoring
//! call only becomes live when the other user claims the same call back, with the other
//! role. Until then the waiting side's presence is a claim only ([`Call::holds`]): it
//! does not make that user busy nor count against the user's limits, and nothing is
//! sent to that user's devices.

use std::collections::BTreeMap;
use std::time::Instant;

use rand::RngCore;
use serde_json::json;

use crate::protocol::*;

use super::call::{ended_frame, refuse, Call, CallState, Refusal};
use super::ids::{CallKey, SessionKey};
use super::timer::Timer;
use super::Hub;

impl<R: RngCore> Hub<R> {
    /// `call.restore` from session `key` (device `me`).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn restore(
        &mut self,
        key: SessionKey,
        me: (UserId, DeviceId),
        id: CallId,
        role: Role,
        peer: UserId,
        peer_device: DeviceId,
        media: Media,
        now: Instant,
    ) -> Result<(), Refusal> {
        if peer == me.0 {
            return Err(refuse(ErrorCode::BadRequest, "a call with yourself"));
        }
        let (caller, callee) = match role {
            Role::Caller => (&me.0, &peer),
            Role::Callee => (&peer, &me.0),
        };
        if let Some(&ck) = self.call_ids.get(&id) {
            return self.restore_known(key, &me, ck, role, &peer);
        }
        if let Some((_, e)) = self.ended.get(&id) {
            if e.caller != *caller || e.callee != *callee {
                self.metrics.count("restores", "refused");
                return Err(refuse(ErrorCode::NotParticipant, "not a party of this call"));
            }
            // It ended while this side was away: how, as the other side was told.
            let frame = ended_frame(&id, e.reason, e.detail);
            self.metrics.count("restores", "ended_meanwhile");
            self.push(key, frame);
            return Ok(());
        }
        // As an invite: the calls this user placed or answered.
        self.room_for_a_call(&me.0)
            .inspect_err(|_| self.metrics.count("restores", "refused"))?;
        let (caller, callee) = (caller.clone(), callee.clone());
        let span = tracing::info_span!("call", call = %id, from = %caller, to = %callee, media = ?media);
        span.in_scope(|| tracing::info!(device = %me.1, role = ?role, "restoring: waiting for the other side"));
        let (caller_device, callee_device) = match role {
            Role::Caller => (me.1.clone(), peer_device),
            Role::Callee => (peer_device, me.1.clone()),
        };
        let ck = self.new_call_key();
        self.calls.insert(
            ck,
            Call {
                key: ck,
                id: id.clone(),
                caller: (caller.clone(), caller_device),
                callee: callee.clone(),
                media,
                offer: String::new(),
                meta: None,
                state: CallState::Restoring { missing: role.other() },
                accepted_device: Some(callee_device.clone()),
                invited_at: now,
                devices: BTreeMap::from([(callee_device, true)]),
                caller_signals: Vec::new(),
                held_bytes: 0,
                ever_online: true,
                pushed: Vec::new(),
                span,
            },
        );
        self.call_ids.insert(id.clone(), ck);
        self.user_calls.entry(caller).or_default().push(ck);
        self.user_calls.entry(callee).or_default().push(ck);
        self.timers.insert((now + self.config.session_ttl, Timer::Restore(ck)));
        self.metrics.count("restores", "waiting");
        self.push(key, json!({"type": "call.restored", "call": id, "peer_back": false}));
        Ok(())
    }

    /// A restore of a call the server has: the other side's (completing it), or a repeat.
    fn restore_known(
        &mut self,
        key: SessionKey,
        me: &(UserId, DeviceId),
        ck: CallKey,
        role: Role,
        peer: &UserId,
    ) -> Result<(), Refusal> {
        let c = self.calls.get_mut(&ck).expect("every call id maps to a live call");
        let (caller, callee) = match role {
            Role::Caller => (&me.0, peer),
            Role::Callee => (peer, &me.0),
        };
        if c.caller.0 != *caller || c.callee != *callee {
            self.metrics.count("restores", "refused");
            return Err(refuse(
                ErrorCode::NotParticipant,
                "the call is live between other users",
            ));
        }
        // This device as the call has it in `role`.
        let mine = match role {
            Role::Caller => c.caller.1 == me.1,
            Role::Callee => c.accepted_device.as_ref() == Some(&me.1),
        };
        let id = c.id.clone();
        if matches!(c.state, CallState::Restoring { missing } if missing == role) {
            // Completing puts this user in the call: as an invite or a first restore, it
            // must fit the user's limit (claims naming the user did not count).
            self.room_for_a_call(&me.0)
                .inspect_err(|_| self.metrics.count("restores", "refused"))?;
        }
        let c = self.calls.get_mut(&ck).expect("every call id maps to a live call");
        match c.state {
            CallState::Restoring { missing } if missing == role => {
                match role {
                    Role::Caller => c.caller.1 = me.1.clone(),
                    Role::Callee => {
                        c.accepted_device = Some(me.1.clone());
                        c.devices = BTreeMap::from([(me.1.clone(), true)]);
                    }
                }
                c.state = CallState::Connected;
                self.timers
                    .remove(&(c.invited_at + self.config.session_ttl, Timer::Restore(ck)));
                let other = match role {
                    Role::Caller => (
                        c.callee.clone(),
                        c.accepted_device.clone().expect("restoring calls have one"),
                    ),
                    Role::Callee => c.caller.clone(),
                };
                c.span
                    .in_scope(|| tracing::info!(device = %me.1, "restored: both sides back"));
                self.metrics.count("restores", "completed");
                let frame = json!({"type": "call.restored", "call": id, "peer_back": true});
                self.push(key, frame.clone());
                self.push_to(&other, frame);
                Ok(())
            }
            // A repeat from the device the call already has in that role.
            state if mine && !matches!(state, CallState::Ringing) => {
                let peer_back = !matches!(state, CallState::Restoring { .. });
                self.metrics.count("restores", "repeated");
                self.push(
                    key,
                    json!({"type": "call.restored", "call": id, "peer_back": peer_back}),
                );
                Ok(())
            }
            _ => {
                self.metrics.count("restores", "refused");
                Err(refuse(
                    ErrorCode::NotParticipant,
                    "that side of the call is held by another device",
                ))
            }
        }
    }

    /// `Timer::Restore`: the other side never restored the call: it ends `failed`.
    pub(super) fn on_restore_timer(&mut self, ck: CallKey, now: Instant) {
        if let Some(c) = self.calls.get(&ck) {
            if let CallState::Restoring { .. } = c.state {
                self.metrics.count("restores", "expired");
                self.end_call(ck, EndReason::Failed, None, None, now);
            }
        }
    }
}
