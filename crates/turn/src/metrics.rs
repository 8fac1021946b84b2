//! Counters the TURN core keeps; the driver renders them for Prometheus.
//!
//! Hot-path counters (relayed packets and bytes) are relaxed atomics owned by
//! one core each, so workers never contend; rare labelled events (auth
//! failures, refused peers, drops) go through a small mutex-protected map.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

/// Direction of relayed traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// From a client, out through its relay to a peer.
    ToPeer = 0,
    /// From a peer, in through a relay to its client.
    ToClient = 1,
}

/// One TURN core's counters.
#[derive(Debug, Default)]
pub struct TurnMetrics {
    /// Allocations ever created.
    pub allocations_created: AtomicU64,
    /// Allocations alive now.
    pub allocations_active: AtomicI64,
    /// Relayed packets by [`Direction`].
    pub relayed_packets: [AtomicU64; 2],
    /// Relayed payload bytes by [`Direction`].
    pub relayed_bytes: [AtomicU64; 2],
    /// Packets from one allocation to another, handed over without the kernel (on one
    /// worker, or queued for the worker holding the destination).
    pub hairpinned_packets: AtomicU64,
    /// STUN requests by method name.
    requests: Mutex<BTreeMap<&'static str, u64>>,
    /// Failed authentications by reason.
    auth_failures: Mutex<BTreeMap<&'static str, u64>>,
    /// Peers refused by the filter, by reason.
    peers_refused: Mutex<BTreeMap<&'static str, u64>>,
    /// Packets dropped, by reason.
    dropped: Mutex<BTreeMap<&'static str, u64>>,
    /// Allocations deleted, by reason.
    allocations_deleted: Mutex<BTreeMap<&'static str, u64>>,
    /// Error responses sent, by code.
    error_responses: Mutex<BTreeMap<&'static str, u64>>,
    /// Peer grants, by outcome (`crate::grants`).
    peer_grants: Mutex<BTreeMap<&'static str, u64>>,
}

fn bump(map: &Mutex<BTreeMap<&'static str, u64>>, label: &'static str) {
    // A poisoned lock only means another thread panicked mid-increment; the
    // counts are still usable.
    let mut m = map.lock().unwrap_or_else(|e| e.into_inner());
    *m.entry(label).or_default() += 1;
}

impl TurnMetrics {
    /// Count a relayed packet.
    #[inline]
    pub fn relayed(&self, dir: Direction, bytes: usize) {
        self.relayed_packets[dir as usize].fetch_add(1, Relaxed);
        self.relayed_bytes[dir as usize].fetch_add(bytes as u64, Relaxed);
    }
    /// Count a request.
    pub fn request(&self, method: &'static str) {
        bump(&self.requests, method);
    }
    /// Count an auth failure.
    pub fn auth_failure(&self, reason: &'static str) {
        bump(&self.auth_failures, reason);
    }
    /// Count a refused peer.
    pub fn peer_refused(&self, reason: &'static str) {
        bump(&self.peers_refused, reason);
    }
    /// Count a packet handed from one allocation to another of the same worker.
    pub fn hairpinned(&self) {
        self.hairpinned_packets.fetch_add(1, Relaxed);
    }
    /// Count a peer grant's outcome: stored, applied (a permission installed), full,
    /// expired, or the driver's queue_full.
    pub fn peer_grant(&self, outcome: &'static str) {
        bump(&self.peer_grants, outcome);
    }
    /// Count a dropped packet.
    pub fn dropped(&self, reason: &'static str) {
        bump(&self.dropped, reason);
    }
    /// Count an error response.
    pub fn error_response(&self, code: u16) {
        bump(&self.error_responses, code_label(code));
    }
    /// Count a deleted allocation.
    pub fn allocation_deleted(&self, reason: &'static str) {
        self.allocations_active.fetch_sub(1, Relaxed);
        bump(&self.allocations_deleted, reason);
    }
    /// Value of a labelled counter, for tests and `doctor`.
    pub fn count(&self, family: &str, label: &str) -> u64 {
        let map = match family {
            "requests" => &self.requests,
            "auth_failures" => &self.auth_failures,
            "peers_refused" => &self.peers_refused,
            "dropped" => &self.dropped,
            "allocations_deleted" => &self.allocations_deleted,
            "error_responses" => &self.error_responses,
            "peer_grants" => &self.peer_grants,
            _ => return 0,
        };
        map.lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(label)
            .copied()
            .unwrap_or(0)
    }
}

fn code_label(code: u16) -> &'static str {
    match code {
        300 => "300",
        400 => "400",
        401 => "401",
        403 => "403",
        420 => "420",
        437 => "437",
        438 => "438",
        440 => "440",
        441 => "441",
        442 => "442",
        443 => "443",
        486 => "486",
        500 => "500",
        508 => "508",
        _ => "other",
    }
}

/// A labelled counter family: metric name, help text, label name, and where its counts live.
type Labelled = (
    &'static str,
    &'static str,
    &'static str,
    fn(&TurnMetrics) -> &Mutex<BTreeMap<&'static str, u64>>,
);

/// Render the sum of several cores' counters in Prometheus text format.
pub fn render_prometheus(cores: &[std::sync::Arc<TurnMetrics>], out: &mut String) {
    let sum = |f: &dyn Fn(&TurnMetrics) -> i64| cores.iter().map(|m| f(m)).sum::<i64>();
    let counter = |out: &mut String, name: &str, help: &str, v: i64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
    };
    counter(
        out,
        "firstcall_turn_allocations_total",
        "TURN allocations created.",
        sum(&|m| m.allocations_created.load(Relaxed) as i64),
    );
    let _ = writeln!(
        out,
        "# HELP firstcall_turn_allocations_active TURN allocations alive now.\n# TYPE firstcall_turn_allocations_active gauge\nfirstcall_turn_allocations_active {}",
        sum(&|m| m.allocations_active.load(Relaxed))
    );
    for (name, help, arr) in [
        ("firstcall_turn_relayed_packets_total", "Packets relayed.", 0),
        ("firstcall_turn_relayed_bytes_total", "Payload bytes relayed.", 1),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (dir, label) in [(Direction::ToPeer, "to_peer"), (Direction::ToClient, "to_client")] {
            let v = sum(&|m| {
                let a = if arr == 0 { &m.relayed_packets } else { &m.relayed_bytes };
                a[dir as usize].load(Relaxed) as i64
            });
            let _ = writeln!(out, "{name}{{direction=\"{label}\"}} {v}");
        }
    }
    counter(
        out,
        "firstcall_turn_hairpinned_packets_total",
        "Packets relayed from one allocation to another without the kernel, on one worker or handed to another (both parties relayed by this server).",
        sum(&|m| m.hairpinned_packets.load(Relaxed) as i64),
    );
    let labelled: [Labelled; 7] = [
        (
            "firstcall_turn_requests_total",
            "STUN/TURN requests by method.",
            "method",
            |m| &m.requests,
        ),
        (
            "firstcall_turn_auth_failures_total",
            "Failed TURN authentications by reason.",
            "reason",
            |m| &m.auth_failures,
        ),
        (
            "firstcall_turn_peers_refused_total",
            "Peer addresses refused by the peer filter, by reason.",
            "reason",
            |m| &m.peers_refused,
        ),
        (
            "firstcall_turn_dropped_total",
            "Packets dropped, by reason.",
            "reason",
            |m| &m.dropped,
        ),
        (
            "firstcall_turn_allocations_deleted_total",
            "Allocations deleted, by reason.",
            "reason",
            |m| &m.allocations_deleted,
        ),
        (
            "firstcall_turn_error_responses_total",
            "Error responses sent, by code.",
            "code",
            |m| &m.error_responses,
        ),
        (
            "firstcall_turn_peer_grants_total",
            "Peer grants (a call's other party let into a user's allocations ahead of its permission), by outcome.",
            "outcome",
            |m| &m.peer_grants,
        ),
    ];
    for (name, help, label, get) in labelled {
        let mut total: BTreeMap<&'static str, u64> = BTreeMap::new();
        for m in cores {
            for (k, v) in get(m).lock().unwrap_or_else(|e| e.into_inner()).iter() {
                *total.entry(k).or_default() += v;
            }
        }
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (k, v) in total {
            let _ = writeln!(out, "{name}{{{label}=\"{k}\"}} {v}");
        }
    }
}
