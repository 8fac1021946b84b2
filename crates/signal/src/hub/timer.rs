//! The hub's timers: one ordered set of `(deadline, Timer)` entries, fired by
//! [`Hub::handle_timeout`].

use std::collections::BTreeSet;
use std::time::Instant;

use rand::RngCore;

use super::ids::{CallKey, SessionKey};
use super::{ConnId, Hub};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub(super) enum Timer {
    Hello(ConnId),
    Ack(SessionKey),
    Heartbeat(SessionKey),
    Expire(SessionKey),
    Ring(CallKey),
    Ice(SessionKey),
    /// A restoring call's other side has not restored it within the session TTL.
    Restore(CallKey),
    /// While draining: close the sessions that no live call needs.
    Drain,
}

/// Set a session's one timer entry of a kind to `at`, replacing the entry it had.
pub(super) fn arm(timers: &mut BTreeSet<(Instant, Timer)>, slot: &mut Option<Instant>, at: Instant, timer: Timer) {
    if let Some(old) = slot.replace(at) {
        timers.remove(&(old, timer));
    }
    timers.insert((at, timer));
}

impl<R: RngCore> Hub<R> {
    /// Fire one due timer entry, already taken off the set.
    pub(super) fn fire(&mut self, timer: Timer, now: Instant) {
        match timer {
            Timer::Hello(conn) => self.on_hello_timer(conn),
            Timer::Ack(key) => self.on_ack_timer(key, now),
            Timer::Heartbeat(key) => self.on_heartbeat_timer(key, now),
            Timer::Expire(key) => self.on_expire_timer(key, now),
            Timer::Ring(ck) => self.on_ring_timer(ck, now),
            Timer::Ice(key) => self.on_ice_timer(key, now),
            Timer::Drain => self.on_drain_timer(now),
            Timer::Restore(ck) => self.on_restore_timer(ck, now),
        }
    }
}
