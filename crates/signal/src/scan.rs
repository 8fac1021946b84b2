//! A strict JSON scanner for the two shapes nearly every client frame has: the
//! envelope (`type`, `seq`, `ack`, `call`, `data`) and a trickled candidate's `data`.
//!
//! It answers only when it is sure. Anything it does not fully understand (an escape in
//! a key or in a field it returns, a `\u` escape anywhere, a duplicate key in any object,
//! a `null` where a value was expected, a long number, deep nesting, an object of more
//! than 16 keys) gives `None`, and the caller takes serde's path, which first refuses a
//! duplicate key anywhere ([`crate::keys::check`]) and then accepts or refuses exactly as
//! before and names the fault. Whatever it accepts, serde accepts with the same values
//! and has no duplicate key: a property test and the `frame_scan` fuzz target check that
//! against serde on every input.
//!
//! Why by hand: serde's derive for the envelope, with two `RawValue`s, then a second
//! parse of `data` to validate it, was 8,300 of the server's 13,800 user instructions
//! per relayed frame; this scanner reads both in one pass, 3,900 of 11,100 (callgrind,
//! 40 sessions at 2,000 frames/s).

use std::borrow::Cow;

/// Nesting the scanner follows before it leaves a text to serde (whose own limit is 128).
const MAX_DEPTH: usize = 32;

/// Keys of one object the scanner follows (an envelope has five, a candidate four);
/// more are left to serde.
const MAX_KEYS: usize = 16;

/// Digits of a number the scanner passes over; longer ones are left to serde.
const MAX_NUMBER: usize = 24;

/// The envelope of a client frame (the fields the hub routes by), borrowed from the text.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// `type`.
    pub typ: Option<Cow<'a, str>>,
    /// `seq`.
    pub seq: Option<u64>,
    /// A cumulative acknowledgement riding on a sequenced frame.
    pub ack: Option<u64>,
    /// `call`, as it is in the text (any JSON value).
    pub call: Option<&'a str>,
    /// `data`, as it is in the text (any JSON value).
    pub data: Option<&'a str>,
    /// When `data` is a trickled candidate's usual shape, its candidate string (what
    /// [`candidate`] would say of `data`), found in the same pass. `None` says nothing.
    pub candidate: Option<&'a str>,
}

/// The envelope of `text`, when it is the usual shape; `None` means "ask serde".
pub fn envelope(text: &str) -> Option<Envelope<'_>> {
    let mut c = Cursor::new(text);
    let mut e = Envelope::default();
    let mut seen = 0u8;
    c.ws();
    c.object(MAX_DEPTH, |c, key| {
        let bit = match key {
            "type" => 1,
            "seq" => 2,
            "ack" => 4,
            "call" => 8,
            "data" => 16,
            // Unknown fields are ignored, as serde's derive does, but must be JSON.
            _ => return c.value(MAX_DEPTH - 1),
        };
        if seen & bit != 0 {
            // serde refuses a duplicate field.
            return None;
        }
        seen |= bit;
        match bit {
            1 => e.typ = Some(Cow::Borrowed(c.plain_string()?)),
            2 => e.seq = Some(c.u64()?),
            4 => e.ack = Some(c.u64()?),
            _ => {
                let start = c.i;
                if c.peek()? == b'n' {
                    // `null` is "absent" to serde's Option: rare, so its question.
                    return None;
                }
                if bit == 16 {
                    // Nearly always a candidate: read it as one, or else as any value.
                    e.candidate = c.candidate_object(MAX_DEPTH - 1);
                    if e.candidate.is_none() {
                        c.i = start;
                        c.value(MAX_DEPTH - 1)?;
                    }
                    e.data = Some(&text[start..c.i]);
                } else {
                    c.value(MAX_DEPTH - 1)?;
                    e.call = Some(&text[start..c.i]);
                }
            }
        }
        Some(())
    })?;
    c.end()?;
    Some(e)
}

/// The candidate string of `data` shaped `{"candidate":{"candidate":"…", …}}` (the
/// inner object may hold other fields, the outer one nothing else); `None` means
/// "ask serde".
pub fn candidate(data: &str) -> Option<&str> {
    let mut c = Cursor::new(data);
    c.ws();
    let s = c.candidate_object(MAX_DEPTH)?;
    c.end()?;
    Some(s)
}

/// Differential fuzzing entry point (`fuzz/fuzz_targets/frame_scan.rs` and the corpus
/// replay test): whatever the scanner accepts, serde must accept with the same values.
///
/// # Panics
/// When the scanner and serde disagree, which is the bug this looks for.
pub fn fuzz(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(e) = envelope(text) {
        assert_eq!(
            crate::keys::check(text),
            Ok(()),
            "envelope accepted a duplicate key in {text:?}"
        );
        if let Some(c) = e.candidate {
            let data = e.data.expect("a candidate comes from data");
            assert_eq!(Some(c), serde_candidate(data).as_deref(), "candidate in {text:?}");
        }
        let e = Envelope { candidate: None, ..e };
        assert_eq!(Some(e), serde_envelope(text), "envelope of {text:?}");
    }
    if let Some(s) = candidate(text) {
        assert_eq!(
            crate::keys::check(text),
            Ok(()),
            "candidate accepted a duplicate key in {text:?}"
        );
        assert_eq!(Some(s), serde_candidate(text).as_deref(), "candidate of {text:?}");
    }
}

/// serde's reading of an envelope: the reference the scanner must agree with, and the
/// path taken when it does not answer.
pub(crate) fn serde_envelope(text: &str) -> Option<Envelope<'_>> {
    use serde::Deserialize;
    use serde_json::value::RawValue;
    #[derive(Deserialize)]
    struct Raw<'a> {
        #[serde(rename = "type", borrow, default)]
        typ: Option<Text<'a>>,
        #[serde(default)]
        seq: Option<u64>,
        #[serde(default)]
        ack: Option<u64>,
        #[serde(borrow, default)]
        call: Option<&'a RawValue>,
        #[serde(borrow, default)]
        data: Option<&'a RawValue>,
    }
    // serde borrows a `Cow` only when it is a field's whole type; inside an `Option` it
    // would always copy.
    #[derive(Deserialize)]
    struct Text<'a>(#[serde(borrow)] Cow<'a, str>);
    let r: Raw<'_> = serde_json::from_str(text).ok()?;
    Some(Envelope {
        typ: r.typ.map(|t| t.0),
        seq: r.seq,
        ack: r.ack,
        call: r.call.map(RawValue::get),
        data: r.data.map(RawValue::get),
        candidate: None,
    })
}

/// serde's reading of a candidate's data: the reference for [`candidate`], and the
/// path taken when it does not answer.
pub(crate) fn serde_candidate(data: &str) -> Option<Cow<'_, str>> {
    use serde::Deserialize;
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct CandidateOnly<'a> {
        #[serde(borrow)]
        candidate: Inner<'a>,
    }
    #[derive(Deserialize)]
    struct Inner<'a> {
        #[serde(borrow)]
        candidate: Cow<'a, str>,
    }
    serde_json::from_str::<CandidateOnly<'_>>(data)
        .ok()
        .map(|c| c.candidate.candidate)
}

/// A position in the text being scanned.
struct Cursor<'a> {
    s: &'a str,
    b: &'a [u8],
    i: usize,
}

impl<'a> Cursor<'a> {
    fn new(s: &'a str) -> Self {
        Cursor {
            s,
            b: s.as_bytes(),
            i: 0,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        (self.peek()? == c).then(|| self.i += 1)
    }

    /// JSON whitespace (RFC 8259 section 2): space, tab, line feed, carriage return.
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    /// Only whitespace is left.
    fn end(&mut self) -> Option<()> {
        self.ws();
        (self.i == self.b.len()).then_some(())
    }

    /// `{"candidate":{"candidate":"…", …}}` at the cursor: the candidate string, which
    /// holds no escape; the outer object holds nothing else (serde's
    /// `deny_unknown_fields`), the inner one anything.
    fn candidate_object(&mut self, depth: usize) -> Option<&'a str> {
        let mut outer = None;
        self.object(depth, |c, key| {
            if key != "candidate" || outer.is_some() {
                return None;
            }
            let mut inner = None;
            c.object(depth - 1, |c, key| {
                if key != "candidate" {
                    return c.value(depth - 2);
                }
                if inner.is_some() {
                    return None;
                }
                inner = Some(c.plain_string()?);
                Some(())
            })?;
            outer = Some(inner?);
            Some(())
        })?;
        outer
    }

    /// An object, calling `field` with the cursor on each value (after its key and the
    /// colon); `field` must consume the value.
    fn object(&mut self, depth: usize, mut field: impl FnMut(&mut Self, &'a str) -> Option<()>) -> Option<()> {
        if depth == 0 {
            return None;
        }
        self.eat(b'{')?;
        self.ws();
        if self.eat(b'}').is_some() {
            return Some(());
        }
        // The keys so far, to refuse a duplicate (`crate::keys`): on the stack, since
        // this runs for every relayed frame. An object with more keys than fit is not
        // the usual shape; serde's path checks it.
        let mut keys: [&str; MAX_KEYS] = [""; MAX_KEYS];
        let mut n = 0;
        loop {
            // serde matches a key after unescaping it: an escaped key is its question.
            // Unescaped, two keys are the same key exactly when their texts are equal.
            let key = self.plain_string()?;
            if n == MAX_KEYS || keys[..n].contains(&key) {
                return None;
            }
            keys[n] = key;
            n += 1;
            self.ws();
            self.eat(b':')?;
            self.ws();
            field(self, key)?;
            self.ws();
            if self.eat(b',').is_some() {
                self.ws();
                continue;
            }
            return self.eat(b'}');
        }
    }

    /// Any JSON value, passed over.
    fn value(&mut self, depth: usize) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'{' => self.object(depth, |c, _| c.value(depth - 1)),
            b'[' => {
                if depth == 0 {
                    return None;
                }
                self.i += 1;
                self.ws();
                if self.eat(b']').is_some() {
                    return Some(());
                }
                loop {
                    self.value(depth - 1)?;
                    self.ws();
                    if self.eat(b',').is_some() {
                        self.ws();
                        continue;
                    }
                    return self.eat(b']');
                }
            }
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.i + word.len();
        (self.b.get(self.i..end)? == word).then(|| self.i = end)
    }

    /// A number by RFC 8259's grammar: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
    fn number(&mut self) -> Option<()> {
        let start = self.i;
        let _ = self.eat(b'-');
        match self.peek()? {
            b'0' => self.i += 1,
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.eat(b'.').is_some() {
            self.some_digits()?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            self.some_digits()?;
        }
        (self.i - start <= MAX_NUMBER).then_some(())
    }

    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.i += 1;
        }
    }

    fn some_digits(&mut self) -> Option<()> {
        let start = self.i;
        self.digits();
        (self.i > start).then_some(())
    }

    /// A non-negative integer that surely fits a u64: no sign, no leading zero, no
    /// fraction or exponent (a `.` or `e` after it then fails the caller's delimiter
    /// check), at most 19 digits.
    fn u64(&mut self) -> Option<u64> {
        let start = self.i;
        if self.peek()? == b'0' {
            self.i += 1;
        } else {
            self.digits();
        }
        let d = &self.b[start..self.i];
        if d.is_empty() || d.len() > 19 {
            return None;
        }
        Some(d.iter().fold(0u64, |n, &b| n * 10 + u64::from(b - b'0')))
    }

    /// A string with no escape: its content, borrowed.
    fn plain_string(&mut self) -> Option<&'a str> {
        let (s, escaped) = self.string()?;
        (!escaped).then_some(s)
    }

    /// A string: its content as written, and whether it holds an escape. Refuses a
    /// control character (RFC 8259 section 7) and leaves `\u` escapes to serde, which
    /// also judges surrogates.
    fn string(&mut self) -> Option<(&'a str, bool)> {
        self.eat(b'"')?;
        let start = self.i;
        let mut escaped = false;
        loop {
            self.i = plain_run(self.b, self.i);
            match self.peek()? {
                b'"' => {
                    // Both ends sit on an ASCII quote, so on character boundaries.
                    let s = &self.s[start..self.i];
                    self.i += 1;
                    return Some((s, escaped));
                }
                b'\\' => match self.b.get(self.i + 1)? {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {
                        escaped = true;
                        self.i += 2;
                    }
                    _ => return None,
                },
                // A control character.
                _ => return None,
            }
        }
    }
}

/// The end of the run of string bytes from `i` that need no attention: the index of the
/// first quote, backslash or control character (or the end). Eight bytes at a time.
fn plain_run(b: &[u8], mut i: usize) -> usize {
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    while let Some(chunk) = b.get(i..i + 8) {
        let w = u64::from_le_bytes(chunk.try_into().expect("a slice of 8 bytes"));
        // Bytes below n flagged by (w - n) & !w & HIGH; quote and backslash as zeros
        // after an xor. A flag above the first true one may be false (the borrow), but
        // the lowest flag is always exact, and only it is used.
        let below = |x: u64, n: u8| x.wrapping_sub(ONES * u64::from(n)) & !x & HIGH;
        let hit = below(w ^ (ONES * u64::from(b'"')), 1) | below(w ^ (ONES * u64::from(b'\\')), 1) | below(w, 0x20);
        if hit != 0 {
            return i + (hit.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while let Some(&c) = b.get(i) {
        if c == b'"' || c == b'\\' || c < 0x20 {
            break;
        }
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_frames_of_a_call_take_the_fast_path() {
        let signal = r#"{"type":"call.signal","seq":3,"ack":2,"call":"c1","data":{"candidate":{"candidate":"candidate:1 1 udp 2122260223 192.0.2.1 5000 typ host","sdpMid":"0","sdpMLineIndex":0,"usernameFragment":"u"}}}"#;
        let e = envelope(signal).expect("a relayed signal is the usual shape");
        fuzz(signal.as_bytes());
        assert!(matches!(e.typ, Some(Cow::Borrowed("call.signal"))));
        assert_eq!((e.seq, e.ack, e.call), (Some(3), Some(2), Some(r#""c1""#)));
        let host = "candidate:1 1 udp 2122260223 192.0.2.1 5000 typ host";
        assert_eq!((e.candidate, candidate(e.data.unwrap())), (Some(host), Some(host)));
        for t in [
            r#"{"type":"ack","seq":7}"#,
            r#" { "type" : "ping" } "#,
            r#"{"type":"call.invite","seq":1,"call":"c","to":"bob","extra":[1,-2.5e3,true,null,{"a":[]}]}"#,
            r#"{"type":"call.signal","seq":18446744073709551,"call":"c","data":{"sdp":{"type":"offer","sdp":"v=0\r\n"}}}"#,
        ] {
            fuzz(t.as_bytes());
            let e = envelope(t).unwrap_or_else(|| panic!("{t}"));
            assert_eq!(e.candidate, None, "{t}");
        }
    }

    #[test]
    fn what_serde_refuses_or_reads_otherwise_is_left_to_serde() {
        for t in [
            // serde refuses these.
            r#"{"seq":1,"seq":2}"#,
            r#"{"type":1}"#,
            r#"{"type":"x","seq":"1"}"#,
            r#"{"seq":1.5}"#,
            r#"{"seq":-1}"#,
            r#"{"seq":01}"#,
            r#"{"a":1,}"#,
            r#"{"a":"tab	inside"}"#,
            r#"{"a":"\x"}"#,
            r#"[1]"#,
            r#"{"a":1} x"#,
            r#"{"a":tru}"#,
            // serde accepts these, but the scanner leaves them to it.
            r#"{"type":"call\u002esignal"}"#,
            r#"{"typ\u0065":"x"}"#,
            r#"{"type":"a\"b"}"#,
            r#"{"seq":null}"#,
            r#"{"data":null}"#,
            r#"{"seq":12345678901234567890}"#,
            r#"{"a":1e400000000000000000000000}"#,
            // A duplicate key anywhere (refused by the hub's `keys::check`).
            r#"{"type":"ack","x":1,"x":2}"#,
            r#"{"type":"ack","data":{"sdp":{"a":[{"b":1,"b":1}]}}}"#,
        ] {
            assert_eq!(envelope(t), None, "{t}");
        }
        // More keys in one object than the scanner follows: serde's.
        let many: Vec<String> = (0..=MAX_KEYS).map(|i| format!(r#""k{i}":{i}"#)).collect();
        let t = format!(r#"{{"type":"ack","data":{{{}}}}}"#, many.join(","));
        assert_eq!(envelope(&t), None);
        let fit = format!(r#"{{"type":"ack","data":{{{}}}}}"#, many[..MAX_KEYS].join(","));
        assert!(envelope(&fit).is_some());
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(40), "]".repeat(40));
        assert_eq!(envelope(&deep), None);
        assert!(
            serde_envelope(&deep).is_some(),
            "serde takes it: still correct, only slower"
        );
        for d in [
            r#"{"candidate":{"candidate":"a"},"sdp":{}}"#,
            r#"{"candidate":{"candidate":"a","candidate":"b"}}"#,
            r#"{"candidate":{"candidate":5}}"#,
            r#"{"candidate":{}}"#,
            r#"{"candidate":["a"]}"#,
            r#"{"candidate":{"candidate":"a\nb"}}"#,
        ] {
            assert_eq!(candidate(d), None, "{d}");
        }
    }

    #[test]
    fn plain_run_finds_the_first_byte_that_matters() {
        let mut text = vec![b'a'; 40];
        for at in 0..40 {
            for special in [b'"', b'\\', 0x00, 0x1f] {
                let mut t = text.clone();
                t[at] = special;
                // A second one later must not hide the first.
                t[39] = b'"';
                assert_eq!(plain_run(&t, 0), at, "{special:#x} at {at}");
            }
        }
        text.extend_from_slice("é€😀\x7f".as_bytes());
        assert_eq!(plain_run(&text, 0), text.len(), "bytes from 0x20 up pass");
    }

    /// JSON-ish text built from the pieces that matter to the envelope: its field names
    /// (also escaped, also twice), values of every type with the edge cases of each,
    /// whitespace, and sometimes a flaw.
    fn texty() -> impl Strategy<Value = String> {
        let key = prop::sample::select(vec![
            r#""type""#,
            r#""seq""#,
            r#""ack""#,
            r#""call""#,
            r#""data""#,
            r#""candidate""#,
            r#""sdpMid""#,
            r#""typ\u0065""#,
            r#""x""#,
            r#""""#,
        ]);
        let leaf = prop::sample::select(vec![
            r#""call.signal""#,
            r#""ack""#,
            r#""a\"b""#,
            r#""\u00e9""#,
            r#""\ud800""#,
            r#""é😀""#,
            r#""\/\b\f\n\r\t""#,
            r#""candidate:1 1 udp 1 192.0.2.1 9 typ relay""#,
            "\"ctl\u{1}\"",
            "0",
            "7",
            "-0",
            "01",
            "1.5",
            "1e3",
            "-2.5E-3",
            "18446744073709551615",
            "18446744073709551616",
            "1234567890123456789",
            "true",
            "false",
            "null",
            "nul",
            "[]",
            "{}",
            "1.",
            ".5",
        ]);
        let value = leaf.prop_map(str::to_owned).prop_recursive(4, 24, 4, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(","))),
                prop::collection::vec((key.clone(), inner), 0..4).prop_map(|v| {
                    let f: Vec<String> = v.into_iter().map(|(k, v)| format!("{k}:{v}")).collect();
                    format!("{{{}}}", f.join(","))
                }),
            ]
        });
        let ws = prop::sample::select(vec!["", " ", "\n\t", "\r "]);
        (
            prop::collection::vec((ws.clone(), value), 1..3),
            ws,
            prop::sample::select(vec!["", "", "", ",", "x", "}"]),
        )
            .prop_map(|(parts, w, flaw)| {
                let body: Vec<String> = parts.into_iter().map(|(w, v)| format!("{w}{v}")).collect();
                format!("{w}{}{w}{flaw}", body.join(""))
            })
    }

    /// Text shaped like a candidate's data, near misses included: the outer and inner
    /// keys (also escaped, also twice, also others), string values with and without
    /// escapes, and values of other types where the string goes.
    fn candidate_texty() -> impl Strategy<Value = String> {
        let key = prop::sample::select(vec![
            r#""candidate""#,
            r#""candidate""#,
            r#""sdpMid""#,
            r#""c\u0061ndidate""#,
            r#""sdp""#,
        ]);
        let leaf = prop::sample::select(vec![
            r#""candidate:1 1 udp 2122260223 192.0.2.1 5000 typ host""#,
            r#""candidate:2 1 tcp 1 198.51.100.7 9 typ srflx raddr 0.0.0.0 rport 0""#,
            r#""""#,
            r#""a\nb""#,
            r#""\u0041""#,
            "\"tab\t\"",
            "\"raw\u{7}\"",
            "0",
            "null",
            "[]",
            r#"{"candidate":"x"}"#,
        ]);
        let inner = prop::collection::vec((key.clone(), leaf.clone()), 0..4).prop_map(|v| {
            let f: Vec<String> = v.into_iter().map(|(k, v)| format!("{k}:{v}")).collect();
            format!("{{{}}}", f.join(","))
        });
        let inner = prop_oneof![4 => inner, 1 => leaf.prop_map(str::to_owned)];
        (
            prop::collection::vec((key, inner), 0..3),
            prop::sample::select(vec!["", "", "", " ", ",", "]"]),
        )
            .prop_map(|(fields, flaw)| {
                let f: Vec<String> = fields.into_iter().map(|(k, v)| format!("{k}:{v}")).collect();
                format!("{{{}}}{flaw}", f.join(","))
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]
        /// The same for candidates' data.
        #[test]
        fn the_candidate_scanner_agrees_with_serde(data in candidate_texty()) {
            fuzz(data.as_bytes());
        }

        /// Whatever the scanner accepts, serde accepts with the same values.
        #[test]
        fn the_scanner_agrees_with_serde(text in texty()) {
            fuzz(text.as_bytes());
        }

        /// Envelopes and candidates of the usual shape, reordered and padded: the scanner
        /// answers, and agrees with serde.
        #[test]
        fn usual_frames_are_answered(
            seq in any::<u64>(),
            ack in prop::option::of(0u64..1_000_000),
            cand in "[a-z0-9:. ]{1,80}",
            extra in prop::sample::select(vec!["", r#","sdpMid":"0""#, r#","usernameFragment":"u","sdpMLineIndex":1"#]),
            swap in any::<bool>(),
        ) {
            let data = format!(r#"{{"candidate":{{"candidate":"{cand}"{extra}}}}}"#);
            let ack = ack.map(|a| format!(r#","ack":{a}"#)).unwrap_or_default();
            let text = if swap {
                format!(r#"{{"data":{data},"seq":{seq}{ack},"call":"c1","type":"call.signal"}}"#)
            } else {
                format!(r#"{{"type":"call.signal","seq":{seq}{ack},"call":"c1","data":{data}}}"#)
            };
            fuzz(text.as_bytes());
            let e = envelope(&text);
            // Over 19 digits the scanner defers; below it must answer.
            prop_assert_eq!(e.is_some(), seq < 10_000_000_000_000_000_000);
            if let Some(e) = e {
                prop_assert_eq!(e.candidate, Some(cand.as_str()));
                prop_assert_eq!(e.data.and_then(candidate), Some(cand.as_str()));
            }
        }
    }
}
