//! The server's WebSocket sockets (RFC 6455): the opening handshake, one task per
//! socket that reads, decodes ([`firstcall_signal::ws`]) and answers control frames,
//! and each socket's [`Outlet`], the queue its frames are written from.
//!
//! What the messages do is an [`Endpoint`]'s business: the signaling hub
//! ([`crate::signal`]), or an echo for conformance tests. Both run the very same codec
//! and socket task.

mod echo;
mod handshake;
mod outlet;
mod socket;

pub use echo::Echo;
pub use handshake::upgrade;
pub use outlet::{Outlet, Queued};
pub use socket::{live_sockets, serve, Endpoint, Gate, Limits, GATE_TIMEOUT};
