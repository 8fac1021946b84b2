//! Sans-IO TURN server core (RFC 8656) for firstcall.
//!
//! This crate never reads a clock, opens a socket or spawns a task: time and
//! randomness are inputs, packets to send and sockets to open are outputs.
//! [`server::Server`] is the state machine; [`auth`] and [`filter`] are the
//! policies it applies; [`ratelimit`] its token buckets; [`metrics`] are its counters.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod auth;
pub mod fastpath;
pub mod filter;
#[doc(hidden)]
pub mod fuzzing;
pub mod grants;
pub mod metrics;
pub mod ratelimit;
pub mod server;
