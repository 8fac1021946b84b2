//! The hub's state as bytes and back: a cluster node that joins starts from a snapshot
//! instead of the log's first entry, and the log before it can be trimmed.
//!
//! Times are written as signed nanoseconds from the hub's `now` at the snapshot, and read
//! back from the `now` the restoring driver gives (with several nodes, the same log
//! position): `at` and `opt_at` below, used by the `#[serde(with)]` of every `Instant`
//! field, read that base from a thread-local that only [`Hub::to_snapshot`] and
//! [`Hub::from_snapshot`] set, for the length of the call.
//!
//! Not in a snapshot: the settings, the token verifier, the ICE provider and the counters
//! (the restoring node's own), the random generator (the driver reseeds every replica at
//! the snapshot's log position: [`Hub::reseed`]), the tracing spans (made again), and
//! outputs (a snapshot is taken with none pending). Maps are written as sorted lists, so
//! that two replicas at the same log position write the same bytes.

use std::cell::Cell;
use std::collections::{BTreeSet, HashMap as StdHashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::metrics::SignalMetrics;
use crate::protocol::*;
use crate::recent::Recent;

use super::call::{Call, Ended};
use super::ids::{CallKey, SessionKey};
use super::push::DeviceRecord;
use super::session::{Conn, Session};
use super::timer::Timer;
use super::{ConnId, Hub, HubConfig, IceProvider, TokenVerifier};

/// Bumped when the layout changes: a node does not restore another version's snapshot
/// (it replays the log instead, or refuses to start: see the cluster driver).
pub const SNAPSHOT_VERSION: u32 = 1;

/// Why a snapshot cannot be taken or restored.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Outputs are waiting for the driver: take the snapshot once they are drained.
    #[error("{0} outputs not yet taken by the driver")]
    Pending(usize),
    /// Another version wrote it.
    #[error("snapshot version {found}, this build reads {SNAPSHOT_VERSION}")]
    Version {
        /// The snapshot's.
        found: u32,
    },
    /// The bytes do not decode.
    #[error("snapshot does not decode: {0}")]
    Decode(String),
}

thread_local! {
    static BASE: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Run `f` with `base` as the instant times are written against.
fn with_base<T>(base: Instant, f: impl FnOnce() -> T) -> T {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            BASE.with(|b| b.set(None));
        }
    }
    BASE.with(|b| b.set(Some(base)));
    let _reset = Reset;
    f()
}

fn base() -> Result<Instant, String> {
    BASE.with(|b| b.get())
        .ok_or_else(|| "hub times are written and read only inside Hub::to_snapshot and Hub::from_snapshot".into())
}

/// `t` as signed nanoseconds from the base.
pub(crate) fn offset(t: Instant) -> Result<i64, String> {
    let b = base()?;
    Ok(match t.checked_duration_since(b) {
        Some(d) => d.as_nanos() as i64,
        None => -((b - t).as_nanos() as i64),
    })
}

/// The instant `ns` nanoseconds from the base.
pub(crate) fn instant(ns: i64) -> Result<Instant, String> {
    let b = base()?;
    let d = Duration::from_nanos(ns.unsigned_abs());
    if ns >= 0 {
        Ok(b + d)
    } else {
        // An instant before the process started (a session idle since before this node
        // came up) cannot be made on some platforms: the earliest there is stands in.
        Ok(b.checked_sub(d).unwrap_or(b))
    }
}

/// `#[serde(with)]` for an `Instant`.
pub(crate) mod at {
    use super::*;
    pub(crate) fn serialize<S: serde::Serializer>(t: &Instant, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i64(offset(*t).map_err(serde::ser::Error::custom)?)
    }
    pub(crate) fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Instant, D::Error> {
        instant(i64::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// `#[serde(with)]` for an `Option<Instant>`.
pub(crate) mod opt_at {
    use super::*;
    pub(crate) fn serialize<S: serde::Serializer>(t: &Option<Instant>, s: S) -> Result<S::Ok, S::Error> {
        let v = t.map(offset).transpose().map_err(serde::ser::Error::custom)?;
        v.serialize(s)
    }
    pub(crate) fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Instant>, D::Error> {
        Option::<i64>::deserialize(d)?
            .map(instant)
            .transpose()
            .map_err(serde::de::Error::custom)
    }
}

/// What a snapshot holds (written from borrows, read into owned values).
#[derive(Serialize, Deserialize)]
struct State<C, S, Ca, R1, R2, P> {
    version: u32,
    conns: Vec<(ConnId, C)>,
    sessions: Vec<(SessionKey, S)>,
    calls: Vec<(CallKey, Ca)>,
    ended: R1,
    attempts: R2,
    timers: Vec<(i64, Timer)>,
    next_key: u64,
    unix_anchor: (i64, u64),
    next_sweep: i64,
    next_push_sweep: i64,
    draining: bool,
    push_devices: Vec<(UserId, P)>,
}

type Written<'a> = State<
    &'a Conn,
    &'a Session,
    &'a Call,
    &'a Recent<CallId, Ended>,
    &'a Recent<(UserId, UserId), bool>,
    &'a Vec<(DeviceId, DeviceRecord)>,
>;
type Read =
    State<Conn, Session, Call, Recent<CallId, Ended>, Recent<(UserId, UserId), bool>, Vec<(DeviceId, DeviceRecord)>>;

fn sorted<K: Ord + Copy, V>(m: &StdHashMap<K, V, foldhash::fast::RandomState>) -> Vec<(K, &V)> {
    let mut v: Vec<(K, &V)> = m.iter().map(|(k, v)| (*k, v)).collect();
    v.sort_unstable_by_key(|(k, _)| *k);
    v
}

impl<R: RngCore> Hub<R> {
    /// The hub's state, to [`Hub::from_snapshot`] on another node at the same log position.
    pub fn to_snapshot(&self) -> Result<Vec<u8>, SnapshotError> {
        if !self.out.is_empty() {
            return Err(SnapshotError::Pending(self.out.len()));
        }
        let mut push: Vec<(UserId, &Vec<(DeviceId, DeviceRecord)>)> =
            self.push_devices.iter().map(|(u, l)| (u.clone(), l)).collect();
        push.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        with_base(self.now, || {
            let time = |t: Instant| offset(t).map_err(SnapshotError::Decode);
            let state: Written<'_> = State {
                version: SNAPSHOT_VERSION,
                conns: sorted(&self.conns),
                sessions: sorted(&self.sessions),
                calls: sorted(&self.calls),
                ended: &self.ended,
                attempts: &self.attempts,
                timers: self
                    .timers
                    .iter()
                    .map(|(t, timer)| Ok((time(*t)?, *timer)))
                    .collect::<Result<_, SnapshotError>>()?,
                next_key: self.next_key,
                unix_anchor: (time(self.unix_anchor.0)?, self.unix_anchor.1),
                next_sweep: time(self.next_sweep)?,
                next_push_sweep: time(self.next_push_sweep)?,
                draining: self.draining,
                push_devices: push,
            };
            serde_json::to_vec(&state).map_err(|e| SnapshotError::Decode(e.to_string()))
        })
    }

    /// A hub from a [`Hub::to_snapshot`], its `now` being `now`, drawing from `rng` (which
    /// must be what every other replica was reseeded with at the snapshot's position).
    #[allow(clippy::too_many_arguments)]
    pub fn from_snapshot(
        bytes: &[u8],
        config: HubConfig,
        tokens: Arc<dyn TokenVerifier>,
        ice: Arc<dyn IceProvider>,
        metrics: Arc<SignalMetrics>,
        rng: R,
        now: Instant,
    ) -> Result<Hub<R>, SnapshotError> {
        #[derive(Deserialize)]
        struct Version {
            version: u32,
        }
        let v: Version = serde_json::from_slice(bytes).map_err(|e| SnapshotError::Decode(e.to_string()))?;
        if v.version != SNAPSHOT_VERSION {
            return Err(SnapshotError::Version { found: v.version });
        }
        let state: Read =
            with_base(now, || serde_json::from_slice(bytes)).map_err(|e| SnapshotError::Decode(e.to_string()))?;
        let at = |ns: i64| with_base(now, || instant(ns)).map_err(SnapshotError::Decode);
        let mut hub = Hub::new(config, tokens, ice, metrics, rng, now, 0);
        hub.unix_anchor = (at(state.unix_anchor.0)?, state.unix_anchor.1);
        hub.next_key = state.next_key;
        hub.next_sweep = at(state.next_sweep)?;
        hub.next_push_sweep = at(state.next_push_sweep)?;
        hub.draining = state.draining;
        hub.ended = state.ended;
        hub.attempts = state.attempts;
        hub.conns = state.conns.into_iter().collect();
        hub.timers = state
            .timers
            .into_iter()
            .map(|(ns, t)| Ok((at(ns)?, t)))
            .collect::<Result<BTreeSet<_>, SnapshotError>>()?;
        let mut unacked = 0;
        for (key, s) in state.sessions {
            unacked += s.unacked.len();
            hub.session_ids.insert(s.id.clone(), key);
            hub.devices
                .entry(s.user.clone())
                .or_default()
                .insert(s.device.clone(), key);
            hub.sessions.insert(key, s);
        }
        for (key, mut c) in state.calls {
            c.span = tracing::info_span!("call", call = %c.id, from = %c.caller.0, to = %c.callee, media = ?c.media);
            hub.call_ids.insert(c.id.clone(), key);
            for user in [&c.caller.0, &c.callee] {
                let list = hub.user_calls.entry(user.clone()).or_default();
                if !list.contains(&key) {
                    list.push(key);
                }
            }
            hub.calls.insert(key, c);
        }
        // Each user's calls in key order, as the invites added them.
        for list in hub.user_calls.values_mut() {
            list.sort_unstable();
        }
        for (user, list) in state.push_devices {
            hub.push_count += list.len();
            hub.push_devices.insert(user, list);
        }
        let m = &hub.metrics;
        m.sessions_active
            .store(hub.sessions.len() as i64, std::sync::atomic::Ordering::Relaxed);
        m.unacked.store(unacked as i64, std::sync::atomic::Ordering::Relaxed);
        hub.check_indexes().map_err(SnapshotError::Decode)?;
        Ok(hub)
    }

    /// Draw from `rng` from now on: every replica of a cluster does so at the same log
    /// position, where a snapshot is taken, so that a node restored from it draws alike.
    pub fn reseed(&mut self, rng: R) {
        self.rng = rng;
    }
}

/// Times kept since (see `Recent`), written as nanoseconds from the snapshot's base.
#[derive(Serialize, Deserialize)]
pub(crate) struct RecentState<K, V> {
    pub(crate) window_ns: u64,
    pub(crate) cap: usize,
    pub(crate) entries: Vec<(K, i64, V)>,
    pub(crate) order: VecDeque<(i64, K)>,
}
