//! RFC 6455 WebSocket framing, sans-IO: a [`Decoder`] that takes bytes and gives whole
//! messages, and [`encode`] for the frames we send.
//!
//! The server's socket driver reads into a buffer, hands it here and passes each text
//! message to the hub while it still lies in that buffer (unmasked in place, never
//! copied); a fragmented message is the only one reassembled. Everything the RFC says a
//! receiver MUST fail the connection on is an [`WsError`], and each error names the close
//! code to send before closing. No extensions are ever negotiated, so any RSV bit is an
//! error.
//!
//! "Need more bytes" is not an error: [`Decoder::decode`] returns 0 consumed bytes.
//! Text is checked for UTF-8 as it arrives (fragments, and the received part of an
//! unfinished frame), so that invalid text fails the connection at once.

/// Which end of the connection the decoder sits at: frames from a client MUST be
/// masked and frames from a server MUST NOT be (RFC 6455 5.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// We are the server: input comes from a client.
    Server,
    /// We are the client: input comes from a server.
    Client,
}

/// Frame opcodes we send (RFC 6455 5.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpCode {
    /// A UTF-8 text message.
    Text = 1,
    /// A binary message.
    Binary = 2,
    /// Start or answer the closing handshake.
    Close = 8,
    /// Ping; the peer answers with a pong carrying the same payload.
    Ping = 9,
    /// Pong.
    Pong = 10,
}

/// One whole message, borrowed from the input buffer (or, if it came in fragments,
/// from the decoder until its next call).
#[derive(Debug, PartialEq, Eq)]
pub enum Message<'a> {
    /// A text message, valid UTF-8.
    Text(&'a str),
    /// A binary message.
    Binary(&'a [u8]),
    /// A ping; answer it with a pong carrying the same bytes (RFC 6455 5.5.2).
    Ping(&'a [u8]),
    /// A pong.
    Pong(&'a [u8]),
    /// The peer starts or answers the closing handshake, with its status code and
    /// reason if it gave one.
    Close(Option<(u16, &'a str)>),
}

/// Why the peer's bytes are not a WebSocket stream we accept. All are the peer's fault;
/// the connection must be closed with [`WsError::close_code`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WsError {
    /// A client sent an unmasked frame (5.1: the server MUST close the connection).
    #[error("frame from the client is not masked")]
    Unmasked,
    /// A server sent a masked frame (5.1: the client MUST close the connection).
    #[error("frame from the server is masked")]
    Masked,
    /// An RSV bit is set but no extension was negotiated (5.2: MUST fail).
    #[error("reserved bits set without a negotiated extension")]
    Reserved,
    /// A reserved opcode (5.2: MUST fail).
    #[error("reserved opcode {0}")]
    Opcode(u8),
    /// A control frame that is fragmented or carries over 125 bytes (5.5).
    #[error("control frame fragmented or over 125 bytes")]
    BadControl,
    /// A continuation frame with no message to continue, or a new message before the
    /// last one's final fragment (5.4).
    #[error("message fragments out of order")]
    Fragments,
    /// A 64-bit payload length with its most significant bit set (5.2).
    #[error("64-bit payload length with its top bit set")]
    BadLength,
    /// A message over the size limit (its announced length in bytes).
    #[error("message of {0} bytes is over the limit")]
    TooLarge(u64),
    /// A text message, or a close reason, that is not UTF-8 (8.1: MUST fail).
    #[error("text is not valid UTF-8")]
    Utf8,
    /// A close frame with a 1-byte payload or a status code that may not be sent (7.4).
    #[error("malformed close frame")]
    BadClose,
}

impl WsError {
    /// The close status code to send before closing (RFC 6455 7.4.1).
    pub fn close_code(&self) -> u16 {
        match self {
            WsError::TooLarge(_) => 1009,
            WsError::Utf8 => 1007,
            _ => 1002,
        }
    }

    /// A metrics label: `too_large`, `bad_utf8` or `protocol_error`.
    pub fn label(&self) -> &'static str {
        match self {
            WsError::TooLarge(_) => "too_large",
            WsError::Utf8 => "bad_utf8",
            _ => "protocol_error",
        }
    }
}

/// Reassembles the WebSocket messages of one connection.
#[derive(Debug)]
pub struct Decoder {
    role: Role,
    max_message: usize,
    /// A message arriving in fragments: whether it is text, and its bytes so far.
    partial: Option<(bool, Vec<u8>)>,
    /// The last reassembled message handed out; cleared on the next call.
    done: Vec<u8>,
    /// The UTF-8 of the text message in progress, checked as its bytes arrive: its
    /// fragments, and the part of a frame already received, so that invalid text fails
    /// at once instead of when its message is whole (RFC 6455 8.1; Autobahn 6.4.*).
    text: Utf8Stream,
    /// Payload bytes of the unfinished text frame at the front of the input already fed
    /// to `text`.
    peeked: usize,
}

impl Decoder {
    /// A decoder for the `role` end, refusing messages over `max_message` bytes.
    pub fn new(role: Role, max_message: usize) -> Decoder {
        Decoder {
            role,
            max_message,
            partial: None,
            done: Vec::new(),
            text: Utf8Stream::default(),
            peeked: 0,
        }
    }

    /// Decode the frame at the front of `buf`, unmasking it in place.
    ///
    /// Returns how many bytes it consumed and the message it completed, if any:
    /// `(None, 0)` means `buf` does not hold a whole frame yet (nothing is consumed, call
    /// again with more bytes); `(None, n)` means a fragment was taken in. A frame's
    /// announced length is checked against the limit before its payload is awaited, so
    /// a peer cannot make the caller buffer more than the limit. The bytes of an
    /// unfinished text frame are checked for UTF-8 as they come (so the caller must
    /// offer them again unchanged, as it naturally does).
    pub fn decode<'a>(&'a mut self, buf: &'a mut [u8]) -> Result<(Option<Message<'a>>, usize), WsError> {
        // Dropped, not cleared: one large fragmented message must not pin its buffer
        // for the life of the socket.
        self.done = Vec::new();
        let [b0, b1, ..] = *buf else {
            return Ok((None, 0));
        };
        let fin = b0 & 0x80 != 0;
        if b0 & 0x70 != 0 {
            return Err(WsError::Reserved);
        }
        let op = b0 & 0x0f;
        let masked = b1 & 0x80 != 0;
        match (self.role, masked) {
            (Role::Server, false) => return Err(WsError::Unmasked),
            (Role::Client, true) => return Err(WsError::Masked),
            _ => {}
        }
        let control = match op {
            0..=2 => false,
            8..=10 => true,
            _ => return Err(WsError::Opcode(op)),
        };
        let len7 = (b1 & 0x7f) as usize;
        if control && (!fin || len7 > 125) {
            return Err(WsError::BadControl);
        }
        // Before the size limit, so that a frame out of place is named for what it is.
        match (op, self.partial.is_some()) {
            (0, false) | (1 | 2, true) => return Err(WsError::Fragments),
            _ => {}
        }
        let ext = match len7 {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let head = 2 + ext + if masked { 4 } else { 0 };
        if buf.len() < 2 + ext {
            return Ok((None, 0));
        }
        let len = match ext {
            2 => u16::from_be_bytes([buf[2], buf[3]]) as u64,
            8 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&buf[2..10]);
                let len = u64::from_be_bytes(b);
                // 5.2: "the most significant bit MUST be 0".
                if len >> 63 != 0 {
                    return Err(WsError::BadLength);
                }
                len
            }
            _ => len7 as u64,
        };
        if !control {
            let so_far = self.partial.as_ref().map_or(0, |(_, p)| p.len()) as u64;
            let total = so_far.saturating_add(len);
            if total > self.max_message as u64 {
                return Err(WsError::TooLarge(total));
            }
        }
        // Under the limit, so it fits in usize.
        let len = len as usize;
        let text = op == 1 || (op == 0 && matches!(self.partial, Some((true, _))));
        if buf.len() < head + len {
            if text && buf.len() > head {
                if op == 1 && self.peeked == 0 {
                    self.text = Utf8Stream::default();
                }
                let key = masked.then(|| [buf[head - 4], buf[head - 3], buf[head - 2], buf[head - 1]]);
                self.peek_text(&buf[head..], key)?;
            }
            return Ok((None, 0));
        }
        let peeked = std::mem::take(&mut self.peeked);
        let used = head + len;
        let (header, rest) = buf.split_at_mut(head);
        let payload = &mut rest[..len];
        if masked {
            let mut key = [0u8; 4];
            key.copy_from_slice(&header[head - 4..head]);
            apply_mask(payload, key);
        }
        let payload: &'a [u8] = payload;
        let msg = match op {
            // Out-of-order fragments were refused before the size limit, so a data frame
            // starts a message and a continuation has one to continue.
            1 | 2 if fin => whole(op == 1, payload)?,
            1 | 2 => {
                if text {
                    if peeked == 0 {
                        self.text = Utf8Stream::default();
                    }
                    self.text.feed(&payload[peeked..])?;
                }
                self.partial = Some((text, payload.to_vec()));
                return Ok((None, used));
            }
            0 => {
                let (text, mut bytes) = self
                    .partial
                    .take()
                    .expect("checked before the size limit: a message is in progress");
                if text {
                    self.text.feed(&payload[peeked..])?;
                }
                bytes.extend_from_slice(payload);
                if !fin {
                    self.partial = Some((text, bytes));
                    return Ok((None, used));
                }
                self.done = bytes;
                whole(text, &self.done)?
            }
            8 => Message::Close(close_payload(payload)?),
            9 => Message::Ping(payload),
            _ => Message::Pong(payload),
        };
        Ok((Some(msg), used))
    }
}

impl Decoder {
    /// Check the part of an unfinished text frame's payload that has arrived and was not
    /// checked yet, unmasking a copy (the input stays as it came).
    fn peek_text(&mut self, arrived: &[u8], key: Option<[u8; 4]>) -> Result<(), WsError> {
        let mut scratch = [0u8; 256];
        while self.peeked < arrived.len() {
            let at = self.peeked;
            let n = (arrived.len() - at).min(scratch.len());
            let piece = &mut scratch[..n];
            piece.copy_from_slice(&arrived[at..at + n]);
            if let Some(k) = key {
                for (i, b) in piece.iter_mut().enumerate() {
                    *b ^= k[(at + i) & 3];
                }
            }
            self.text.feed(piece)?;
            self.peeked += n;
        }
        Ok(())
    }
}

/// Checks UTF-8 that arrives in pieces; a character cut between two pieces is carried
/// over (at most 3 bytes). Only a sequence that cannot become valid is an error: one
/// left unfinished at the end of a message is caught when the message is whole.
#[derive(Debug, Default)]
struct Utf8Stream {
    carry: [u8; 4],
    n: usize,
}

impl Utf8Stream {
    fn feed(&mut self, mut input: &[u8]) -> Result<(), WsError> {
        // Finish the carried character first, a byte at a time.
        while self.n > 0 {
            let Some((&b, rest)) = input.split_first() else {
                return Ok(());
            };
            // Unfinished means at most 3 bytes so far (a character has at most 4).
            self.carry[self.n] = b;
            self.n += 1;
            input = rest;
            match std::str::from_utf8(&self.carry[..self.n]) {
                Ok(_) => self.n = 0,
                Err(e) if e.error_len().is_some() => return Err(WsError::Utf8),
                Err(_) => {}
            }
        }
        match std::str::from_utf8(input) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_some() => Err(WsError::Utf8),
            Err(e) => {
                let tail = &input[e.valid_up_to()..];
                self.carry[..tail.len()].copy_from_slice(tail);
                self.n = tail.len();
                Ok(())
            }
        }
    }
}

/// A whole data message: text must be UTF-8 (8.1).
fn whole(text: bool, bytes: &[u8]) -> Result<Message<'_>, WsError> {
    if text {
        Ok(Message::Text(std::str::from_utf8(bytes).map_err(|_| WsError::Utf8)?))
    } else {
        Ok(Message::Binary(bytes))
    }
}

/// A close frame's payload: empty, or a status code that may be sent (7.4.1) and a
/// UTF-8 reason.
fn close_payload(p: &[u8]) -> Result<Option<(u16, &str)>, WsError> {
    match p {
        [] => Ok(None),
        [_] => Err(WsError::BadClose),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            // 1004-1006 and 1015 are reserved and never sent on the wire; below 1000
            // and 1016-2999 are unassigned or for future RFCs (7.4.1, 7.4.2).
            let sendable = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
            if !sendable {
                return Err(WsError::BadClose);
            }
            let reason = std::str::from_utf8(reason).map_err(|_| WsError::Utf8)?;
            Ok(Some((code, reason)))
        }
    }
}

/// Append one unfragmented frame carrying `payload` to `out`. `mask` is the client's
/// masking key (RFC 6455 5.3: a fresh unpredictable key per frame), `None` from a server.
pub fn encode(out: &mut Vec<u8>, op: OpCode, payload: &[u8], mask: Option<[u8; 4]>) {
    let mbit = if mask.is_some() { 0x80 } else { 0 };
    out.push(0x80 | op as u8);
    // The minimal length encoding, as 5.2 requires of a sender.
    match payload.len() {
        n @ 0..=125 => out.push(mbit | n as u8),
        n @ 126..=0xffff => {
            out.push(mbit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mbit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        None => out.extend_from_slice(payload),
        Some(key) => {
            out.extend_from_slice(&key);
            let at = out.len();
            out.extend_from_slice(payload);
            apply_mask(&mut out[at..], key);
        }
    }
}

/// Append a close frame with `code` and `reason` (cut to fit the 125-byte control
/// frame limit at a character boundary).
pub fn encode_close(out: &mut Vec<u8>, code: u16, reason: &str, mask: Option<[u8; 4]>) {
    let mut cut = reason.len().min(123);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut payload = Vec::with_capacity(2 + cut);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..cut]);
    encode(out, OpCode::Close, &payload, mask);
}

/// XOR `buf` with the repeating 4-byte `key` (RFC 6455 5.3), eight bytes at a time.
pub fn apply_mask(buf: &mut [u8], key: [u8; 4]) {
    let wide = u64::from_ne_bytes([key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3]]);
    let mut chunks = buf.chunks_exact_mut(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        c.copy_from_slice(&(u64::from_ne_bytes(w) ^ wide).to_ne_bytes());
    }
    // Chunks of 8 keep the key's phase, so the tail starts at key[0].
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= key[i & 3];
    }
}

/// Fuzzing entry point: decode `data` in both roles, in two reads split where its
/// first byte says, checking that nothing panics and every answer is consistent.
#[doc(hidden)]
pub fn fuzz(data: &[u8]) {
    let Some((&split, data)) = data.split_first() else {
        return;
    };
    let cut = (split as usize).min(data.len());
    for role in [Role::Server, Role::Client] {
        // Where the reads split must not matter: the same messages, then the same error
        // (UTF-8 is checked as it arrives, so a split inside a text frame is the case).
        assert_eq!(
            fuzz_reads(role, data, &[cut]),
            fuzz_reads(role, data, &[]),
            "two reads split at {cut} and one read differ"
        );
    }
}

/// Decode `data` as `role` in reads that end at `cuts` (ascending) and at its end: what
/// came out, in order (each message as its debug text, then the error that ended it, if
/// any).
fn fuzz_reads(role: Role, data: &[u8], cuts: &[usize]) -> Vec<String> {
    let mut d = Decoder::new(role, 4096);
    let mut out = vec![];
    let mut pending = vec![];
    let mut from = 0;
    for &to in cuts.iter().chain([&data.len(), &data.len()]) {
        let to = to.clamp(from, data.len());
        pending.extend_from_slice(&data[from..to]);
        from = to;
        let mut at = 0;
        loop {
            match d.decode(&mut pending[at..]) {
                Ok((_, 0)) => break,
                Ok((m, n)) => {
                    let len = match m {
                        Some(Message::Text(t)) => t.len(),
                        Some(Message::Binary(b)) => b.len(),
                        Some(Message::Ping(p) | Message::Pong(p)) => {
                            assert!(p.len() <= 125, "control frame over 125 bytes");
                            0
                        }
                        _ => 0,
                    };
                    assert!(len <= 4096, "message over the limit");
                    if let Some(m) = m {
                        out.push(format!("{m:?}"));
                    }
                    at += n;
                }
                Err(e) => {
                    assert!(matches!(e.close_code(), 1002 | 1007 | 1009));
                    out.push(format!("{e:?}"));
                    return out;
                }
            }
        }
        pending.drain(..at);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 1 << 16;

    fn server() -> Decoder {
        Decoder::new(Role::Server, MAX)
    }

    /// One masked client frame of a fragmented text message (RFC 6455 5.4): the first
    /// carries the text opcode, the others are continuations; FIN only on the last.
    fn fragment(piece: &[u8], first: bool, last: bool, key: [u8; 4]) -> Vec<u8> {
        let mut f = vec![];
        encode(&mut f, OpCode::Text, piece, Some(key));
        f[0] = if last { 0x80 } else { 0 } | if first { OpCode::Text as u8 } else { 0 };
        f
    }

    /// A text message sent as one fragment per piece.
    fn fragmented(pieces: &[&[u8]], key: [u8; 4]) -> Vec<u8> {
        let n = pieces.len();
        pieces
            .iter()
            .enumerate()
            .flat_map(|(i, p)| fragment(p, i == 0, i + 1 == n, key))
            .collect()
    }

    /// Decode every message in `bytes`, as a socket driver would.
    fn all(d: &mut Decoder, bytes: &[u8]) -> Result<Vec<String>, WsError> {
        let mut buf = bytes.to_vec();
        let mut at = 0;
        let mut out = vec![];
        loop {
            let (m, n) = d.decode(&mut buf[at..])?;
            if n == 0 {
                return Ok(out);
            }
            if let Some(m) = m {
                out.push(format!("{m:?}"));
            }
            at += n;
        }
    }

    #[test]
    fn rfc_6455_section_5_7_examples() {
        // "A single-frame masked text message" from a client, verbatim from 5.7.
        let masked_hello = [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58];
        let mut buf = masked_hello.to_vec();
        let mut d = server();
        assert_eq!(d.decode(&mut buf).unwrap(), (Some(Message::Text("Hello")), 11));
        // "A single-frame unmasked text message" from a server.
        let hello = [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
        let mut out = vec![];
        encode(&mut out, OpCode::Text, b"Hello", None);
        assert_eq!(out, hello);
        let mut c = Decoder::new(Role::Client, MAX);
        assert_eq!(c.decode(&mut out).unwrap(), (Some(Message::Text("Hello")), 7));
        // And the client encoder reproduces the masked example given its key.
        let mut out = vec![];
        encode(&mut out, OpCode::Text, b"Hello", Some([0x37, 0xfa, 0x21, 0x3d]));
        assert_eq!(out, masked_hello);
        // "A fragmented unmasked text message": 0x01 0x03 "Hel", 0x80 0x02 "lo".
        let frags = [0x01, 0x03, 0x48, 0x65, 0x6c, 0x80, 0x02, 0x6c, 0x6f];
        assert_eq!(all(&mut c, &frags).unwrap(), ["Text(\"Hello\")"]);
        // "Unmasked Ping request and masked Ping response" with body "Hello".
        let mut ping = vec![0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
        assert_eq!(c.decode(&mut ping).unwrap(), (Some(Message::Ping(b"Hello")), 7));
        let pong = [0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58];
        assert_eq!(all(&mut d, &pong).unwrap(), ["Pong([72, 101, 108, 108, 111])"]);
        // "256 bytes binary message in a single unmasked frame": 0x82 0x7E 0x0100.
        let mut out = vec![];
        encode(&mut out, OpCode::Binary, &[7; 256], None);
        assert_eq!(out[..4], [0x82, 0x7e, 0x01, 0x00]);
        // "64KiB binary message in a single unmasked frame": 0x82 0x7F 0x0000000000010000.
        let mut out = vec![];
        encode(&mut out, OpCode::Binary, &vec![7; 65536], None);
        assert_eq!(out[..10], [0x82, 0x7f, 0, 0, 0, 0, 0, 1, 0, 0]);
    }

    #[test]
    fn a_frame_split_anywhere_decodes_once_whole() {
        let mut frame = vec![];
        encode(
            &mut frame,
            OpCode::Text,
            "héllo wörld, long enough to pass eight".as_bytes(),
            Some([1, 2, 3, 4]),
        );
        for cut in 0..frame.len() {
            let mut d = server();
            let mut head = frame[..cut].to_vec();
            assert_eq!(d.decode(&mut head).unwrap(), (None, 0), "cut at {cut}");
            let mut whole = frame.clone();
            assert_eq!(
                d.decode(&mut whole).unwrap(),
                (
                    Some(Message::Text("héllo wörld, long enough to pass eight")),
                    frame.len()
                )
            );
        }
    }

    #[test]
    fn server_must_close_on_an_unmasked_client_frame() {
        // RFC 6455 5.1: "The server MUST close the connection upon receiving a frame
        // that is not masked."
        let mut f = vec![];
        encode(&mut f, OpCode::Text, b"hi", None);
        assert_eq!(server().decode(&mut f), Err(WsError::Unmasked));
        // 5.1: "A client MUST close a connection if it detects a masked frame."
        let mut f = vec![];
        encode(&mut f, OpCode::Text, b"hi", Some([9, 9, 9, 9]));
        assert_eq!(Decoder::new(Role::Client, MAX).decode(&mut f), Err(WsError::Masked));
    }

    #[test]
    fn reserved_bits_and_opcodes_fail_the_connection() {
        // 5.2: RSV1-3 "MUST be 0 unless an extension is negotiated"; reserved opcodes
        // likewise fail the connection.
        let mut f = vec![0xc1, 0x80, 0, 0, 0, 0];
        assert_eq!(server().decode(&mut f), Err(WsError::Reserved));
        for op in [3u8, 7, 11, 15] {
            let mut f = vec![0x80 | op, 0x80, 0, 0, 0, 0];
            assert_eq!(server().decode(&mut f), Err(WsError::Opcode(op)));
        }
    }

    #[test]
    fn control_frames_are_short_and_whole() {
        // 5.5: "All control frames MUST have a payload length of 125 bytes or less and
        // MUST NOT be fragmented."
        let mut f = vec![0x09, 0x80, 0, 0, 0, 0];
        assert_eq!(server().decode(&mut f), Err(WsError::BadControl));
        let mut f = vec![0x89, 0xfe, 0, 126, 0, 0, 0, 0];
        assert_eq!(server().decode(&mut f), Err(WsError::BadControl));
    }

    #[test]
    fn control_frames_may_come_between_fragments() {
        // 5.4: "Control frames MAY be injected in the middle of a fragmented message."
        let key = [5, 6, 7, 8];
        let mut bytes = fragment(b"ab", true, false, key);
        encode(&mut bytes, OpCode::Ping, b"p", Some(key));
        bytes.extend(fragment(b"cd", false, true, key));
        assert_eq!(all(&mut server(), &bytes).unwrap(), ["Ping([112])", "Text(\"abcd\")"]);
    }

    #[test]
    fn fragments_out_of_order_fail() {
        // 5.4: a continuation needs a message in progress, and a new data frame may not
        // start while one is.
        let mut f = vec![0x80, 0x80, 0, 0, 0, 0];
        assert_eq!(server().decode(&mut f), Err(WsError::Fragments));
        let mut bytes = vec![0x01, 0x80, 0, 0, 0, 0];
        bytes.extend([0x81, 0x80, 0, 0, 0, 0]);
        assert_eq!(all(&mut server(), &bytes), Err(WsError::Fragments));
        // Even when the interloper is large: the order is the fault, not the size.
        let mut d = Decoder::new(Role::Server, 1000);
        let mut bytes = fragment(&[b'a'; 600], true, false, [0; 4]);
        encode(&mut bytes, OpCode::Text, &[b'b'; 600], Some([0; 4]));
        assert_eq!(all(&mut d, &bytes), Err(WsError::Fragments));
    }

    #[test]
    fn oversized_messages_are_refused_before_their_payload_arrives() {
        let mut d = Decoder::new(Role::Server, 1000);
        // Only the header of a 1001-byte frame: refused at once, code 1009.
        let mut f = vec![0x81, 0xfe, 0x03, 0xe9];
        let e = d.decode(&mut f).unwrap_err();
        assert_eq!(e, WsError::TooLarge(1001));
        assert_eq!(e.close_code(), 1009);
        // 5.2: a 64-bit length's most significant bit MUST be 0; that is a protocol
        // error, not a size.
        let mut f = vec![0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0];
        let e = d.decode(&mut f).unwrap_err();
        assert_eq!((e, e.close_code()), (WsError::BadLength, 1002));
        // Fragments count together.
        let mut d = Decoder::new(Role::Server, 1000);
        let bytes = fragmented(&[&[b'a'; 600], &[b'b'; 600]], [0; 4]);
        assert_eq!(all(&mut d, &bytes), Err(WsError::TooLarge(1200)));
        // Exactly at the limit is fine.
        let mut ok = vec![];
        encode(&mut ok, OpCode::Text, &[b'x'; 1000], Some([3; 4]));
        assert_eq!(all(&mut Decoder::new(Role::Server, 1000), &ok).unwrap().len(), 1);
    }

    #[test]
    fn text_must_be_utf8() {
        // 8.1: "When an endpoint is to interpret a byte stream as UTF-8 but finds that
        // the byte stream is not, in fact, a valid UTF-8 stream, that endpoint MUST
        // _Fail the WebSocket Connection_."
        let mut f = vec![];
        encode(&mut f, OpCode::Text, &[0xc3, 0x28], Some([1, 1, 1, 1]));
        let e = server().decode(&mut f).unwrap_err();
        assert_eq!((e, e.close_code()), (WsError::Utf8, 1007));
        // A character split across fragments is fine once whole.
        let bytes = fragmented(&[&[0xc3], &[0xa9]], [1, 1, 1, 1]);
        assert_eq!(all(&mut server(), &bytes).unwrap(), ["Text(\"é\")"]);
    }

    #[test]
    fn invalid_utf8_fails_as_soon_as_it_arrives() {
        // Autobahn 6.4.1/6.4.2: valid first fragment, then a fragment holding a sequence
        // that can never be valid (0xf4 0x90: past U+10FFFF), the message unfinished.
        let key = [7, 7, 7, 7];
        let part1 = [0xce, 0xba, 0xe1, 0xbd, 0xb9, 0xcf, 0x83, 0xce, 0xbc, 0xce, 0xb5];
        let mut d = server();
        let mut f = fragment(&part1, true, false, key);
        assert_eq!(d.decode(&mut f).unwrap().0, None);
        let mut f = fragment(&[0xf4, 0x90], false, false, key);
        assert_eq!(d.decode(&mut f), Err(WsError::Utf8));
        // A character cut between fragments is not a fault while it can still finish.
        let mut d = server();
        let mut f = fragment(&[b'a', 0xe2, 0x82], true, false, key);
        assert_eq!(d.decode(&mut f).unwrap().0, None);
        let mut f = fragment(&[0xac], false, true, key);
        assert_eq!(d.decode(&mut f).unwrap().0, Some(Message::Text("a€")));
        // ... but is one if the message ends with it unfinished.
        let bytes = fragmented(&[b"a", &[0xe2, 0x82]], key);
        assert_eq!(all(&mut server(), &bytes), Err(WsError::Utf8));
        // Autobahn 6.4.3/6.4.4: one frame in three TCP writes: the error comes with the
        // second write, before the frame is whole.
        let mut whole = vec![];
        let payload: Vec<u8> = part1
            .iter()
            .chain(&[0xf4, 0x90, 0x80, 0x80])
            .chain(b"edited")
            .copied()
            .collect();
        encode(&mut whole, OpCode::Text, &payload, Some([1, 2, 3, 4]));
        let mut d = server();
        let head = 2 + 4;
        let mut first = whole[..head + part1.len()].to_vec();
        assert_eq!(d.decode(&mut first).unwrap(), (None, 0));
        let mut second = whole[..head + part1.len() + 2].to_vec();
        assert_eq!(d.decode(&mut second), Err(WsError::Utf8));
        // The same frame with valid text, in pieces cut inside characters, decodes whole
        // (the input offered again unchanged each time).
        let text = "κόσμε€𝄞 and more".repeat(30);
        let mut f = vec![];
        encode(&mut f, OpCode::Text, text.as_bytes(), Some([9, 8, 7, 6]));
        let mut d = server();
        for cut in (1..f.len()).step_by(7) {
            let mut part = f[..cut].to_vec();
            assert_eq!(d.decode(&mut part).unwrap(), (None, 0), "cut at {cut}");
        }
        assert_eq!(d.decode(&mut f).unwrap().0, Some(Message::Text(text.as_str())));
    }

    #[test]
    fn close_frames() {
        let mut f = vec![];
        encode_close(&mut f, 1000, "bye", Some([4, 3, 2, 1]));
        assert_eq!(
            server().decode(&mut f).unwrap().0,
            Some(Message::Close(Some((1000, "bye"))))
        );
        let mut f = vec![];
        encode(&mut f, OpCode::Close, &[], Some([4, 3, 2, 1]));
        assert_eq!(server().decode(&mut f).unwrap().0, Some(Message::Close(None)));
        // 5.5.1: a body starts with a 2-byte code, so one byte is malformed; 7.4.1 codes
        // 1005, 1006 and 1015 "MUST NOT be set as a status code in a Close control frame".
        for payload in [&[3u8][..], &[0x03, 0xed], &[0x03, 0xee], &[0x03, 0xf7], &[0x00, 0x01]] {
            let mut f = vec![];
            encode(&mut f, OpCode::Close, payload, Some([4, 3, 2, 1]));
            assert_eq!(server().decode(&mut f), Err(WsError::BadClose), "{payload:?}");
        }
        // A long reason is cut to fit a control frame, on a character boundary.
        let mut f = vec![];
        encode_close(&mut f, 4000, &"é".repeat(100), None);
        let mut c = Decoder::new(Role::Client, MAX);
        let Some(Message::Close(Some((4000, reason)))) = c.decode(&mut f).unwrap().0 else {
            panic!("not a close frame");
        };
        assert_eq!(reason, "é".repeat(61));
    }

    #[test]
    fn masking_matches_the_byte_by_byte_rule() {
        // 5.3: "Octet i of the transformed data is the XOR of octet i of the original
        // data with octet at index i modulo 4 of the masking key."
        let key = [0x11, 0x22, 0x33, 0x44];
        for n in 0..40 {
            let orig: Vec<u8> = (0..n as u8).collect();
            let mut fast = orig.clone();
            apply_mask(&mut fast, key);
            let slow: Vec<u8> = orig.iter().enumerate().map(|(i, b)| b ^ key[i % 4]).collect();
            assert_eq!(fast, slow, "length {n}");
        }
    }

    proptest::proptest! {
        /// Arbitrary bytes never panic the decoder, in either role (the fuzz target's
        /// checks, on proptest's inputs).
        #[test]
        fn arbitrary_bytes_get_an_answer_never_a_panic(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
            fuzz(&data);
        }

        /// Text frames, fragmented or not, with one byte anywhere changed (often making
        /// the UTF-8 invalid), give the same messages and the same error however the
        /// stream is split into reads.
        #[test]
        fn a_split_anywhere_does_not_change_the_outcome(
            msgs in proptest::collection::vec(("[a-zé€𝄞]{0,60}", 1usize..4), 1..5),
            key in proptest::prelude::any::<[u8; 4]>(),
            flip in proptest::prelude::any::<(usize, u8)>(),
            mut cuts in proptest::collection::vec(0usize..1000, 0..6),
        ) {
            let mut wire = vec![];
            for (text, pieces) in &msgs {
                let b = text.as_bytes();
                let step = b.len().div_ceil(*pieces).max(1);
                let chunks: Vec<&[u8]> = if b.is_empty() { vec![b] } else { b.chunks(step).collect() };
                wire.extend(fragmented(&chunks, key));
            }
            let at = flip.0 % wire.len();
            wire[at] ^= flip.1;
            cuts.sort_unstable();
            for role in [Role::Server, Role::Client] {
                proptest::prop_assert_eq!(fuzz_reads(role, &wire, &cuts), fuzz_reads(role, &wire, &[]));
            }
        }

        /// Any sequence of messages, masked or not, fragmented or not, cut into reads
        /// anywhere, decodes to the same messages in order.
        #[test]
        fn encode_then_decode_round_trips(
            msgs in proptest::collection::vec(("[a-zé€]{0,300}", 1usize..4), 1..8),
            cuts in proptest::collection::vec(1usize..200, 1..20),
            key in proptest::prelude::any::<[u8; 4]>(),
        ) {
            let mut wire = vec![];
            for (text, pieces) in &msgs {
                let b = text.as_bytes();
                let step = b.len().div_ceil(*pieces).max(1);
                let chunks: Vec<&[u8]> = if b.is_empty() { vec![b] } else { b.chunks(step).collect() };
                wire.extend(fragmented(&chunks, key));
            }
            // Feed the stream in reads of the given sizes, keeping what is not yet whole.
            let mut d = server();
            let mut got: Vec<String> = vec![];
            let mut pending: Vec<u8> = vec![];
            let mut at = 0;
            let mut c = 0;
            while at < wire.len() {
                let n = cuts[c % cuts.len()].min(wire.len() - at);
                c += 1;
                pending.extend_from_slice(&wire[at..at + n]);
                at += n;
                let mut used = 0;
                loop {
                    let (m, k) = d.decode(&mut pending[used..]).unwrap();
                    if k == 0 { break; }
                    if let Some(Message::Text(t)) = m { got.push(t.to_owned()); }
                    used += k;
                }
                pending.drain(..used);
            }
            let want: Vec<String> = msgs.iter().map(|(t, _)| t.clone()).collect();
            proptest::prop_assert_eq!(got, want);
            proptest::prop_assert!(pending.is_empty());
        }
    }
}
