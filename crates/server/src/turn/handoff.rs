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
//! Bounded: a worker's inbox holds at most [`MAX_INBOX_BYTES`], each datagram counted
//! at its length plus [`ITEM_COST`] (so empty datagrams fill it too); past that a
//! pass's datagrams for it are dropped and counted
//! (`dropped{reason="handoff_queue_full"}`), as a full socket buffer would drop them. The
//! receiving worker takes the whole inbox and relays it [`ROUND`] datagrams at a time,
//! yielding between rounds to its other tasks (its own clients, relay sockets, timers):
//! at most one inbox's worth waits there besides the inbox itself. The inbox is shared by
//! every flow to that worker, so a flood to it costs other hand-offs to it their
//! datagrams too, as a flood into one socket buffer would.

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

/// What a datagram costs in an inbox beyond its bytes (its entry, and a floor like a
/// kernel buffer's): 65,536 datagrams at most, however short.
pub const ITEM_COST: usize = 64;

/// Datagrams relayed from the inbox before the worker yields: as many as its other
/// loops take per round (io_uring's send slots are freed only between rounds).
pub const ROUND: usize = 1024;

/// Datagrams for one worker: their bytes back to back, and where each goes.
#[derive(Default, Debug, PartialEq)]
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

    /// What it counts against an inbox's bound.
    fn cost(&self) -> usize {
        self.bytes.len() + self.items.len() * ITEM_COST
    }

    fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// One worker's inbox.
#[derive(Default)]
struct Inbox {
    batches: Mutex<(Vec<Batch>, usize)>,
    wake: Notify,
}

impl Inbox {
    /// Take `batch` if it fits under [`MAX_INBOX_BYTES`]; wake the worker when the inbox
    /// was empty (a permit if it is busy: it finds the batch next time). Back: the
    /// datagrams taken, or the batch refused.
    fn offer(&self, batch: Batch) -> Result<usize, Batch> {
        let cost = batch.cost();
        let mut q = self.batches.lock().unwrap_or_else(|e| e.into_inner());
        if q.1 + cost > MAX_INBOX_BYTES {
            return Err(batch);
        }
        q.1 += cost;
        let (n, was_empty) = (batch.items.len(), q.0.is_empty());
        q.0.push(batch);
        drop(q);
        if was_empty {
            self.wake.notify_one();
        }
        Ok(n)
    }

    /// Everything waiting, the bound's count reset.
    fn take(&self) -> Vec<Batch> {
        let mut q = self.batches.lock().unwrap_or_else(|e| e.into_inner());
        q.1 = 0;
        std::mem::take(&mut q.0)
    }
}

/// Every worker's inbox and port block, shared by all workers.
pub struct Handoffs {
    inboxes: Vec<Inbox>,
    blocks: Vec<RangeInclusive<u16>>,
}

impl Handoffs {
    /// Inboxes for workers owning `blocks` (worker i relays on `blocks[i]`).
    pub fn new(blocks: Vec<RangeInclusive<u16>>) -> Arc<Handoffs> {
        let inboxes = blocks.iter().map(|_| Inbox::default()).collect();
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
    index: usize,
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
        match out.shared.inboxes[i].offer(std::mem::take(batch)) {
            Ok(n) => {
                w.metrics
                    .hairpinned_packets
                    .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
            }
            Err(refused) => {
                for _ in &refused.items {
                    w.metrics.dropped("handoff_queue_full");
                }
            }
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
        let batches = inbox.take();
        let mut done = 0;
        for b in &batches {
            let mut start = 0;
            for &(to, from, end) in &b.items {
                super::relay_from_peer(&w, to, PeerAddr(from), &b.bytes[start..end], Instant::now());
                start = end;
                done += 1;
                if done % ROUND == 0 {
                    // The core's transmits, then this round's sends, go out; then the
                    // worker's other tasks get their turn.
                    super::flush(&w);
                    tokio::task::yield_now().await;
                }
            }
        }
        super::flush(&w);
        // A permit stored while this round ran returns at once: let the others run.
        tokio::task::yield_now().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(n: usize, len: usize) -> Batch {
        let mut b = Batch::default();
        for _ in 0..n {
            b.push(RelayPort(50000), "192.0.2.1:50001".parse().unwrap(), &vec![0u8; len]);
        }
        b
    }

    #[test]
    fn empty_datagrams_fill_an_inbox_too() {
        let q = Inbox::default();
        let per_batch = 1024;
        let mut taken = 0;
        loop {
            match q.offer(batch(per_batch, 0)) {
                Ok(n) => taken += n,
                Err(refused) => {
                    assert_eq!(refused.items.len(), per_batch, "a refused batch comes back whole");
                    break;
                }
            }
            assert!(
                taken <= MAX_INBOX_BYTES / ITEM_COST,
                "bounded by count as well as bytes"
            );
        }
        assert_eq!(taken, MAX_INBOX_BYTES / ITEM_COST);
        // Taking everything makes room again.
        assert_eq!(q.take().iter().map(|b| b.items.len()).sum::<usize>(), taken);
        assert_eq!(q.offer(batch(1, 1200)), Ok(1));
    }

    #[test]
    fn bytes_count_against_the_bound() {
        let q = Inbox::default();
        // Two datagrams that fill the inbox exactly, their entries counted.
        let big = MAX_INBOX_BYTES / 2 - ITEM_COST;
        assert_eq!(q.offer(batch(1, big)), Ok(1));
        assert_eq!(q.offer(batch(1, big)), Ok(1));
        assert!(q.offer(batch(1, 64)).is_err());
    }
}
