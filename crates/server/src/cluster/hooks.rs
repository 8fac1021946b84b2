//! Webhooks with several nodes: posted once, by the leader, whichever node took their
//! cause, and not lost with that node.
//!
//! Every replica makes the same webhooks at the same log entries. Each writes them to the
//! hook stream (`<prefix>:hooks`) under an id derived from the entry's ([`hook_id`]):
//! Redis takes the first write of an id and refuses every later one (an id not above the
//! stream's last), so each webhook is in the stream once, as long as any node applied its
//! cause. The leader reads the stream as the one consumer of the group `posters`, posts
//! each webhook, and acknowledges and deletes it; a new leader first claims what an old
//! one read and did not acknowledge (`XAUTOCLAIM`), so a leader lost between reading and
//! posting loses nothing (the receiver may see that webhook twice: its `id` tells).

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
    if !sig.has_webhook() {
        return;
    }
    let me = link.node.to_string();
    let mut con: Option<redis::aio::MultiplexedConnection> = None;
    // When this node last claimed what other readers left: at once on becoming leader,
    // then every CLAIM_IDLE.
    let mut last_claim: Option<std::time::Instant> = None;
    loop {
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
        for (id, body) in batch {
            sig.post_hook(body);
            let _: redis::RedisResult<()> = redis::pipe()
                .cmd("XACK")
                .arg(&store.keys.hooks)
                .arg(GROUP)
                .arg(&id)
                .ignore()
                .cmd("XDEL")
                .arg(&store.keys.hooks)
                .arg(&id)
                .ignore()
                .query_async(c)
                .await;
        }
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
