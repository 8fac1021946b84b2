//! An endpoint that sends every message back as it came: the WebSocket layer alone,
//! on the very same codec and socket task as signaling, for the Autobahn conformance
//! suite (`crates/server/examples/ws_echo.rs`, `scripts/autobahn`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use firstcall_signal::hub::ConnId;
use firstcall_signal::metrics::SignalMetrics;
use firstcall_signal::ws::OpCode;

use super::outlet::{Outlet, Queued};
use super::socket::{Endpoint, Limits};

/// Echoes text and binary messages.
#[derive(Clone)]
pub struct Echo {
    limits: Limits,
    next: Arc<AtomicU64>,
    metrics: Arc<SignalMetrics>,
}

impl Echo {
    /// An echo reading messages of up to `max_message` bytes. Its queue holds two such
    /// messages, so that echoing the largest never counts as a slow socket.
    pub fn new(max_message: usize) -> Echo {
        Echo {
            limits: Limits {
                max_message,
                queue_limit: max_message.saturating_mul(2),
            },
            next: Arc::new(AtomicU64::new(1)),
            metrics: Arc::new(SignalMetrics::default()),
        }
    }

    /// Its counters (`sockets_cut`).
    pub fn metrics(&self) -> &SignalMetrics {
        &self.metrics
    }

    fn echo(outlet: &Arc<Outlet>, op: OpCode, data: &[u8], batch: &mut Option<Arc<Outlet>>) {
        if outlet.queue(op, data) == Queued::First {
            *batch = Some(outlet.clone());
        }
    }
}

impl Endpoint for Echo {
    /// The socket, if a message of the read queued an answer on it.
    type Batch = Option<Arc<Outlet>>;

    fn limits(&self) -> Limits {
        self.limits
    }

    fn connect(&self, _: &Arc<Outlet>) -> ConnId {
        ConnId(self.next.fetch_add(1, Ordering::Relaxed))
    }

    fn text(&self, _: ConnId, outlet: &Arc<Outlet>, text: &str, batch: &mut Self::Batch) {
        Echo::echo(outlet, OpCode::Text, text.as_bytes(), batch);
    }

    fn binary(&self, _: ConnId, outlet: &Arc<Outlet>, data: &[u8], batch: &mut Self::Batch) -> bool {
        Echo::echo(outlet, OpCode::Binary, data, batch);
        true
    }

    fn flush(&self, batch: Self::Batch) {
        if let Some(outlet) = batch {
            outlet.push();
        }
    }

    fn disconnect(&self, _: ConnId) {}

    fn metrics(&self) -> &SignalMetrics {
        &self.metrics
    }
}
