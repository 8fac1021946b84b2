//! Typed keys for the hub's sessions and calls, minted by its one counter.

use rand::RngCore;

use super::Hub;

/// A session's key in the hub's maps (not its [`SessionId`](crate::protocol::SessionId),
/// which the client is told). Keys grow with time: a lower key is an older session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub(super) struct SessionKey(u64);

/// A call's key in the hub's maps (not its client-chosen
/// [`CallId`](crate::protocol::CallId)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub(super) struct CallKey(u64);

impl<R: RngCore> Hub<R> {
    fn key(&mut self) -> u64 {
        self.next_key += 1;
        self.next_key
    }

    /// A key for a new session.
    pub(super) fn new_session_key(&mut self) -> SessionKey {
        SessionKey(self.key())
    }

    /// A key for a new call.
    pub(super) fn new_call_key(&mut self) -> CallKey {
        CallKey(self.key())
    }
}
