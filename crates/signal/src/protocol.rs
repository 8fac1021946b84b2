//! Protocol v1 wire types (see `docs/protocol.md`).
//!
//! Incoming frames are parsed in two steps: the envelope (`type`, `seq`) first, so
//! that a frame with bad fields can still be refused by its seq, then the body.
//! Both steps read the text itself (no intermediate `Value` tree), and a signal's
//! `data` is kept as the raw JSON the client sent: it is relayed, not interpreted,
//! so it is validated in place and copied out verbatim.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

/// Largest text frame accepted (64 KiB); larger ones are refused with `too_large`.
pub const MAX_FRAME: usize = 64 * 1024;

/// Largest `meta` of a `call.invite`, serialized (4 KiB); larger is `bad_request`.
pub const MAX_META: usize = 4 * 1024;

macro_rules! id_type {
    ($(#[$m:meta])* $name:ident, $max:expr) => {
        $(#[$m])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Parse: 1..=max bytes of printable ASCII without spaces.
            pub fn parse(s: &str) -> Option<Self> {
                Self::valid(s).then(|| $name(s.to_owned()))
            }
            /// Whether `s` would parse (without making the id).
            pub fn valid(s: &str) -> bool {
                !s.is_empty() && s.len() <= $max && s.bytes().all(|b| b.is_ascii_graphic())
            }
            /// The string.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        // Maps keyed by the id can be searched with a `&str` borrowed from a frame.
        // Sound: the derived `Hash`, `Eq` and `Ord` are the inner `String`'s, which
        // agree with `str`'s.
        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                $name::parse(&s).ok_or_else(|| serde::de::Error::custom(concat!("invalid ", stringify!($name))))
            }
        }
    };
}

id_type!(
    /// A user, as named by the token's `sub`.
    UserId, 128
);
id_type!(
    /// A client-chosen device id (stable per installation).
    DeviceId, 128
);
id_type!(
    /// A client-generated call id (a UUID in practice).
    CallId, 64
);
id_type!(
    /// A server-issued session id.
    SessionId, 64
);

/// Audio-only or video call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Media {
    /// Audio only.
    Audio,
    /// Audio and video.
    Video,
}

/// Who delivers a device's pushes (`device.update`'s `push.provider`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PushProvider {
    /// Apple's VoIP pushes (PushKit), which wake an iOS app into CallKit.
    #[serde(rename = "apns-voip")]
    ApnsVoip,
    /// Firebase Cloud Messaging, high priority.
    #[serde(rename = "fcm")]
    Fcm,
    /// The Web Push protocol (a browser's push subscription).
    #[serde(rename = "webpush")]
    WebPush,
    /// Anything the app's own push service understands.
    #[serde(rename = "custom")]
    Custom,
}

/// Where a device's pushes go: opaque to the server, handed to the webhook receiver.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushTarget {
    /// Who delivers it.
    pub provider: PushProvider,
    /// The provider's token for this device (at most [`MAX_PUSH_TOKEN`] bytes).
    pub token: String,
}

/// Longest push token accepted (a Web Push subscription's JSON fits).
pub const MAX_PUSH_TOKEN: usize = 4096;

/// Whether the app is in front (`device.update`'s `state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AppState {
    /// In front: its socket is trusted to ring.
    Foreground,
    /// In the background: the OS may suspend it any moment, so its rings are pushed too.
    Background,
}

/// `Some(None)` for an explicit `null`, `None` (by `default`) for a missing field.
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// A party's side of a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The user who invited.
    Caller,
    /// The user who was invited.
    Callee,
}

impl Role {
    /// The other side.
    pub fn other(self) -> Role {
        match self {
            Role::Caller => Role::Callee,
            Role::Callee => Role::Caller,
        }
    }
}

/// Why a client hangs up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HangupReason {
    /// The person hung up.
    User,
    /// ICE never connected (or failed and could not be restarted).
    IceFailed,
    /// Media could not be set up.
    MediaFailed,
}

/// Why a call ended, as told to the parties.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// A party hung up.
    Hangup,
    /// The caller cancelled before an answer.
    Cancelled,
    /// The callee rejected.
    Rejected,
    /// The callee is in another connected call.
    Busy,
    /// No answer within the ring timeout.
    Timeout,
    /// No device of the callee came online within the ring timeout.
    Unreachable,
    /// Another device of the callee answered.
    AnsweredElsewhere,
    /// Two crossing invites: this one lost.
    Glare,
    /// The other side's session expired.
    Failed,
    /// A party could not open its camera or microphone (its hang-up said
    /// `media_failed`), whether the call was ringing or answered.
    MediaFailed,
}

impl EndReason {
    /// Metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Hangup => "hangup",
            EndReason::Cancelled => "cancelled",
            EndReason::Rejected => "rejected",
            EndReason::Busy => "busy",
            EndReason::Timeout => "timeout",
            EndReason::Unreachable => "unreachable",
            EndReason::AnsweredElsewhere => "answered_elsewhere",
            EndReason::Glare => "glare",
            EndReason::Failed => "failed",
            EndReason::MediaFailed => "media_failed",
        }
    }
}

/// Error codes of `{"type":"error"}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not valid JSON, or a field missing or of the wrong type.
    BadRequest,
    /// Frame over 64 KiB.
    TooLarge,
    /// Unknown `type`.
    UnknownType,
    /// No such live call.
    UnknownCall,
    /// The sender is not a party allowed to do this in this call.
    NotParticipant,
    /// Too many frames, or too many live calls.
    RateLimited,
    /// A jump in `seq` (closes with 4002).
    SeqGap,
    /// Bad or expired token (closes with 4003).
    Unauthorized,
    /// A caller's signal while the call rings, past what the call (or the caller's
    /// ringing calls together) may hold for callee devices that come later. The signal
    /// is not relayed; what is held already stays held.
    HeldFull,
    /// A new session (hello) for a user who has as many sessions as one user may
    /// (closes with 4009).
    TooManyDevices,
    /// A new session on a server that is draining for a restart (closes with 1012):
    /// connect again, to another node where there is one.
    Draining,
}

impl ErrorCode {
    /// Metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::UnknownCall => "unknown_call",
            ErrorCode::NotParticipant => "not_participant",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::SeqGap => "seq_gap",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::HeldFull => "held_full",
            ErrorCode::TooManyDevices => "too_many_devices",
            ErrorCode::Draining => "draining",
        }
    }
}

/// WebSocket close codes.
pub mod close {
    /// The first frame was not a valid hello.
    pub const PROTOCOL: u16 = 4000;
    /// A newer connection took this session over.
    pub const REPLACED: u16 = 4001;
    /// A jump in seq.
    pub const SEQ_GAP: u16 = 4002;
    /// Bad or expired token.
    pub const UNAUTHORIZED: u16 = 4003;
    /// No hello within 10 s, or no frame within three heartbeats.
    pub const TIMEOUT: u16 = 4008;
    /// The user has as many sessions (devices) as one user may.
    pub const TOO_MANY_DEVICES: u16 = 4009;
    /// The server is draining for a restart or an upgrade (RFC 6455's registered
    /// "Service Restart"): a new session is refused with it, and a session with no live
    /// call is closed with it. Reconnect at once: a load balancer that reads `/readyz`
    /// sends the new socket to another node.
    pub const SERVICE_RESTART: u16 = 1012;
    /// With several nodes: the node could not pass the frame on (its store, Redis, is
    /// unreachable). RFC 6455's registered "Try Again Later": resume after a moment,
    /// here or on another node, and send again what the server has not acknowledged.
    pub const TRY_AGAIN_LATER: u16 = 1013;
}

/// Most characters of client input an `error` frame echoes (a `type`, a key).
pub const MAX_ECHO: usize = 64;

/// Most characters of an `error` frame's message (which may quote client input, as
/// serde's messages do).
pub const MAX_MESSAGE: usize = 256;

/// `s` cut to at most `max` characters, with `…` when cut: client input echoed in an
/// error frame costs the server no more than this, whatever the client sent.
pub fn clip(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    match s.char_indices().nth(max) {
        None => std::borrow::Cow::Borrowed(s),
        Some((end, _)) => std::borrow::Cow::Owned(format!("{}…", &s[..end])),
    }
}

/// `resume` in a hello.
#[derive(Clone, Debug, Deserialize)]
pub struct Resume {
    /// The session to resume.
    pub session: SessionId,
    /// Highest server seq the client has processed.
    pub last_seq: u64,
}

/// The first client frame.
#[derive(Clone, Debug, Deserialize)]
pub struct Hello {
    /// JWT (or `dev:<user>` in dev mode).
    pub token: String,
    /// This installation's device id.
    pub device: DeviceId,
    /// Resume a previous session.
    #[serde(default)]
    pub resume: Option<Resume>,
}

/// An ICE server as RTCPeerConnection takes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceServer {
    /// `stun:`/`turn:`/`turns:` URIs.
    pub urls: Vec<String>,
    /// TURN username.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// TURN password.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// Client → server frames that carry a seq.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "type")]
pub enum ClientFrame {
    /// Start a call; the offer rides in it.
    #[serde(rename = "call.invite")]
    Invite {
        /// Call id.
        call: CallId,
        /// Callee.
        to: UserId,
        /// Audio or video.
        media: Media,
        /// SDP offer.
        sdp: String,
        /// The app's own data about the call (a JSON object, opaque to the server, at
        /// most [`MAX_META`] bytes serialized), delivered with `call.incoming`.
        #[serde(default)]
        meta: Option<serde_json::Map<String, Value>>,
    },
    /// Answer.
    #[serde(rename = "call.accept")]
    Accept {
        /// Call id.
        call: CallId,
        /// SDP answer.
        sdp: String,
    },
    /// Decline (callee, before answering).
    #[serde(rename = "call.reject")]
    Reject {
        /// Call id.
        call: CallId,
    },
    /// Withdraw (caller, before an answer).
    #[serde(rename = "call.cancel")]
    Cancel {
        /// Call id.
        call: CallId,
    },
    /// End the call.
    #[serde(rename = "call.hangup")]
    Hangup {
        /// Call id.
        call: CallId,
        /// Why.
        #[serde(default)]
        reason: Option<HangupReason>,
    },
    /// Trickled candidate, end-of-candidates, or renegotiation SDP.
    ///
    /// Parsed by [`ClientFrame::parse`] only: raw JSON cannot pass through serde's
    /// buffering of internally tagged enums.
    #[serde(rename = "call.signal", skip_deserializing)]
    Signal {
        /// Call id.
        call: CallId,
        /// The payload as sent, validated by [`validate_signal`].
        data: Box<RawValue>,
    },
    /// ICE connected: the selected pair.
    #[serde(rename = "call.connected")]
    Connected {
        /// Call id.
        call: CallId,
        /// Local candidate type.
        local: String,
        /// Remote candidate type.
        remote: String,
        /// udp/tcp/tls.
        #[serde(default)]
        protocol: Option<String>,
        /// Milliseconds from the SDK's point of view.
        #[serde(default)]
        ms: Option<u64>,
    },
    /// Re-register a call whose media still flows after the server lost it (a restart):
    /// see docs/protocol.md, "Calls that outlive the server".
    #[serde(rename = "call.restore")]
    Restore {
        /// Call id.
        call: CallId,
        /// The sender's side.
        role: Role,
        /// The other user.
        peer: UserId,
        /// The other user's device in the call.
        peer_device: DeviceId,
        /// Audio or video.
        media: Media,
    },
    /// How to reach this device when its app sleeps, and whether it is in front; kept
    /// with the device across sessions.
    #[serde(rename = "device.update")]
    DeviceUpdate {
        /// The push target; `null` removes it; absent leaves it as it was.
        #[serde(default, deserialize_with = "present")]
        push: Option<Option<PushTarget>>,
        /// Foreground or background; absent leaves it as it was.
        #[serde(default)]
        state: Option<AppState>,
    },
    /// One side's summary of a call that ended, for the server's quality histograms.
    #[serde(rename = "call.report")]
    Report {
        /// Call id.
        call: CallId,
        /// From connected to the end; 0 if it never connected.
        duration_ms: u64,
        /// Mean round-trip time over the call's quality intervals, if any was measured.
        #[serde(default)]
        rtt_ms: Option<f64>,
        /// Mean audio loss (a fraction, 0 to 1) over the call's quality intervals.
        #[serde(default)]
        loss: Option<f64>,
        /// ICE restarts in the call.
        #[serde(default)]
        restarts: u32,
    },
}

/// The envelope of every client frame after `hello`: read first, borrowing from the
/// text, to route the frame (or refuse it by its seq) before its body is parsed.
pub use crate::scan::Envelope;

impl<'a> Envelope<'a> {
    /// Read the envelope of `text`: the hand scanner for the usual shape, serde for the
    /// rest. `None` on anything unusual (not an object, a non-string type, a
    /// non-integer seq, a duplicate key in any object); the hub then takes its slower
    /// path, which names the exact fault.
    pub fn parse(text: &'a str) -> Option<Envelope<'a>> {
        crate::scan::envelope(text).or_else(|| {
            crate::keys::check(text)
                .ok()
                .and_then(|()| crate::scan::serde_envelope(text))
        })
    }
}

impl ClientFrame {
    /// Parse a sequenced frame whose envelope says `typ`. The caller has refused a
    /// text with a duplicate key ([`crate::keys::check`]): serde's derive refuses a
    /// duplicate of a field it knows, but not of one it ignores.
    pub fn parse(typ: &str, text: &str) -> Result<ClientFrame, serde_json::Error> {
        if typ == "call.signal" {
            #[derive(Deserialize)]
            struct Signal {
                call: CallId,
                data: Box<RawValue>,
            }
            let s: Signal = serde_json::from_str(text)?;
            return Ok(ClientFrame::Signal {
                call: s.call,
                data: s.data,
            });
        }
        serde_json::from_str(text)
    }

    /// The call the frame is about (none for `device.update`).
    pub fn call(&self) -> Option<&CallId> {
        Some(match self {
            ClientFrame::Invite { call, .. }
            | ClientFrame::Accept { call, .. }
            | ClientFrame::Reject { call }
            | ClientFrame::Cancel { call }
            | ClientFrame::Hangup { call, .. }
            | ClientFrame::Signal { call, .. }
            | ClientFrame::Connected { call, .. }
            | ClientFrame::Restore { call, .. }
            | ClientFrame::Report { call, .. } => call,
            ClientFrame::DeviceUpdate { .. } => return None,
        })
    }
}

/// Known client frame types (for telling `unknown_type` from `bad_request`).
pub const CLIENT_TYPES: &[&str] = &[
    "call.invite",
    "call.accept",
    "call.reject",
    "call.cancel",
    "call.hangup",
    "call.signal",
    "call.connected",
    "call.restore",
    "call.report",
    "device.update",
];

/// `call.signal` data: exactly one of a candidate, end-of-candidates, or an SDP.
///
/// `data` is the raw JSON as sent. A trickled candidate (nearly every signal) is checked
/// by the hand scanner (or serde's borrowed parse of just the fields that matter);
/// anything else goes through a `Value`, which also gives the precise complaint.
pub fn validate_signal(data: &str) -> Result<SignalKind, &'static str> {
    if let Some(c) = crate::scan::candidate(data) {
        return Ok(SignalKind::Candidate(candidate_type(c)));
    }
    if let Some(c) = crate::scan::serde_candidate(data) {
        return Ok(SignalKind::Candidate(candidate_type(&c)));
    }
    let v: Value = serde_json::from_str(data).map_err(|_| "data must be JSON")?;
    validate_signal_value(&v)
}

fn validate_signal_value(data: &Value) -> Result<SignalKind, &'static str> {
    let obj = data.as_object().ok_or("data must be an object")?;
    if obj.len() != 1 {
        return Err("data must have exactly one of candidate, end_of_candidates, sdp, media, restart_request");
    }
    if let Some(c) = obj.get("candidate") {
        let cand = c
            .get("candidate")
            .and_then(Value::as_str)
            .ok_or("candidate.candidate must be a string")?;
        return Ok(SignalKind::Candidate(candidate_type(cand)));
    }
    if obj.get("end_of_candidates") == Some(&Value::Bool(true)) {
        return Ok(SignalKind::EndOfCandidates);
    }
    if obj.get("restart_request") == Some(&Value::Bool(true)) {
        return Ok(SignalKind::RestartRequest);
    }
    if let Some(sdp) = obj.get("sdp") {
        let t = sdp
            .get("type")
            .and_then(Value::as_str)
            .ok_or("sdp.type must be a string")?;
        sdp.get("sdp")
            .and_then(Value::as_str)
            .ok_or("sdp.sdp must be a string")?;
        if !["offer", "answer", "pranswer", "rollback"].contains(&t) {
            return Err("sdp.type must be offer, answer, pranswer or rollback");
        }
        return Ok(SignalKind::Sdp);
    }
    if let Some(m) = obj.get("media") {
        let m = m.as_object().ok_or("media must be an object")?;
        for key in ["audio", "video"] {
            if !m.get(key).is_some_and(Value::is_boolean) {
                return Err("media.audio and media.video must be booleans");
            }
        }
        for (key, value) in m {
            if !["audio", "video", "screen"].contains(&key.as_str()) {
                return Err("media may hold only audio, video and screen");
            }
            if !value.is_boolean() {
                return Err("media.screen must be a boolean");
            }
        }
        return Ok(SignalKind::Media);
    }
    Err("data must have exactly one of candidate, end_of_candidates, sdp, media, restart_request")
}

/// What a signal carries, for logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignalKind {
    /// A candidate of this type (host, srflx, prflx, relay, or unknown).
    Candidate(&'static str),
    /// End of candidates.
    EndOfCandidates,
    /// Renegotiation / ICE restart SDP.
    Sdp,
    /// The sender's media state (microphone, camera, screen share).
    Media,
    /// The callee's media stalled: it asks the caller, who alone restarts ICE, to restart.
    RestartRequest,
}

/// The `typ` of an SDP candidate line.
pub fn candidate_type(candidate: &str) -> &'static str {
    // An SDP line is split by SP (RFC 8839 5.1); the ASCII split costs a quarter of
    // the Unicode one, on every relayed candidate.
    let mut it = candidate.split_ascii_whitespace();
    while let Some(w) = it.next() {
        if w == "typ" {
            return match it.next() {
                Some("host") => "host",
                Some("srflx") => "srflx",
                Some("prflx") => "prflx",
                Some("relay") => "relay",
                _ => "unknown",
            };
        }
    }
    if candidate.is_empty() {
        "end"
    } else {
        "unknown"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ids_are_parsed_not_trusted() {
        assert!(UserId::parse("alice").is_some());
        assert!(UserId::parse("").is_none());
        assert!(UserId::parse("a b").is_none());
        assert!(UserId::parse(&"x".repeat(129)).is_none());
        assert!(serde_json::from_value::<CallId>(json!("has space")).is_err());
    }

    #[test]
    fn client_frames_parse() {
        let f: ClientFrame = serde_json::from_value(
            json!({"type":"call.invite","seq":1,"call":"c1","to":"bob","media":"video","sdp":"v=0"}),
        )
        .unwrap();
        assert!(matches!(
            f,
            ClientFrame::Invite {
                media: Media::Video,
                ..
            }
        ));
        let f: ClientFrame = serde_json::from_value(json!({"type":"call.hangup","seq":2,"call":"c1"})).unwrap();
        assert!(matches!(f, ClientFrame::Hangup { reason: None, .. }));
        assert!(serde_json::from_value::<ClientFrame>(json!({"type":"call.invite","call":"c1"})).is_err());
    }

    fn raw(v: Value) -> &'static str {
        v.to_string().leak()
    }

    #[test]
    fn signal_frames_keep_their_data_verbatim() {
        let text = r#"{"type":"call.signal","seq":3,"call":"c1","data":{"candidate":{"candidate":"candidate:1 1 udp 1 192.0.2.1 5000 typ host","sdpMid":"0"}}}"#;
        let env = Envelope::parse(text).unwrap();
        assert_eq!((env.typ.as_deref(), env.seq), (Some("call.signal"), Some(3)));
        assert!(
            matches!(env.typ, Some(std::borrow::Cow::Borrowed(_))),
            "type is borrowed from the text"
        );
        let ClientFrame::Signal { call, data } = ClientFrame::parse("call.signal", text).unwrap() else {
            panic!("not a signal")
        };
        assert_eq!(call.as_str(), "c1");
        assert_eq!(
            data.get(),
            r#"{"candidate":{"candidate":"candidate:1 1 udp 1 192.0.2.1 5000 typ host","sdpMid":"0"}}"#
        );
        assert_eq!(validate_signal(data.get()), Ok(SignalKind::Candidate("host")));
        // Odd envelopes are refused here, for the hub's precise slow path.
        for odd in [
            r#"{"type":1,"seq":1}"#,
            r#"{"type":"x","seq":"1"}"#,
            r#"[1]"#,
            r#"{"seq":1,"seq":2}"#,
        ] {
            assert!(Envelope::parse(odd).is_none(), "{odd}");
        }
    }

    #[test]
    fn signal_data_validation() {
        let c = raw(
            json!({"candidate":{"candidate":"candidate:1 1 udp 2122260223 203.0.113.5 5000 typ srflx raddr 0.0.0.0 rport 0","sdpMid":"0","sdpMLineIndex":0,"usernameFragment":"u"}}),
        );
        assert_eq!(validate_signal(c), Ok(SignalKind::Candidate("srflx")));
        // A candidate with a second key is not "exactly one".
        assert!(validate_signal(raw(json!({"candidate":{"candidate":"a"},"sdp":{}}))).is_err());
        assert!(validate_signal(raw(json!({"candidate":{"candidate":5}}))).is_err());
        assert_eq!(
            validate_signal(raw(json!({"end_of_candidates":true}))),
            Ok(SignalKind::EndOfCandidates)
        );
        assert_eq!(
            validate_signal(raw(json!({"sdp":{"type":"offer","sdp":"v=0"}}))),
            Ok(SignalKind::Sdp)
        );
        assert_eq!(
            validate_signal(raw(json!({"restart_request":true}))),
            Ok(SignalKind::RestartRequest)
        );
        assert!(validate_signal(raw(json!({"restart_request":1}))).is_err());
        assert!(validate_signal(raw(json!({"sdp":{"type":"bogus","sdp":"v=0"}}))).is_err());
        assert!(validate_signal(raw(json!({"candidate":{}, "sdp":{}}))).is_err());
        assert!(validate_signal(raw(json!("x"))).is_err());
        assert_eq!(
            validate_signal(raw(json!({"media":{"audio":false,"video":true,"screen":false}}))),
            Ok(SignalKind::Media)
        );
        assert_eq!(
            validate_signal(raw(json!({"media":{"audio":true,"video":true}}))),
            Ok(SignalKind::Media)
        );
        for bad in [
            json!({"media":true}),
            json!({"media":{"audio":true}}),
            json!({"media":{"audio":"no","video":true}}),
            json!({"media":{"audio":true,"video":true,"screen":1}}),
            json!({"media":{"audio":true,"video":true,"volume":3}}),
            json!({"media":{"audio":true,"video":true},"end_of_candidates":true}),
        ] {
            assert!(validate_signal(raw(bad.clone())).is_err(), "{bad}");
        }
    }
}
