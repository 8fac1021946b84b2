//! Each node's heartbeat key, the leader's lease, and the leader's `NodeGone` entries.
//!
//! Every [`BEAT`] a node renews its key (`SET ... PX`, [`NODE_TTL`]) and checks the
//! log's epoch. One node holds the lease (`SET NX PX`, renewed by a script that checks
//! the holder): it appends the timer ticks (see `Signaling`'s tick loop) and, for every
//! node its replica still has sockets of whose key has expired, a `NodeGone`. Two
//! leaders for a moment (a lease that expired under a slow one) append a tick twice or
//! a `NodeGone` twice: the second finds nothing left to do.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::log::Store;
use super::{conn_config, Input, Link, BEAT, NODE_TTL};
use crate::signal::Signaling;

/// Renew the lease if `ARGV[1]` holds it, take it if nobody does.
const LEASE: &str = r#"
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"#;

/// Give the lease up if `ARGV[1]` holds it.
const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

/// The heartbeat task: for ever, every [`BEAT`].
pub(super) async fn run(sig: Signaling, link: Arc<Link>, store: Arc<Store>, epoch: String) {
    let lease = redis::Script::new(LEASE);
    let me = link.node.to_string();
    let mut con: Option<redis::aio::MultiplexedConnection> = None;
    let mut tick = tokio::time::interval(BEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if link.draining() {
            continue;
        }
        if con.is_none() {
            con = store
                .client
                .get_multiplexed_async_connection_with_config(&conn_config(Duration::from_secs(1)))
                .await
                .map_err(|e| tracing::warn!(redis = %store.url, error = %e, "cluster heartbeat: cannot reach Redis"))
                .ok();
        }
        let Some(c) = con.as_mut() else {
            lost(&link);
            continue;
        };
        let beat: redis::RedisResult<(Option<String>, i64)> = redis::pipe()
            .cmd("SET")
            .arg(store.keys.node(link.node))
            .arg(1)
            .arg("PX")
            .arg(NODE_TTL.as_millis() as u64)
            .ignore()
            .cmd("GET")
            .arg(&store.keys.epoch)
            .cmd("EXISTS")
            .arg(&store.keys.log)
            .query_async(c)
            .await;
        let (now_epoch, log_exists) = match beat {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(redis = %store.url, error = %e, "cluster heartbeat failed");
                con = None;
                lost(&link);
                continue;
            }
        };
        if now_epoch.as_deref() != Some(epoch.as_str()) || log_exists == 0 {
            // The log this replica was built from is gone (Redis restarted without
            // persistence, or the keys were deleted): serving on would diverge from
            // nodes that start on the new log. Exit; a supervisor restarts the node,
            // which joins the new log; clients start new sessions and restore their
            // calls (`call.restore`).
            tracing::error!(redis = %store.url, expected = %epoch, found = ?now_epoch, log_exists, "Redis lost the cluster's log: exiting (status 75) to rejoin");
            std::process::exit(75);
        }
        link.store_ok.store(true, Ordering::Release);
        let held: redis::RedisResult<i64> = lease
            .key(&store.keys.leader)
            .arg(&me)
            .arg(NODE_TTL.as_millis() as u64)
            .invoke_async(c)
            .await;
        let leader = matches!(held, Ok(1));
        if link.leader.swap(leader, Ordering::AcqRel) != leader {
            tracing::info!(node = %link.node, leader, "cluster lease");
        }
        if !leader {
            continue;
        }
        for n in sig.nodes_with_sockets(link.node) {
            let alive: redis::RedisResult<i64> = redis::cmd("EXISTS").arg(store.keys.node(n)).query_async(c).await;
            if let Ok(0) = alive {
                tracing::warn!(node = %n, "node stopped heartbeating: its sockets are gone");
                let _ = link.append(Input::NodeGone { gone: n });
            }
        }
    }
}

/// Redis did not answer: not the leader any more (another node may take the lease once
/// it expires), and not ready.
fn lost(link: &Link) {
    link.store_ok.store(false, Ordering::Release);
    if link.leader.swap(false, Ordering::AcqRel) {
        tracing::info!(node = %link.node, leader = false, "cluster lease");
    }
}

/// Before exiting: the heartbeat key and the lease go at once, so that the leader (or
/// the next one) does not wait for them to expire.
pub async fn leave(store: &Store, link: &Link) {
    let Ok(mut c) = store
        .client
        .get_multiplexed_async_connection_with_config(&conn_config(Duration::from_secs(1)))
        .await
    else {
        return;
    };
    let _: redis::RedisResult<()> = redis::cmd("DEL")
        .arg(store.keys.node(link.node))
        .query_async(&mut c)
        .await;
    let _: redis::RedisResult<i64> = redis::Script::new(RELEASE)
        .key(&store.keys.leader)
        .arg(link.node.to_string())
        .invoke_async(&mut c)
        .await;
}
