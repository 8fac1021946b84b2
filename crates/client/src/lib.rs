//! Rust client SDK for firstcall.
//!
//! [`signal::SignalClient`] speaks protocol v1 the way every SDK must: it numbers
//! its frames and keeps them until acknowledged, acknowledges what it receives,
//! resumes its session after a drop and resends what the server has not
//! processed. Tests and benchmarks use it against the real server.

pub mod load;
pub mod signal;
pub mod turn;
