//! Fuzz entry point for the server core, shared by `fuzz/` and the corpus replay test.
//!
//! The input is a script. Besides raw packets it can send *valid, authenticated*
//! requests (with the latest nonce the core handed out), so the fuzzer reaches
//! allocations, permissions and channels instead of stopping at 401.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use firstcall_stun::{
    Attribute, ChannelData, ChannelNumber, Class, IntegrityKind, Message, MessageBuilder, Method, TransactionId,
};
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::auth::{long_term_key, rest_credential, Authenticator, Secret};
use crate::filter::PeerFilter;
use crate::metrics::TurnMetrics;
use crate::ratelimit::Rate;
use crate::server::{ClientAddr, Command, Config, PeerAddr, Quotas, RelayPort, Server, Transport};

const REALM: &str = "fuzz";
const UNIX0: u64 = 1_800_000_000;

/// Run one script from `t0`. Panics only when the core breaks an invariant.
pub fn run(data: &[u8], t0: Instant) {
    let relay_ip: IpAddr = [192, 0, 2, 1].into();
    // The error limit on (every client shares one address), generous enough that time
    // steps (op 4) refill it and the script still reaches deep states.
    let quotas = Arc::new(Quotas::new(3, 6).with_error_limit(Rate { per_sec: 5, burst: 64 }, 4));
    let filter =
        PeerFilter::new(vec!["203.0.113.0/24".parse().expect("literal CIDR")], vec![]).with_own_relays([relay_ip]);
    let live = filter.live_relays().clone();
    let mut s = Server::new(
        Config::new(relay_ip, 50000..=50015),
        Authenticator::new(REALM, vec![Secret::new("k")], vec![]),
        filter,
        quotas.clone(),
        Arc::new(TurnMetrics::default()),
        StdRng::seed_from_u64(1),
        t0,
        UNIX0,
    );
    let clients: Vec<ClientAddr> = (0..4u16)
        .map(|i| ClientAddr {
            addr: SocketAddr::from(([198, 51, 100, 1], 4000 + i)),
            transport: if i % 2 == 0 { Transport::Udp } else { Transport::Tcp },
        })
        .collect();
    let (username, password) = rest_credential(&Secret::new("k"), "u", UNIX0 + 7200);
    let key = long_term_key(&username, REALM, &password);
    let mut nonces = vec![String::new(); clients.len()];
    let mut now = t0;
    let mut it = data.iter().copied();
    let mut tid = 0u32;
    while let Some(op) = it.next() {
        let arg = it.next().unwrap_or(0);
        let ci = usize::from(arg) % clients.len();
        match op % 7 {
            0 => {
                let len = usize::from(it.next().unwrap_or(0));
                let bytes: Vec<u8> = it.by_ref().take(len).collect();
                let _ = s.handle_client_input(&bytes, clients[ci], now);
            }
            1 => {
                tid += 1;
                let mut t = [0u8; 12];
                t[..4].copy_from_slice(&tid.to_be_bytes());
                let method = [
                    Method::ALLOCATE,
                    Method::REFRESH,
                    Method::CREATE_PERMISSION,
                    Method::CHANNEL_BIND,
                ][usize::from(arg >> 2) % 4];
                let x = it.next().unwrap_or(0);
                let peer = SocketAddr::from(([203, 0, 113, x % 4], 7000 + u16::from(x % 3)));
                let mut b = MessageBuilder::new(Class::Request, method, TransactionId(t));
                match method {
                    Method::ALLOCATE => b.add(&Attribute::RequestedTransport(if x % 5 == 0 { 6 } else { 17 })),
                    Method::REFRESH => b.add(&Attribute::Lifetime(u32::from(x % 3) * 300)),
                    Method::CREATE_PERMISSION => b.add(&Attribute::XorPeerAddress(peer)),
                    _ => b
                        .add(&Attribute::ChannelNumber(0x4000 + u16::from(x % 3)))
                        .add(&Attribute::XorPeerAddress(peer)),
                };
                b.add(&Attribute::Username(&username))
                    .add(&Attribute::Realm(REALM))
                    .add(&Attribute::Nonce(&nonces[ci]));
                b.add_integrity(IntegrityKind::Sha1, key.as_ref());
                let raw = b.finish();
                let _ = s.handle_client_input(&raw, clients[ci], now);
            }
            2 => {
                let x = it.next().unwrap_or(0);
                let mut buf = [0u8; 16];
                let ch = ChannelNumber::new(0x4000 + u16::from(x % 3)).expect("in range");
                let n = ChannelData::encode_into(ch, &[x; 8], false, &mut buf).expect("fits");
                let _ = s.handle_client_input(&buf[..n], clients[ci], now);
            }
            3 => {
                let x = it.next().unwrap_or(0);
                let peer = SocketAddr::from(([203, 0, 113, x % 4], 7000 + u16::from(x % 3)));
                let _ = s.handle_peer_traffic(&[arg; 5], PeerAddr(peer), RelayPort(50000 + u16::from(arg % 16)), now);
            }
            4 => now += Duration::from_secs(u64::from(arg) * 7),
            5 => s.handle_client_closed(clients[ci]),
            _ => {
                tid += 1;
                let mut t = [0u8; 12];
                t[..4].copy_from_slice(&tid.to_be_bytes());
                let mut b = MessageBuilder::new(Class::Indication, Method::SEND, TransactionId(t));
                b.add(&Attribute::XorPeerAddress(SocketAddr::from((
                    [203, 0, 113, arg % 4],
                    7000,
                ))))
                .add(&Attribute::Data(&[1, 2, 3]));
                let _ = s.handle_client_input(&b.finish(), clients[ci], now);
            }
        }
        while let Some(t) = s.poll_timeout() {
            if t > now {
                break;
            }
            s.handle_timeout(t);
        }
        loop {
            match s.poll_command() {
                Some(Command::BindRelay { port, .. }) => s.handle_relay_bound(port, port.0 % 5 != 0, now),
                Some(Command::ReleaseRelay { .. }) => {}
                None => break,
            }
        }
        while let Some(t) = s.poll_transmit() {
            let m = Message::decode(&t.payload).expect("the core only sends well-formed STUN");
            if let (Some(n), Some(i)) = (m.nonce(), clients.iter().position(|c| *c == t.dst)) {
                nonces[i] = n.to_owned();
            }
        }
        assert!(s.allocation_count() <= 6, "total quota holds");
        assert!(quotas.in_use() >= s.allocation_count(), "every allocation holds quota");
        assert_eq!(
            live.len(),
            s.allocation_count(),
            "a port is a live relay iff an allocation holds it"
        );
    }
}
