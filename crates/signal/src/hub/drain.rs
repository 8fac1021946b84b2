//! Draining for a restart: new sessions refused, idle sessions sent elsewhere with
//! close code 1012, live calls left to end.

use std::time::{Duration, Instant};

use rand::RngCore;

use super::call::{refuse, CallState, Refusal};
use super::session::SessionEnd;
use super::timer::Timer;
use super::{ConnId, Hub, Output};
use crate::protocol::{close, ErrorCode};

/// While draining, how often sessions no live call needs are looked for.
pub const DRAIN_TICK: Duration = Duration::from_millis(250);

impl<R: RngCore> Hub<R> {
    /// Drain for a restart: from now on a hello that does not resume a session here is
    /// refused ([`ErrorCode::Draining`](crate::protocol::ErrorCode::Draining), close
    /// 1012), and every session with a socket and no live call is closed with 1012 once
    /// the client has acknowledged every frame (checked now and every [`DRAIN_TICK`]),
    /// so that it reconnects to another node. Sessions in live calls carry on: the
    /// driver waits for [`Hub::call_count`] to reach zero (or its drain deadline) and
    /// then calls [`Hub::close_all`].
    pub fn start_drain(&mut self, now: Instant) {
        self.now = now;
        if !self.draining {
            self.draining = true;
            self.timers.insert((now, Timer::Drain));
        }
    }

    /// Close every socket with 1012 (the process is about to exit). Sessions stay, for
    /// a resume that will not come: the process ends with them.
    pub fn close_all(&mut self, now: Instant) {
        self.now = now;
        let conns = self.conn_ids();
        if !conns.is_empty() {
            self.metrics.add("drain_closed", "exit", conns.len() as u64);
        }
        for conn in conns {
            self.close_for_restart(conn, now);
        }
    }

    /// While draining, what would start a new call here (an invite, a restore) is
    /// refused: it would hold the drain up, and its other side may not even reach this
    /// node (its new sessions are refused).
    pub(super) fn refuse_if_draining(&self) -> Result<(), Refusal> {
        if self.draining {
            return Err(refuse(
                ErrorCode::Draining,
                "server draining for a restart: no new calls here; try again once reconnected",
            ));
        }
        Ok(())
    }

    /// `Timer::Drain`: send idle sessions elsewhere, and look again a tick later.
    pub(super) fn on_drain_timer(&mut self, now: Instant) {
        self.drain_idle(now);
        self.timers.insert((now + DRAIN_TICK, Timer::Drain));
    }

    fn close_for_restart(&mut self, conn: ConnId, now: Instant) {
        let Some(c) = self.conns.remove(&conn) else { return };
        self.out.push_back(Output::Close {
            conn,
            code: close::SERVICE_RESTART,
            reason: "server restarting: reconnect",
        });
        if let Some(key) = c.session {
            self.detach(key, now);
        }
    }

    /// The sessions that no live call needs and that hold no unacknowledged frame (a
    /// `call.ended` just sent waits for its ack): closed with 1012 and ended, so that
    /// their clients' resumes are refused here too and they settle on another node,
    /// instead of resuming here and being sent away again every tick.
    fn drain_idle(&mut self, now: Instant) {
        let mut idle: Vec<(ConnId, super::ids::SessionKey)> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.unacked.is_empty())
            .filter_map(|(key, s)| {
                let conn = s.conn?;
                let needed = self.calls_of(&s.user).any(|c| {
                    c.holds(&s.user)
                        && (c.caller.0 == s.user && c.caller.1 == s.device
                            || c.callee == s.user
                                && match c.state {
                                    CallState::Ringing => true,
                                    _ => c.accepted_device.as_ref() == Some(&s.device),
                                })
                });
                (!needed).then_some((conn, *key))
            })
            .collect();
        // In key order, not the map's: replicas of the hub end them alike.
        idle.sort_unstable_by_key(|(_, k)| *k);
        if !idle.is_empty() {
            self.metrics.add("drain_closed", "idle", idle.len() as u64);
        }
        for (conn, key) in idle {
            self.close_for_restart(conn, now);
            self.expire_session(key, SessionEnd::Drained);
        }
    }
}
