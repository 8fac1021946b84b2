//! Peer grants from the signaling hub to every TURN worker (`--turn-peer-grant-ttl`).
//!
//! When the hub says a call was answered ([`firstcall_signal::hub::Output::CallPeers`]),
//! the signaling driver hands each party's address, as its socket shows it, to every
//! worker as a grant for the other party's allocations (the worker holding them is
//! not known here: a user's allocations may sit on any worker). Each worker's core
//! decides what a grant lets in ([`firstcall_turn::grants`]). The queue to each worker
//! is bounded; a full one drops the grant (the call still connects, as without grants)
//! and counts `firstcall_turn_peer_grants_total{outcome="queue_full"}`.

use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use firstcall_turn::grants::PeerGrant;
use firstcall_turn::metrics::TurnMetrics;
use tokio::sync::mpsc;

use super::Worker;

/// Grants waiting for one worker: a burst of answers far beyond any real one.
pub const QUEUE: usize = 4096;

/// The signaling side's handle: one queue per TURN worker.
#[derive(Clone)]
pub struct PeerGrants {
    workers: Vec<(mpsc::Sender<PeerGrant>, Arc<TurnMetrics>)>,
    ttl: Duration,
}

impl PeerGrants {
    /// Grants lasting `ttl`; [`PeerGrants::worker`] adds each worker's queue.
    pub fn new(ttl: Duration) -> PeerGrants {
        PeerGrants {
            workers: Vec::new(),
            ttl,
        }
    }

    /// A queue for one more worker, whose drops count in `metrics`: the receiving end
    /// goes in its [`super::WorkerSetup`].
    pub fn worker(&mut self, metrics: Arc<TurnMetrics>) -> mpsc::Receiver<PeerGrant> {
        let (tx, rx) = mpsc::channel(QUEUE);
        self.workers.push((tx, metrics));
        rx
    }

    /// Let `ip` into `user`'s allocations, on every worker, for the configured time.
    pub fn grant(&self, user: &str, ip: IpAddr, now: Instant) {
        let g = PeerGrant {
            user: user.into(),
            ip,
            until: now + self.ttl,
        };
        for (tx, metrics) in &self.workers {
            if tx.try_send(g.clone()).is_err() {
                metrics.peer_grant("queue_full");
            }
        }
    }
}

/// A worker's end: each grant into its core.
pub(super) async fn grant_loop(w: Rc<Worker>, mut rx: mpsc::Receiver<PeerGrant>) {
    while let Some(g) = rx.recv().await {
        // Refusals (table full, already lapsed) are counted by the core.
        let _ = w.core.borrow_mut().handle_peer_grant(g, Instant::now());
    }
}
