//! Webhooks with several nodes: posted once, by the leader, whichever node took their
//! cause, and not lost with that node.
//!
//! Every replica makes the same webhooks at the same log entries. Each writes them to the
//! hook stream (`<prefix>:hooks`) under an id derived from the entry's ([`hook_id`]):
//! Redis takes the first write of an id and refuses every later one (an id not above the
//! stream's last), so each webhook is in the stream once, as long as any node applied its
//! cause. The leader reads the stream as the one consumer of the group `posters`, hands
//! each webhook to its delivery queue, and acknowledges and deletes it once delivered or
//! given up (or at once when the queue skips it); a new leader first claims what an old
//! one read and did not acknowledge (`XAUTOCLAIM`, idle 5 s), so a leader lost before a
//! webhook was delivered loses nothing (the receiver may see that webhook twice: its `id`
//! tells).

use std::sync::Arc;
use std::time::Duration;

use super::entry::StreamId;
use super::log::Store;
use super::{conn_config, Keys, Link};
use crate::signal::Signaling;

/// Webhooks one log entry can make at most with distinct ids (an invite to a user with
/// the most devices makes one per device).
const PER_ENTRY: u64 = 1024;
/// The consumer group of the hook stream.
const GROUP: &str = "posters";
/// A webhook read by a consumer and not acknowledged for this long is taken over by the
/// leader (its reader, an earlier leader, is gone or stuck).
const CLAIM_IDLE: Duration = Duration::from_secs(5);

/// The hook-stream id of the `k`th webhook made by the log entry `cause`.
pub fn hook_id(cause: StreamId, k: usize) -> StreamId {
    StreamId {
        ms: cause.ms,
        seq: cause.seq * PER_ENTRY + (k as u64).min(PER_ENTRY - 1),
    }
}

/// Write this replica's webhooks; ids another replica wrote first are refused by Redis
/// (and skipped here).
pub(super) async fn write(
    con: &mut redis::aio::MultiplexedConnection,
    keys: &Keys,
    hooks: Vec<(StreamId, serde_json::Value)>,
) {
    for (id, body) in hooks {
        let r: redis::RedisResult<String> = redis::cmd("XADD")
            .arg(&keys.hooks)
            .arg(id.to_string())
            .arg("b")
            .arg(body.to_string())
            .query_async(con)
            .await;
        match r {
            Ok(_) => {}
            // "The ID specified in XADD is equal or smaller than the target stream top
            // item": another replica wrote it (or it was posted and deleted already).
            Err(e) if e.to_string().contains("equal or smaller") => {}
            Err(e) => {
                tracing::warn!(error = %e, hook = %id, "cannot write a webhook to the hook stream: another node will")
            }
        }
    }
}

/// The leader's delivery loop (idle on other nodes).
pub(super) async fn deliver(sig: Signaling, link: Arc<Link>, store: Arc<Store>) {
    let Some(webhook) = sig.webhook() else { return };
    // Finished webhooks (by event id) come back here to be acknowledged.
    let (done_tx, mut done) = tokio::sync::mpsc::unbounded_channel::<String>();
    webhook.on_finished(Arc::new(move |body: &serde_json::Value| {
        if let Some(id) = body.get("id").and_then(serde_json::Value::as_str) {
            let _ = done_tx.send(id.to_owned());
        }
    }));
    // Stream entries handed to the queue and not finished yet: event id -> entry id.
    let mut in_flight: std::collections::HashMap<String, String> = Default::default();
    let me = link.node.to_string();
    let mut con: Option<redis::aio::MultiplexedConnection> = None;
    // When this node last claimed what other readers left: at once on becoming leader,
    // then every CLAIM_IDLE.
    let mut last_claim: Option<std::time::Instant> = None;
    loop {
        // Acknowledge what finished, leader or not (a node that lost the lease still
        // delivers what it queued).
        let mut finished = Vec::new();
        while let Ok(event) = done.try_recv() {
            if let Some(entry) = in_flight.remove(&event) {
                finished.push(entry);
            }
        }
        if !finished.is_empty() {
            if let Some(c) = con.as_mut() {
                ack(c, &store.keys, &finished).await;
            }
        }
        if !link.is_leader() {
            last_claim = None;
            tokio::time::sleep(Duration::from_millis(250)).await;
            continue;
        }
        if con.is_none() {
            con = store
                .client
                .get_multiplexed_async_connection_with_config(&conn_config(Duration::from_secs(3)))
                .await
                .ok();
            if con.is_none() {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            let _: redis::RedisResult<()> = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(&store.keys.hooks)
                .arg(GROUP)
                .arg("0")
                .arg("MKSTREAM")
                .query_async(con.as_mut().expect("connected"))
                .await;
        }
        let c = con.as_mut().expect("connected");
        let batch = if last_claim.is_some_and(|t| t.elapsed() < CLAIM_IDLE) {
            read_new(c, &store.keys, &me).await
        } else {
            // What an earlier leader read and never acknowledged (idle past CLAIM_IDLE).
            last_claim = Some(std::time::Instant::now());
            claim(c, &store.keys, &me).await
        };
        let batch = match batch {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "reading the hook stream failed: reconnecting");
                con = None;
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let mut skipped = Vec::new();
        for (entry, body) in batch {
            // Claimed again while still in this node's queue (a retry takes longer than
            // the claim's idle time): it is being delivered already.
            if in_flight.values().any(|e| *e == entry) {
                continue;
            }
            let event = body.get("id").and_then(serde_json::Value::as_str).map(str::to_owned);
            match (sig.post_hook(body), event) {
                (Some(crate::webhook::Posted::Queued), Some(event)) => {
                    in_flight.insert(event, entry);
                }
                // Skipped by the queue (coalesced, or full: counted and logged there),
                // or without an id to track it by: nothing more will come of it.
                _ => skipped.push(entry),
            }
        }
        if !skipped.is_empty() {
            ack(c, &store.keys, &skipped).await;
        }
    }
}

/// Acknowledge and delete hook stream entries.
async fn ack(c: &mut redis::aio::MultiplexedConnection, keys: &Keys, entries: &[String]) {
    let r: redis::RedisResult<()> = redis::pipe()
        .cmd("XACK")
        .arg(&keys.hooks)
        .arg(GROUP)
        .arg(entries)
        .ignore()
        .cmd("XDEL")
        .arg(&keys.hooks)
        .arg(entries)
        .ignore()
        .query_async(c)
        .await;
    if let Err(e) = r {
        tracing::warn!(error = %e, entries = entries.len(), "acknowledging webhooks failed: a later leader may post them again");
    }
}

type Hooks = Vec<(String, serde_json::Value)>;

async fn read_new(c: &mut redis::aio::MultiplexedConnection, keys: &Keys, me: &str) -> redis::RedisResult<Hooks> {
    let v: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(GROUP)
        .arg(me)
        .arg("COUNT")
        .arg(100)
        .arg("BLOCK")
        .arg(1000)
        .arg("STREAMS")
        .arg(&keys.hooks)
        .arg(">")
        .query_async(c)
        .await?;
    Ok(match v {
        redis::Value::Array(mut streams) => match streams.pop() {
            Some(redis::Value::Array(mut kv)) if kv.len() == 2 => match kv.pop() {
                Some(redis::Value::Array(entries)) => parse(entries),
                _ => Vec::new(),
            },
            _ => Vec::new(),
        },
        redis::Value::Map(mut streams) => match streams.pop() {
            Some((_, redis::Value::Array(entries))) => parse(entries),
            _ => Vec::new(),
        },
        _ => Vec::new(),
    })
}

async fn claim(c: &mut redis::aio::MultiplexedConnection, keys: &Keys, me: &str) -> redis::RedisResult<Hooks> {
    let v: redis::Value = redis::cmd("XAUTOCLAIM")
        .arg(&keys.hooks)
        .arg(GROUP)
        .arg(me)
        .arg(CLAIM_IDLE.as_millis() as u64)
        .arg("0-0")
        .arg("COUNT")
        .arg(1000)
        .query_async(c)
        .await?;
    // [next-start, [entries], [deleted ids]]
    Ok(match v {
        redis::Value::Array(mut parts) if parts.len() >= 2 => match parts.swap_remove(1) {
            redis::Value::Array(entries) => parse(entries),
            _ => Vec::new(),
        },
        _ => Vec::new(),
    })
}

/// `[[id, [b, body]], ...]` into (id, body); anything else is skipped with a log line.
fn parse(entries: Vec<redis::Value>) -> Hooks {
    use redis::Value as V;
    let mut out = Vec::new();
    for e in entries {
        let V::Array(mut parts) = e else { continue };
        if parts.len() != 2 {
            continue;
        }
        let fields = parts.pop().expect("two parts");
        let id = match parts.pop().expect("two parts") {
            V::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
            V::SimpleString(s) => s,
            _ => continue,
        };
        let V::Array(fields) = fields else { continue };
        let body = fields.get(1).and_then(|v| match v {
            V::BulkString(b) => serde_json::from_slice(b).ok(),
            _ => None,
        });
        match body {
            Some(b) => out.push((id, b)),
            None => tracing::error!(hook = %id, "a hook stream entry this version cannot read: skipped"),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hook_ids_grow_with_their_cause_and_stay_apart_within_it() {
        let a = StreamId { ms: 10, seq: 0 };
        let b = StreamId { ms: 10, seq: 1 };
        assert!(hook_id(a, 0) < hook_id(a, 1));
        assert!(hook_id(a, 1023) < hook_id(b, 0));
        assert!(hook_id(b, 0) < hook_id(StreamId { ms: 11, seq: 0 }, 0));
    }
}
