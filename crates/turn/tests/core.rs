//! The TURN core driven with a fake clock: every expiry rule and error response.
//!
//! A test client speaks real STUN bytes to `Server`; the "driver" here binds
//! nothing and simply acknowledges relay binds, so every time step is explicit.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use firstcall_stun::{
    Attribute, ChannelData, ChannelNumber, Class, IntegrityKind, Message, MessageBuilder, Method, TransactionId,
};
use firstcall_turn::auth::{long_term_key, rest_credential, Authenticator, Secret};
use firstcall_turn::filter::{Cidr, PeerFilter};
use firstcall_turn::metrics::TurnMetrics;
use firstcall_turn::ratelimit::Rate;
use firstcall_turn::server::{ClientAddr, Command, Config, PeerAddr, Quotas, RelayPort, Server, Transport};
use rand::rngs::StdRng;
use rand::SeedableRng;

const REALM: &str = "firstcall.test";
const SECRET: &str = "s3cret";
/// Unix time at the start of every test.
const T0_UNIX: u64 = 1_800_000_000;

struct Harness {
    server: Server<StdRng>,
    t0: Instant,
    now: Instant,
    quotas: Arc<Quotas>,
    metrics: Arc<TurnMetrics>,
}

impl Harness {
    fn new() -> Self {
        Self::with(|c| c, 10, 100, vec!["203.0.113.0/24".parse().unwrap()])
    }

    fn with(cfg: impl FnOnce(Config) -> Config, per_user: usize, total: usize, allow: Vec<Cidr>) -> Self {
        Self::with_quotas(cfg, Quotas::new(per_user, total), allow)
    }

    fn with_quotas(cfg: impl FnOnce(Config) -> Config, quotas: Quotas, allow: Vec<Cidr>) -> Self {
        let t0 = Instant::now();
        let config = cfg(Config::new("192.0.2.1".parse().unwrap(), 50000..=50099));
        let auth = Authenticator::new(REALM, vec![Secret::new(SECRET)], vec![("static".into(), "pw".into())]);
        let filter = PeerFilter::new(allow, vec![]).with_own_relays(["192.0.2.1".parse::<IpAddr>().unwrap()]);
        let quotas = Arc::new(quotas);
        let metrics = Arc::new(TurnMetrics::default());
        let server = Server::new(
            config,
            auth,
            filter,
            quotas.clone(),
            metrics.clone(),
            StdRng::seed_from_u64(7),
            t0,
            T0_UNIX,
        );
        Harness {
            server,
            t0,
            now: t0,
            quotas,
            metrics,
        }
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        while let Some(t) = self.server.poll_timeout() {
            if t > self.now {
                break;
            }
            self.server.handle_timeout(t);
        }
    }

    /// Feed a packet, acknowledge relay binds, and return every transmit to the client.
    fn send(&mut self, client: ClientAddr, packet: &[u8]) -> Vec<Vec<u8>> {
        let fwd = self.server.handle_client_input(packet, client, self.now);
        assert!(fwd.is_none(), "control message produced a forward");
        self.drain(client)
    }

    fn drain(&mut self, client: ClientAddr) -> Vec<Vec<u8>> {
        while let Some(cmd) = self.server.poll_command() {
            if let Command::BindRelay { port, .. } = cmd {
                self.server.handle_relay_bound(port, true, self.now);
            }
        }
        let mut out = vec![];
        while let Some(t) = self.server.poll_transmit() {
            assert_eq!(t.dst, client);
            out.push(t.payload);
        }
        out
    }
}

fn udp(port: u16) -> ClientAddr {
    ClientAddr {
        addr: SocketAddr::from(([198, 51, 100, 7], port)),
        transport: Transport::Udp,
    }
}

fn peer(last: u8, port: u16) -> SocketAddr {
    SocketAddr::from(([203, 0, 113, last], port))
}

/// A client holding a REST credential and the server's latest nonce.
struct Client {
    addr: ClientAddr,
    username: String,
    key: Vec<u8>,
    nonce: String,
    tid: u8,
}

impl Client {
    fn rest(addr: ClientAddr, user: &str, expiry: u64) -> Self {
        let (username, password) = rest_credential(&Secret::new(SECRET), user, expiry);
        let key = long_term_key(&username, REALM, &password).as_ref().to_vec();
        Client {
            addr,
            username,
            key,
            nonce: String::new(),
            tid: 0,
        }
    }

    fn request(&mut self, method: Method, attrs: &[Attribute<'_>]) -> (TransactionId, Vec<u8>) {
        self.tid += 1;
        let tid = TransactionId([self.tid; 12]);
        let mut b = MessageBuilder::new(Class::Request, method, tid);
        for a in attrs {
            b.add(a);
        }
        b.add(&Attribute::Username(&self.username))
            .add(&Attribute::Realm(REALM))
            .add(&Attribute::Nonce(&self.nonce));
        b.add_integrity(IntegrityKind::Sha1, &self.key).add_fingerprint();
        (tid, b.finish())
    }

    /// Send an authenticated request, handling one 401/438 challenge like a real client.
    fn call(&mut self, h: &mut Harness, method: Method, attrs: &[Attribute<'_>]) -> Vec<u8> {
        for _ in 0..2 {
            let (tid, raw) = self.request(method, attrs);
            let mut out = h.send(self.addr, &raw);
            assert_eq!(out.len(), 1, "one response per request");
            let resp = out.remove(0);
            let m = Message::decode(&resp).unwrap();
            assert_eq!(m.transaction_id(), tid);
            let code = m.error_code().map(|e| e.code);
            if matches!(code, Some(401 | 438)) && self.nonce != m.nonce().unwrap() {
                self.nonce = m.nonce().unwrap().to_owned();
                continue;
            }
            return resp;
        }
        panic!("server kept challenging");
    }

    fn allocate(&mut self, h: &mut Harness) -> SocketAddr {
        let resp = self.call(h, Method::ALLOCATE, &[Attribute::RequestedTransport(17)]);
        let m = Message::decode(&resp).unwrap();
        assert_eq!(m.class(), Class::Success, "allocate failed: {:?}", m.error_code());
        assert!(
            m.verify_integrity(&self.key),
            "success responses carry MESSAGE-INTEGRITY"
        );
        m.find(|a| match a {
            Attribute::XorRelayedAddress(r) => Some(*r),
            _ => None,
        })
        .unwrap()
    }
}

fn code_of(resp: &[u8]) -> Option<u16> {
    Message::decode(resp).unwrap().error_code().map(|e| e.code)
}

fn relay_port(addr: SocketAddr) -> RelayPort {
    RelayPort(addr.port())
}

#[test]
fn binding_reflects_the_source_address_without_auth() {
    let mut h = Harness::new();
    let mut b = MessageBuilder::new(Class::Request, Method::BINDING, TransactionId([1; 12]));
    b.add_fingerprint();
    let out = h.send(udp(4000), &b.finish());
    let m = Message::decode(&out[0]).unwrap();
    assert_eq!(m.class(), Class::Success);
    assert!(m.attributes().contains(&Attribute::XorMappedAddress(udp(4000).addr)));
    assert!(m.has_fingerprint(), "FINGERPRINT echoed when the request had one");
}

#[test]
fn allocate_without_credentials_is_challenged_then_succeeds() {
    // RFC 8656 §7.2 / RFC 8489 §9.2.4: 401 carries REALM and NONCE and no integrity.
    let mut h = Harness::new();
    let mut b = MessageBuilder::new(Class::Request, Method::ALLOCATE, TransactionId([9; 12]));
    b.add(&Attribute::RequestedTransport(17));
    let out = h.send(udp(4000), &b.finish());
    let m = Message::decode(&out[0]).unwrap();
    assert_eq!(m.error_code().unwrap().code, 401);
    assert_eq!(m.realm(), Some(REALM));
    assert!(m.nonce().is_some());
    assert!(!m.has_integrity());

    let mut c = Client::rest(udp(4000), "alice", T0_UNIX + 3600);
    let relayed = c.allocate(&mut h);
    assert_eq!(relayed.ip(), "192.0.2.1".parse::<IpAddr>().unwrap());
    assert!((50000..=50099).contains(&relayed.port()));
    assert_eq!(h.server.allocation_count(), 1);
}

#[test]
fn wrong_secret_and_expired_credentials_are_refused() {
    let mut h = Harness::new();
    let (username, password) = rest_credential(&Secret::new("not-the-secret"), "mallory", T0_UNIX + 3600);
    let mut c = Client::rest(udp(4001), "x", 0);
    c.username = username.clone();
    c.key = long_term_key(&username, REALM, &password).as_ref().to_vec();
    let resp = c.call(&mut h, Method::ALLOCATE, &[Attribute::RequestedTransport(17)]);
    assert_eq!(code_of(&resp), Some(401));
    assert_eq!(h.metrics.count("auth_failures", "bad_integrity"), 1);

    // Valid signature, but expired one second ago.
    let mut old = Client::rest(udp(4002), "alice", T0_UNIX - 1);
    let resp = old.call(&mut h, Method::ALLOCATE, &[Attribute::RequestedTransport(17)]);
    assert_eq!(code_of(&resp), Some(401));
    assert_eq!(h.metrics.count("auth_failures", "expired"), 1);
    assert_eq!(h.server.allocation_count(), 0);
}

#[test]
fn credential_expiry_follows_the_injected_wall_clock() {
    let mut h = Harness::new();
    let mut c = Client::rest(udp(4003), "alice", T0_UNIX + 60);
    c.allocate(&mut h);
    h.advance(Duration::from_secs(61));
    let resp = c.call(&mut h, Method::REFRESH, &[Attribute::Lifetime(600)]);
    assert_eq!(
        code_of(&resp),
        Some(401),
        "a refresh with an expired REST credential is refused"
    );
}

#[test]
fn allocation_expires_unless_refreshed_and_lifetime_zero_deletes() {
    let mut h = Harness::new();
    let mut c = Client::rest(udp(4004), "alice", T0_UNIX + 100_000);
    let relayed = c.allocate(&mut h);
    // Default lifetime is 600 s (RFC 8656 §7.2).
    h.advance(Duration::from_secs(599));
    assert_eq!(h.server.allocation_count(), 1);
    let resp = c.call(&mut h, Method::REFRESH, &[Attribute::Lifetime(1200)]);
    assert_eq!(Message::decode(&resp).unwrap().lifetime(), Some(1200));
    h.advance(Duration::from_secs(1199));
    assert_eq!(h.server.allocation_count(), 1);
    h.advance(Duration::from_secs(1));
    assert_eq!(h.server.allocation_count(), 0, "expired at exactly its lifetime");
    assert!(std::iter::from_fn(|| h.server.poll_command()).any(|c| c
        == Command::ReleaseRelay {
            port: relay_port(relayed)
        }));
    assert_eq!(h.quotas.in_use(), 0);

    // RFC 8656 §7.3: Refresh with LIFETIME 0 deletes at once.
    let mut c2 = Client::rest(udp(4005), "bob", T0_UNIX + 100_000);
    c2.allocate(&mut h);
    let resp = c2.call(&mut h, Method::REFRESH, &[Attribute::Lifetime(0)]);
    assert_eq!(Message::decode(&resp).unwrap().lifetime(), Some(0));
    assert_eq!(h.server.allocation_count(), 0);
    // A refresh after deletion: 437 Allocation Mismatch.
    let resp = c2.call(&mut h, Method::REFRESH, &[Attribute::Lifetime(600)]);
    assert_eq!(code_of(&resp), Some(437));
}

#[test]
fn lifetime_is_clamped_to_the_maximum() {
    let mut h = Harness::new();
    let mut c = Client::rest(udp(4006), "alice", T0_UNIX + 100_000);
    c.allocate(&mut h);
    let resp = c.call(&mut h, Method::REFRESH, &[Attribute::Lifetime(999_999)]);
    assert_eq!(Message::decode(&resp).unwrap().lifetime(), Some(3600));
}

#[test]
fn a_peer_grant_installs_the_permission_the_users_client_would_ask_for() {
    use firstcall_turn::grants::PeerGrant;
    let mut h = Harness::new();
    let mut alice = Client::rest(udp(4017), "alice", T0_UNIX + 100_000);
    let mut bob = Client::rest(udp(4018), "bob", T0_UNIX + 100_000);
    let ra = relay_port(alice.allocate(&mut h));
    let rb = relay_port(bob.allocate(&mut h));
    let (callee, stranger) = (peer(9, 7000), peer(10, 7000));
    let grant = |ip: SocketAddr, until: Instant| PeerGrant {
        user: "alice".into(),
        ip: ip.ip(),
        until,
    };
    // Before the grant: dropped, as RFC 8656 §10.3 says.
    assert!(h
        .server
        .handle_peer_traffic(b"early", PeerAddr(callee), ra, h.now)
        .is_none());
    assert!(h.server.poll_transmit().is_none());
    h.server
        .handle_peer_grant(grant(callee, h.now + Duration::from_secs(30)), h.now)
        .unwrap();
    assert_eq!(h.metrics.count("peer_grants", "stored"), 1);
    // The granted address reaches alice's allocation, any port of it.
    assert!(h
        .server
        .handle_peer_traffic(b"check", PeerAddr(callee), ra, h.now)
        .is_none());
    let t = h.server.poll_transmit().expect("Data indication to alice");
    assert_eq!(t.dst, alice.addr);
    assert_eq!(Message::decode(&t.payload).unwrap().data(), Some(&b"check"[..]));
    assert_eq!(h.metrics.count("peer_grants", "applied"), 1);
    // Not another address, nor another user's allocation.
    assert!(h
        .server
        .handle_peer_traffic(b"x", PeerAddr(stranger), ra, h.now)
        .is_none());
    assert!(h
        .server
        .handle_peer_traffic(b"x", PeerAddr(callee), rb, h.now)
        .is_none());
    assert!(h.server.poll_transmit().is_none());
    // What it installed is an ordinary permission: it outlives the grant, for 300 s,
    // and alice's Send to that address goes out.
    h.advance(Duration::from_secs(31));
    assert!(h
        .server
        .handle_peer_traffic(b"later", PeerAddr(callee), ra, h.now)
        .is_none());
    assert!(h.server.poll_transmit().is_some());
    let mut b = MessageBuilder::new(Class::Indication, Method::SEND, TransactionId([3; 12]));
    b.add(&Attribute::XorPeerAddress(callee)).add(&Attribute::Data(b"out"));
    assert!(h.server.handle_client_input(&b.finish(), alice.addr, h.now).is_some());
    h.advance(Duration::from_secs(270));
    assert!(h
        .server
        .handle_peer_traffic(b"gone", PeerAddr(callee), ra, h.now)
        .is_none());
    assert!(h.server.poll_transmit().is_none(), "the permission lapsed after 300 s");
    // A lapsed grant lets nothing in; the filter still applies (192.0.2.0/24 is not an
    // allowed peer here), and a grant that arrives expired is refused and counted.
    let outside = SocketAddr::from(([192, 0, 2, 200], 7000));
    h.server
        .handle_peer_grant(grant(outside, h.now + Duration::from_secs(30)), h.now)
        .unwrap();
    assert!(h
        .server
        .handle_peer_traffic(b"x", PeerAddr(outside), ra, h.now)
        .is_none());
    assert!(h.server.poll_transmit().is_none());
    assert!(h.server.handle_peer_grant(grant(stranger, h.now), h.now).is_err());
    assert_eq!(h.metrics.count("peer_grants", "expired"), 1);
    // A dual-stack listener names an IPv4 client ::ffff:a.b.c.d: the grant still matches
    // the peer's IPv4 address.
    let mapped = match stranger.ip() {
        IpAddr::V4(v4) => IpAddr::V6(v4.to_ipv6_mapped()),
        v6 => v6,
    };
    h.server
        .handle_peer_grant(
            PeerGrant {
                user: "alice".into(),
                ip: mapped,
                until: h.now + Duration::from_secs(30),
            },
            h.now,
        )
        .unwrap();
    assert!(h
        .server
        .handle_peer_traffic(b"v4", PeerAddr(stranger), ra, h.now)
        .is_none());
    assert!(
        h.server.poll_transmit().is_some(),
        "the mapped grant let the IPv4 peer in"
    );
}

#[test]
fn peer_grants_stop_at_the_cap_and_say_so() {
    use firstcall_turn::grants::{GrantRefused, PeerGrant};
    let mut h = Harness::with(
        |c| Config {
            max_peer_grants: 3,
            ..c
        },
        10,
        100,
        vec!["203.0.113.0/24".parse().unwrap()],
    );
    let until = h.now + Duration::from_secs(30);
    for (i, user) in ["a", "b", "c", "d"].into_iter().enumerate() {
        let r = h.server.handle_peer_grant(
            PeerGrant {
                user: user.into(),
                ip: peer(i as u8 + 1, 1).ip(),
                until,
            },
            h.now,
        );
        assert_eq!(r.is_ok(), i < 3, "grant {i}");
        if i == 3 {
            assert_eq!(r, Err(GrantRefused::Full));
        }
    }
    assert_eq!(h.metrics.count("peer_grants", "full"), 1);
    // Lapsed grants make room again.
    h.advance(Duration::from_secs(31));
    let later = h.now + Duration::from_secs(30);
    let r = h.server.handle_peer_grant(
        PeerGrant {
            user: "d".into(),
            ip: peer(4, 1).ip(),
            until: later,
        },
        h.now,
    );
    assert!(r.is_ok());
}

#[test]
fn permission_gates_peer_traffic_and_expires_after_300s() {
    let mut h = Harness::new();
    let mut c = Client::rest(udp(4007), "alice", T0_UNIX + 100_000);
    let relayed = c.allocate(&mut h);
    let p = peer(9, 7000);
    // Before a permission, peer data is dropped (RFC 8656 §10.3).
    assert!(h
        .server
        .handle_peer_traffic(b"x", PeerAddr(p), relay_port(relayed), h.now)
        .is_none());
    assert!(h.server.poll_transmit().is_none());
    assert_eq!(h.metrics.count("dropped", "no_permission"), 1);

    let resp = c.call(&mut h, Method::CREATE_PERMISSION, &[Attribute::XorPeerAddress(p)]);
    assert_eq!(Message::decode(&resp).unwrap().class(), Class::Success);
    // Permission is per IP: another port of the same peer works (RFC 8656 §9).
    let other_port = peer(9, 7001);
    assert!(h
        .server
        .handle_peer_traffic(b"hello", PeerAddr(other_port), relay_port(relayed), h.now)
        .is_none());
    let t = h.server.poll_transmit().expect("Data indication");
    let m = Message::decode(&t.payload).unwrap();
    assert_eq!((m.class(), m.method()), (Class::Indication, Method::DATA));
    assert_eq!(m.data(), Some(&b"hello"[..]));
    assert_eq!(m.peer_addresses().next(), Some(other_port));

    // Send indication goes out through the relay.
    let mut b = MessageBuilder::new(Class::Indication, Method::SEND, TransactionId([3; 12]));
    b.add(&Attribute::XorPeerAddress(p)).add(&Attribute::Data(b"out"));
    let raw = b.finish();
    let fwd = h.server.handle_client_input(&raw, c.addr, h.now).unwrap();
    assert_eq!(
        (fwd.relay, fwd.peer, fwd.data),
        (relay_port(relayed), PeerAddr(p), &b"out"[..])
    );

    h.advance(Duration::from_secs(299));
    assert!(h.server.handle_client_input(&raw, c.addr, h.now).is_some());
    h.advance(Duration::from_secs(1));
    assert!(
        h.server.handle_client_input(&raw, c.addr, h.now).is_none(),
        "permission lasts 300 s"
    );
    assert!(h
        .server
        .handle_peer_traffic(b"x", PeerAddr(p), relay_port(relayed), h.now)
        .is_none());
    assert!(h.server.poll_transmit().is_none());
}

#[test]
fn channel_bind_relays_channel_data_and_expires_after_600s() {
    let mut h = Harness::new();
    let mut c = Client::rest(udp(4008), "alice", T0_UNIX + 100_000);
    let relayed = c.allocate(&mut h);
    let p = peer(10, 8000);
    let ch = ChannelNumber::new(0x4001).unwrap();
    let resp = c.call(
        &mut h,
        Method::CHANNEL_BIND,
        &[Attribute::ChannelNumber(0x4001), Attribute::XorPeerAddress(p)],
    );
    assert_eq!(Message::decode(&resp).unwrap().class(), Class::Success);

    let mut buf = [0u8; 64];
    let n = ChannelData::encode_into(ch, b"media", false, &mut buf).unwrap();
    let fwd = h.server.handle_client_input(&buf[..n], c.addr, h.now).unwrap();
    assert_eq!((fwd.peer, fwd.data), (PeerAddr(p), &b"media"[..]));
    let back = h
        .server
        .handle_peer_traffic(b"reply", PeerAddr(p), relay_port(relayed), h.now)
        .unwrap();
    assert_eq!((back.client, back.channel), (c.addr, ch));

    // Keep the allocation and permission alive so only the channel's expiry is under test.
    for _ in 0..2 {
        h.advance(Duration::from_secs(290));
        c.call(&mut h, Method::CREATE_PERMISSION, &[Attribute::XorPeerAddress(p)]);
        c.call(&mut h, Method::REFRESH, &[Attribute::Lifetime(600)]);
    }
    h.advance(Duration::from_secs(19)); // t = 599
    assert!(h.server.handle_client_input(&buf[..n], c.addr, h.now).is_some());
    h.advance(Duration::from_secs(1)); // t = 600
    assert!(
        h.server.handle_client_input(&buf[..n], c.addr, h.now).is_none(),
        "channel lasts 600 s"
    );
    // Peer data now arrives as a Data indication instead.
    assert!(h
        .server
        .handle_peer_traffic(b"reply", PeerAddr(p), relay_port(relayed), h.now)
        .is_none());
    assert!(h.server.poll_transmit().is_some());

    // RFC 8656 §12: an expired channel can't go to another peer for 5 more minutes...
    let other = peer(11, 8000);
    let resp = c.call(
        &mut h,
        Method::CHANNEL_BIND,
        &[Attribute::ChannelNumber(0x4001), Attribute::XorPeerAddress(other)],
    );
    assert_eq!(code_of(&resp), Some(400));
    // ...but can be re-bound to the same peer.
    let resp = c.call(
        &mut h,
        Method::CHANNEL_BIND,
        &[Attribute::ChannelNumber(0x4001), Attribute::XorPeerAddress(p)],
    );
    assert_eq!(Message::decode(&resp).unwrap().class(), Class::Success);
}

#[test]
fn channel_bind_rules() {
    let mut h = Harness::new();
    let mut c = Client::rest(udp(4009), "alice", T0_UNIX + 100_000);
    c.allocate(&mut h);
    let p = peer(12, 9000);
    // Out-of-range channel number: 400.
    let resp = c.call(
        &mut h,
        Method::CHANNEL_BIND,
        &[Attribute::ChannelNumber(0x3FFF), Attribute::XorPeerAddress(p)],
    );
    assert_eq!(code_of(&resp), Some(400));
    // Missing peer: 400.
    let resp = c.call(&mut h, Method::CHANNEL_BIND, &[Attribute::ChannelNumber(0x4000)]);
    assert_eq!(code_of(&resp), Some(400));
    let ok = c.call(
        &mut h,
        Method::CHANNEL_BIND,
        &[Attribute::ChannelNumber(0x4000), Attribute::XorPeerAddress(p)],
    );
    assert_eq!(code_of(&ok), None);
    // The same peer on a second channel: 400.
    let resp = c.call(
        &mut h,
        Method::CHANNEL_BIND,
        &[Attribute::ChannelNumber(0x4002), Attribute::XorPeerAddress(p)],
    );
    assert_eq!(code_of(&resp), Some(400));
    // Error responses after authentication carry integrity.
    assert!(Message::decode(&resp).unwrap().verify_integrity(&c.key));
}

#[test]
fn stale_nonce_gets_438_and_the_client_recovers() {
    let mut h = Harness::new();
    let mut c = Client::rest(udp(4010), "alice", T0_UNIX + 100_000);
    c.allocate(&mut h);
    let old_nonce = c.nonce.clone();
    // Keep the allocation alive past the nonce lifetime (1 h).
    for _ in 0..7 {
        h.advance(Duration::from_secs(550));
        let (_, raw) = c.request(Method::REFRESH, &[Attribute::Lifetime(600)]);
        let out = h.send(c.addr, &raw);
        if code_of(&out[0]) == Some(438) {
            let m = Message::decode(&out[0]).unwrap();
            assert_eq!(m.realm(), Some(REALM), "438 carries REALM and a fresh NONCE");
            assert_ne!(m.nonce().unwrap(), old_nonce);
            c.nonce = m.nonce().unwrap().to_owned();
            assert_eq!(
                code_of(&c.call(&mut h, Method::REFRESH, &[Attribute::Lifetime(600)])),
                None
            );
            assert_eq!(h.metrics.count("auth_failures", "stale_nonce"), 1);
            return;
        }
        assert_eq!(code_of(&out[0]), None);
    }
    panic!("nonce never went stale");
}

#[test]
fn nonce_from_another_client_is_rejected() {
    let mut h = Harness::new();
    let mut a = Client::rest(udp(4011), "alice", T0_UNIX + 100_000);
    a.allocate(&mut h);
    let mut b = Client::rest(udp(4012), "bob", T0_UNIX + 100_000);
    b.nonce = a.nonce.clone();
    let (_, raw) = b.request(Method::ALLOCATE, &[Attribute::RequestedTransport(17)]);
    assert_eq!(code_of(&h.send(b.addr, &raw)[0]), Some(401));
}

#[test]
fn allocate_errors_per_rfc8656() {
    let mut h = Harness::new();
    let mut c = Client::rest(udp(4013), "alice", T0_UNIX + 100_000);
    // Missing REQUESTED-TRANSPORT: 400. TCP (6): 442.
    assert_eq!(code_of(&c.call(&mut h, Method::ALLOCATE, &[])), Some(400));
    assert_eq!(
        code_of(&c.call(&mut h, Method::ALLOCATE, &[Attribute::RequestedTransport(6)])),
        Some(442)
    );
    // IPv6 relay asked of an IPv4 server: 440.
    let resp = c.call(
        &mut h,
        Method::ALLOCATE,
        &[
            Attribute::RequestedTransport(17),
            Attribute::RequestedAddressFamily(firstcall_stun::Family::V6),
        ],
    );
    assert_eq!(code_of(&resp), Some(440));
    // DONT-FRAGMENT is not supported: 420 naming it.
    let resp = c.call(
        &mut h,
        Method::ALLOCATE,
        &[Attribute::RequestedTransport(17), Attribute::DontFragment],
    );
    assert_eq!(code_of(&resp), Some(420));
    assert_eq!(h.server.allocation_count(), 0);

    // Second Allocate from the same 5-tuple with a new transaction: 437.
    let relayed = c.allocate(&mut h);
    let resp = c.call(&mut h, Method::ALLOCATE, &[Attribute::RequestedTransport(17)]);
    assert_eq!(code_of(&resp), Some(437));
    // A retransmission (same transaction id) gets the original success.
    c.tid -= 2; // back to the transaction of the successful allocate
    let (_, raw) = c.request(Method::ALLOCATE, &[Attribute::RequestedTransport(17)]);
    let out = h.send(c.addr, &raw);
    let m = Message::decode(&out[0]).unwrap();
    assert_eq!(m.class(), Class::Success);
    assert!(m.attributes().contains(&Attribute::XorRelayedAddress(relayed)));
}

/// RFC 8656 §7.1: "The client MUST include a REQUESTED-TRANSPORT attribute". §7.2 lets
/// the server authenticate first ("If the REQUESTED-TRANSPORT attribute is not included
/// or is malformed, the server rejects the request with a 400 (Bad Request) error"
/// comes after the long-term credential check), which would answer a bare 20-byte
/// request with a 401 seven times its size. Without credentials such a request is
/// dropped and counted; with them it still gets the 400 (allocate_errors_per_rfc8656).
#[test]
fn unauthenticated_allocate_without_requested_transport_gets_no_answer() {
    let mut h = Harness::new();
    let bare = MessageBuilder::new(Class::Request, Method::ALLOCATE, TransactionId([9; 12])).finish();
    assert_eq!(bare.len(), 20);
    assert!(h.send(udp(4030), &bare).is_empty(), "no answer");
    assert_eq!(h.metrics.count("dropped", "allocate_without_transport"), 1);
    assert_eq!(h.metrics.count("error_responses", "401"), 0);
    // With REQUESTED-TRANSPORT the unauthenticated request is challenged as usual.
    let mut b = MessageBuilder::new(Class::Request, Method::ALLOCATE, TransactionId([10; 12]));
    b.add(&Attribute::RequestedTransport(17));
    let out = h.send(udp(4030), &b.finish());
    assert_eq!(out.len(), 1);
    assert_eq!(code_of(&out[0]), Some(401));
}

#[test]
fn quotas_per_user_and_total_give_486() {
    let mut h = Harness::with(|c| c, 2, 3, vec![]);
    let mut clients: Vec<Client> = (0..3)
        .map(|i| Client::rest(udp(5000 + i), "alice", T0_UNIX + 100_000))
        .collect();
    clients[0].allocate(&mut h);
    clients[1].allocate(&mut h);
    let resp = clients[2].call(&mut h, Method::ALLOCATE, &[Attribute::RequestedTransport(17)]);
    assert_eq!(code_of(&resp), Some(486), "third allocation of one user");
    let mut bob = Client::rest(udp(5010), "bob", T0_UNIX + 100_000);
    bob.allocate(&mut h);
    let mut carol = Client::rest(udp(5011), "carol", T0_UNIX + 100_000);
    let resp = carol.call(&mut h, Method::ALLOCATE, &[Attribute::RequestedTransport(17)]);
    assert_eq!(code_of(&resp), Some(486), "total quota");
    // Freeing one makes room.
    bob.call(&mut h, Method::REFRESH, &[Attribute::Lifetime(0)]);
    carol.allocate(&mut h);
    assert_eq!(h.quotas.in_use(), 3);
}

#[test]
fn refused_peers_get_403_and_are_counted() {
    let mut h = Harness::with(|c| c, 10, 100, vec![]);
    let mut c = Client::rest(udp(4014), "alice", T0_UNIX + 100_000);
    c.allocate(&mut h);
    for p in [
        "127.0.0.1:80",
        "10.0.0.1:80",
        "169.254.169.254:80",
        "[::ffff:127.0.0.1]:80",
        "[64:ff9b::7f00:1]:80",
    ] {
        let p: SocketAddr = p.parse().unwrap();
        let resp = c.call(&mut h, Method::CREATE_PERMISSION, &[Attribute::XorPeerAddress(p)]);
        assert_eq!(code_of(&resp), Some(403), "{p} must be refused");
    }
    // A live relay of this server stays reachable (client-to-client relaying)...
    let mut bob = Client::rest(udp(4015), "bob", T0_UNIX + 100_000);
    let bob_relay = bob.allocate(&mut h);
    let resp = c.call(
        &mut h,
        Method::CREATE_PERMISSION,
        &[Attribute::XorPeerAddress(bob_relay)],
    );
    assert_eq!(code_of(&resp), None);
    // ...but no other port of the relay range on our address: nothing is bound there.
    let idle = SocketAddr::new(bob_relay.ip(), if bob_relay.port() == 50050 { 50051 } else { 50050 });
    let resp = c.call(&mut h, Method::CREATE_PERMISSION, &[Attribute::XorPeerAddress(idle)]);
    assert_eq!(
        code_of(&resp),
        Some(403),
        "{idle} is in the relay range but not a relay"
    );
    // All or nothing: one refused peer refuses the whole request.
    let resp = c.call(
        &mut h,
        Method::CREATE_PERMISSION,
        &[
            Attribute::XorPeerAddress(bob_relay),
            Attribute::XorPeerAddress("127.0.0.1:1".parse().unwrap()),
        ],
    );
    assert_eq!(code_of(&resp), Some(403));
}

/// Issue 17: the own-relay exception covers relay sockets bound now, not the relay
/// range. Once an allocation is gone, its port is any local port: Send, ChannelData and
/// inbound traffic through a permission for our own address all stop there.
#[test]
fn own_relays_are_peers_only_while_their_allocation_lives() {
    let mut h = Harness::with(|c| c, 10, 100, vec![]);
    let mut c = Client::rest(udp(4016), "alice", T0_UNIX + 100_000);
    let relayed = c.allocate(&mut h);
    let mut bob = Client::rest(udp(4017), "bob", T0_UNIX + 100_000);
    let bob_relay = bob.allocate(&mut h);
    let resp = c.call(
        &mut h,
        Method::CHANNEL_BIND,
        &[Attribute::ChannelNumber(0x4001), Attribute::XorPeerAddress(bob_relay)],
    );
    assert_eq!(code_of(&resp), None);
    let mut cd = [0u8; 64];
    let n = ChannelData::encode_into(ChannelNumber::new(0x4001).unwrap(), b"m", false, &mut cd).unwrap();
    let mut send = MessageBuilder::new(Class::Indication, Method::SEND, TransactionId([3; 12]));
    send.add(&Attribute::XorPeerAddress(bob_relay))
        .add(&Attribute::Data(b"x"));
    let send = send.finish();
    // While Bob's allocation lives: both ways work.
    assert!(h.server.handle_client_input(&cd[..n], c.addr, h.now).is_some());
    assert!(h.server.handle_client_input(&send, c.addr, h.now).is_some());
    assert!(h
        .server
        .handle_peer_traffic(b"r", PeerAddr(bob_relay), relay_port(relayed), h.now)
        .is_some());
    // Another port on our address, through the same permission: refused inbound.
    let other = SocketAddr::new(bob_relay.ip(), 22);
    assert!(h
        .server
        .handle_peer_traffic(b"r", PeerAddr(other), relay_port(relayed), h.now)
        .is_none());
    assert_eq!(h.metrics.count("peers_refused", "documentation"), 1);
    // Bob leaves: his port is no relay any more, whatever the permission and channel say.
    let resp = bob.call(&mut h, Method::REFRESH, &[Attribute::Lifetime(0)]);
    assert_eq!(code_of(&resp), None);
    assert!(h.server.handle_client_input(&cd[..n], c.addr, h.now).is_none());
    assert!(h.server.handle_client_input(&send, c.addr, h.now).is_none());
    assert!(h
        .server
        .handle_peer_traffic(b"r", PeerAddr(bob_relay), relay_port(relayed), h.now)
        .is_none());
    assert_eq!(h.metrics.count("peers_refused", "documentation"), 4);
    assert!(h.server.poll_transmit().is_none(), "no Data indication either");
}

#[test]
fn unknown_comprehension_required_attribute_gets_420() {
    let mut h = Harness::new();
    let mut b = MessageBuilder::new(Class::Request, Method::BINDING, TransactionId([4; 12]));
    b.add(&Attribute::Other {
        typ: 0x7FFE,
        value: b"",
    });
    let out = h.send(udp(4016), &b.finish());
    let m = Message::decode(&out[0]).unwrap();
    assert_eq!(m.error_code().unwrap().code, 420);
    assert!(m.attributes().contains(&Attribute::UnknownAttributes(&[0x7F, 0xFE])));
}

#[test]
fn malformed_requests_get_400_and_garbage_is_counted() {
    let mut h = Harness::new();
    // A request with a truncated attribute: readable header, so 400.
    let mut raw = MessageBuilder::new(Class::Request, Method::ALLOCATE, TransactionId([5; 12])).finish();
    raw.extend_from_slice(&[0x00, 0x19, 0x00, 0x08, 17, 0, 0, 0]);
    raw[3] = 8;
    let out = h.send(udp(4017), &raw);
    assert_eq!(code_of(&out[0]), Some(400));
    // Garbage: no response, counted.
    assert!(h.send(udp(4017), &[0xFF; 30]).is_empty());
    assert!(h.send(udp(4017), &[0x00, 0x01]).is_empty());
    assert!(h.metrics.count("dropped", "not_stun_or_channel_data") >= 1);
    assert!(h.metrics.count("dropped", "truncated") >= 1);
}

#[test]
fn relay_bind_failure_retries_then_508() {
    let mut h = Harness::new();
    let mut c = Client::rest(udp(4018), "alice", T0_UNIX + 100_000);
    // Learn a nonce.
    let (_, raw) = c.request(Method::ALLOCATE, &[Attribute::RequestedTransport(17)]);
    let out = h.send(c.addr, &raw);
    c.nonce = Message::decode(&out[0]).unwrap().nonce().unwrap().to_owned();
    let (_, raw) = c.request(Method::ALLOCATE, &[Attribute::RequestedTransport(17)]);
    assert!(h.server.handle_client_input(&raw, c.addr, h.now).is_none());
    let mut ports = vec![];
    while let Some(Command::BindRelay { port, .. }) = h.server.poll_command() {
        ports.push(port);
        h.server.handle_relay_bound(port, false, h.now);
    }
    assert_eq!(ports.len(), 8, "eight ports tried");
    let t = h.server.poll_transmit().unwrap();
    assert_eq!(code_of(&t.payload), Some(508));
    assert_eq!(h.quotas.in_use(), 0, "quota released on failure");
}

#[test]
fn tcp_close_deletes_the_allocation() {
    let mut h = Harness::new();
    let client = ClientAddr {
        addr: "198.51.100.7:4100".parse().unwrap(),
        transport: Transport::Tcp,
    };
    let mut c = Client::rest(client, "alice", T0_UNIX + 100_000);
    let relayed = c.allocate(&mut h);
    h.server.handle_client_closed(client);
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(
        h.server.poll_command(),
        Some(Command::ReleaseRelay {
            port: relay_port(relayed)
        })
    );
    assert_eq!(h.metrics.count("allocations_deleted", "connection_closed"), 1);
}

#[test]
fn static_users_authenticate() {
    let mut h = Harness::new();
    let mut c = Client::rest(udp(4019), "x", 0);
    c.username = "static".into();
    c.key = long_term_key("static", REALM, "pw").as_ref().to_vec();
    c.allocate(&mut h);
    let _ = h.t0;
}

#[test]
fn even_port_reservation_and_token_per_rfc8656() {
    let mut h = Harness::new();
    let mut rtp = Client::rest(udp(4200), "alice", T0_UNIX + 100_000);
    let resp = rtp.call(
        &mut h,
        Method::ALLOCATE,
        &[Attribute::RequestedTransport(17), Attribute::EvenPort(true)],
    );
    let m = Message::decode(&resp).unwrap();
    let relayed = m
        .find(|a| {
            if let Attribute::XorRelayedAddress(r) = a {
                Some(*r)
            } else {
                None
            }
        })
        .unwrap();
    assert_eq!(relayed.port() % 2, 0, "EVEN-PORT gives an even port");
    let token = m
        .find(|a| {
            if let Attribute::ReservationToken(t) = a {
                Some(*t)
            } else {
                None
            }
        })
        .expect("R bit yields a token");

    // EVEN-PORT together with RESERVATION-TOKEN: 400.
    let mut rtcp = Client::rest(udp(4201), "alice", T0_UNIX + 100_000);
    let both = [
        Attribute::RequestedTransport(17),
        Attribute::EvenPort(false),
        Attribute::ReservationToken(token),
    ];
    assert_eq!(code_of(&rtcp.call(&mut h, Method::ALLOCATE, &both)), Some(400));
    // The token gets the next port.
    let resp = rtcp.call(
        &mut h,
        Method::ALLOCATE,
        &[Attribute::RequestedTransport(17), Attribute::ReservationToken(token)],
    );
    let m = Message::decode(&resp).unwrap();
    assert!(m.attributes().contains(&Attribute::XorRelayedAddress(SocketAddr::new(
        relayed.ip(),
        relayed.port() + 1
    ))));
    // A token is good once.
    let mut again = Client::rest(udp(4202), "alice", T0_UNIX + 100_000);
    let resp = again.call(
        &mut h,
        Method::ALLOCATE,
        &[Attribute::RequestedTransport(17), Attribute::ReservationToken(token)],
    );
    assert_eq!(code_of(&resp), Some(508));

    // An unredeemed reservation lapses after 30 s.
    let mut c = Client::rest(udp(4203), "bob", T0_UNIX + 100_000);
    let resp = c.call(
        &mut h,
        Method::ALLOCATE,
        &[Attribute::RequestedTransport(17), Attribute::EvenPort(true)],
    );
    let token = Message::decode(&resp)
        .unwrap()
        .find(|a| {
            if let Attribute::ReservationToken(t) = a {
                Some(*t)
            } else {
                None
            }
        })
        .unwrap();
    h.advance(Duration::from_secs(30));
    let mut late = Client::rest(udp(4204), "bob", T0_UNIX + 100_000);
    let resp = late.call(
        &mut h,
        Method::ALLOCATE,
        &[Attribute::RequestedTransport(17), Attribute::ReservationToken(token)],
    );
    assert_eq!(code_of(&resp), Some(508));
}

#[test]
fn permission_and_channel_caps_give_508_and_change_nothing() {
    use firstcall_turn::server::{MAX_CHANNELS, MAX_PERMISSIONS};
    let mut h = Harness::new();
    let mut c = Client::rest(udp(4010), "alice", T0_UNIX + 100_000);
    let relayed = c.allocate(&mut h);
    // Channels also install permissions, so bind MAX_CHANNELS to distinct peers first...
    for i in 0..MAX_CHANNELS {
        let resp = c.call(
            &mut h,
            Method::CHANNEL_BIND,
            &[
                Attribute::ChannelNumber(0x4000 + i as u16),
                Attribute::XorPeerAddress(peer(i as u8, 9000)),
            ],
        );
        assert_eq!(code_of(&resp), None, "channel {i}");
    }
    let resp = c.call(
        &mut h,
        Method::CHANNEL_BIND,
        &[
            Attribute::ChannelNumber(0x5000),
            Attribute::XorPeerAddress(peer(200, 9000)),
        ],
    );
    assert_eq!(code_of(&resp), Some(508), "one channel past the cap");
    assert!(Message::decode(&resp).unwrap().verify_integrity(&c.key));
    // Renewing a bound channel is not a new one.
    let resp = c.call(
        &mut h,
        Method::CHANNEL_BIND,
        &[
            Attribute::ChannelNumber(0x4000),
            Attribute::XorPeerAddress(peer(0, 9000)),
        ],
    );
    assert_eq!(code_of(&resp), None);
    // The refused bind installed no permission for its peer.
    assert!(h
        .server
        .handle_peer_traffic(b"x", PeerAddr(peer(200, 9000)), relay_port(relayed), h.now)
        .is_none());
    assert!(h.server.poll_transmit().is_none());

    // ...then permissions up to their own cap, all or nothing.
    assert_eq!(
        MAX_PERMISSIONS, MAX_CHANNELS,
        "the test fills both caps with one set of peers"
    );
    let resp = c.call(
        &mut h,
        Method::CREATE_PERMISSION,
        &[
            Attribute::XorPeerAddress(peer(201, 1)),
            Attribute::XorPeerAddress(peer(0, 1)),
        ],
    );
    assert_eq!(code_of(&resp), Some(508));
    assert!(h
        .server
        .handle_peer_traffic(b"x", PeerAddr(peer(201, 1)), relay_port(relayed), h.now)
        .is_none());
    assert!(h.server.poll_transmit().is_none(), "no permission was installed");
    // Re-permitting a peer already permitted is a refresh, within the cap.
    let resp = c.call(
        &mut h,
        Method::CREATE_PERMISSION,
        &[Attribute::XorPeerAddress(peer(5, 1))],
    );
    assert_eq!(code_of(&resp), None);
    assert_eq!(h.metrics.count("dropped", "permission_cap"), 1);
    assert_eq!(h.metrics.count("dropped", "channel_cap"), 1);

    // Expired permissions make room again (RFC 8656 §9: a permission lasts 300 s).
    h.advance(Duration::from_secs(301));
    c.call(&mut h, Method::REFRESH, &[Attribute::Lifetime(600)]);
    let resp = c.call(
        &mut h,
        Method::CREATE_PERMISSION,
        &[Attribute::XorPeerAddress(peer(201, 1))],
    );
    assert_eq!(code_of(&resp), None);
}

/// Issue 17: error responses per source address are a token bucket. Past it the address
/// gets no error response, and its authenticated requests are not examined (a guesser
/// learns nothing from a right password either), until the bucket refills; another
/// address is not affected.
#[test]
fn error_responses_are_limited_per_source_address() {
    let quotas = Quotas::new(10, 100).with_error_limit(Rate { per_sec: 1, burst: 3 }, 16);
    let mut h = Harness::with_quotas(|c| c, quotas, vec![]);
    let mut c = Client::rest(udp(4040), "alice", T0_UNIX + 100_000);
    c.allocate(&mut h); // one 401 challenge: 2 tokens left
    let good_key = c.key.clone();
    c.key = b"wrong".to_vec();
    for _ in 0..2 {
        let (_, raw) = c.request(Method::REFRESH, &[Attribute::Lifetime(600)]);
        assert_eq!(code_of(&h.send(c.addr, &raw)[0]), Some(401));
    }
    for _ in 0..5 {
        let (_, raw) = c.request(Method::REFRESH, &[Attribute::Lifetime(600)]);
        assert!(h.send(c.addr, &raw).is_empty(), "limited: no answer");
    }
    // The right key, same address: not examined either.
    c.key = good_key;
    let (_, raw) = c.request(Method::REFRESH, &[Attribute::Lifetime(600)]);
    assert!(h.send(c.addr, &raw).is_empty());
    assert_eq!(h.metrics.count("dropped", "error_rate_limited"), 6);
    assert_eq!(
        h.metrics.count("auth_failures", "bad_integrity"),
        2,
        "no HMAC checked while limited"
    );
    // Other addresses are unaffected; Binding (a success) is never limited.
    let other = ClientAddr {
        addr: SocketAddr::from(([198, 51, 100, 8], 4040)),
        transport: Transport::Udp,
    };
    let mut b = MessageBuilder::new(Class::Request, Method::ALLOCATE, TransactionId([1; 12]));
    b.add(&Attribute::RequestedTransport(17));
    assert_eq!(code_of(&h.send(other, &b.finish())[0]), Some(401));
    let binding = MessageBuilder::new(Class::Request, Method::BINDING, TransactionId([2; 12])).finish();
    assert_eq!(h.send(c.addr, &binding).len(), 1);
    // A second later one token is back: the right key works.
    h.advance(Duration::from_secs(1));
    let resp = c.call(&mut h, Method::REFRESH, &[Attribute::Lifetime(600)]);
    assert_eq!(code_of(&resp), None);
}

/// Issue 17: `max_bps` is a token bucket per allocation and direction (a second's worth
/// at once), and the user's rate is shared by all their allocations; excess is dropped
/// and counted by which limit it hit.
#[test]
fn bandwidth_quotas_per_allocation_and_per_user() {
    let mut h = Harness::with(
        |mut c| {
            c.max_bps = 100_000;
            c
        },
        10,
        100,
        vec!["203.0.113.0/24".parse().unwrap()],
    );
    let mut c = Client::rest(udp(4050), "alice", T0_UNIX + 100_000);
    let relayed = c.allocate(&mut h);
    let p = peer(10, 8000);
    let resp = c.call(
        &mut h,
        Method::CHANNEL_BIND,
        &[Attribute::ChannelNumber(0x4001), Attribute::XorPeerAddress(p)],
    );
    assert_eq!(code_of(&resp), None);
    let mut buf = [0u8; 1100];
    let n = ChannelData::encode_into(ChannelNumber::new(0x4001).unwrap(), &[7; 1000], false, &mut buf).unwrap();
    let passed = (0..150)
        .filter(|_| h.server.handle_client_input(&buf[..n], c.addr, h.now).is_some())
        .count();
    assert_eq!(passed, 100, "100 KB at once, then nothing");
    assert_eq!(h.metrics.count("dropped", "bandwidth_allocation"), 50);
    // The other direction has its own bucket.
    assert!(h
        .server
        .handle_peer_traffic(&[1; 1000], PeerAddr(p), relay_port(relayed), h.now)
        .is_some());
    // 10 ms later, 1000 bytes' worth is back.
    h.advance(Duration::from_millis(10));
    assert!(h.server.handle_client_input(&buf[..n], c.addr, h.now).is_some());
    assert!(h.server.handle_client_input(&buf[..n], c.addr, h.now).is_none());

    // Per user: two allocations of one user share 100 KB/s; another user has their own.
    let quotas = Quotas::new(10, 100).with_user_bandwidth(100_000);
    let mut h = Harness::with_quotas(|c| c, quotas, vec!["203.0.113.0/24".parse().unwrap()]);
    let mut clients: Vec<Client> = [("bob", 4051), ("bob", 4052), ("carol", 4053)]
        .into_iter()
        .map(|(u, port)| Client::rest(udp(port), u, T0_UNIX + 100_000))
        .collect();
    for c in clients.iter_mut() {
        c.allocate(&mut h);
        let resp = c.call(
            &mut h,
            Method::CHANNEL_BIND,
            &[Attribute::ChannelNumber(0x4001), Attribute::XorPeerAddress(p)],
        );
        assert_eq!(code_of(&resp), None);
    }
    let passed: Vec<usize> = clients
        .iter()
        .map(|c| {
            (0..80)
                .filter(|_| h.server.handle_client_input(&buf[..n], c.addr, h.now).is_some())
                .count()
        })
        .collect();
    assert_eq!(
        passed,
        vec![80, 20, 80],
        "bob's two allocations share one 100 KB budget"
    );
    assert_eq!(h.metrics.count("dropped", "bandwidth_user"), 60);
    // Bob's budget outlives neither of his allocations: once both are gone, a new one
    // starts full.
    for i in [0, 1] {
        let resp = clients[i].call(&mut h, Method::REFRESH, &[Attribute::Lifetime(0)]);
        assert_eq!(code_of(&resp), None);
    }
    let mut again = Client::rest(udp(4054), "bob", T0_UNIX + 100_000);
    again.allocate(&mut h);
    let resp = again.call(
        &mut h,
        Method::CHANNEL_BIND,
        &[Attribute::ChannelNumber(0x4001), Attribute::XorPeerAddress(p)],
    );
    assert_eq!(code_of(&resp), None);
    let passed = (0..80)
        .filter(|_| h.server.handle_client_input(&buf[..n], again.addr, h.now).is_some())
        .count();
    assert_eq!(passed, 80, "a user who held no allocation starts with a full budget");

    // Both limits: a datagram the user's budget refuses does not spend its allocation's.
    let quotas = Quotas::new(10, 100).with_user_bandwidth(100_000);
    let mut h = Harness::with_quotas(
        |mut c| {
            c.max_bps = 100_000;
            c
        },
        quotas,
        vec!["203.0.113.0/24".parse().unwrap()],
    );
    let mut pair: Vec<Client> = [4055, 4056]
        .into_iter()
        .map(|port| Client::rest(udp(port), "dave", T0_UNIX + 100_000))
        .collect();
    for c in pair.iter_mut() {
        c.allocate(&mut h);
        let resp = c.call(
            &mut h,
            Method::CHANNEL_BIND,
            &[Attribute::ChannelNumber(0x4001), Attribute::XorPeerAddress(p)],
        );
        assert_eq!(code_of(&resp), None);
    }
    let send = |h: &mut Harness, c: &Client, k: usize| {
        (0..k)
            .filter(|_| h.server.handle_client_input(&buf[..n], c.addr, h.now).is_some())
            .count()
    };
    assert_eq!(send(&mut h, &pair[0], 100), 100, "dave's whole budget");
    assert_eq!(send(&mut h, &pair[1], 150), 0);
    assert_eq!(
        (
            h.metrics.count("dropped", "bandwidth_user"),
            h.metrics.count("dropped", "bandwidth_allocation")
        ),
        (150, 0),
        "all refused by the user's budget, none charged to the second allocation"
    );
    h.advance(Duration::from_millis(500));
    assert_eq!(send(&mut h, &pair[1], 100), 50, "half a second of the user's rate");
}

/// The kernel fast path's view (issue 23.3): a bound channel with a permitted peer is
/// offered until the earliest of its channel, permission and allocation expiries;
/// nothing while a bandwidth limit applies; an empty set once the allocation is gone.
#[test]
fn the_fast_path_is_offered_what_the_core_would_relay_and_no_longer() {
    let mut h = Harness::new();
    h.server.enable_fast_path();
    let mut c = Client::rest(udp(4100), "alice", T0_UNIX + 100_000);
    let relayed = c.allocate(&mut h);
    while let Some(set) = h.server.poll_fast_path(h.now) {
        assert!(set.entries.is_empty(), "no channel yet: {set:?}");
    }
    let p = peer(10, 8000);
    c.call(
        &mut h,
        Method::CHANNEL_BIND,
        &[Attribute::ChannelNumber(0x4001), Attribute::XorPeerAddress(p)],
    );
    let set = h.server.poll_fast_path(h.now).expect("a channel bind marks its client");
    assert_eq!(set.client, c.addr.addr);
    assert_eq!(set.entries.len(), 1, "{set:?}");
    let e = set.entries[0];
    assert_eq!((e.channel, e.relay, e.peer), (0x4001, relay_port(relayed), p));
    // The bind installed a 300 s permission, the channel lasts 600 s: the earliest wins.
    assert_eq!(e.expires, h.now + Duration::from_secs(300));
    assert!(h.server.poll_fast_path(h.now).is_none(), "nothing else changed");

    // Relayed data does not mark anything: the fast path is asked only on control.
    let mut buf = [0u8; 64];
    let n = ChannelData::encode_into(ChannelNumber::new(0x4001).unwrap(), b"media", false, &mut buf).unwrap();
    assert!(h.server.handle_client_input(&buf[..n], c.addr, h.now).is_some());
    assert!(h.server.poll_fast_path(h.now).is_none());

    // A refresh of the permission moves the expiry on.
    h.advance(Duration::from_secs(100));
    c.call(&mut h, Method::CREATE_PERMISSION, &[Attribute::XorPeerAddress(p)]);
    let set = h.server.poll_fast_path(h.now).expect("marked");
    assert_eq!(set.entries[0].expires, h.now + Duration::from_secs(300));

    // Deleting the allocation empties the set.
    c.call(&mut h, Method::REFRESH, &[Attribute::Lifetime(0)]);
    let set = h.server.poll_fast_path(h.now).expect("marked");
    assert!(set.entries.is_empty(), "{set:?}");
}

#[test]
fn the_fast_path_gets_nothing_while_a_bandwidth_limit_applies() {
    let mut h = Harness::with(
        |mut c| {
            c.max_bps = 1_000_000;
            c
        },
        10,
        100,
        vec!["203.0.113.0/24".parse().unwrap()],
    );
    h.server.enable_fast_path();
    let mut c = Client::rest(udp(4101), "alice", T0_UNIX + 100_000);
    c.allocate(&mut h);
    c.call(
        &mut h,
        Method::CHANNEL_BIND,
        &[
            Attribute::ChannelNumber(0x4001),
            Attribute::XorPeerAddress(peer(10, 8000)),
        ],
    );
    let mut seen = 0;
    while let Some(set) = h.server.poll_fast_path(h.now) {
        assert!(set.entries.is_empty(), "{set:?}");
        seen += 1;
    }
    assert!(seen > 0, "the client was marked, and offered nothing");
}
