//! Checkpoints: bounding the log.
//!
//! Every `--redis-checkpoint-every` entries the leader appends a `Checkpoint`. Each
//! replica, applying it, fires what is due, then reseeds its random generator from the
//! cluster's seed and the checkpoint's id ([`replica_seed`]), so that a node restored
//! from the snapshot draws what the others draw. The node that appended it writes its
//! replica's snapshot to `<prefix>:snapshot` (with the checkpoint's id and time), then
//! trims the log up to the previous checkpoint (`XTRIM MINID`): a node that read the
//! previous snapshot a moment ago still finds the entries after it. A node that joins
//! restores the latest snapshot and reads the log from its id.

use sha2::{Digest, Sha256};

use super::entry::StreamId;
use super::log::Store;
use super::Keys;

/// A snapshot as kept in Redis.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// The checkpoint entry it was taken at.
    pub id: StreamId,
    /// The replica's time there (unix ms).
    pub at_ms: u64,
    /// `Hub::to_snapshot`'s bytes.
    pub state: Vec<u8>,
}

/// What the node that appended a checkpoint stores once it has applied it.
pub struct Checkpoint {
    /// The snapshot.
    pub snapshot: Snapshot,
    /// The checkpoint before it: the log is trimmed up to there.
    pub previous: Option<StreamId>,
}

/// The seed every replica draws from after the checkpoint at `id`.
pub fn replica_seed(seed: &[u8; 32], id: StreamId) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(seed);
    h.update(id.to_string().as_bytes());
    h.finalize().into()
}

/// The latest snapshot, if one was stored (and this build reads its version).
pub(super) async fn load(
    con: &mut redis::aio::MultiplexedConnection,
    keys: &Keys,
) -> redis::RedisResult<Option<Snapshot>> {
    let (id, at_ms, version, state): (Option<String>, Option<u64>, Option<u32>, Option<Vec<u8>>) = redis::cmd("HMGET")
        .arg(&keys.snapshot)
        .arg("id")
        .arg("at_ms")
        .arg("version")
        .arg("state")
        .query_async(con)
        .await?;
    let (Some(id), Some(at_ms), Some(version), Some(state)) = (id, at_ms, version, state) else {
        return Ok(None);
    };
    if version != firstcall_signal::hub::SNAPSHOT_VERSION {
        // Written by another version: this node replays the log instead (it is kept
        // from the previous checkpoint on, so a mixed-version cluster must not trim:
        // upgrade every node before the next checkpoint is trimmed, or restart all).
        tracing::warn!(
            version,
            ours = firstcall_signal::hub::SNAPSHOT_VERSION,
            "snapshot of another version: replaying the log from its start"
        );
        return Ok(None);
    }
    let Some(id) = StreamId::parse(&id) else {
        return Ok(None);
    };
    Ok(Some(Snapshot { id, at_ms, state }))
}

/// Store the snapshot, then trim the log up to the previous checkpoint.
pub(super) async fn store(store: std::sync::Arc<Store>, cp: Checkpoint) {
    let result: redis::RedisResult<()> = async {
        let mut con = store.client.get_multiplexed_async_connection().await?;
        let s = &cp.snapshot;
        let _: () = redis::cmd("HSET")
            .arg(&store.keys.snapshot)
            .arg("id")
            .arg(s.id.to_string())
            .arg("at_ms")
            .arg(s.at_ms)
            .arg("version")
            .arg(firstcall_signal::hub::SNAPSHOT_VERSION)
            .arg("state")
            .arg(&s.state)
            .query_async(&mut con)
            .await?;
        if let Some(prev) = cp.previous {
            let trimmed: u64 = redis::cmd("XTRIM")
                .arg(&store.keys.log)
                .arg("MINID")
                .arg(prev.to_string())
                .query_async(&mut con)
                .await?;
            tracing::info!(checkpoint = %s.id, bytes = s.state.len(), trimmed, "checkpoint stored, log trimmed");
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        tracing::warn!(redis = %store.url, error = %e, "storing the checkpoint failed: the next one will");
    }
}
