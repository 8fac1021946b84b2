//! STUN (RFC 8489) and TURN (RFC 8656) wire format for firstcall.
//!
//! Two kinds of packet share a TURN port:
//! - STUN messages ([`Message`], built with [`MessageBuilder`]): control traffic.
//!   Decoding borrows from the packet, so strings and DATA are slices of it.
//! - ChannelData frames ([`channel`]): the relay hot path. Decoding and encoding
//!   them never allocates.
//!
//! [`classify`] tells them apart by the first byte, and [`tcp_frame_len`] cuts a
//! TCP byte stream into frames (ChannelData over TCP is padded to 4 bytes).
//!
//! Decoding never panics on any input: every malformed packet is a
//! [`DecodeError`] naming what was wrong, and when the 20-byte header was
//! readable the error carries it so a server can still answer 400.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod attr;
pub mod channel;
#[doc(hidden)]
pub mod fuzzing;
mod integrity;

use std::fmt;

pub use attr::{Attribute, ErrorCode, Family};
pub use channel::{ChannelData, ChannelNumber};
pub use integrity::{IntegrityKind, FINGERPRINT_XOR};

/// The fixed value in bytes 4..8 of every RFC 5389/8489 STUN message.
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
/// Size of the STUN header.
pub const HEADER_LEN: usize = 20;
/// Largest STUN message we accept or build. RFC 8489 §6.2.1 bounds UDP messages
/// by the path MTU; over TCP the 16-bit length field allows 65535 + 20, and
/// nothing legitimate comes close, so anything larger is refused up front.
pub const MAX_MESSAGE_LEN: usize = 65_535 + HEADER_LEN;

/// A STUN method (the 12 method bits of the message type).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Method(pub u16);

impl Method {
    /// RFC 8489 Binding.
    pub const BINDING: Method = Method(0x001);
    /// RFC 8656 Allocate.
    pub const ALLOCATE: Method = Method(0x003);
    /// RFC 8656 Refresh.
    pub const REFRESH: Method = Method(0x004);
    /// RFC 8656 Send (indication only).
    pub const SEND: Method = Method(0x006);
    /// RFC 8656 Data (indication only).
    pub const DATA: Method = Method(0x007);
    /// RFC 8656 CreatePermission.
    pub const CREATE_PERMISSION: Method = Method(0x008);
    /// RFC 8656 ChannelBind.
    pub const CHANNEL_BIND: Method = Method(0x009);

    /// A short name for logs.
    pub fn name(self) -> &'static str {
        match self {
            Method::BINDING => "binding",
            Method::ALLOCATE => "allocate",
            Method::REFRESH => "refresh",
            Method::SEND => "send",
            Method::DATA => "data",
            Method::CREATE_PERMISSION => "create_permission",
            Method::CHANNEL_BIND => "channel_bind",
            _ => "unknown",
        }
    }
}

impl fmt::Debug for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}(0x{:03x})", self.name(), self.0)
    }
}

/// The class bits of a STUN message type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Class {
    /// Expects a response.
    Request,
    /// Fire and forget.
    Indication,
    /// Success response.
    Success,
    /// Error response.
    Error,
}

/// The 96-bit transaction id.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TransactionId(pub [u8; 12]);

impl fmt::Debug for TransactionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// The decoded 20-byte header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Message class.
    pub class: Class,
    /// Message method.
    pub method: Method,
    /// Length of the attribute section.
    pub length: u16,
    /// Transaction id.
    pub transaction_id: TransactionId,
}

/// What kind of packet a datagram (or the next TCP frame) is, by its first byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PacketKind {
    /// First two bits 0b00: a STUN message.
    Stun,
    /// First byte 0x40..=0x7F: a ChannelData message (RFC 8656 §12).
    ChannelData,
    /// Anything else: neither. A TURN server drops it (and counts it).
    Other,
}

/// Classify a packet by its first byte (RFC 7983 demultiplexing).
pub fn classify(packet: &[u8]) -> PacketKind {
    match packet.first() {
        Some(0x00..=0x3F) => PacketKind::Stun,
        Some(0x40..=0x7F) => PacketKind::ChannelData,
        _ => PacketKind::Other,
    }
}

/// Why a TCP byte stream cannot be framed any further. The connection should be closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    /// The next frame starts with a byte that is neither STUN nor ChannelData.
    #[error("stream byte 0x{0:02x} starts neither a STUN message nor a ChannelData frame")]
    UnknownFrame(u8),
    /// A STUN header announces a length that is not a multiple of 4.
    #[error("STUN message length {0} is not a multiple of 4")]
    UnalignedLength(u16),
}

/// Length of the next frame in a TCP stream (RFC 8656 §12.5: ChannelData over
/// TCP is padded to a multiple of 4; STUN messages always are).
///
/// `Ok(None)` means more bytes are needed: that is not an error.
pub fn tcp_frame_len(buf: &[u8]) -> Result<Option<usize>, FramingError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u16::from_be_bytes([buf[2], buf[3]]);
    let total = match classify(buf) {
        PacketKind::Stun => {
            if !len.is_multiple_of(4) {
                return Err(FramingError::UnalignedLength(len));
            }
            HEADER_LEN + len as usize
        }
        PacketKind::ChannelData => channel::HEADER_LEN + (len as usize).next_multiple_of(4),
        PacketKind::Other => return Err(FramingError::UnknownFrame(buf[0])),
    };
    Ok((buf.len() >= total).then_some(total))
}

/// Why a packet is not a well-formed STUN message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Fewer than 20 bytes, or fewer than the header's length announces.
    #[error("truncated STUN message: {have} bytes, need {need}")]
    Truncated {
        /// Bytes present.
        have: usize,
        /// Bytes needed.
        need: usize,
    },
    /// First two bits not zero or wrong magic cookie: not an RFC 5389+ STUN message.
    #[error("not a STUN message (bad leading bits or magic cookie)")]
    NotStun,
    /// Length field not a multiple of 4, or trailing bytes after the announced length.
    #[error("bad STUN length field: {0}")]
    BadLength(u16),
    /// An attribute is malformed; the header was fine.
    #[error("malformed {name} attribute (0x{typ:04x}): {reason}")]
    BadAttribute {
        /// The header, so the receiver can still answer with 400.
        header: Header,
        /// Attribute type.
        typ: u16,
        /// Attribute name for logs.
        name: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// FINGERPRINT present but does not match the message.
    #[error("FINGERPRINT does not match")]
    BadFingerprint {
        /// The header (a server silently discards such a message, RFC 8489 §7.3).
        header: Header,
    },
}

impl DecodeError {
    /// The header, when the packet got that far.
    pub fn header(&self) -> Option<Header> {
        match self {
            DecodeError::BadAttribute { header, .. } | DecodeError::BadFingerprint { header } => Some(*header),
            _ => None,
        }
    }

    /// A short label for metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            DecodeError::Truncated { .. } => "truncated",
            DecodeError::NotStun => "not_stun",
            DecodeError::BadLength(_) => "bad_length",
            DecodeError::BadAttribute { .. } => "bad_attribute",
            DecodeError::BadFingerprint { .. } => "bad_fingerprint",
        }
    }
}

/// Where the message-integrity attribute sits in the raw message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct IntegrityAt {
    kind: IntegrityKind,
    /// Offset of the attribute's type field in the raw message.
    offset: usize,
}

/// A decoded STUN message, borrowing from the packet.
#[derive(Clone, Debug)]
pub struct Message<'a> {
    header: Header,
    raw: &'a [u8],
    attributes: Vec<Attribute<'a>>,
    /// Comprehension-required attribute types we do not understand (RFC 8489 §7.3.1: 420).
    unknown_required: Vec<u16>,
    integrity: Option<IntegrityAt>,
    integrity_sha256: Option<IntegrityAt>,
    has_fingerprint: bool,
}

impl<'a> Message<'a> {
    /// Decode one STUN message occupying exactly `packet`.
    ///
    /// Per RFC 8489 §14.5, attributes after MESSAGE-INTEGRITY other than
    /// MESSAGE-INTEGRITY-SHA256 and FINGERPRINT are ignored, and §14.7: nothing
    /// may follow FINGERPRINT.
    pub fn decode(packet: &'a [u8]) -> Result<Message<'a>, DecodeError> {
        let header = decode_header(packet)?;
        let total = HEADER_LEN + header.length as usize;
        if packet.len() < total {
            return Err(DecodeError::Truncated {
                have: packet.len(),
                need: total,
            });
        }
        if packet.len() > total {
            return Err(DecodeError::BadLength(header.length));
        }
        let mut msg = Message {
            header,
            raw: packet,
            attributes: Vec::new(),
            unknown_required: Vec::new(),
            integrity: None,
            integrity_sha256: None,
            has_fingerprint: false,
        };
        let mut pos = HEADER_LEN;
        while pos < total {
            let bad = |typ, reason| DecodeError::BadAttribute {
                header,
                typ,
                name: attr::name(typ),
                reason,
            };
            if total - pos < 4 {
                return Err(bad(0, "attribute header truncated"));
            }
            let typ = u16::from_be_bytes([packet[pos], packet[pos + 1]]);
            let len = u16::from_be_bytes([packet[pos + 2], packet[pos + 3]]) as usize;
            let value_start = pos + 4;
            let value_end = value_start + len;
            if value_end > total {
                return Err(bad(typ, "value runs past the end of the message"));
            }
            let value = &packet[value_start..value_end];
            let next = value_start + len.next_multiple_of(4);
            if next > total {
                return Err(bad(typ, "padding runs past the end of the message"));
            }
            if msg.has_fingerprint {
                return Err(bad(typ, "attribute after FINGERPRINT"));
            }
            match typ {
                attr::MESSAGE_INTEGRITY => {
                    if len != 20 {
                        return Err(bad(typ, "must be 20 bytes"));
                    }
                    if msg.integrity.is_none() && msg.integrity_sha256.is_none() {
                        msg.integrity = Some(IntegrityAt {
                            kind: IntegrityKind::Sha1,
                            offset: pos,
                        });
                    }
                }
                attr::MESSAGE_INTEGRITY_SHA256 => {
                    // RFC 8489 §14.6: at least 16 bytes, multiple of 4, at most 32.
                    if !(16..=32).contains(&len) || !len.is_multiple_of(4) {
                        return Err(bad(typ, "must be 16..=32 bytes, a multiple of 4"));
                    }
                    if msg.integrity_sha256.is_none() {
                        msg.integrity_sha256 = Some(IntegrityAt {
                            kind: IntegrityKind::Sha256,
                            offset: pos,
                        });
                    }
                }
                attr::FINGERPRINT => {
                    if len != 4 {
                        return Err(bad(typ, "must be 4 bytes"));
                    }
                    let want = u32::from_be_bytes([value[0], value[1], value[2], value[3]]);
                    if integrity::fingerprint(&packet[..pos]) != want {
                        return Err(DecodeError::BadFingerprint { header });
                    }
                    msg.has_fingerprint = true;
                }
                _ if msg.integrity.is_some() || msg.integrity_sha256.is_some() => {
                    // Ignored: not covered by the integrity check.
                }
                _ => match Attribute::decode(typ, value, &header.transaction_id) {
                    Ok(Some(a)) => msg.attributes.push(a),
                    Ok(None) => {
                        if attr::is_comprehension_required(typ) {
                            msg.unknown_required.push(typ);
                        }
                    }
                    Err(reason) => return Err(bad(typ, reason)),
                },
            }
            pos = next;
        }
        Ok(msg)
    }

    /// The header.
    pub fn header(&self) -> &Header {
        &self.header
    }
    /// Message class.
    pub fn class(&self) -> Class {
        self.header.class
    }
    /// Message method.
    pub fn method(&self) -> Method {
        self.header.method
    }
    /// Transaction id.
    pub fn transaction_id(&self) -> TransactionId {
        self.header.transaction_id
    }
    /// The raw packet.
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }
    /// Attributes before MESSAGE-INTEGRITY, in order (integrity and fingerprint excluded).
    pub fn attributes(&self) -> &[Attribute<'a>] {
        &self.attributes
    }
    /// Comprehension-required attributes this decoder does not know.
    pub fn unknown_required(&self) -> &[u16] {
        &self.unknown_required
    }
    /// Whether a FINGERPRINT was present (it was verified if so).
    pub fn has_fingerprint(&self) -> bool {
        self.has_fingerprint
    }
    /// Whether any message-integrity attribute is present.
    pub fn has_integrity(&self) -> bool {
        self.integrity.is_some() || self.integrity_sha256.is_some()
    }

    /// Check MESSAGE-INTEGRITY-SHA256 if present, else MESSAGE-INTEGRITY, with `key`
    /// (RFC 8489 §9.2.4). Returns false when no integrity attribute is present.
    pub fn verify_integrity(&self, key: &[u8]) -> bool {
        match self.integrity_sha256.or(self.integrity) {
            Some(at) => integrity::verify(self.raw, at.offset, at.kind, key),
            None => false,
        }
    }

    /// The integrity attribute a response should carry (RFC 8489 §9.2.4: the
    /// same algorithm the request used).
    pub fn integrity_kind(&self) -> Option<IntegrityKind> {
        self.integrity_sha256.or(self.integrity).map(|at| at.kind)
    }

    /// First attribute matching `f`.
    pub fn find<T>(&self, f: impl Fn(&Attribute<'a>) -> Option<T>) -> Option<T> {
        self.attributes.iter().find_map(f)
    }
    /// USERNAME.
    pub fn username(&self) -> Option<&'a str> {
        self.find(|a| match a {
            Attribute::Username(u) => Some(*u),
            _ => None,
        })
    }
    /// REALM.
    pub fn realm(&self) -> Option<&'a str> {
        self.find(|a| match a {
            Attribute::Realm(r) => Some(*r),
            _ => None,
        })
    }
    /// NONCE.
    pub fn nonce(&self) -> Option<&'a str> {
        self.find(|a| match a {
            Attribute::Nonce(n) => Some(*n),
            _ => None,
        })
    }
    /// LIFETIME in seconds.
    pub fn lifetime(&self) -> Option<u32> {
        self.find(|a| match a {
            Attribute::Lifetime(l) => Some(*l),
            _ => None,
        })
    }
    /// REQUESTED-TRANSPORT protocol number.
    pub fn requested_transport(&self) -> Option<u8> {
        self.find(|a| match a {
            Attribute::RequestedTransport(p) => Some(*p),
            _ => None,
        })
    }
    /// All XOR-PEER-ADDRESS values (CreatePermission may carry several).
    pub fn peer_addresses(&self) -> impl Iterator<Item = std::net::SocketAddr> + '_ {
        self.attributes.iter().filter_map(|a| match a {
            Attribute::XorPeerAddress(p) => Some(*p),
            _ => None,
        })
    }
    /// CHANNEL-NUMBER (raw value: validity is the caller's call).
    pub fn channel_number(&self) -> Option<u16> {
        self.find(|a| match a {
            Attribute::ChannelNumber(c) => Some(*c),
            _ => None,
        })
    }
    /// DATA.
    pub fn data(&self) -> Option<&'a [u8]> {
        self.find(|a| match a {
            Attribute::Data(d) => Some(*d),
            _ => None,
        })
    }
    /// ERROR-CODE.
    pub fn error_code(&self) -> Option<&ErrorCode<'a>> {
        self.attributes.iter().find_map(|a| match a {
            Attribute::ErrorCode(e) => Some(e),
            _ => None,
        })
    }
}

/// Decode just the 20-byte header (also used to answer malformed requests).
pub fn decode_header(packet: &[u8]) -> Result<Header, DecodeError> {
    if packet.len() < HEADER_LEN {
        return Err(DecodeError::Truncated {
            have: packet.len(),
            need: HEADER_LEN,
        });
    }
    let typ = u16::from_be_bytes([packet[0], packet[1]]);
    if typ & 0xC000 != 0 {
        return Err(DecodeError::NotStun);
    }
    let cookie = u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
    if cookie != MAGIC_COOKIE {
        return Err(DecodeError::NotStun);
    }
    let length = u16::from_be_bytes([packet[2], packet[3]]);
    if !length.is_multiple_of(4) {
        return Err(DecodeError::BadLength(length));
    }
    let (class, method) = split_type(typ);
    let mut tid = [0u8; 12];
    tid.copy_from_slice(&packet[8..20]);
    Ok(Header {
        class,
        method,
        length,
        transaction_id: TransactionId(tid),
    })
}

/// RFC 8489 §5: the class bits C1 (bit 8) and C0 (bit 4) are interleaved with the method.
fn split_type(typ: u16) -> (Class, Method) {
    let class = match ((typ >> 7) & 0b10) | ((typ >> 4) & 0b01) {
        0b00 => Class::Request,
        0b01 => Class::Indication,
        0b10 => Class::Success,
        _ => Class::Error,
    };
    let method = (typ & 0x000F) | ((typ & 0x00E0) >> 1) | ((typ & 0x3E00) >> 2);
    (class, Method(method))
}

fn join_type(class: Class, method: Method) -> u16 {
    let m = method.0 & 0x0FFF;
    let c: u16 = match class {
        Class::Request => 0b00,
        Class::Indication => 0b01,
        Class::Success => 0b10,
        Class::Error => 0b11,
    };
    (m & 0x000F) | ((m & 0x0070) << 1) | ((m & 0x0F80) << 2) | ((c & 0b01) << 4) | ((c & 0b10) << 7)
}

/// Builds an encoded STUN message attribute by attribute.
///
/// Integrity and fingerprint go last, in that order, as RFC 8489 §14.5-14.7 require.
#[derive(Debug, Clone)]
pub struct MessageBuilder {
    buf: Vec<u8>,
}

impl MessageBuilder {
    /// Start a message with an empty attribute section.
    pub fn new(class: Class, method: Method, transaction_id: TransactionId) -> Self {
        let mut buf = Vec::with_capacity(128);
        buf.extend_from_slice(&join_type(class, method).to_be_bytes());
        buf.extend_from_slice(&[0, 0]);
        buf.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        buf.extend_from_slice(&transaction_id.0);
        MessageBuilder { buf }
    }

    /// Append an attribute.
    pub fn add(&mut self, attribute: &Attribute<'_>) -> &mut Self {
        let tid = self.transaction_id();
        attribute.encode(&mut self.buf, &tid);
        self.set_len();
        self
    }

    /// Append MESSAGE-INTEGRITY (HMAC-SHA1) or MESSAGE-INTEGRITY-SHA256 keyed with `key`.
    pub fn add_integrity(&mut self, kind: IntegrityKind, key: &[u8]) -> &mut Self {
        integrity::append(&mut self.buf, kind, key);
        self
    }

    /// Append FINGERPRINT.
    pub fn add_fingerprint(&mut self) -> &mut Self {
        integrity::append_fingerprint(&mut self.buf);
        self
    }

    /// The encoded message.
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }

    fn transaction_id(&self) -> TransactionId {
        let mut t = [0u8; 12];
        t.copy_from_slice(&self.buf[8..20]);
        TransactionId(t)
    }

    fn set_len(&mut self) {
        let len = (self.buf.len() - HEADER_LEN) as u16;
        self.buf[2..4].copy_from_slice(&len.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn hex(s: &str) -> Vec<u8> {
        let clean: String = s.split_whitespace().collect();
        ::hex::decode(clean).expect("test vector is valid hex")
    }

    // RFC 5769 §2.1 Sample Request, short-term credentials.
    const SAMPLE_REQUEST: &str = "
        00010058 2112a442 b7e7a701 bc34d686 fa87dfae
        80220010 5354554e 20746573 7420636c 69656e74
        00240004 6e0001ff
        80290008 932ff9b1 51263b36
        00060009 6576746a 3a683676 59202020
        00080014 9aeaa70c bfd8cb56 781ef2b5 b2d3f249 c1b571a2
        80280004 e57a3bcf";
    // RFC 5769 §2.2 Sample IPv4 Response.
    const SAMPLE_IPV4_RESPONSE: &str = "
        0101003c 2112a442 b7e7a701 bc34d686 fa87dfae
        8022000b 74657374 20766563 746f7220
        00200008 0001a147 e112a643
        00080014 2b91f599 fd9e90c3 8c7489f9 2af9ba53 f06be7d7
        80280004 c07d4c96";
    // RFC 5769 §2.3 Sample IPv6 Response.
    const SAMPLE_IPV6_RESPONSE: &str = "
        01010048 2112a442 b7e7a701 bc34d686 fa87dfae
        8022000b 74657374 20766563 746f7220
        00200014 0002a147 0113a9fa a5d3f179 bc25f4b5 bed2b9d9
        00080014 a382954e 4be67bf1 1784c97c 8292c275 bfe3ed41
        80280004 c8fb0b4c";
    // RFC 5769 §2.4 Sample Request with Long-Term Authentication.
    const SAMPLE_LONG_TERM: &str = "
        00010060 2112a442 78ad3433 c6ad72c0 29da412e
        00060012 e3839ee3 8388e383 aae38383 e382afe3 82b90000
        0015001c 662f2f34 39396b39 35346436 4f4c3334 6f4c3946 53547679 36347341
        0014000b 6578616d 706c652e 6f726700
        00080014 f6702465 6dd64a3e 02b8e071 2e85c9a2 8ca89666";
    const SHORT_TERM_PASSWORD: &[u8] = b"VOkJxbRl1RmTxUk/WvJxBt";

    #[test]
    fn rfc5769_sample_request_decodes_and_verifies() {
        let raw = hex(SAMPLE_REQUEST);
        let m = Message::decode(&raw).unwrap();
        assert_eq!(m.class(), Class::Request);
        assert_eq!(m.method(), Method::BINDING);
        assert_eq!(m.username(), Some("evtj:h6vY"));
        assert!(m.has_fingerprint());
        assert!(m.attributes().contains(&Attribute::Software("STUN test client")));
        assert!(m.attributes().contains(&Attribute::Priority(0x6e0001ff)));
        assert!(m.attributes().contains(&Attribute::IceControlled(0x932ff9b151263b36)));
        // Short-term credential: the key is the password itself (RFC 8489 §9.1.1).
        assert!(m.verify_integrity(SHORT_TERM_PASSWORD));
        assert!(!m.verify_integrity(b"wrong"));
    }

    #[test]
    fn rfc5769_ipv4_response_decodes_and_reencodes_byte_exact() {
        let raw = hex(SAMPLE_IPV4_RESPONSE);
        let m = Message::decode(&raw).unwrap();
        let addr: SocketAddr = "192.0.2.1:32853".parse().unwrap();
        assert_eq!(m.class(), Class::Success);
        assert!(m.attributes().contains(&Attribute::XorMappedAddress(addr)));
        assert!(m.verify_integrity(SHORT_TERM_PASSWORD));

        // Golden encode: the same attributes give the same bytes. The RFC pads
        // SOFTWARE with a space; we pad with zero, so patch that byte first.
        let mut b = MessageBuilder::new(Class::Success, Method::BINDING, m.transaction_id());
        b.add(&Attribute::Software("test vector"))
            .add(&Attribute::XorMappedAddress(addr))
            .add_integrity(IntegrityKind::Sha1, SHORT_TERM_PASSWORD)
            .add_fingerprint();
        let ours = b.finish();
        let mut expect = raw.clone();
        expect[35] = 0;
        let ours_m = Message::decode(&ours).unwrap();
        assert!(ours_m.verify_integrity(SHORT_TERM_PASSWORD));
        // Integrity covers the padding byte, so compare up to MESSAGE-INTEGRITY.
        assert_eq!(&ours[..52], &expect[..52]);
        assert_eq!(ours.len(), raw.len());
    }

    #[test]
    fn rfc5769_ipv6_response() {
        let raw = hex(SAMPLE_IPV6_RESPONSE);
        let m = Message::decode(&raw).unwrap();
        let addr: SocketAddr = "[2001:db8:1234:5678:11:2233:4455:6677]:32853".parse().unwrap();
        assert!(m.attributes().contains(&Attribute::XorMappedAddress(addr)));
        assert!(m.verify_integrity(SHORT_TERM_PASSWORD));
        // XOR-MAPPED-ADDRESS encoding is byte-exact.
        let mut b = MessageBuilder::new(Class::Success, Method::BINDING, m.transaction_id());
        b.add(&Attribute::XorMappedAddress(addr));
        assert_eq!(&b.finish()[20..44], &raw[36..60]);
    }

    #[test]
    fn rfc5769_long_term_request() {
        let raw = hex(SAMPLE_LONG_TERM);
        let m = Message::decode(&raw).unwrap();
        assert_eq!(m.username(), Some("\u{30DE}\u{30C8}\u{30EA}\u{30C3}\u{30AF}\u{30B9}"));
        assert_eq!(m.nonce(), Some("f//499k954d6OL34oL9FSTvy64sA"));
        assert_eq!(m.realm(), Some("example.org"));
        // key = MD5(username ":" realm ":" SASLprep(password)), RFC 8489 §9.2.2.
        let key = md5_key(m.username().unwrap(), "example.org", "TheMatrIX");
        assert!(m.verify_integrity(&key));
        assert!(!m.has_fingerprint());
    }

    fn md5_key(u: &str, r: &str, p: &str) -> [u8; 16] {
        use md5::{Digest, Md5};
        Md5::digest(format!("{u}:{r}:{p}").as_bytes()).into()
    }

    #[test]
    fn type_bits_round_trip_for_every_class_and_method() {
        for m in 0..0x1000u16 {
            for c in [Class::Request, Class::Indication, Class::Success, Class::Error] {
                assert_eq!(split_type(join_type(c, Method(m))), (c, Method(m)));
            }
        }
        // RFC 8489 §5: Binding success is 0x0101, Allocate error 0x0113.
        assert_eq!(join_type(Class::Success, Method::BINDING), 0x0101);
        assert_eq!(join_type(Class::Error, Method::ALLOCATE), 0x0113);
        assert_eq!(join_type(Class::Indication, Method::SEND), 0x0016);
    }

    #[test]
    fn fingerprint_mismatch_is_an_error_with_header() {
        let mut raw = hex(SAMPLE_REQUEST);
        let last = raw.len() - 1;
        raw[last] ^= 1;
        let e = Message::decode(&raw).unwrap_err();
        assert!(matches!(e, DecodeError::BadFingerprint { .. }));
        assert_eq!(e.header().unwrap().method, Method::BINDING);
    }

    #[test]
    fn nothing_may_follow_fingerprint() {
        // RFC 8489 §14.7: FINGERPRINT MUST be the last attribute.
        let mut b = MessageBuilder::new(Class::Request, Method::BINDING, TransactionId([1; 12]));
        b.add_fingerprint();
        b.add(&Attribute::Software("x"));
        let raw = b.finish();
        assert!(matches!(
            Message::decode(&raw),
            Err(DecodeError::BadAttribute {
                reason: "attribute after FINGERPRINT",
                ..
            })
        ));
    }

    #[test]
    fn attributes_after_integrity_are_ignored() {
        // RFC 8489 §14.5: agents MUST ignore all other attributes that follow MESSAGE-INTEGRITY.
        let mut b = MessageBuilder::new(Class::Request, Method::BINDING, TransactionId([1; 12]));
        b.add(&Attribute::Username("u"))
            .add_integrity(IntegrityKind::Sha1, b"k");
        b.add(&Attribute::Software("injected"));
        let raw = b.finish();
        let m = Message::decode(&raw).unwrap();
        assert_eq!(m.attributes(), &[Attribute::Username("u")]);
    }

    #[test]
    fn unknown_comprehension_required_attributes_are_reported() {
        let mut b = MessageBuilder::new(Class::Request, Method::ALLOCATE, TransactionId([2; 12]));
        b.add(&Attribute::Other {
            typ: 0x7777,
            value: b"zz",
        });
        b.add(&Attribute::Other {
            typ: 0xC001,
            value: b"optional",
        });
        let raw = b.finish();
        let m = Message::decode(&raw).unwrap();
        assert_eq!(m.unknown_required(), &[0x7777]);
    }

    #[test]
    fn sha256_integrity_round_trips() {
        let key = md5_key("alice", "realm", "pw");
        let mut b = MessageBuilder::new(Class::Request, Method::ALLOCATE, TransactionId([3; 12]));
        b.add(&Attribute::Username("alice"))
            .add_integrity(IntegrityKind::Sha256, &key)
            .add_fingerprint();
        let raw = b.finish();
        let m = Message::decode(&raw).unwrap();
        assert_eq!(m.integrity_kind(), Some(IntegrityKind::Sha256));
        assert!(m.verify_integrity(&key));
        assert!(!m.verify_integrity(&[0u8; 16]));
    }

    #[test]
    fn truncations_and_garbage_are_errors_not_panics() {
        let raw = hex(SAMPLE_LONG_TERM);
        for n in 0..raw.len() {
            assert!(Message::decode(&raw[..n]).is_err(), "prefix of {n} bytes accepted");
        }
        let mut bad_cookie = raw.clone();
        bad_cookie[4] = 0;
        assert_eq!(Message::decode(&bad_cookie).unwrap_err(), DecodeError::NotStun);
        let mut trailing = raw.clone();
        trailing.extend_from_slice(&[0; 4]);
        assert!(matches!(Message::decode(&trailing), Err(DecodeError::BadLength(_))));
    }

    #[test]
    fn tcp_framing_handles_stun_and_padded_channel_data() {
        let raw = hex(SAMPLE_REQUEST);
        assert_eq!(tcp_frame_len(&raw[..3]), Ok(None));
        assert_eq!(tcp_frame_len(&raw[..50]), Ok(None));
        assert_eq!(tcp_frame_len(&raw), Ok(Some(raw.len())));
        // ChannelData with 5 bytes of data takes 4 + 8 bytes over TCP (RFC 8656 §12.5).
        let cd = [0x40, 0x00, 0x00, 0x05, 1, 2, 3, 4, 5, 0, 0, 0, 0xAA];
        assert_eq!(tcp_frame_len(&cd[..11]), Ok(None));
        assert_eq!(tcp_frame_len(&cd), Ok(Some(12)));
        assert_eq!(tcp_frame_len(&[0x80, 0, 0, 0]), Err(FramingError::UnknownFrame(0x80)));
        assert_eq!(tcp_frame_len(&[0x00, 1, 0, 3]), Err(FramingError::UnalignedLength(3)));
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let _ = Message::decode(&bytes);
            let _ = tcp_frame_len(&bytes);
            let _ = ChannelData::decode(&bytes);
        }

        #[test]
        fn decode_never_panics_on_stun_shaped_input(
            typ in 0u16..0x3FFF,
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
        ) {
            let len = body.len() & !3;
            let mut raw = Vec::new();
            raw.extend_from_slice(&typ.to_be_bytes());
            raw.extend_from_slice(&(len as u16).to_be_bytes());
            raw.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
            raw.extend_from_slice(&[9; 12]);
            raw.extend_from_slice(&body[..len]);
            let _ = Message::decode(&raw);
        }

        #[test]
        fn built_messages_decode_to_what_was_built(
            user in "[a-z0-9:]{1,40}",
            lifetime in proptest::num::u32::ANY,
            port in 1u16..,
            v4 in proptest::num::u32::ANY,
            data in proptest::collection::vec(proptest::num::u8::ANY, 0..200),
        ) {
            let peer = SocketAddr::from((std::net::Ipv4Addr::from(v4), port));
            let mut b = MessageBuilder::new(Class::Indication, Method::SEND, TransactionId([7; 12]));
            b.add(&Attribute::Username(&user))
                .add(&Attribute::Lifetime(lifetime))
                .add(&Attribute::XorPeerAddress(peer))
                .add(&Attribute::Data(&data))
                .add_integrity(IntegrityKind::Sha1, b"key")
                .add_fingerprint();
            let raw = b.finish();
            let m = Message::decode(&raw).unwrap();
            proptest::prop_assert_eq!(m.username(), Some(user.as_str()));
            proptest::prop_assert_eq!(m.lifetime(), Some(lifetime));
            proptest::prop_assert_eq!(m.peer_addresses().collect::<Vec<_>>(), vec![peer]);
            proptest::prop_assert_eq!(m.data(), Some(&data[..]));
            proptest::prop_assert!(m.verify_integrity(b"key"));
        }
    }
}
