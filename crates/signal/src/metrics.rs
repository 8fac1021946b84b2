//! Signaling counters, rendered for Prometheus by the server.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the invite→connected histogram buckets.
pub const CONNECT_BUCKETS: [f64; 12] = [0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 10.0, 20.0, 45.0];

/// A limit the hub enforces, as counted in `firstcall_signal_limits_hit_total{limit}`.
///
/// One label per limit, so an operator sees which one clients meet (and a test can
/// check that the limit it hit was counted).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Limit {
    /// A caller's signals held for a ringing call, by count (`--max-held-signals`).
    HeldSignalsPerCall,
    /// A caller's signals held for a ringing call, by bytes (`--max-held-bytes`).
    HeldBytesPerCall,
    /// Signals held over all of one user's ringing calls, by count.
    HeldSignalsPerUser,
    /// Signals held over all of one user's ringing calls, by bytes.
    HeldBytesPerUser,
    /// Unacknowledged frames of a session, by count: the session is given up.
    UnackedFrames,
    /// Unacknowledged frames of a session, by bytes: the session is given up.
    UnackedBytes,
    /// A `call.incoming` (with the held signals) not delivered to a device whose
    /// session has no room for it under the unacknowledged-bytes limit.
    UnackedBytesIncoming,
    /// Live calls a user placed or answered (`--max-calls-per-user`).
    CallsPerUser,
    /// Invites ringing for one callee (`--max-ringing-per-callee`).
    RingingPerCallee,
    /// Sessions (devices) of one user (`--max-devices-per-user`).
    DevicesPerUser,
    /// Devices registered for pushes over all users (`--max-push-devices`).
    PushDevices,
    /// Frames per second of one session.
    FrameRate,
    /// A frame over 64 KiB.
    FrameSize,
    /// Ended call ids remembered (`--max-ended-calls`): the oldest forgotten early.
    EndedCalls,
    /// User pairs' last invites remembered (`--max-invite-pairs`): the oldest forgotten early.
    InvitePairs,
    /// With several nodes: inputs waiting to be appended to the cluster's log (Redis slow
    /// or unreachable); one more closes its socket with 1013.
    ClusterQueue,
}

impl Limit {
    /// Every limit, for tests and documentation.
    pub const ALL: [Limit; 16] = [
        Limit::HeldSignalsPerCall,
        Limit::HeldBytesPerCall,
        Limit::HeldSignalsPerUser,
        Limit::HeldBytesPerUser,
        Limit::UnackedFrames,
        Limit::UnackedBytes,
        Limit::UnackedBytesIncoming,
        Limit::CallsPerUser,
        Limit::RingingPerCallee,
        Limit::DevicesPerUser,
        Limit::PushDevices,
        Limit::FrameRate,
        Limit::FrameSize,
        Limit::EndedCalls,
        Limit::InvitePairs,
        Limit::ClusterQueue,
    ];

    /// Metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::HeldSignalsPerCall => "held_signals_per_call",
            Limit::HeldBytesPerCall => "held_bytes_per_call",
            Limit::HeldSignalsPerUser => "held_signals_per_user",
            Limit::HeldBytesPerUser => "held_bytes_per_user",
            Limit::UnackedFrames => "unacked_frames",
            Limit::UnackedBytes => "unacked_bytes",
            Limit::UnackedBytesIncoming => "unacked_bytes_incoming",
            Limit::CallsPerUser => "calls_per_user",
            Limit::RingingPerCallee => "ringing_per_callee",
            Limit::DevicesPerUser => "devices_per_user",
            Limit::PushDevices => "push_devices",
            Limit::FrameRate => "frame_rate",
            Limit::FrameSize => "frame_size",
            Limit::EndedCalls => "ended_calls",
            Limit::InvitePairs => "invite_pairs",
            Limit::ClusterQueue => "cluster_queue",
        }
    }
}

/// Upper bounds (seconds) of the calls' round-trip-time histogram buckets.
pub const RTT_BUCKETS: [f64; 10] = [0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0];
/// Upper bounds (fraction of packets) of the calls' loss histogram buckets.
pub const LOSS_BUCKETS: [f64; 9] = [0.0, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5];

/// A Prometheus histogram over fixed buckets.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    /// The sum, in millionths.
    sum_micros: AtomicU64,
}

impl Histogram {
    /// Empty, over `bounds` (ascending).
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }
    /// Count one value.
    pub fn observe(&self, v: f64) {
        for (i, b) in self.bounds.iter().enumerate() {
            if v <= *b {
                self.buckets[i].fetch_add(1, Relaxed);
            }
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_micros.fetch_add((v * 1e6).round() as u64, Relaxed);
    }
    /// Values counted.
    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }
    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (i, b) in self.bounds.iter().enumerate() {
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {}", self.buckets[i].load(Relaxed));
        }
        let n = self.count.load(Relaxed);
        let sum = self.sum_micros.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(
            out,
            "{name}_bucket{{le=\"+Inf\"}} {n}\n{name}_sum {sum}\n{name}_count {n}"
        );
    }
}

/// Counters of one hub.
#[derive(Debug)]
pub struct SignalMetrics {
    /// Live sessions.
    pub sessions_active: AtomicI64,
    /// Frames sent and not yet acknowledged, over all sessions.
    pub unacked: AtomicI64,
    /// Labelled counters: family → label → count.
    counters: Mutex<BTreeMap<&'static str, BTreeMap<&'static str, u64>>>,
    connect_buckets: [AtomicU64; CONNECT_BUCKETS.len()],
    connect_count: AtomicU64,
    connect_sum_ms: AtomicU64,
    /// Mean round-trip time of each reported call side (`call.report`), seconds.
    pub call_rtt: Histogram,
    /// Mean audio loss of each reported call side (`call.report`), a fraction.
    pub call_loss: Histogram,
}

impl Default for SignalMetrics {
    fn default() -> Self {
        SignalMetrics {
            sessions_active: AtomicI64::new(0),
            unacked: AtomicI64::new(0),
            counters: Mutex::default(),
            connect_buckets: Default::default(),
            connect_count: AtomicU64::new(0),
            connect_sum_ms: AtomicU64::new(0),
            call_rtt: Histogram::new(&RTT_BUCKETS),
            call_loss: Histogram::new(&LOSS_BUCKETS),
        }
    }
}

impl SignalMetrics {
    /// Add one to `family{label}`.
    pub fn count(&self, family: &'static str, label: &'static str) {
        self.add(family, label, 1);
    }
    /// Add `n` to `family{label}`.
    pub fn add(&self, family: &'static str, label: &'static str, n: u64) {
        let mut c = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        *c.entry(family).or_default().entry(label).or_default() += n;
    }
    /// Count one hit of `limit`.
    pub fn limit_hit(&self, limit: Limit) {
        self.count("limits_hit", limit.as_str());
    }
    /// How often `limit` was hit.
    pub fn limit_hits(&self, limit: Limit) -> u64 {
        self.get("limits_hit", limit.as_str())
    }
    /// Current value of `family{label}`.
    pub fn get(&self, family: &str, label: &str) -> u64 {
        let c = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        c.get(family).and_then(|m| m.get(label)).copied().unwrap_or(0)
    }
    /// Record one invite→connected time.
    pub fn observe_connect(&self, d: Duration) {
        let s = d.as_secs_f64();
        for (i, b) in CONNECT_BUCKETS.iter().enumerate() {
            if s <= *b {
                self.connect_buckets[i].fetch_add(1, Relaxed);
            }
        }
        self.connect_count.fetch_add(1, Relaxed);
        self.connect_sum_ms.fetch_add(d.as_millis() as u64, Relaxed);
    }

    /// Prometheus text.
    pub fn render(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP firstcall_signal_sessions_active Signaling sessions alive (attached or awaiting resume).\n# TYPE firstcall_signal_sessions_active gauge\nfirstcall_signal_sessions_active {}", self.sessions_active.load(Relaxed));
        let _ = writeln!(out, "# HELP firstcall_signal_unacked_frames Server frames not yet acknowledged by clients.\n# TYPE firstcall_signal_unacked_frames gauge\nfirstcall_signal_unacked_frames {}", self.unacked.load(Relaxed));
        let families: [(&str, &str, &str); 16] = [
            ("sessions", "Sessions created.", "event"),
            ("sessions_ended", "Sessions ended, by reason.", "reason"),
            ("resumes", "Resume attempts by result.", "result"),
            ("replayed_frames", "Frames replayed on resume.", "kind"),
            ("duplicate_frames", "Client frames received again and ignored.", "kind"),
            ("errors", "Error frames sent, by code.", "code"),
            ("invites", "Call invites.", "kind"),
            (
                "sockets_cut",
                "Sockets the server closed: too slow to take their frames, or breaking the WebSocket protocol.",
                "reason",
            ),
            ("calls_ended", "Calls ended, by reason.", "reason"),
            (
                "pair_types",
                "Selected ICE candidate pair types of connected calls.",
                "pair",
            ),
            (
                "limits_hit",
                "Client actions refused (or sessions given up) at a configured limit, by limit.",
                "limit",
            ),
            (
                "call_reports",
                "call.report frames (the SDK's end-of-call summary), by result: recorded, duplicate (that side reported already).",
                "result",
            ),
            (
                "restores",
                "call.restore frames, by result: waiting (first side), completed (second side), repeated, ended_meanwhile, refused, expired (the other side never came).",
                "result",
            ),
            (
                "drain_closed",
                "Sockets closed with 1012 while draining: idle (no live call) or exit (at the end of the drain).",
                "why",
            ),
            (
                "cluster_sockets_closed",
                "With several nodes: this node's sockets closed with 1013 because their input could not be appended to the cluster's log (store_unreachable, queue_full).",
                "reason",
            ),
            (
                "first_attempt",
                "Connected calls by whether they were the first attempt between the two users.",
                "result",
            ),
        ];
        let c = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        for (family, help, label) in families {
            let name = format!("firstcall_signal_{family}_total");
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            if let Some(m) = c.get(family) {
                for (k, v) in m {
                    let _ = writeln!(out, "{name}{{{label}=\"{k}\"}} {v}");
                }
            }
        }
        let name = "firstcall_signal_invite_to_connected_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time from call.invite to the first call.connected.\n# TYPE {name} histogram"
        );
        for (i, b) in CONNECT_BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{b}\"}} {}",
                self.connect_buckets[i].load(Relaxed)
            );
        }
        let n = self.connect_count.load(Relaxed);
        let _ = writeln!(
            out,
            "{name}_bucket{{le=\"+Inf\"}} {n}\n{name}_sum {}\n{name}_count {n}",
            self.connect_sum_ms.load(Relaxed) as f64 / 1000.0
        );
        self.call_rtt.render(
            out,
            "firstcall_call_rtt_seconds",
            "Mean round-trip time of a call as one side's SDK measured it (call.report).",
        );
        self.call_loss.render(
            out,
            "firstcall_call_audio_loss_ratio",
            "Mean audio packet loss of a call as one side's SDK measured it (call.report).",
        );
    }
}
