//! STUN and TURN attributes (RFC 8489 §14, RFC 8656 §18, RFC 8445 §16.1).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::{TransactionId, MAGIC_COOKIE};

/// MAPPED-ADDRESS.
pub const MAPPED_ADDRESS: u16 = 0x0001;
/// USERNAME.
pub const USERNAME: u16 = 0x0006;
/// MESSAGE-INTEGRITY.
pub const MESSAGE_INTEGRITY: u16 = 0x0008;
/// ERROR-CODE.
pub const ERROR_CODE: u16 = 0x0009;
/// UNKNOWN-ATTRIBUTES.
pub const UNKNOWN_ATTRIBUTES: u16 = 0x000A;
/// CHANNEL-NUMBER.
pub const CHANNEL_NUMBER: u16 = 0x000C;
/// LIFETIME.
pub const LIFETIME: u16 = 0x000D;
/// XOR-PEER-ADDRESS.
pub const XOR_PEER_ADDRESS: u16 = 0x0012;
/// DATA.
pub const DATA: u16 = 0x0013;
/// REALM.
pub const REALM: u16 = 0x0014;
/// NONCE.
pub const NONCE: u16 = 0x0015;
/// XOR-RELAYED-ADDRESS.
pub const XOR_RELAYED_ADDRESS: u16 = 0x0016;
/// REQUESTED-ADDRESS-FAMILY.
pub const REQUESTED_ADDRESS_FAMILY: u16 = 0x0017;
/// EVEN-PORT.
pub const EVEN_PORT: u16 = 0x0018;
/// REQUESTED-TRANSPORT.
pub const REQUESTED_TRANSPORT: u16 = 0x0019;
/// DONT-FRAGMENT.
pub const DONT_FRAGMENT: u16 = 0x001A;
/// MESSAGE-INTEGRITY-SHA256.
pub const MESSAGE_INTEGRITY_SHA256: u16 = 0x001C;
/// PASSWORD-ALGORITHM.
pub const PASSWORD_ALGORITHM: u16 = 0x001D;
/// USERHASH.
pub const USERHASH: u16 = 0x001E;
/// XOR-MAPPED-ADDRESS.
pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
/// RESERVATION-TOKEN.
pub const RESERVATION_TOKEN: u16 = 0x0022;
/// PRIORITY (ICE).
pub const PRIORITY: u16 = 0x0024;
/// USE-CANDIDATE (ICE).
pub const USE_CANDIDATE: u16 = 0x0025;
/// ADDITIONAL-ADDRESS-FAMILY.
pub const ADDITIONAL_ADDRESS_FAMILY: u16 = 0x8000;
/// ADDRESS-ERROR-CODE.
pub const ADDRESS_ERROR_CODE: u16 = 0x8001;
/// SOFTWARE.
pub const SOFTWARE: u16 = 0x8022;
/// ALTERNATE-SERVER.
pub const ALTERNATE_SERVER: u16 = 0x8023;
/// FINGERPRINT.
pub const FINGERPRINT: u16 = 0x8028;
/// ICE-CONTROLLED.
pub const ICE_CONTROLLED: u16 = 0x8029;
/// ICE-CONTROLLING.
pub const ICE_CONTROLLING: u16 = 0x802A;
/// RESPONSE-ORIGIN.
pub const RESPONSE_ORIGIN: u16 = 0x802B;

/// RFC 8489 §14: types 0x0000-0x7FFF are comprehension-required.
pub fn is_comprehension_required(typ: u16) -> bool {
    typ < 0x8000
}

/// A name for logs and errors.
pub fn name(typ: u16) -> &'static str {
    match typ {
        MAPPED_ADDRESS => "MAPPED-ADDRESS",
        USERNAME => "USERNAME",
        MESSAGE_INTEGRITY => "MESSAGE-INTEGRITY",
        ERROR_CODE => "ERROR-CODE",
        UNKNOWN_ATTRIBUTES => "UNKNOWN-ATTRIBUTES",
        CHANNEL_NUMBER => "CHANNEL-NUMBER",
        LIFETIME => "LIFETIME",
        XOR_PEER_ADDRESS => "XOR-PEER-ADDRESS",
        DATA => "DATA",
        REALM => "REALM",
        NONCE => "NONCE",
        XOR_RELAYED_ADDRESS => "XOR-RELAYED-ADDRESS",
        REQUESTED_ADDRESS_FAMILY => "REQUESTED-ADDRESS-FAMILY",
        EVEN_PORT => "EVEN-PORT",
        REQUESTED_TRANSPORT => "REQUESTED-TRANSPORT",
        DONT_FRAGMENT => "DONT-FRAGMENT",
        MESSAGE_INTEGRITY_SHA256 => "MESSAGE-INTEGRITY-SHA256",
        PASSWORD_ALGORITHM => "PASSWORD-ALGORITHM",
        USERHASH => "USERHASH",
        XOR_MAPPED_ADDRESS => "XOR-MAPPED-ADDRESS",
        RESERVATION_TOKEN => "RESERVATION-TOKEN",
        PRIORITY => "PRIORITY",
        USE_CANDIDATE => "USE-CANDIDATE",
        ADDITIONAL_ADDRESS_FAMILY => "ADDITIONAL-ADDRESS-FAMILY",
        ADDRESS_ERROR_CODE => "ADDRESS-ERROR-CODE",
        SOFTWARE => "SOFTWARE",
        ALTERNATE_SERVER => "ALTERNATE-SERVER",
        FINGERPRINT => "FINGERPRINT",
        ICE_CONTROLLED => "ICE-CONTROLLED",
        ICE_CONTROLLING => "ICE-CONTROLLING",
        RESPONSE_ORIGIN => "RESPONSE-ORIGIN",
        _ => "unknown",
    }
}

/// An address family as carried by REQUESTED-ADDRESS-FAMILY and friends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    /// 0x01.
    V4,
    /// 0x02.
    V6,
}

impl Family {
    /// The family of an address.
    pub fn of(ip: IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
    fn code(self) -> u8 {
        match self {
            Family::V4 => 1,
            Family::V6 => 2,
        }
    }
    fn from_code(c: u8) -> Option<Family> {
        match c {
            1 => Some(Family::V4),
            2 => Some(Family::V6),
            _ => None,
        }
    }
}

/// ERROR-CODE value (RFC 8489 §14.8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ErrorCode<'a> {
    /// 300..=699.
    pub code: u16,
    /// Human-readable reason phrase.
    pub reason: &'a str,
}

impl ErrorCode<'static> {
    /// 300 Try Alternate.
    pub const TRY_ALTERNATE: Self = Self {
        code: 300,
        reason: "Try Alternate",
    };
    /// 400 Bad Request.
    pub const BAD_REQUEST: Self = Self {
        code: 400,
        reason: "Bad Request",
    };
    /// 401 Unauthenticated.
    pub const UNAUTHORIZED: Self = Self {
        code: 401,
        reason: "Unauthorized",
    };
    /// 403 Forbidden.
    pub const FORBIDDEN: Self = Self {
        code: 403,
        reason: "Forbidden",
    };
    /// 420 Unknown Attribute.
    pub const UNKNOWN_ATTRIBUTE: Self = Self {
        code: 420,
        reason: "Unknown Attribute",
    };
    /// 437 Allocation Mismatch.
    pub const ALLOCATION_MISMATCH: Self = Self {
        code: 437,
        reason: "Allocation Mismatch",
    };
    /// 438 Stale Nonce.
    pub const STALE_NONCE: Self = Self {
        code: 438,
        reason: "Stale Nonce",
    };
    /// 440 Address Family not Supported.
    pub const ADDRESS_FAMILY_NOT_SUPPORTED: Self = Self {
        code: 440,
        reason: "Address Family not Supported",
    };
    /// 441 Wrong Credentials.
    pub const WRONG_CREDENTIALS: Self = Self {
        code: 441,
        reason: "Wrong Credentials",
    };
    /// 442 Unsupported Transport Protocol.
    pub const UNSUPPORTED_TRANSPORT: Self = Self {
        code: 442,
        reason: "Unsupported Transport Protocol",
    };
    /// 443 Peer Address Family Mismatch.
    pub const PEER_ADDRESS_FAMILY_MISMATCH: Self = Self {
        code: 443,
        reason: "Peer Address Family Mismatch",
    };
    /// 486 Allocation Quota Reached.
    pub const ALLOCATION_QUOTA_REACHED: Self = Self {
        code: 486,
        reason: "Allocation Quota Reached",
    };
    /// 500 Server Error.
    pub const SERVER_ERROR: Self = Self {
        code: 500,
        reason: "Server Error",
    };
    /// 508 Insufficient Capacity.
    pub const INSUFFICIENT_CAPACITY: Self = Self {
        code: 508,
        reason: "Insufficient Capacity",
    };
}

/// One attribute, borrowing its variable-length parts from the packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attribute<'a> {
    /// MAPPED-ADDRESS (legacy, not XORed).
    MappedAddress(SocketAddr),
    /// XOR-MAPPED-ADDRESS: the reflexive address.
    XorMappedAddress(SocketAddr),
    /// XOR-PEER-ADDRESS: a peer of an allocation.
    XorPeerAddress(SocketAddr),
    /// XOR-RELAYED-ADDRESS: the relayed transport address.
    XorRelayedAddress(SocketAddr),
    /// RESPONSE-ORIGIN.
    ResponseOrigin(SocketAddr),
    /// ALTERNATE-SERVER.
    AlternateServer(SocketAddr),
    /// USERNAME (at most 512 bytes, RFC 8489 §14.3).
    Username(&'a str),
    /// REALM (fewer than 128 characters).
    Realm(&'a str),
    /// NONCE (fewer than 128 characters).
    Nonce(&'a str),
    /// SOFTWARE.
    Software(&'a str),
    /// ERROR-CODE.
    ErrorCode(ErrorCode<'a>),
    /// UNKNOWN-ATTRIBUTES: the types, as 16-bit values.
    UnknownAttributes(&'a [u8]),
    /// LIFETIME in seconds.
    Lifetime(u32),
    /// REQUESTED-TRANSPORT protocol number (17 = UDP).
    RequestedTransport(u8),
    /// REQUESTED-ADDRESS-FAMILY.
    RequestedAddressFamily(Family),
    /// ADDITIONAL-ADDRESS-FAMILY (RFC 8656 §18.12).
    AdditionalAddressFamily(Family),
    /// CHANNEL-NUMBER (raw).
    ChannelNumber(u16),
    /// DATA.
    Data(&'a [u8]),
    /// EVEN-PORT with its R bit.
    EvenPort(bool),
    /// DONT-FRAGMENT.
    DontFragment,
    /// RESERVATION-TOKEN.
    ReservationToken([u8; 8]),
    /// PRIORITY (ICE).
    Priority(u32),
    /// USE-CANDIDATE (ICE).
    UseCandidate,
    /// ICE-CONTROLLED tie breaker.
    IceControlled(u64),
    /// ICE-CONTROLLING tie breaker.
    IceControlling(u64),
    /// Any attribute we carry without interpreting (comprehension-optional ones on decode).
    Other {
        /// Type.
        typ: u16,
        /// Value.
        value: &'a [u8],
    },
}

type Result<T> = std::result::Result<T, &'static str>;

impl<'a> Attribute<'a> {
    /// Decode one attribute value. `Ok(None)` means an unknown type.
    pub(crate) fn decode(typ: u16, v: &'a [u8], tid: &TransactionId) -> Result<Option<Self>> {
        Ok(Some(match typ {
            MAPPED_ADDRESS => Attribute::MappedAddress(decode_addr(v, None)?),
            XOR_MAPPED_ADDRESS => Attribute::XorMappedAddress(decode_addr(v, Some(tid))?),
            XOR_PEER_ADDRESS => Attribute::XorPeerAddress(decode_addr(v, Some(tid))?),
            XOR_RELAYED_ADDRESS => Attribute::XorRelayedAddress(decode_addr(v, Some(tid))?),
            RESPONSE_ORIGIN => Attribute::ResponseOrigin(decode_addr(v, None)?),
            ALTERNATE_SERVER => Attribute::AlternateServer(decode_addr(v, None)?),
            USERNAME => Attribute::Username(text(v, 513)?),
            REALM => Attribute::Realm(text(v, 763)?),
            NONCE => Attribute::Nonce(text(v, 763)?),
            SOFTWARE => Attribute::Software(text(v, 763)?),
            ERROR_CODE => {
                if v.len() < 4 {
                    return Err("shorter than 4 bytes");
                }
                let class = u16::from(v[2] & 0x07);
                let number = u16::from(v[3]);
                if !(3..=6).contains(&class) || number > 99 {
                    return Err("code out of range 300..=699");
                }
                Attribute::ErrorCode(ErrorCode {
                    code: class * 100 + number,
                    reason: text(&v[4..], 763)?,
                })
            }
            UNKNOWN_ATTRIBUTES => {
                if !v.len().is_multiple_of(2) {
                    return Err("odd length");
                }
                Attribute::UnknownAttributes(v)
            }
            LIFETIME => Attribute::Lifetime(u32::from_be_bytes(fixed(v)?)),
            REQUESTED_TRANSPORT => {
                let b: [u8; 4] = fixed(v)?;
                Attribute::RequestedTransport(b[0])
            }
            REQUESTED_ADDRESS_FAMILY | ADDITIONAL_ADDRESS_FAMILY => {
                let b: [u8; 4] = fixed(v)?;
                let f = Family::from_code(b[0]).ok_or("unknown address family")?;
                if typ == REQUESTED_ADDRESS_FAMILY {
                    Attribute::RequestedAddressFamily(f)
                } else {
                    Attribute::AdditionalAddressFamily(f)
                }
            }
            CHANNEL_NUMBER => {
                let b: [u8; 4] = fixed(v)?;
                Attribute::ChannelNumber(u16::from_be_bytes([b[0], b[1]]))
            }
            DATA => Attribute::Data(v),
            EVEN_PORT => {
                let b: [u8; 1] = fixed(v)?;
                Attribute::EvenPort(b[0] & 0x80 != 0)
            }
            DONT_FRAGMENT => {
                let _: [u8; 0] = fixed(v)?;
                Attribute::DontFragment
            }
            RESERVATION_TOKEN => Attribute::ReservationToken(fixed(v)?),
            PRIORITY => Attribute::Priority(u32::from_be_bytes(fixed(v)?)),
            USE_CANDIDATE => {
                let _: [u8; 0] = fixed(v)?;
                Attribute::UseCandidate
            }
            ICE_CONTROLLED => Attribute::IceControlled(u64::from_be_bytes(fixed(v)?)),
            ICE_CONTROLLING => Attribute::IceControlling(u64::from_be_bytes(fixed(v)?)),
            _ => return Ok(None),
        }))
    }

    /// The attribute type.
    pub fn typ(&self) -> u16 {
        match self {
            Attribute::MappedAddress(_) => MAPPED_ADDRESS,
            Attribute::XorMappedAddress(_) => XOR_MAPPED_ADDRESS,
            Attribute::XorPeerAddress(_) => XOR_PEER_ADDRESS,
            Attribute::XorRelayedAddress(_) => XOR_RELAYED_ADDRESS,
            Attribute::ResponseOrigin(_) => RESPONSE_ORIGIN,
            Attribute::AlternateServer(_) => ALTERNATE_SERVER,
            Attribute::Username(_) => USERNAME,
            Attribute::Realm(_) => REALM,
            Attribute::Nonce(_) => NONCE,
            Attribute::Software(_) => SOFTWARE,
            Attribute::ErrorCode(_) => ERROR_CODE,
            Attribute::UnknownAttributes(_) => UNKNOWN_ATTRIBUTES,
            Attribute::Lifetime(_) => LIFETIME,
            Attribute::RequestedTransport(_) => REQUESTED_TRANSPORT,
            Attribute::RequestedAddressFamily(_) => REQUESTED_ADDRESS_FAMILY,
            Attribute::AdditionalAddressFamily(_) => ADDITIONAL_ADDRESS_FAMILY,
            Attribute::ChannelNumber(_) => CHANNEL_NUMBER,
            Attribute::Data(_) => DATA,
            Attribute::EvenPort(_) => EVEN_PORT,
            Attribute::DontFragment => DONT_FRAGMENT,
            Attribute::ReservationToken(_) => RESERVATION_TOKEN,
            Attribute::Priority(_) => PRIORITY,
            Attribute::UseCandidate => USE_CANDIDATE,
            Attribute::IceControlled(_) => ICE_CONTROLLED,
            Attribute::IceControlling(_) => ICE_CONTROLLING,
            Attribute::Other { typ, .. } => *typ,
        }
    }

    /// Append type, length, value and zero padding to `buf`.
    pub(crate) fn encode(&self, buf: &mut Vec<u8>, tid: &TransactionId) {
        let start = buf.len();
        buf.extend_from_slice(&self.typ().to_be_bytes());
        buf.extend_from_slice(&[0, 0]);
        match self {
            Attribute::MappedAddress(a) | Attribute::ResponseOrigin(a) | Attribute::AlternateServer(a) => {
                encode_addr(buf, *a, None)
            }
            Attribute::XorMappedAddress(a) | Attribute::XorPeerAddress(a) | Attribute::XorRelayedAddress(a) => {
                encode_addr(buf, *a, Some(tid))
            }
            Attribute::Username(s) | Attribute::Realm(s) | Attribute::Nonce(s) | Attribute::Software(s) => {
                buf.extend_from_slice(s.as_bytes())
            }
            Attribute::ErrorCode(e) => {
                buf.extend_from_slice(&[0, 0, (e.code / 100) as u8 & 0x07, (e.code % 100) as u8]);
                buf.extend_from_slice(e.reason.as_bytes());
            }
            Attribute::UnknownAttributes(v) | Attribute::Data(v) => buf.extend_from_slice(v),
            Attribute::Lifetime(l) => buf.extend_from_slice(&l.to_be_bytes()),
            Attribute::RequestedTransport(p) => buf.extend_from_slice(&[*p, 0, 0, 0]),
            Attribute::RequestedAddressFamily(f) | Attribute::AdditionalAddressFamily(f) => {
                buf.extend_from_slice(&[f.code(), 0, 0, 0])
            }
            Attribute::ChannelNumber(c) => {
                buf.extend_from_slice(&c.to_be_bytes());
                buf.extend_from_slice(&[0, 0]);
            }
            Attribute::EvenPort(r) => buf.push(if *r { 0x80 } else { 0 }),
            Attribute::DontFragment | Attribute::UseCandidate => {}
            Attribute::ReservationToken(t) => buf.extend_from_slice(t),
            Attribute::Priority(p) => buf.extend_from_slice(&p.to_be_bytes()),
            Attribute::IceControlled(t) | Attribute::IceControlling(t) => buf.extend_from_slice(&t.to_be_bytes()),
            Attribute::Other { value, .. } => buf.extend_from_slice(value),
        }
        let len = buf.len() - start - 4;
        // Every value we build is bounded well below 64 KiB by its producer; clamp
        // rather than wrap if a caller passes more.
        let len16 = u16::try_from(len).unwrap_or(u16::MAX);
        buf[start + 2..start + 4].copy_from_slice(&len16.to_be_bytes());
        buf.resize(buf.len() + (len.next_multiple_of(4) - len), 0);
    }
}

/// Encode the UNKNOWN-ATTRIBUTES value for `types`.
pub fn unknown_attributes_value(types: &[u16]) -> Vec<u8> {
    types.iter().flat_map(|t| t.to_be_bytes()).collect()
}

fn fixed<const N: usize>(v: &[u8]) -> Result<[u8; N]> {
    v.try_into().map_err(|_| "wrong length")
}

fn text(v: &[u8], max: usize) -> Result<&str> {
    if v.len() > max {
        return Err("too long");
    }
    std::str::from_utf8(v).map_err(|_| "not UTF-8")
}

fn decode_addr(v: &[u8], xor: Option<&TransactionId>) -> Result<SocketAddr> {
    if v.len() < 4 {
        return Err("shorter than 4 bytes");
    }
    let cookie = MAGIC_COOKIE.to_be_bytes();
    let mut port = u16::from_be_bytes([v[2], v[3]]);
    if xor.is_some() {
        port ^= (MAGIC_COOKIE >> 16) as u16;
    }
    let ip = match (v[1], v.len()) {
        (0x01, 8) => {
            let mut b: [u8; 4] = [v[4], v[5], v[6], v[7]];
            if xor.is_some() {
                b.iter_mut().zip(cookie).for_each(|(b, c)| *b ^= c);
            }
            IpAddr::V4(Ipv4Addr::from(b))
        }
        (0x02, 20) => {
            let mut b = [0u8; 16];
            b.copy_from_slice(&v[4..20]);
            if let Some(tid) = xor {
                let key = cookie.iter().chain(tid.0.iter());
                b.iter_mut().zip(key).for_each(|(b, k)| *b ^= k);
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        (0x01 | 0x02, _) => return Err("length does not match the address family"),
        _ => return Err("unknown address family"),
    };
    Ok(SocketAddr::new(ip, port))
}

fn encode_addr(buf: &mut Vec<u8>, a: SocketAddr, xor: Option<&TransactionId>) {
    let cookie = MAGIC_COOKIE.to_be_bytes();
    let port = if xor.is_some() {
        a.port() ^ (MAGIC_COOKIE >> 16) as u16
    } else {
        a.port()
    };
    match a.ip() {
        IpAddr::V4(ip) => {
            buf.extend_from_slice(&[0, 0x01]);
            buf.extend_from_slice(&port.to_be_bytes());
            let mut b = ip.octets();
            if xor.is_some() {
                b.iter_mut().zip(cookie).for_each(|(b, c)| *b ^= c);
            }
            buf.extend_from_slice(&b);
        }
        IpAddr::V6(ip) => {
            buf.extend_from_slice(&[0, 0x02]);
            buf.extend_from_slice(&port.to_be_bytes());
            let mut b = ip.octets();
            if let Some(tid) = xor {
                let key = cookie.iter().chain(tid.0.iter());
                b.iter_mut().zip(key).for_each(|(b, k)| *b ^= k);
            }
            buf.extend_from_slice(&b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_family_and_length_must_agree() {
        let tid = TransactionId([0; 12]);
        assert_eq!(
            decode_addr(&[0, 1, 0, 0, 1, 2, 3], Some(&tid)),
            Err("length does not match the address family")
        );
        assert_eq!(
            decode_addr(&[0, 3, 0, 0, 1, 2, 3, 4], Some(&tid)),
            Err("unknown address family")
        );
    }

    #[test]
    fn error_code_class_and_number() {
        // RFC 8489 §14.8: class 3..6, number 0..99.
        let tid = TransactionId([0; 12]);
        let a = Attribute::decode(ERROR_CODE, &[0, 0, 4, 38, b'x'], &tid)
            .unwrap()
            .unwrap();
        assert_eq!(a, Attribute::ErrorCode(ErrorCode { code: 438, reason: "x" }));
        assert!(Attribute::decode(ERROR_CODE, &[0, 0, 7, 0], &tid).is_err());
        assert!(Attribute::decode(ERROR_CODE, &[0, 0, 4, 100], &tid).is_err());
    }

    #[test]
    fn username_longer_than_rfc_limit_is_refused() {
        // RFC 8489 §14.3: USERNAME MUST contain fewer than 509 bytes... (8489 says < 509 with
        // OpaqueString; 5389 said < 513). We accept up to 513 to interoperate with older clients.
        let tid = TransactionId([0; 12]);
        assert!(Attribute::decode(USERNAME, &[b'a'; 514], &tid).is_err());
        assert!(Attribute::decode(USERNAME, &[b'a'; 500], &tid).is_ok());
    }
}
