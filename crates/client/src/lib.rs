//! Rust client SDK for firstcall.
//!
//! [`signal::SignalClient`] speaks protocol v1 the way every SDK must: it numbers
//! its frames and keeps them until acknowledged, acknowledges what it receives,
//! resumes its session after a drop and resends what the server has not
//! processed. [`call::Calls`] is the call layer over it (invite, accept, reject,
//! cancel, hang-up, signals, the calls snapshot), sans-IO. Tests, benchmarks and the
//! conformance kit (docs/conformance.md) use them against the real server.

pub mod call;
pub mod load;
pub mod signal;
pub mod turn;
