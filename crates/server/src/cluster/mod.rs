//! Several nodes acting as one, on Redis (`--redis-url`).
//!
//! Every node runs the same deterministic hub (a replica), fed one log: a Redis Stream
//! (state-machine replication; docs/architecture.md weighs it against a hub rewritten
//! around Redis keys). A node appends the inputs of its own sockets to the log —
//! connect, text (a hello with the node's verdict on its token), disconnect — and
//! applies every entry of the log, from every node, in log order, to its replica; it
//! writes only the frames for its own sockets ([`ConnId`]s carry the node's number) and
//! posts only the webhooks of the entries it appended. The replica's time is the
//! entries' (Redis's milliseconds), its randomness a seed kept in Redis, so every
//! replica takes every decision alike: a resume lands on any node and replays exactly
//! what the session has not acknowledged, a ring timeout fires once.
//!
//! - [`entry`]: the log's entries and their one decode.
//! - [`log`]: the tasks that append (in order, pipelined) and read (blocking `XREAD`).
//! - [`lease`]: each node's heartbeat key, the leader's lease, the leader's timer ticks
//!   and its `NodeGone` entries for nodes that stopped heartbeating.
//!
//! Redis unreachable: an input that cannot be appended closes its socket with 1013
//! (resume later, here or elsewhere; nothing unacknowledged is lost), `/readyz` answers
//! 503, and the tasks reconnect with backoff. Redis that comes back without the log (a
//! restart without persistence) is detected by the log's epoch key: the node exits
//! (status 75) rather than serve from a replica the others no longer share.
//!
//! [`ConnId`]: firstcall_signal::hub::ConnId

mod checkpoint;
pub mod entry;
pub mod hooks;
mod lease;
mod log;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use firstcall_signal::hub::TokenVerifier;
use firstcall_signal::protocol::UserId;
use rand::RngCore;
use tokio::sync::{mpsc, Notify};

pub use checkpoint::{replica_seed, Checkpoint, Snapshot};
pub use entry::{Entry, Input, NodeId, StreamId, Verified};

use crate::signal::Signaling;

/// Why joining the cluster failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// `--redis-url` does not parse.
    #[error("--redis-url: {0}")]
    Url(redis::RedisError),
    /// Redis did not answer as it must.
    #[error("Redis at {url}: {source}")]
    Redis {
        /// The URL, without its password.
        url: String,
        /// What failed.
        source: redis::RedisError,
    },
    /// The latest snapshot does not restore.
    #[error("restoring the cluster's snapshot: {0}")]
    Snapshot(firstcall_signal::hub::SnapshotError),
    /// The seed kept in Redis is not 64 hex digits: another program wrote the key.
    #[error("Redis key {0} does not hold a firstcall seed")]
    BadSeed(String),
}

impl ClusterError {
    /// Whether trying again later may succeed: Redis unreachable, timing out, or still
    /// loading its data after a restart (it answers `LOADING` until the log is read).
    /// A refused password, a key another program holds or a snapshot this version
    /// cannot read stay refused.
    pub fn is_transient(&self) -> bool {
        match self {
            ClusterError::Redis { source, .. } => {
                source.is_io_error()
                    || source.is_timeout()
                    || matches!(
                        source.kind(),
                        redis::ErrorKind::Server(redis::ServerErrorKind::BusyLoading)
                    )
            }
            _ => false,
        }
    }
}

/// How long a starting node waits for a Redis that is unreachable or still loading its
/// data (Redis and the nodes started together, or Redis restarting) before it gives up.
pub const JOIN_PATIENCE: Duration = Duration::from_secs(60);

/// [`join`], tried again while the failure [`is_transient`](ClusterError::is_transient),
/// with backoff (100 ms doubling to 2 s), for up to `patience`. Each failed try is
/// logged; what a try left behind is harmless (a skipped node number, a heartbeat key
/// that expires, an extra `Joined` entry, which changes nothing).
pub async fn join_patiently(
    url: &str,
    prefix: &str,
    checkpoint_every: u64,
    patience: Duration,
) -> Result<Joined, ClusterError> {
    let until = Instant::now() + patience;
    let mut backoff = log::Backoff::new();
    loop {
        match join(url, prefix, checkpoint_every).await {
            Err(e) if e.is_transient() && Instant::now() + backoff.next() < until => {
                tracing::warn!(error = %e, retry_in = ?backoff.next(), "cannot join the cluster yet: retrying");
                backoff.wait().await;
            }
            r => return r,
        }
    }
}

/// The Redis keys of one cluster (`--redis-prefix`).
#[derive(Clone, Debug)]
pub struct Keys {
    /// The log (a Stream).
    pub log: String,
    /// Counter numbering the nodes.
    pub nodes: String,
    /// The replicas' random seed (hex).
    pub seed: String,
    /// Set with the log, gone with it: tells a Redis that lost its data.
    pub epoch: String,
    /// The leader's lease (its node number).
    pub leader: String,
    /// The latest checkpoint's snapshot (a hash: id, at_ms, version, state).
    pub snapshot: String,
    /// Webhooks to post (a Stream, consumer group `posters`).
    pub hooks: String,
    prefix: String,
}

impl Keys {
    /// Keys under `prefix`.
    pub fn new(prefix: &str) -> Keys {
        Keys {
            log: format!("{prefix}:log"),
            nodes: format!("{prefix}:nodes"),
            seed: format!("{prefix}:seed"),
            epoch: format!("{prefix}:epoch"),
            leader: format!("{prefix}:leader"),
            snapshot: format!("{prefix}:snapshot"),
            hooks: format!("{prefix}:hooks"),
            prefix: prefix.to_owned(),
        }
    }

    /// A node's heartbeat key.
    pub fn node(&self, n: NodeId) -> String {
        format!("{}:node:{n}", self.prefix)
    }
}

/// A node's heartbeat key lives this long unrenewed; the leader then says the node is
/// gone (its clients resume elsewhere within their heartbeat window, 3 × 15 s).
pub const NODE_TTL: Duration = Duration::from_secs(5);
/// How often a node renews its heartbeat and the leader its lease.
pub const BEAT: Duration = Duration::from_secs(1);
/// Inputs waiting to be appended past which a new one is refused (its socket closed
/// with 1013): only reached while Redis is slow or unreachable.
pub const MAX_QUEUED: usize = 65_536;

/// What a node learned from Redis when it joined.
pub struct Joined {
    /// Its number.
    pub node: NodeId,
    /// The replicas' seed.
    pub seed: [u8; 32],
    /// The log's epoch.
    pub epoch: String,
    /// The time (unix ms) of the log's first entry, or of the snapshot's checkpoint:
    /// this replica's time zero.
    pub base_ms: u64,
    /// The latest checkpoint's snapshot, to start from (the log before it may be gone).
    pub snapshot: Option<Snapshot>,
    /// Entries between checkpoints (`--redis-checkpoint-every`).
    pub checkpoint_every: u64,
    client: redis::Client,
    keys: Keys,
    url: String,
}

/// Connection settings: answers within `response`, connects within a second.
fn conn_config(response: Duration) -> redis::AsyncConnectionConfig {
    redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(response))
}

/// Join the cluster at `url`: a node number, the seed and epoch (created by the first
/// node), a `Joined` entry, and the log's time base.
pub async fn join(url: &str, prefix: &str, checkpoint_every: u64) -> Result<Joined, ClusterError> {
    let client = redis::Client::open(url).map_err(ClusterError::Url)?;
    let shown = redacted(url);
    let err = |source| ClusterError::Redis {
        url: shown.clone(),
        source,
    };
    let mut con = client
        .get_multiplexed_async_connection_with_config(&conn_config(Duration::from_secs(2)))
        .await
        .map_err(err)?;
    let keys = Keys::new(prefix);
    let node: u32 = redis::cmd("INCR")
        .arg(&keys.nodes)
        .query_async(&mut con)
        .await
        .map_err(err)?;
    let node = NodeId(node);
    let mut fresh = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut fresh);
    let _: () = redis::cmd("SET")
        .arg(&keys.seed)
        .arg(hex(&fresh))
        .arg("NX")
        .query_async(&mut con)
        .await
        .map_err(err)?;
    let seed: String = redis::cmd("GET")
        .arg(&keys.seed)
        .query_async(&mut con)
        .await
        .map_err(err)?;
    let seed = unhex(&seed).ok_or_else(|| ClusterError::BadSeed(keys.seed.clone()))?;
    // The epoch names this log: a Redis that lost it (restarted without persistence)
    // has neither, and a node that finds another epoch than its own stops.
    let mut e = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut e);
    let _: () = redis::cmd("SET")
        .arg(&keys.epoch)
        .arg(hex(&e))
        .arg("NX")
        .query_async(&mut con)
        .await
        .map_err(err)?;
    let epoch: String = redis::cmd("GET")
        .arg(&keys.epoch)
        .query_async(&mut con)
        .await
        .map_err(err)?;
    let _: () = redis::cmd("SET")
        .arg(keys.node(node))
        .arg(1)
        .arg("PX")
        .arg(NODE_TTL.as_millis() as u64)
        .query_async(&mut con)
        .await
        .map_err(err)?;
    let joined = Entry {
        n: node,
        input: Input::Joined,
    };
    let _: String = redis::cmd("XADD")
        .arg(&keys.log)
        .arg("*")
        .arg(entry::FIELD)
        .arg(joined.encode())
        .query_async(&mut con)
        .await
        .map_err(err)?;
    let first: Vec<redis::Value> = redis::cmd("XRANGE")
        .arg(&keys.log)
        .arg("-")
        .arg("+")
        .arg("COUNT")
        .arg(1)
        .query_async(&mut con)
        .await
        .map_err(err)?;
    let first_ms = entry::decode_entries(first)
        .ok()
        .and_then(|v| v.first().map(|(id, _)| id.ms))
        .unwrap_or(0);
    let snapshot = checkpoint::load(&mut con, &keys).await.map_err(err)?;
    let base_ms = snapshot.as_ref().map_or(first_ms, |s| s.at_ms);
    match &snapshot {
        Some(s) => {
            tracing::info!(%node, redis = %shown, checkpoint = %s.id, bytes = s.state.len(), "joined the cluster from its latest snapshot")
        }
        None => tracing::info!(%node, redis = %shown, base_ms, "joined the cluster from the log's start"),
    }
    Ok(Joined {
        node,
        seed,
        epoch,
        base_ms,
        snapshot,
        checkpoint_every: checkpoint_every.max(1),
        client,
        keys,
        url: shown,
    })
}

/// `url` without its password, for logs.
fn redacted(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// The replica's time: the log's milliseconds, never going back, on a monotonic base.
pub struct Clock {
    base: Instant,
    base_ms: u64,
    last_ms: u64,
}

impl Clock {
    /// `base` is the instant the hub was created at, standing for `base_ms`.
    pub fn new(base: Instant, base_ms: u64) -> Clock {
        Clock {
            base,
            base_ms,
            last_ms: base_ms,
        }
    }

    /// The hub's `now` for an entry at `ms` (never earlier than the last one's).
    pub fn advance(&mut self, ms: u64) -> Instant {
        self.last_ms = self.last_ms.max(ms);
        self.base + Duration::from_millis(self.last_ms - self.base_ms)
    }

    /// The replica's time now (unix ms).
    pub fn last_ms(&self) -> u64 {
        self.last_ms
    }

    /// The unix milliseconds of a hub instant, rounded up (a deadline is not due
    /// before it).
    pub fn ms_of(&self, t: Instant) -> u64 {
        let d = t.saturating_duration_since(self.base);
        self.base_ms + d.as_millis() as u64 + u64::from(!d.subsec_nanos().is_multiple_of(1_000_000))
    }
}

/// The replicas' token verifier: none. A hello reaches a replica with the verdict of
/// the node that took it (`Input::Text::v`); one without is refused.
pub struct VerifiedInLog;

impl TokenVerifier for VerifiedInLog {
    fn verify(&self, _: &str, _: u64) -> Result<UserId, String> {
        Err("hello not verified by the node that took it".into())
    }
}

/// This node's place in the cluster, shared by the signaling endpoint and the tasks.
pub struct Link {
    /// This node.
    pub node: NodeId,
    tx: mpsc::UnboundedSender<Input>,
    queued: AtomicUsize,
    draining: AtomicBool,
    leader: AtomicBool,
    store_ok: AtomicBool,
    caught_up: AtomicBool,
    caught_up_now: Notify,
    /// Woken when the appender's queue empties.
    idle: Notify,
    store: Arc<log::Store>,
    /// Entries between checkpoints.
    pub checkpoint_every: u64,
    /// The replicas' seed (each checkpoint reseeds from it and the checkpoint's id).
    pub seed: [u8; 32],
}

/// The tasks of a link, started once the endpoint exists.
pub struct Tasks {
    link: Arc<Link>,
    rx: mpsc::UnboundedReceiver<Input>,
}

impl Link {
    /// A link and its tasks, to [`Tasks::spawn`].
    pub fn new(joined: &Joined) -> (Arc<Link>, Tasks) {
        let (tx, rx) = mpsc::unbounded_channel();
        let link = Arc::new(Link {
            node: joined.node,
            tx,
            queued: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            leader: AtomicBool::new(false),
            store_ok: AtomicBool::new(true),
            caught_up: AtomicBool::new(false),
            caught_up_now: Notify::new(),
            idle: Notify::new(),
            store: Arc::new(log::Store {
                client: joined.client.clone(),
                keys: joined.keys.clone(),
                url: joined.url.clone(),
            }),
            checkpoint_every: joined.checkpoint_every,
            seed: joined.seed,
        });
        (link.clone(), Tasks { link, rx })
    }

    /// Append `input` to the log (in order with this node's other inputs). False if
    /// [`MAX_QUEUED`] inputs wait already and `input` opens a socket or carries a
    /// frame (a closed socket is always told: it frees what a socket holds).
    #[must_use]
    pub fn append(&self, input: Input) -> bool {
        let bounded = matches!(input, Input::Connect { .. } | Input::Text { .. });
        if self.queued.fetch_add(1, Ordering::AcqRel) >= MAX_QUEUED && bounded {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        if self.tx.send(input).is_err() {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// This node drains: new sessions go elsewhere.
    pub fn start_drain(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Whether this node drains.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Whether this node holds the leader's lease (fires timers, says which nodes are
    /// gone).
    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Acquire)
    }

    /// Whether Redis answered this node's last heartbeat and append.
    pub fn store_ok(&self) -> bool {
        self.store_ok.load(Ordering::Acquire)
    }

    /// Whether the replica has applied the log up to its end once.
    pub fn is_caught_up(&self) -> bool {
        self.caught_up.load(Ordering::Acquire)
    }

    /// Wait until the replica has applied the log up to its end once.
    pub async fn caught_up(&self) {
        loop {
            let woken = self.caught_up_now.notified();
            if self.is_caught_up() {
                return;
            }
            woken.await;
        }
    }

    /// Wait (at most `limit`) until every input this node queued is appended: before
    /// the process exits, so that the others learn its sockets closed.
    pub async fn flush(&self, limit: Duration) {
        let _ = tokio::time::timeout(limit, async {
            loop {
                let woken = self.idle.notified();
                if self.queued.load(Ordering::Acquire) == 0 {
                    return;
                }
                woken.await;
            }
        })
        .await;
    }

    /// Leave the cluster before the process exits: append what is queued (the
    /// sockets' disconnects), then drop this node's heartbeat key and lease so that the
    /// others need not wait for them to expire.
    pub async fn leave(&self) {
        self.flush(Duration::from_secs(2)).await;
        lease::leave(&self.store, self).await;
    }

    fn set_caught_up(&self) {
        if !self.caught_up.swap(true, Ordering::AcqRel) {
            self.caught_up_now.notify_waiters();
        }
    }
}

impl Tasks {
    /// Start the reader, the appender and the heartbeat of `sig`'s node.
    pub fn spawn(self, sig: Signaling, joined: Joined) {
        let Tasks { link, rx } = self;
        let shared = link.store.clone();
        let from = joined.snapshot.as_ref().map_or(StreamId::ZERO, |s| s.id);
        tokio::spawn(log::read(sig.clone(), link.clone(), shared.clone(), from));
        tokio::spawn(log::append(sig.clone(), link.clone(), shared.clone(), rx));
        tokio::spawn(hooks::deliver(sig.clone(), link.clone(), shared.clone()));
        tokio::spawn(lease::run(sig, link, shared, joined.epoch));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_never_goes_back_and_rounds_deadlines_up() {
        let base = Instant::now();
        let mut c = Clock::new(base, 1_000);
        assert_eq!(c.advance(1_250), base + Duration::from_millis(250));
        assert_eq!(
            c.advance(1_100),
            base + Duration::from_millis(250),
            "an earlier entry is not earlier"
        );
        assert_eq!(c.ms_of(base + Duration::from_micros(300_001)), 1_301);
        assert_eq!(c.ms_of(base + Duration::from_millis(300)), 1_300);
    }

    #[test]
    fn joining_is_tried_again_while_redis_is_unreachable_or_loading_and_not_when_it_refuses() {
        let redis = |source: redis::RedisError| ClusterError::Redis {
            url: "redis://127.0.0.1:6379".into(),
            source,
        };
        let reply = |line: &[u8]| {
            redis::parse_redis_value(line)
                .and_then(redis::Value::extract_error)
                .expect_err("an error reply")
        };
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert!(redis(refused.into()).is_transient());
        assert!(redis(reply(b"-LOADING Redis is loading the dataset in memory\r\n")).is_transient());
        assert!(!redis(reply(b"-WRONGPASS invalid username-password pair\r\n")).is_transient());
        assert!(!redis(reply(
            b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n"
        ))
        .is_transient());
        assert!(!ClusterError::BadSeed("k".into()).is_transient());
    }

    #[test]
    fn seeds_round_trip_and_foreign_values_are_refused() {
        let s = [7u8; 32];
        assert_eq!(unhex(&hex(&s)), Some(s));
        assert_eq!(unhex("zz"), None);
        assert_eq!(
            redacted("redis://:pw@127.0.0.1:6379/0"),
            "redis://:***@127.0.0.1:6379/0"
        );
    }
}
