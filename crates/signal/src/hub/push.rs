//! Calls to sleeping phones: devices register a push target and their app state
//! (`device.update`), kept with the device across sessions; every callee device that
//! would not ring by its socket alone gets a `call.ring` webhook event of its own, and
//! every device pushed for a call learns how the call ended (`call.cancelled`,
//! `call.answered_elsewhere`, `call.missed`, `call.ended`), so that a phone's ringing
//! screen stops.
//!
//! A device is pushed when it has a push target and is offline (no session, or its
//! session waits for a resume), backgrounded (it said so), or silent for more than one
//! heartbeat (its socket looks open, but nothing came from it: a suspended app's socket
//! lingers for minutes before the OS or the server notices).

use std::time::{Duration, Instant};

use rand::RngCore;
use serde_json::{json, Value};

use crate::metrics::Limit;
use crate::protocol::*;

use super::call::{refuse, Refusal};
use super::ids::CallKey;
use super::{Hub, Output};

/// What a device said of itself.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct DeviceRecord {
    pub(super) push: Option<PushTarget>,
    pub(super) state: AppState,
    /// Its last update or session: a registration not seen for [`PUSH_MEMORY`] goes.
    #[serde(with = "super::snapshot::at")]
    pub(super) seen: Instant,
}

/// How long a device's registration outlives its last update or session (a phone
/// unused this long has likely been replaced; its app registers again when it runs).
pub(super) const PUSH_MEMORY: Duration = Duration::from_secs(30 * 24 * 3600);
/// How often old registrations are looked for.
pub(super) const PUSH_SWEEP_EVERY: Duration = Duration::from_secs(60);

impl<R: RngCore> Hub<R> {
    /// `device.update` from device `me`.
    pub(super) fn device_update(
        &mut self,
        me: &(UserId, DeviceId),
        push: Option<Option<PushTarget>>,
        state: Option<AppState>,
    ) -> Result<(), Refusal> {
        let now = self.now;
        if matches!(push, Some(None)) && state.is_none() {
            // `"push": null` alone: the device wants no pushes; nothing is kept of it.
            self.forget_push_device(&me.0, &me.1);
            return Ok(());
        }
        if let Some(Some(t)) = &push {
            if t.token.is_empty() || t.token.len() > MAX_PUSH_TOKEN {
                return Err(refuse(
                    ErrorCode::BadRequest,
                    format!("push.token must be 1 to {MAX_PUSH_TOKEN} bytes"),
                ));
            }
        }
        let max_user = self.config.max_devices_per_user;
        let full = self.push_count >= self.config.max_push_devices;
        let list = self.push_devices.entry(me.0.clone()).or_default();
        match list.iter_mut().find(|(d, _)| *d == me.1) {
            Some((_, r)) => {
                if let Some(p) = push {
                    r.push = p;
                }
                if let Some(s) = state {
                    r.state = s;
                }
                r.seen = now;
            }
            None => {
                if full {
                    if list.is_empty() {
                        self.push_devices.remove(&me.0);
                    }
                    self.metrics.limit_hit(Limit::PushDevices);
                    return Err(refuse(
                        ErrorCode::RateLimited,
                        "the server holds as many push registrations as it may (--max-push-devices)",
                    ));
                }
                // One user's registrations are bounded like its sessions: the oldest
                // device gives way (a phone replaced long ago).
                if list.len() >= max_user {
                    list.remove(0);
                    self.push_count -= 1;
                }
                list.push((
                    me.1.clone(),
                    DeviceRecord {
                        push: push.flatten(),
                        state: state.unwrap_or(AppState::Foreground),
                        seen: now,
                    },
                ));
                self.push_count += 1;
            }
        }
        tracing::debug!(user = %me.0, device = %me.1, "device updated");
        Ok(())
    }

    fn forget_push_device(&mut self, user: &UserId, device: &DeviceId) {
        let Some(list) = self.push_devices.get_mut(user) else {
            return;
        };
        let before = list.len();
        list.retain(|(d, _)| d != device);
        self.push_count -= before - list.len();
        if list.is_empty() {
            self.push_devices.remove(user);
        }
    }

    /// A session of `device` started or resumed: its registration is current.
    pub(super) fn touch_push_device(&mut self, user: &UserId, device: &DeviceId, now: Instant) {
        if let Some((_, r)) = self
            .push_devices
            .get_mut(user)
            .and_then(|l| l.iter_mut().find(|(d, _)| d == device))
        {
            r.seen = now;
        }
    }

    /// Forget registrations not seen for [`PUSH_MEMORY`].
    pub(super) fn sweep_push_devices(&mut self, now: Instant) {
        let mut gone = 0;
        self.push_devices.retain(|_, list| {
            let before = list.len();
            list.retain(|(_, r)| now.saturating_duration_since(r.seen) < PUSH_MEMORY);
            gone += before - list.len();
            !list.is_empty()
        });
        self.push_count -= gone;
    }

    /// After an invite: a `call.ring` event for every callee device that needs a push.
    pub(super) fn ring_pushes(&mut self, ck: CallKey, now: Instant) {
        let Some(c) = self.calls.get(&ck) else { return };
        let Some(list) = self.push_devices.get(&c.callee) else {
            return;
        };
        let mut pushed = Vec::new();
        for (device, r) in list {
            let Some(target) = &r.push else { continue };
            let conn = self
                .device_session(&c.callee, device)
                .and_then(|k| self.sessions[&k].conn)
                .and_then(|conn| self.conns.get(&conn));
            let why = match conn {
                None => "offline",
                Some(_) if r.state == AppState::Background => "background",
                // A live client answers each ping within a round trip: past one and a
                // half heartbeats nothing came, and the app is likely suspended.
                Some(conn) if now.saturating_duration_since(conn.last_rx) > self.config.heartbeat * 3 / 2 => "silent",
                Some(_) => continue,
            };
            c.span.in_scope(|| tracing::info!(%device, why, "push: call.ring"));
            let mut extra = json!({"from_device": c.caller.1, "media": c.media, "why": why});
            if let Some(meta) = &c.meta {
                extra["meta"] = meta.clone();
            }
            self.out.push_back(Output::Webhook {
                body: event(
                    "call.ring",
                    &c.id,
                    &c.caller.0,
                    &c.callee,
                    Some(device),
                    Some(target),
                    extra,
                ),
            });
            pushed.push(device.clone());
        }
        if let Some(c) = self.calls.get_mut(&ck) {
            c.pushed = pushed;
        }
    }

    /// Every pushed device (but `answered`, the one that took the call) learns how the
    /// call ended. A call that was missed with no device pushed still tells the app
    /// once (`device: null`), for its missed-call list.
    pub(super) fn push_ended(
        &mut self,
        id: &CallId,
        caller: &UserId,
        callee: &UserId,
        pushed: &[DeviceId],
        answered: Option<&DeviceId>,
        reason: EndReason,
    ) {
        let name = match reason {
            EndReason::Cancelled => "call.cancelled",
            EndReason::AnsweredElsewhere => "call.answered_elsewhere",
            EndReason::Timeout | EndReason::Unreachable => "call.missed",
            _ => "call.ended",
        };
        let targets = self.push_devices.get(callee);
        let target = |d: &DeviceId| {
            targets
                .and_then(|l| l.iter().find(|(x, _)| x == d))
                .and_then(|(_, r)| r.push.clone())
        };
        let mut bodies: Vec<Value> = pushed
            .iter()
            .filter(|d| Some(*d) != answered)
            .map(|d| {
                event(
                    name,
                    id,
                    caller,
                    callee,
                    Some(d),
                    target(d).as_ref(),
                    json!({"reason": reason}),
                )
            })
            .collect();
        if bodies.is_empty() && name == "call.missed" {
            bodies.push(event(name, id, caller, callee, None, None, json!({"reason": reason})));
        }
        for body in bodies {
            self.out.push_back(Output::Webhook { body });
        }
    }
}

/// A webhook event about call `id` for `device` (or the user), with an idempotency id
/// that names the call, the device and the event.
fn event(
    name: &str,
    id: &CallId,
    from: &UserId,
    to: &UserId,
    device: Option<&DeviceId>,
    push: Option<&PushTarget>,
    extra: Value,
) -> Value {
    let mut body = json!({
        "event": name,
        "id": format!("{id}/{}/{name}", device.map_or("-", |d| d.as_str())),
        "call": id,
        "from": from,
        "to": to,
        "device": device,
        "push": push,
    });
    if let (Value::Object(b), Value::Object(e)) = (&mut body, extra) {
        b.extend(e);
    }
    body
}
