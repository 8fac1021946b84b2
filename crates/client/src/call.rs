//! The call layer (protocol v1, docs/protocol.md "Call layer"), sans-IO: methods build the
//! frames to send and check the call's state first; [`Calls::handle_frame`] and
//! [`Calls::handle_welcome`] take what the server sent and say what happened. No socket,
//! no clock: a driver (the conformance runner, an app) moves frames between this and a
//! [`crate::signal::SignalClient`].

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

/// A call id, as the protocol carries it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CallId(pub String);

impl std::fmt::Display for CallId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// This device's side of a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// It sent the invite.
    Caller,
    /// The invite came to it.
    Callee,
}

/// Audio or video.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Media {
    /// Audio only.
    Audio,
    /// Audio and video.
    Video,
}

impl Media {
    fn as_str(self) -> &'static str {
        match self {
            Media::Audio => "audio",
            Media::Video => "video",
        }
    }

    fn parse(s: &str) -> Option<Media> {
        match s {
            "audio" => Some(Media::Audio),
            "video" => Some(Media::Video),
            _ => None,
        }
    }
}

/// Where a call stands, as this device knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallState {
    /// Invite sent; nothing heard yet.
    Calling,
    /// A callee device rings (`call.ringing`).
    Ringing,
    /// No callee device online; the invite waits (`call.pending`).
    Pending,
    /// Ringing here (`call.incoming`), not answered.
    Incoming,
    /// Answered (by this device, or the callee's answer reached this caller).
    Accepted,
    /// ICE connected (this device sent `call.connected`).
    Connected,
}

impl CallState {
    /// The name the conformance kit uses.
    pub fn as_str(self) -> &'static str {
        match self {
            CallState::Calling => "calling",
            CallState::Ringing => "ringing",
            CallState::Pending => "pending",
            CallState::Incoming => "incoming",
            CallState::Accepted => "accepted",
            CallState::Connected => "connected",
        }
    }
}

/// One call this device takes part in.
#[derive(Clone, Debug, PartialEq)]
pub struct Call {
    /// This device's side.
    pub role: Role,
    /// The other user.
    pub peer: String,
    /// Audio or video.
    pub media: Media,
    /// Where it stands.
    pub state: CallState,
    /// The invite's application data.
    pub meta: Option<Map<String, Value>>,
    /// The other side's SDP (the offer for a callee, the answer for a caller).
    pub remote_sdp: Option<String>,
}

/// What a server frame or a welcome changed.
#[derive(Clone, Debug, PartialEq)]
pub enum CallEvent {
    /// A call rings on this device.
    Incoming(CallId),
    /// A callee device rings.
    Ringing(CallId),
    /// No callee device online.
    Pending(CallId),
    /// The callee answered.
    Accepted(CallId),
    /// The other side's signal (candidate, end of candidates, renegotiation).
    Signal(CallId, Value),
    /// The call ended; `reason` as the server gave it, or `lost` when a new session's
    /// snapshot no longer lists it.
    Ended {
        /// The call.
        call: CallId,
        /// `hangup`, `cancelled`, `rejected`, `busy`, `timeout`, `unreachable`,
        /// `answered_elsewhere`, …, or `lost`.
        reason: String,
    },
}

/// Misuse: what a method refuses, and why. The state is unchanged.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CallError {
    /// An invite with an id already in use.
    #[error("call {0} already exists")]
    Exists(CallId),
    /// No such call.
    #[error("no call {0}")]
    Unknown(CallId),
    /// The call is not in a state that allows this.
    #[error("call {call}: cannot {action} while {state}")]
    State {
        /// The call.
        call: CallId,
        /// What was asked.
        action: &'static str,
        /// Where it stands.
        state: &'static str,
    },
}

/// A server frame the call layer could not read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("server frame {kind}: {why}")]
pub struct FrameError {
    /// Its type.
    pub kind: String,
    /// What is missing or wrong.
    pub why: &'static str,
}

/// This device's calls.
#[derive(Debug, Default)]
pub struct Calls {
    calls: BTreeMap<CallId, Call>,
}

impl Calls {
    /// No calls.
    pub fn new() -> Calls {
        Calls::default()
    }

    /// A call by id.
    pub fn get(&self, call: &str) -> Option<&Call> {
        self.calls.get(&CallId(call.to_owned()))
    }

    /// Every call's state, by id.
    pub fn snapshot(&self) -> BTreeMap<String, &'static str> {
        self.calls
            .iter()
            .map(|(id, c)| (id.0.clone(), c.state.as_str()))
            .collect()
    }

    fn require(&self, call: &str, action: &'static str, ok: &[CallState]) -> Result<CallId, CallError> {
        let id = CallId(call.to_owned());
        let c = self.calls.get(&id).ok_or_else(|| CallError::Unknown(id.clone()))?;
        if ok.contains(&c.state) {
            Ok(id)
        } else {
            Err(CallError::State {
                call: id,
                action,
                state: c.state.as_str(),
            })
        }
    }

    /// Start a call: the `call.invite` frame to send.
    pub fn invite(
        &mut self,
        call: &str,
        to: &str,
        media: Media,
        sdp: &str,
        meta: Option<Map<String, Value>>,
    ) -> Result<Value, CallError> {
        let id = CallId(call.to_owned());
        if self.calls.contains_key(&id) {
            return Err(CallError::Exists(id));
        }
        let mut frame = json!({"type": "call.invite", "call": call, "to": to, "media": media.as_str(), "sdp": sdp});
        if let Some(m) = &meta {
            frame["meta"] = Value::Object(m.clone());
        }
        self.calls.insert(
            id,
            Call {
                role: Role::Caller,
                peer: to.to_owned(),
                media,
                state: CallState::Calling,
                meta,
                remote_sdp: None,
            },
        );
        Ok(frame)
    }

    /// Answer a call ringing here.
    pub fn accept(&mut self, call: &str, sdp: &str) -> Result<Value, CallError> {
        let id = self.require(call, "accept", &[CallState::Incoming])?;
        if let Some(c) = self.calls.get_mut(&id) {
            c.state = CallState::Accepted;
        }
        Ok(json!({"type": "call.accept", "call": call, "sdp": sdp}))
    }

    /// Decline a call ringing here; it is over for this device.
    pub fn reject(&mut self, call: &str) -> Result<Value, CallError> {
        let id = self.require(call, "reject", &[CallState::Incoming])?;
        self.calls.remove(&id);
        Ok(json!({"type": "call.reject", "call": call}))
    }

    /// Withdraw an invite not answered yet.
    pub fn cancel(&mut self, call: &str) -> Result<Value, CallError> {
        let id = self.require(
            call,
            "cancel",
            &[CallState::Calling, CallState::Ringing, CallState::Pending],
        )?;
        self.calls.remove(&id);
        Ok(json!({"type": "call.cancel", "call": call}))
    }

    /// End a call in any state (before an answer the server treats it as a cancel or a
    /// reject).
    pub fn hangup(&mut self, call: &str) -> Result<Value, CallError> {
        let id = CallId(call.to_owned());
        if self.calls.remove(&id).is_none() {
            return Err(CallError::Unknown(id));
        }
        Ok(json!({"type": "call.hangup", "call": call}))
    }

    /// A signal (candidate, end of candidates, SDP) for the other side.
    pub fn signal(&mut self, call: &str, data: Value) -> Result<Value, CallError> {
        let id = CallId(call.to_owned());
        if !self.calls.contains_key(&id) {
            return Err(CallError::Unknown(id));
        }
        Ok(json!({"type": "call.signal", "call": call, "data": data}))
    }

    /// ICE connected: the selected pair, for the server's first-attempt accounting.
    pub fn connected(&mut self, call: &str, local: &str, remote: &str) -> Result<Value, CallError> {
        let id = self.require(call, "report connected", &[CallState::Accepted, CallState::Connected])?;
        if let Some(c) = self.calls.get_mut(&id) {
            c.state = CallState::Connected;
        }
        Ok(json!({"type": "call.connected", "call": call, "local": local, "remote": remote}))
    }

    /// Act on a frame the server sent. Frames that are not about calls, and call frames
    /// about calls this device does not hold (a late `call.ringing` after a cancel), are
    /// `Ok(None)`.
    pub fn handle_frame(&mut self, frame: &Value) -> Result<Option<CallEvent>, FrameError> {
        let kind = frame["type"].as_str().unwrap_or_default();
        if !kind.starts_with("call.") {
            return Ok(None);
        }
        let bad = |why| FrameError {
            kind: kind.to_owned(),
            why,
        };
        let id = CallId(frame["call"].as_str().ok_or_else(|| bad("no call id"))?.to_owned());
        let text = |k: &str| frame[k].as_str().map(str::to_owned);
        let event = match kind {
            "call.incoming" => {
                let media = Media::parse(frame["media"].as_str().unwrap_or_default()).ok_or_else(|| bad("media"))?;
                let peer = text("from").ok_or_else(|| bad("no from"))?;
                let known = self.calls.contains_key(&id);
                self.calls.entry(id.clone()).or_insert(Call {
                    role: Role::Callee,
                    peer,
                    media,
                    state: CallState::Incoming,
                    meta: frame["meta"].as_object().cloned(),
                    remote_sdp: text("sdp"),
                });
                // A replayed incoming (a resume) is not a second ring.
                (!known).then_some(CallEvent::Incoming(id))
            }
            "call.ringing" | "call.pending" | "call.accepted" => {
                let Some(c) = self.calls.get_mut(&id) else {
                    return Ok(None);
                };
                match kind {
                    "call.ringing" if matches!(c.state, CallState::Calling | CallState::Pending) => {
                        c.state = CallState::Ringing;
                        Some(CallEvent::Ringing(id))
                    }
                    "call.pending" if c.state == CallState::Calling => {
                        c.state = CallState::Pending;
                        Some(CallEvent::Pending(id))
                    }
                    "call.accepted"
                        if c.role == Role::Caller && !matches!(c.state, CallState::Accepted | CallState::Connected) =>
                    {
                        c.state = CallState::Accepted;
                        c.remote_sdp = text("sdp");
                        Some(CallEvent::Accepted(id))
                    }
                    _ => None,
                }
            }
            "call.signal" => self
                .calls
                .contains_key(&id)
                .then(|| CallEvent::Signal(id, frame["data"].clone())),
            "call.ended" => {
                let reason = text("reason").ok_or_else(|| bad("no reason"))?;
                self.calls.remove(&id).map(|_| CallEvent::Ended { call: id, reason })
            }
            _ => None,
        };
        Ok(event)
    }

    /// A welcome's `calls` snapshot after a new session (not a resume, whose replay
    /// carries everything): calls it no longer lists ended while this device was away
    /// (`lost`); calls it lists that this device did not hold are added. `unprocessed`:
    /// calls whose `call.invite` the server has not acknowledged
    /// ([`SignalClient::unprocessed_invites`]): sent again after the welcome, they
    /// cannot be listed yet and are not lost.
    ///
    /// [`SignalClient::unprocessed_invites`]: crate::signal::SignalClient::unprocessed_invites
    pub fn handle_welcome(&mut self, welcome: &Value, unprocessed: &[CallId]) -> Vec<CallEvent> {
        let listed: BTreeMap<CallId, &Value> = welcome["calls"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| Some((CallId(c["call"].as_str()?.to_owned()), c)))
            .collect();
        let mut events = vec![];
        let gone: Vec<CallId> = self
            .calls
            .keys()
            .filter(|id| !listed.contains_key(id) && !unprocessed.contains(id))
            .cloned()
            .collect();
        for id in gone {
            self.calls.remove(&id);
            events.push(CallEvent::Ended {
                call: id,
                reason: "lost".into(),
            });
        }
        for (id, c) in listed {
            if self.calls.contains_key(&id) {
                continue;
            }
            let role = if c["role"] == "caller" {
                Role::Caller
            } else {
                Role::Callee
            };
            let state = match (c["state"].as_str(), role) {
                (Some("ringing"), Role::Callee) => CallState::Incoming,
                (Some("ringing"), Role::Caller) => CallState::Ringing,
                (Some("connected"), _) => CallState::Connected,
                _ => CallState::Accepted,
            };
            let Some(media) = c["media"].as_str().and_then(Media::parse) else {
                continue;
            };
            self.calls.insert(
                id.clone(),
                Call {
                    role,
                    peer: c["peer"].as_str().unwrap_or_default().to_owned(),
                    media,
                    state,
                    meta: c["meta"].as_object().cloned(),
                    remote_sdp: None,
                },
            );
            if state == CallState::Incoming {
                events.push(CallEvent::Incoming(id));
            }
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_from_invite_to_hangup_and_misuse_changes_nothing() {
        let mut a = Calls::new();
        let f = a.invite("c1", "bob", Media::Audio, "o", None).unwrap();
        assert_eq!(f["type"], "call.invite");
        assert_eq!(
            a.invite("c1", "bob", Media::Audio, "o", None),
            Err(CallError::Exists(CallId("c1".into())))
        );
        assert!(matches!(a.accept("c1", "x"), Err(CallError::State { .. })));
        assert_eq!(a.snapshot()["c1"], "calling");
        a.handle_frame(&json!({"type": "call.ringing", "call": "c1", "device": "b1"}))
            .unwrap();
        assert_eq!(a.snapshot()["c1"], "ringing");
        let e = a
            .handle_frame(&json!({"type": "call.accepted", "call": "c1", "device": "b1", "sdp": "ans"}))
            .unwrap();
        assert_eq!(e, Some(CallEvent::Accepted(CallId("c1".into()))));
        assert_eq!(a.get("c1").unwrap().remote_sdp.as_deref(), Some("ans"));
        assert!(a.cancel("c1").is_err(), "answered: hang up, not cancel");
        a.hangup("c1").unwrap();
        assert!(a.snapshot().is_empty());
        // Frames about calls not held are ignored; a bad frame is an error, not a panic.
        assert_eq!(a.handle_frame(&json!({"type": "call.ringing", "call": "zz"})), Ok(None));
        assert!(a.handle_frame(&json!({"type": "call.incoming"})).is_err());
    }

    #[test]
    fn a_new_sessions_snapshot_ends_the_calls_it_no_longer_lists() {
        let mut b = Calls::new();
        b.handle_frame(&json!({"type": "call.incoming", "call": "c1", "from": "alice", "media": "video", "sdp": "o"}))
            .unwrap();
        let ev = b.handle_welcome(
            &json!({"calls": [
                {"call": "c2", "role": "callee", "peer": "carol", "media": "audio", "state": "ringing", "this_device": false}
            ]}),
            &[],
        );
        assert_eq!(
            ev,
            vec![
                CallEvent::Ended {
                    call: CallId("c1".into()),
                    reason: "lost".into()
                },
                CallEvent::Incoming(CallId("c2".into()))
            ]
        );
        assert_eq!(b.snapshot()["c2"], "incoming");
    }

    #[test]
    fn a_call_whose_invite_the_server_has_not_processed_outlives_a_new_sessions_snapshot() {
        // Placed while the socket was down (the server restarted meanwhile): the invite
        // goes out again after the welcome, which therefore cannot list the call.
        let mut a = Calls::new();
        a.invite("c1", "bob", Media::Audio, "o", None).unwrap();
        a.invite("c2", "carol", Media::Audio, "o", None).unwrap();
        let ev = a.handle_welcome(&json!({"calls": []}), &[CallId("c1".into())]);
        assert_eq!(
            ev,
            vec![CallEvent::Ended {
                call: CallId("c2".into()),
                reason: "lost".into()
            }]
        );
        assert_eq!(a.snapshot()["c1"], "calling");
    }
}
