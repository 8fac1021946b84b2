//! Relay-to-relay hand-off between workers.
//!
//! When both parties of a call are relayed by this server, a datagram from one party's
//! relay to the other's is handed over in-process if both allocations sit on one worker
//! ([`super::send_to_peer`]). With `--threads N` the kernel spreads clients over workers
//! by hash, so only 1 call in N had both on one worker; the rest crossed the kernel's
//! loopback (a `sendmsg` on one relay socket, the UDP stack, a wake-up and a `recvmmsg`
//! on the other). Here a worker queues such datagrams for the worker whose port block
//! holds the destination relay, and hands each worker its queue once per pass: one lock
//! and at most one wake-up per pass and destination worker, instead of two syscalls and
//! the stack per datagram. The receiving worker relays them exactly as if they had come
//! from the sending relay's address (permission and quota checked by its core).
//!
//! Bounded: a worker's inbox holds at most [`MAX_INBOX_BYTES`]; past that a pass's
//! datagrams for it are dropped and counted (`dropped{reason="handoff_queue_full"}`),
//! as a full socket buffer would drop them.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use firstcall_turn::server::{PeerAddr, RelayPort};
use tokio::sync::Notify;

use super::Worker;

/// Most bytes waiting in one worker's inbox: about 10 ms of a saturated worker.
pub const MAX_INBOX_BYTES: usize = 4 << 20;

/// Datagrams for one worker: their bytes back to back, and where each goes.
#[derive(Default)]
pub(super) struct Batch {
    bytes: Vec<u8>,
    /// (destination relay port, sending relay's address, end of its bytes).
    items: Vec<(RelayPort, SocketAddr, usize)>,
}

impl Batch {
    fn push(&mut self, to: RelayPort, from: SocketAddr, data: &[u8]) {
        self.bytes.extend_from_slice(data);
        self.items.push((to, from, self.bytes.len()));
    }

    fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// One worker's inbox.
struct Inbox {
    batches: Mutex<(Vec<Batch>, usize)>,
    wake: Notify,
}

/// Every worker's inbox and port block, shared by all workers.
pub struct Handoffs {
    inboxes: Vec<Inbox>,
    blocks: Vec<RangeInclusive<u16>>,
}

impl Handoffs {
    /// Inboxes for workers owning `blocks` (worker i relays on `blocks[i]`).
    pub fn new(blocks: Vec<RangeInclusive<u16>>) -> Arc<Handoffs> {
        let inboxes = blocks
            .iter()
            .map(|_| Inbox {
                batches: Mutex::new((Vec::new(), 0)),
                wake: Notify::new(),
            })
            .collect();
        Arc::new(Handoffs { inboxes, blocks })
    }

    /// The worker whose block holds `port`.
    pub(super) fn owner(&self, port: u16) -> Option<usize> {
        self.blocks.iter().position(|b| b.contains(&port))
    }
}

/// One worker's side: its index, the shared inboxes, and what this pass queued for
/// each other worker.
pub(super) struct Outbox {
    pub(super) index: usize,
    shared: Arc<Handoffs>,
    pending: RefCell<Vec<Batch>>,
}

impl Outbox {
    pub(super) fn new(index: usize, shared: Arc<Handoffs>) -> Outbox {
        let pending = (0..shared.inboxes.len()).map(|_| Batch::default()).collect();
        Outbox {
            index,
            shared,
            pending: RefCell::new(pending),
        }
    }

    /// The other worker that holds relay port `port`, if another one does.
    pub(super) fn other_owner(&self, port: u16) -> Option<usize> {
        self.shared.owner(port).filter(|&i| i != self.index)
    }

    /// Queue `data` from relay address `from` for relay `to` on worker `owner`.
    pub(super) fn queue(&self, owner: usize, to: RelayPort, from: SocketAddr, data: &[u8]) {
        self.pending.borrow_mut()[owner].push(to, from, data);
    }
}

/// Hand what this pass queued to the other workers: one lock and one wake-up each.
pub(super) fn flush(w: &Worker) {
    let Some(out) = &w.handoff else { return };
    let mut pending = out.pending.borrow_mut();
    for (i, batch) in pending.iter_mut().enumerate() {
        if batch.is_empty() {
            continue;
        }
        let batch = std::mem::take(batch);
        let inbox = &out.shared.inboxes[i];
        let mut q = inbox.batches.lock().unwrap_or_else(|e| e.into_inner());
        if q.1 + batch.bytes.len() > MAX_INBOX_BYTES {
            drop(q);
            for _ in &batch.items {
                w.metrics.dropped("handoff_queue_full");
            }
            continue;
        }
        q.1 += batch.bytes.len();
        w.metrics
            .hairpinned_packets
            .fetch_add(batch.items.len() as u64, std::sync::atomic::Ordering::Relaxed);
        let was_empty = q.0.is_empty();
        q.0.push(batch);
        drop(q);
        if was_empty {
            // Stored as a permit if the worker is busy: it finds the batch next time.
            inbox.wake.notify_one();
        }
    }
}

/// A worker's receiving end: relays what other workers handed it, then ends the pass.
pub(super) async fn inbox_loop(w: Rc<Worker>) {
    let Some(out) = &w.handoff else { return };
    let shared = out.shared.clone();
    let inbox = &shared.inboxes[out.index];
    loop {
        inbox.wake.notified().await;
        let batches = {
            let mut q = inbox.batches.lock().unwrap_or_else(|e| e.into_inner());
            q.1 = 0;
            std::mem::take(&mut q.0)
        };
        let now = Instant::now();
        for b in &batches {
            let mut start = 0;
            for &(to, from, end) in &b.items {
                super::relay_from_peer(&w, to, PeerAddr(from), &b.bytes[start..end], now);
                start = end;
            }
        }
        // The core's transmits, then this pass's sends (and hand-offs) go out.
        super::flush(&w);
    }
}
