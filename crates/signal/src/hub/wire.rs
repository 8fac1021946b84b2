//! The text of server frames written by hand (and the `error` frame), with the string
//! helpers they share.

use std::borrow::Cow;
use std::sync::Arc;

use serde_json::{json, Map, Value};

use crate::protocol::*;

/// An `error` frame; `reference` is the seq of the refused frame. The message is
/// clipped to [`MAX_MESSAGE`] characters: it may quote client input.
pub fn error_value(code: ErrorCode, message: &str, reference: Option<u64>) -> Value {
    let mut m = Map::new();
    m.insert("type".into(), "error".into());
    m.insert("code".into(), json!(code));
    m.insert("message".into(), clip(message, MAX_MESSAGE).into());
    if let Some(r) = reference {
        m.insert("ref".into(), r.into());
    }
    Value::Object(m)
}

/// A relayed `call.signal` frame up to its seq: the same bytes for every recipient,
/// written once per frame. serde would write the same (the field order is the
/// protocol's); by hand it is a few copies, where serde cost a tenth of a relayed
/// frame's instructions.
pub(super) fn signal_head(call: &CallId, from: &UserId, device: &DeviceId, data: &str) -> String {
    // 80 for the names, 48 for the seq and ack that `signal_text` adds.
    let mut h =
        String::with_capacity(128 + call.as_str().len() + from.as_str().len() + device.as_str().len() + data.len());
    h.push_str(r#"{"type":"call.signal","call":"#);
    json_str(&mut h, call.as_str());
    h.push_str(r#","from":"#);
    json_str(&mut h, from.as_str());
    h.push_str(r#","from_device":"#);
    json_str(&mut h, device.as_str());
    h.push_str(r#","data":"#);
    h.push_str(data);
    h
}

/// A relayed `call.signal` frame: its head ([`signal_head`], which has room for the
/// rest), seq and ack.
pub(super) fn signal_text(head: String, seq: u64, ack: Option<u64>) -> String {
    let mut t = head;
    let mut n = itoa::Buffer::new();
    t.push_str(r#","seq":"#);
    t.push_str(n.format(seq));
    if let Some(a) = ack {
        t.push_str(r#","ack":"#);
        t.push_str(n.format(a));
    }
    t.push('}');
    t
}

/// The string a raw JSON value holds, borrowed when it has no escapes; `None` if it
/// is not a string (or not a valid one).
///
/// The unescaped case by hand: `serde_json::from_str::<Text>` gives the same answer for
/// ~180 more instructions per relayed frame (callgrind, 1.2% of the socket task's work).
pub(super) fn json_string(r: &str) -> Option<Cow<'_, str>> {
    match r.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        // A raw value is whole JSON, so a string without a backslash ends at its only
        // other quote and holds no control characters.
        Some(inner) if !inner.contains('\\') => Some(Cow::Borrowed(inner)),
        _ => serde_json::from_str::<String>(r).ok().map(Cow::Owned),
    }
}

/// `s` as a JSON string. Ids are printable ASCII, so only a quote or a backslash needs
/// escaping, and serde does that rare case.
pub(super) fn json_str(out: &mut String, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else {
        out.push_str(&serde_json::to_string(s).expect("a string always serializes"));
    }
}

/// `{"type":"ack","seq":N}`, written on the stack: one allocation, the shared text's.
pub(super) fn ack_text(seq: u64) -> Arc<str> {
    let mut n = itoa::Buffer::new();
    let parts: [&str; 3] = [r#"{"type":"ack","seq":"#, n.format(seq), "}"];
    let mut buf = [0u8; 48];
    let mut len = 0;
    for p in parts {
        buf[len..len + p.len()].copy_from_slice(p.as_bytes());
        len += p.len();
    }
    Arc::from(std::str::from_utf8(&buf[..len]).expect("ASCII"))
}

pub(super) fn error_json(code: ErrorCode, message: &str, reference: Option<u64>) -> String {
    error_value(code, message, reference).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    /// What serde wrote for a relayed signal before the frame was written by hand.
    fn serde_signal(
        call: &CallId,
        from: &UserId,
        device: &DeviceId,
        data: &RawValue,
        seq: u64,
        ack: Option<u64>,
    ) -> String {
        #[derive(serde::Serialize)]
        struct SignalOut<'a> {
            #[serde(rename = "type")]
            typ: &'static str,
            call: &'a CallId,
            from: &'a UserId,
            from_device: &'a DeviceId,
            data: &'a RawValue,
            seq: u64,
            #[serde(skip_serializing_if = "Option::is_none")]
            ack: Option<u64>,
        }
        let out = SignalOut {
            typ: "call.signal",
            call,
            from,
            from_device: device,
            data,
            seq,
            ack,
        };
        serde_json::to_string(&out).unwrap()
    }

    #[test]
    fn ack_frames_are_written_right() {
        for n in [0, 7, u64::MAX] {
            assert_eq!(&*ack_text(n), format!(r#"{{"type":"ack","seq":{n}}}"#));
        }
    }

    #[test]
    fn relayed_signal_is_the_bytes_serde_wrote() {
        let data = RawValue::from_string(
            r#"{"candidate":{"candidate":"candidate:1 1 udp 1 192.0.2.1 9 typ host","sdpMid":"0"}}"#.into(),
        )
        .unwrap();
        let (call, user, dev) = (
            CallId::parse("c-1").unwrap(),
            UserId::parse("alice").unwrap(),
            DeviceId::parse("d1").unwrap(),
        );
        let text = signal_text(signal_head(&call, &user, &dev, data.get()), 7, Some(3));
        assert_eq!(
            text,
            r#"{"type":"call.signal","call":"c-1","from":"alice","from_device":"d1","data":{"candidate":{"candidate":"candidate:1 1 udp 1 192.0.2.1 9 typ host","sdpMid":"0"}},"seq":7,"ack":3}"#
        );
        // Ids are printable ASCII, which includes the two characters JSON escapes.
        for (c, u, d) in [(r#"a"b"#, r"back\slash", r#"\""#), ("x", "~!{}", "0")] {
            let (call, user, dev) = (
                CallId::parse(c).unwrap(),
                UserId::parse(u).unwrap(),
                DeviceId::parse(d).unwrap(),
            );
            for (seq, ack) in [(1, None), (u64::MAX, Some(u64::MAX)), (10, Some(0))] {
                assert_eq!(
                    signal_text(signal_head(&call, &user, &dev, data.get()), seq, ack),
                    serde_signal(&call, &user, &dev, &data, seq, ack),
                    "{c} {u} {d} {seq} {ack:?}"
                );
            }
        }
    }
}
