//! The log's two tasks: the appender (this node's inputs, in order, pipelined) and the
//! reader (every node's entries, applied to the replica in log order).

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use firstcall_signal::hub::ConnId;
use tokio::sync::mpsc;

use super::entry::{self, Entry, Input, StreamId};
use super::{conn_config, Keys, Link};
use crate::signal::Signaling;

/// Where the log is.
pub(super) struct Store {
    pub(super) client: redis::Client,
    pub(super) keys: Keys,
    /// For logs (no password).
    pub(super) url: String,
}

/// Inputs appended in one round trip at most.
const BATCH: usize = 256;
/// Entries read at once at most.
const READ_COUNT: usize = 1024;
/// A blocking read returns after this long without entries (to notice a lost
/// connection).
const READ_BLOCK: Duration = Duration::from_secs(1);

/// Waits between attempts while Redis is unreachable: doubling from 100 ms to 2 s.
pub(super) struct Backoff(Duration);

impl Backoff {
    pub(super) fn new() -> Backoff {
        Backoff(Duration::from_millis(100))
    }
    /// How long the next [`Backoff::wait`] lasts.
    pub(super) fn next(&self) -> Duration {
        self.0
    }
    pub(super) async fn wait(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(Duration::from_secs(2));
    }
    fn reset(&mut self) {
        self.0 = Duration::from_millis(100);
    }
}

/// Append this node's inputs in the order they came, up to [`BATCH`] per round trip.
///
/// An input that cannot be appended (Redis unreachable) closes its socket with 1013:
/// the client resumes and sends again what was not acknowledged, so nothing is lost and
/// nothing is applied twice (the hub drops a frame whose seq it has). The others learn
/// that socket closed once Redis answers again.
pub(super) async fn append(sig: Signaling, link: Arc<Link>, store: Arc<Store>, mut rx: mpsc::UnboundedReceiver<Input>) {
    let mut con: Option<redis::aio::MultiplexedConnection> = None;
    let mut backoff = Backoff::new();
    // Sockets closed for a failed append: their later inputs are dropped; their
    // disconnect waits in `retry` until Redis answers.
    let mut failed: HashSet<ConnId> = HashSet::new();
    let mut retry: Vec<Input> = Vec::new();
    loop {
        let mut batch = std::mem::take(&mut retry);
        let retried = batch.len();
        if batch.is_empty() {
            match rx.recv().await {
                Some(i) => batch.push(i),
                None => return,
            }
        }
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(i) => batch.push(i),
                Err(_) => break,
            }
        }
        let taken = batch.len() - retried;
        batch.retain(|i| match i {
            Input::Connect { c, .. } | Input::Text { c, .. } => !failed.contains(&ConnId::from(*c)),
            _ => true,
        });
        // A connection kept from before an outage fails its first write: one more try
        // on a fresh connection before any socket is closed for it.
        let mut result = match con.as_mut() {
            Some(c) => write(c, &store.keys, link.node, &batch).await,
            None => Err(redis::RedisError::from((redis::ErrorKind::Io, "not connected"))),
        };
        if result.is_err() {
            con = None;
            result = match store
                .client
                .get_multiplexed_async_connection_with_config(&conn_config(Duration::from_secs(2)))
                .await
            {
                Ok(mut c) => {
                    let r = write(&mut c, &store.keys, link.node, &batch).await;
                    con = Some(c);
                    r
                }
                Err(e) => Err(e),
            };
        }
        match result {
            Ok(()) => {
                backoff.reset();
                for i in &batch {
                    if let Input::Disconnect { c } = i {
                        failed.remove(&ConnId::from(*c));
                    }
                }
            }
            Err(e) => {
                con = None;
                link.store_ok.store(false, Ordering::Release);
                let mut closed = 0;
                for i in batch {
                    match i {
                        Input::Connect { c, .. } | Input::Text { c, .. } => {
                            let conn = ConnId::from(c);
                            if failed.insert(conn) {
                                closed += usize::from(sig.fail_conn(conn, "store_unreachable"));
                                retry.push(Input::Disconnect { c });
                            }
                        }
                        Input::Disconnect { .. } => retry.push(i),
                        // The leader ticks again and says again which nodes are gone.
                        Input::Tick { .. } | Input::NodeGone { .. } | Input::Joined | Input::Checkpoint => {}
                    }
                }
                tracing::warn!(redis = %store.url, error = %e, sockets_closed = closed, "cannot append to the cluster's log: sockets closed with 1013, retrying");
                sig.metrics
                    .add("cluster_append_failed", "sockets_closed", closed as u64);
            }
        }
        if link.queued.fetch_sub(taken, Ordering::AcqRel) == taken {
            link.idle.notify_waiters();
        }
        if !retry.is_empty() {
            backoff.wait().await;
        }
    }
}

async fn write(
    con: &mut redis::aio::MultiplexedConnection,
    keys: &Keys,
    node: super::NodeId,
    batch: &[Input],
) -> redis::RedisResult<()> {
    if batch.is_empty() {
        return Ok(());
    }
    let mut pipe = redis::pipe();
    for input in batch {
        let e = Entry {
            n: node,
            input: input.clone(),
        };
        pipe.cmd("XADD")
            .arg(&keys.log)
            .arg("*")
            .arg(entry::FIELD)
            .arg(e.encode())
            .ignore();
    }
    pipe.query_async(con).await
}

/// Apply the log, from the entry after `from` (the snapshot's, or the start), to the
/// replica, for ever.
pub(super) async fn read(sig: Signaling, link: Arc<Link>, store: Arc<Store>, from: StreamId) {
    let mut last = from;
    let mut backoff = Backoff::new();
    loop {
        let mut con = match store
            .client
            .get_multiplexed_async_connection_with_config(&conn_config(READ_BLOCK + Duration::from_secs(2)))
            .await
        {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(redis = %store.url, error = %e, "cannot read the cluster's log: retrying");
                backoff.wait().await;
                continue;
            }
        };
        loop {
            let reply: redis::RedisResult<redis::Value> = redis::cmd("XREAD")
                .arg("COUNT")
                .arg(READ_COUNT)
                .arg("BLOCK")
                .arg(READ_BLOCK.as_millis() as u64)
                .arg("STREAMS")
                .arg(&store.keys.log)
                .arg(last.to_string())
                .query_async(&mut con)
                .await;
            let reply = match reply {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(redis = %store.url, error = %e, "reading the cluster's log failed: reconnecting");
                    break;
                }
            };
            backoff.reset();
            let entries = match entry::decode_read(reply) {
                Ok(v) => v,
                Err(e) => {
                    tracing::error!(error = %e, "the cluster's log holds what this version cannot read: retrying");
                    break;
                }
            };
            let n = entries.len();
            let mut good = Vec::with_capacity(n);
            for (id, e) in entries {
                last = id;
                match e {
                    Ok(e) => good.push((id, e)),
                    // Every replica skips it alike.
                    Err(e) => tracing::error!(error = %e, "skipping a log entry this version cannot read"),
                }
            }
            if !good.is_empty() {
                let (checkpoint, hooks) = sig.apply(good, link.node);
                if let Some(cp) = checkpoint {
                    tokio::spawn(super::checkpoint::store(store.clone(), cp));
                }
                if !hooks.is_empty() && sig.has_webhook() {
                    super::hooks::write(&mut con, &store.keys, hooks).await;
                }
            }
            if n < READ_COUNT {
                link.set_caught_up();
            }
        }
        backoff.wait().await;
    }
}
