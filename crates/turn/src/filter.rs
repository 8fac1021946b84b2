//! Which peers a relay may talk to.
//!
//! A TURN server is an open proxy for its authenticated users, so by default it
//! must refuse to relay into networks the operator never meant to expose:
//! loopback, private ranges, the cloud metadata service, and so on. Addresses
//! are normalised first: `::ffff:127.0.0.1`, `64:ff9b::7f00:1` (NAT64),
//! `2002:7f00:1::` (6to4) and Teredo all embed 127.0.0.1, and coturn's
//! CVE-2020-26262 and CVE-2026-27624 were bypasses through such forms.
//!
//! Decision order, first match wins:
//! 1. an operator `deny` CIDR matching the original or normalised address: refuse;
//! 2. an operator `allow` CIDR matching the original or normalised address: accept;
//! 3. no default-deny range matches the original or normalised address: accept;
//! 4. the address is one of the server's own relay addresses and its port is a relay
//!    socket bound *now* (a live allocation of this server): accept, so two clients of
//!    one server can relay to each other;
//! 5. otherwise refuse with the default-deny range's reason.
//!
//! Step 4 asks the [`LiveRelays`] set, which the cores keep (a port enters when its
//! relay socket is bound and leaves when the allocation goes). A port of the relay
//! range that no allocation holds is an ordinary local port: any process may bind it
//! (the range may overlap the kernel's ephemeral ports), and it must not be reachable.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::{Arc, RwLock};

/// An IP network such as `10.0.0.0/8` or `::1/128`; a bare address is a host route.
/// Host bits below the prefix are cleared on construction (`10.1.2.3/8` is `10.0.0.0/8`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix_len: u8,
}

/// Why a CIDR string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// The address part is not an IPv4 or IPv6 address.
    #[error("{0:?} is not an IP address")]
    BadAddress(String),
    /// The prefix length is not a number.
    #[error("{0:?} is not a prefix length")]
    BadPrefix(String),
    /// The prefix length exceeds 32 (IPv4) or 128 (IPv6).
    #[error("prefix length {len} is longer than {max} bits")]
    PrefixTooLong {
        /// Given.
        len: u8,
        /// Allowed.
        max: u8,
    },
}

impl Cidr {
    /// A network of `prefix_len` bits at `addr`.
    pub fn new(addr: IpAddr, prefix_len: u8) -> Result<Cidr, CidrError> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix_len > max {
            return Err(CidrError::PrefixTooLong { len: prefix_len, max });
        }
        let addr = match addr {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask32(prefix_len))),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask128(prefix_len))),
        };
        Ok(Cidr { addr, prefix_len })
    }

    /// Whether `ip` lies inside (families must match; no normalisation here).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(a)) => u32::from(a) & mask32(self.prefix_len) == u32::from(net),
            (IpAddr::V6(net), IpAddr::V6(a)) => u128::from(a) & mask128(self.prefix_len) == u128::from(net),
            _ => false,
        }
    }

    const fn v4(a: [u8; 4], len: u8) -> Cidr {
        Cidr {
            addr: IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3])),
            prefix_len: len,
        }
    }

    const fn v6(a: [u16; 8], len: u8) -> Cidr {
        Cidr {
            addr: IpAddr::V6(Ipv6Addr::new(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7])),
            prefix_len: len,
        }
    }
}

fn mask32(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    }
}

fn mask128(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len))
    }
}

impl FromStr for Cidr {
    type Err = CidrError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let ip: IpAddr = addr.parse().map_err(|_| CidrError::BadAddress(addr.to_owned()))?;
        let len = match len {
            Some(l) => l.parse::<u8>().map_err(|_| CidrError::BadPrefix(l.to_owned()))?,
            None if ip.is_ipv4() => 32,
            None => 128,
        };
        Cidr::new(ip, len)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// Why a peer was refused; `as_str` is the metrics label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// The operator's `--deny-peer`.
    OperatorDenied,
    /// 0.0.0.0/8 or `::`.
    Unspecified,
    /// 127.0.0.0/8 or `::1`.
    Loopback,
    /// RFC 1918 or IPv6 unique-local fc00::/7.
    Private,
    /// RFC 6598 carrier-grade NAT 100.64.0.0/10.
    Cgnat,
    /// 169.254.0.0/16 (incl. the 169.254.169.254 metadata service) or fe80::/10.
    LinkLocal,
    /// 224.0.0.0/4 or ff00::/8.
    Multicast,
    /// 192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32, 3fff::/20.
    Documentation,
    /// 198.18.0.0/15 benchmarking.
    Benchmarking,
    /// NAT64 prefixes 64:ff9b::/96 and 64:ff9b:1::/48.
    Nat64,
    /// IETF-reserved, broadcast, discard-only and other special-purpose space.
    Reserved,
}

impl Refusal {
    /// snake_case label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::OperatorDenied => "operator_denied",
            Refusal::Unspecified => "unspecified",
            Refusal::Loopback => "loopback",
            Refusal::Private => "private",
            Refusal::Cgnat => "cgnat",
            Refusal::LinkLocal => "link_local",
            Refusal::Multicast => "multicast",
            Refusal::Documentation => "documentation",
            Refusal::Benchmarking => "benchmarking",
            Refusal::Nat64 => "nat64",
            Refusal::Reserved => "reserved",
        }
    }
}

/// The default deny list (RFC 6890 special-purpose registries, trimmed to what a relay must not reach).
const DEFAULT_DENY: &[(Cidr, Refusal)] = &[
    (Cidr::v4([0, 0, 0, 0], 8), Refusal::Unspecified),
    (Cidr::v4([10, 0, 0, 0], 8), Refusal::Private),
    (Cidr::v4([100, 64, 0, 0], 10), Refusal::Cgnat),
    (Cidr::v4([127, 0, 0, 0], 8), Refusal::Loopback),
    (Cidr::v4([169, 254, 0, 0], 16), Refusal::LinkLocal),
    (Cidr::v4([172, 16, 0, 0], 12), Refusal::Private),
    // IETF protocol assignments (DS-Lite B4, NAT64 discovery ...): never a media peer.
    (Cidr::v4([192, 0, 0, 0], 24), Refusal::Reserved),
    (Cidr::v4([192, 0, 2, 0], 24), Refusal::Documentation),
    // Deprecated 6to4 relay anycast (RFC 7526).
    (Cidr::v4([192, 88, 99, 0], 24), Refusal::Reserved),
    (Cidr::v4([192, 168, 0, 0], 16), Refusal::Private),
    (Cidr::v4([198, 18, 0, 0], 15), Refusal::Benchmarking),
    (Cidr::v4([198, 51, 100, 0], 24), Refusal::Documentation),
    (Cidr::v4([203, 0, 113, 0], 24), Refusal::Documentation),
    (Cidr::v4([224, 0, 0, 0], 4), Refusal::Multicast),
    // 240/4 reserved, which also covers 255.255.255.255 broadcast.
    (Cidr::v4([240, 0, 0, 0], 4), Refusal::Reserved),
    (Cidr::v6([0, 0, 0, 0, 0, 0, 0, 0], 128), Refusal::Unspecified),
    (Cidr::v6([0, 0, 0, 0, 0, 0, 0, 1], 128), Refusal::Loopback),
    // IPv4-translated ::ffff:0:a.b.c.d (RFC 2765, SIIT): never on the wire as a peer.
    (Cidr::v6([0, 0, 0, 0, 0xffff, 0, 0, 0], 96), Refusal::Reserved),
    (Cidr::v6([0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96), Refusal::Nat64),
    (Cidr::v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48), Refusal::Nat64),
    // Discard-only prefix (RFC 6666).
    (Cidr::v6([0x100, 0, 0, 0, 0, 0, 0, 0], 64), Refusal::Reserved),
    // Dummy IPv6 prefix (RFC 9780).
    (Cidr::v6([0x100, 0, 0, 1, 0, 0, 0, 0], 64), Refusal::Reserved),
    // Benchmarking (RFC 5180), then the rest of the IETF protocol assignments 2001::/23
    // (Teredo, PCP/TURN anycast, AMT, AS112, ORCHID, ORCHIDv2, DRIP; eturnal denies the
    // whole block too): none is a media peer.
    (Cidr::v6([0x2001, 2, 0, 0, 0, 0, 0, 0], 48), Refusal::Benchmarking),
    (Cidr::v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 23), Refusal::Reserved),
    (Cidr::v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32), Refusal::Documentation),
    // Documentation (RFC 9637).
    (Cidr::v6([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20), Refusal::Documentation),
    // SRv6 segment identifiers (RFC 9602): not host addresses.
    (Cidr::v6([0x5f00, 0, 0, 0, 0, 0, 0, 0], 16), Refusal::Reserved),
    (Cidr::v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7), Refusal::Private),
    (Cidr::v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10), Refusal::LinkLocal),
    // Deprecated site-local: still private in practice.
    (Cidr::v6([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10), Refusal::Private),
    (Cidr::v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8), Refusal::Multicast),
];

/// The default-deny range that holds all of `c`, with its reason; `None` when part of
/// `c` (or all of it) is reachable by default. For tools that translate other servers'
/// deny lists (`firstcall import-coturn`): a range inside one of these needs no
/// `--deny-peer`. Addresses are taken as written, not normalised.
pub fn default_denied(c: &Cidr) -> Option<Refusal> {
    DEFAULT_DENY
        .iter()
        .find(|(d, _)| d.prefix_len <= c.prefix_len && d.contains(c.addr))
        .map(|(_, r)| *r)
}

/// The IPv4 address embedded in an IPv6 address by a translation or tunnelling
/// scheme, or the address unchanged.
pub fn normalise(ip: IpAddr) -> IpAddr {
    let IpAddr::V6(v6) = ip else { return ip };
    let bits = u128::from(v6);
    let seg = v6.segments();
    let low32 = Ipv4Addr::from(bits as u32);
    // ::ffff:a.b.c.d (mapped) and ::a.b.c.d (deprecated compatible; but not :: and ::1).
    if bits >> 32 == 0xffff || (bits >> 32 == 0 && bits > 1) {
        return IpAddr::V4(low32);
    }
    // NAT64 well-known and local-use prefixes (RFC 6052, RFC 8215).
    if bits >> 32 == 0x0064_ff9b_0000_0000_0000_0000 || (seg[0] == 0x64 && seg[1] == 0xff9b && seg[2] == 1) {
        return IpAddr::V4(low32);
    }
    // 6to4 2002:AABB:CCDD::/16 embeds AA.BB.CC.DD (RFC 3056).
    if seg[0] == 0x2002 {
        return IpAddr::V4(Ipv4Addr::from(((u32::from(seg[1])) << 16) | u32::from(seg[2])));
    }
    // Teredo 2001:0000::/32: the client's address is the bitwise NOT of the low 32 bits (RFC 4380).
    if seg[0] == 0x2001 && seg[1] == 0 {
        return IpAddr::V4(Ipv4Addr::from(!(bits as u32)));
    }
    ip
}

/// The relay ports that have a bound relay socket now, shared by every core of one
/// server (each core inserts and removes its own ports).
#[derive(Debug, Default)]
pub struct LiveRelays(RwLock<HashSet<u16>>);

impl LiveRelays {
    /// A relay socket was bound on `port`.
    pub fn insert(&self, port: u16) {
        self.0.write().unwrap_or_else(|e| e.into_inner()).insert(port);
    }
    /// The relay socket on `port` is closed.
    pub fn remove(&self, port: u16) {
        self.0.write().unwrap_or_else(|e| e.into_inner()).remove(&port);
    }
    /// Whether a relay socket is bound on `port` now.
    pub fn contains(&self, port: u16) -> bool {
        self.0.read().unwrap_or_else(|e| e.into_inner()).contains(&port)
    }
    /// How many relay sockets are bound now.
    pub fn len(&self) -> usize {
        self.0.read().unwrap_or_else(|e| e.into_inner()).len()
    }
    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The peer filter: default deny list plus operator adjustments. Clones share one
/// [`LiveRelays`] set.
#[derive(Clone, Debug, Default)]
pub struct PeerFilter {
    allow: Vec<Cidr>,
    deny: Vec<Cidr>,
    own_ips: Vec<IpAddr>,
    live: Arc<LiveRelays>,
}

impl PeerFilter {
    /// Default deny list on, with `allow` exceptions and extra `deny` ranges.
    pub fn new(allow: Vec<Cidr>, deny: Vec<Cidr>) -> Self {
        PeerFilter {
            allow,
            deny,
            own_ips: vec![],
            live: Arc::default(),
        }
    }

    /// The server's own relay addresses (the relay and the advertised address): these
    /// IPs stay reachable on the ports in [`PeerFilter::live_relays`], and only there.
    pub fn with_own_relays(mut self, ips: impl IntoIterator<Item = IpAddr>) -> Self {
        self.own_ips = ips
            .into_iter()
            .map(normalise)
            .filter(|ip| !ip.is_unspecified())
            .collect();
        self.own_ips.sort();
        self.own_ips.dedup();
        self
    }

    /// The set of relay ports bound now; the cores keep it up to date.
    pub fn live_relays(&self) -> &Arc<LiveRelays> {
        &self.live
    }

    /// Whether `ip` (normalised) is one of the server's own relay addresses. Cheap: the
    /// cores ask it for every datagram to or from a peer, and only for those ask the
    /// live set.
    #[inline]
    pub fn is_own_ip(&self, ip: IpAddr) -> bool {
        !self.own_ips.is_empty() && self.own_ips.contains(&normalise(ip))
    }

    /// Accept or refuse relaying to `peer`.
    pub fn check(&self, peer: SocketAddr) -> Result<(), Refusal> {
        let orig = peer.ip();
        let norm = normalise(orig);
        let hit = |c: &Cidr| c.contains(orig) || c.contains(norm);
        if self.deny.iter().any(hit) {
            return Err(Refusal::OperatorDenied);
        }
        if self.allow.iter().any(hit) {
            return Ok(());
        }
        match DEFAULT_DENY.iter().find(|(c, _)| hit(c)) {
            None => Ok(()),
            Some(_) if self.own_ips.contains(&norm) && self.live.contains(peer.port()) => Ok(()),
            Some((_, r)) => Err(*r),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(f: &PeerFilter, s: &str) -> Result<(), Refusal> {
        f.check(SocketAddr::new(s.parse().unwrap(), 3478))
    }

    #[test]
    fn default_denied_holds_whole_ranges_only() {
        let c = |s: &str| s.parse::<Cidr>().unwrap();
        assert_eq!(default_denied(&c("172.16.0.0/12")), Some(Refusal::Private));
        assert_eq!(default_denied(&c("10.0.0.4/31")), Some(Refusal::Private));
        assert_eq!(default_denied(&c("fe80::/64")), Some(Refusal::LinkLocal));
        // Wider than a default range, or public: not held.
        assert_eq!(default_denied(&c("172.0.0.0/8")), None);
        assert_eq!(default_denied(&c("83.166.64.0/19")), None);
    }

    #[test]
    fn default_ranges_are_refused_with_their_reason() {
        let f = PeerFilter::new(vec![], vec![]);
        for (ip, r) in [
            ("0.1.2.3", Refusal::Unspecified),
            ("10.1.2.3", Refusal::Private),
            ("100.64.0.1", Refusal::Cgnat),
            ("100.127.255.254", Refusal::Cgnat),
            ("127.0.0.1", Refusal::Loopback),
            ("127.255.255.255", Refusal::Loopback),
            ("169.254.169.254", Refusal::LinkLocal),
            ("172.16.0.1", Refusal::Private),
            ("172.31.255.255", Refusal::Private),
            ("192.168.1.1", Refusal::Private),
            ("192.0.0.8", Refusal::Reserved),
            ("192.0.2.1", Refusal::Documentation),
            ("198.51.100.1", Refusal::Documentation),
            ("203.0.113.1", Refusal::Documentation),
            ("198.19.0.1", Refusal::Benchmarking),
            ("224.0.0.1", Refusal::Multicast),
            ("239.255.255.250", Refusal::Multicast),
            ("255.255.255.255", Refusal::Reserved),
            ("::", Refusal::Unspecified),
            ("::1", Refusal::Loopback),
            ("fc00::1", Refusal::Private),
            ("fd12:3456::1", Refusal::Private),
            ("fe80::1", Refusal::LinkLocal),
            ("ff02::1", Refusal::Multicast),
            ("2001:db8::1", Refusal::Documentation),
            ("64:ff9b::808:808", Refusal::Nat64),
            // IPv4-translated (RFC 2765): not normalised, refused whole, whatever it embeds.
            ("::ffff:0:808:808", Refusal::Reserved),
            ("::ffff:0:7f00:1", Refusal::Reserved),
            ("3fff::1", Refusal::Documentation),
            ("3fff:fff:ffff::1", Refusal::Documentation),
            ("100:0:0:1::1", Refusal::Reserved),
            ("5f00::1", Refusal::Reserved),
            ("2001:2::1", Refusal::Benchmarking),
            ("2001:1::1", Refusal::Reserved),
            ("2001:3::1", Refusal::Reserved),
            ("2001:1ff::1", Refusal::Reserved),
            ("2001:0:4136:e378:8000:63bf:f7f7:f7f7", Refusal::Reserved),
        ] {
            assert_eq!(check(&f, ip), Err(r), "{ip}");
        }
    }

    #[test]
    fn public_addresses_pass() {
        let f = PeerFilter::new(vec![], vec![]);
        for ip in [
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.0",
            "172.32.0.1",
            "2606:4700::1111",
            "2001:200::1",
            "3fff:1000::1",
            "2002:808:808::1",
        ] {
            assert_eq!(check(&f, ip), Ok(()), "{ip}");
        }
    }

    #[test]
    fn embedded_ipv4_bypasses_are_refused() {
        // CVE-2020-26262 / CVE-2026-27624: loopback and metadata through IPv6 forms.
        let f = PeerFilter::new(vec![], vec![]);
        for ip in [
            "::ffff:127.0.0.1",
            "::127.0.0.1",
            "64:ff9b::7f00:1",
            "64:ff9b:1::7f00:1",
            "2002:7f00:1::",
            "2001:0:4136:e378:8000:63bf:80ff:fffe", // Teredo, client 127.0.0.1
            "::ffff:169.254.169.254",
            "2002:a9fe:a9fe::",
            "::ffff:10.0.0.1",
        ] {
            assert!(check(&f, ip).is_err(), "{ip} must be refused");
        }
        assert_eq!(
            normalise("2001:0:4136:e378:8000:63bf:80ff:fffe".parse().unwrap()),
            "127.0.0.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            normalise("::1".parse().unwrap()),
            "::1".parse::<IpAddr>().unwrap(),
            "::1 is loopback, not 0.0.0.1"
        );
    }

    #[test]
    fn allow_overrides_default_and_deny_overrides_allow() {
        let f = PeerFilter::new(
            vec!["127.0.0.1/32".parse().unwrap(), "203.0.113.0/24".parse().unwrap()],
            vec!["203.0.113.66".parse().unwrap(), "8.8.8.0/24".parse().unwrap()],
        );
        assert_eq!(check(&f, "127.0.0.1"), Ok(()));
        assert_eq!(
            check(&f, "::ffff:127.0.0.1"),
            Ok(()),
            "allow applies to the normalised form too"
        );
        assert_eq!(check(&f, "127.0.0.2"), Err(Refusal::Loopback));
        assert_eq!(check(&f, "203.0.113.9"), Ok(()));
        assert_eq!(check(&f, "203.0.113.66"), Err(Refusal::OperatorDenied));
        assert_eq!(check(&f, "8.8.8.8"), Err(Refusal::OperatorDenied));
        assert_eq!(check(&f, "::ffff:8.8.8.8"), Err(Refusal::OperatorDenied));
    }

    #[test]
    fn own_relays_are_reachable_only_while_their_socket_is_bound() {
        let f = PeerFilter::new(vec![], vec![]).with_own_relays(["127.0.0.1".parse().unwrap()]);
        let clone = f.clone();
        // A relay-range port that no allocation holds is any local port.
        assert_eq!(f.check("127.0.0.1:50005".parse().unwrap()), Err(Refusal::Loopback));
        clone.live_relays().insert(50005);
        assert_eq!(
            f.check("127.0.0.1:50005".parse().unwrap()),
            Ok(()),
            "clones share the set"
        );
        assert_eq!(f.check("[::ffff:127.0.0.1]:50005".parse().unwrap()), Ok(()));
        assert_eq!(f.check("127.0.0.1:50006".parse().unwrap()), Err(Refusal::Loopback));
        assert_eq!(f.check("127.0.0.1:22".parse().unwrap()), Err(Refusal::Loopback));
        assert_eq!(f.check("127.0.0.2:50005".parse().unwrap()), Err(Refusal::Loopback));
        assert_eq!(f.check("[::1]:50005".parse().unwrap()), Err(Refusal::Loopback));
        f.live_relays().remove(50005);
        assert_eq!(f.check("127.0.0.1:50005".parse().unwrap()), Err(Refusal::Loopback));
        assert!(f.is_own_ip("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!f.is_own_ip("127.0.0.2".parse().unwrap()));
    }

    #[test]
    fn cidr_parse_display_and_errors() {
        for s in ["10.0.0.0/8", "::1/128", "fc00::/7", "0.0.0.0/0", "203.0.113.7/32"] {
            assert_eq!(s.parse::<Cidr>().unwrap().to_string(), s);
        }
        assert_eq!(
            "10.1.2.3/8".parse::<Cidr>().unwrap().to_string(),
            "10.0.0.0/8",
            "host bits cleared"
        );
        assert_eq!("127.0.0.1".parse::<Cidr>().unwrap().to_string(), "127.0.0.1/32");
        assert!(matches!(
            "10.0.0.0/33".parse::<Cidr>(),
            Err(CidrError::PrefixTooLong { len: 33, max: 32 })
        ));
        assert!(matches!("nope/8".parse::<Cidr>(), Err(CidrError::BadAddress(_))));
        assert!(matches!("10.0.0.0/x".parse::<Cidr>(), Err(CidrError::BadPrefix(_))));
        assert!("0.0.0.0/0"
            .parse::<Cidr>()
            .unwrap()
            .contains("1.2.3.4".parse().unwrap()));
        assert!(!"0.0.0.0/0".parse::<Cidr>().unwrap().contains("::1".parse().unwrap()));
    }

    proptest::proptest! {
        #[test]
        fn every_ipv4_embedding_gets_the_same_decision(a in proptest::num::u32::ANY, port in 1u16..) {
            let f = PeerFilter::new(vec![], vec![]);
            let v4 = Ipv4Addr::from(a);
            let forms: [IpAddr; 4] = [
                IpAddr::V4(v4),
                IpAddr::V6(v4.to_ipv6_mapped()),
                IpAddr::V6(Ipv6Addr::from((0x0064_ff9b_u128 << 96) | u128::from(a))),
                IpAddr::V6(Ipv6Addr::from((0x2002_u128 << 112) | (u128::from(a) << 80))),
            ];
            let base = f.check(SocketAddr::new(forms[0], port)).is_ok();
            // NAT64 forms are refused outright (the prefix itself is on the deny list).
            proptest::prop_assert_eq!(f.check(SocketAddr::new(forms[1], port)).is_ok(), base);
            proptest::prop_assert!(f.check(SocketAddr::new(forms[2], port)).is_err());
            proptest::prop_assert_eq!(f.check(SocketAddr::new(forms[3], port)).is_ok(), base);
        }
    }
}
