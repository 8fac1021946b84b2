//! Sans-IO signaling for firstcall: protocol v1 types, sessions with
//! seq/ack/resume, and the server-owned call state machine.
//!
//! [`hub::Hub`] is the state machine; it never touches a socket or a clock.
//! The server crate drives it over WebSockets.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod hub;
pub mod keys;
pub mod metrics;
pub mod protocol;
pub mod recent;
pub mod scan;
pub mod ws;
