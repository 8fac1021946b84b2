//! What a kernel fast path may relay on the core's behalf (issue 23.3).
//!
//! The core stays the authority: it says, per UDP client, which of its channels a
//! program in the kernel (the driver's XDP program) may relay without the core seeing the
//! datagrams, and until when. A channel qualifies while it is bound, a permission for its
//! peer is installed and its allocation is alive; the entry expires at the earliest of
//! the three, so a fast path that checks the expiry never relays past what the core
//! would. Allocations with a bandwidth limit (per allocation or per user) have no entries:
//! the kernel cannot charge the core's token buckets, so their datagrams stay on the
//! user-space path, which enforces them.
//!
//! Driving: after a pass, the driver takes [`crate::server::Server::poll_fast_path`]
//! until `None`; each [`FastPathSet`] replaces everything installed for that client.

use std::net::SocketAddr;
use std::time::Instant;

use crate::server::RelayPort;

/// One channel the fast path may relay both ways.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FastEntry {
    /// The channel number (0x4000-0x7FFF).
    pub channel: u16,
    /// The allocation's relay port.
    pub relay: RelayPort,
    /// The peer bound to the channel.
    pub peer: SocketAddr,
    /// Relay nothing from this instant on.
    pub expires: Instant,
}

/// Everything the fast path may relay for one client now: replaces what it had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FastPathSet {
    /// The UDP client (its address as the server sees it).
    pub client: SocketAddr,
    /// Its channels; empty when it has none (or no allocation any more).
    pub entries: Vec<FastEntry>,
}
