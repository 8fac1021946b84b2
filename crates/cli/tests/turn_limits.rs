//! The embedded TURN server against hostile clients (issue 17, TURN rows), through the
//! real binary on loopback: every limit is hit and every figure is printed, so a run
//! with `--nocapture` gives the measurements quoted in the commit messages.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use common::*;
use firstcall_stun::{tcp_frame_len, Attribute, Class, IntegrityKind, Message, MessageBuilder, Method, TransactionId};
use firstcall_turn::auth::{long_term_key, rest_credential, Secret};

const SECRET: &str = "limits-secret";
const REALM: &str = "firstcall.test";

/// A blocking TURN client speaking raw STUN, over UDP or TCP, with a REST credential.
struct Raw {
    udp: Option<UdpSocket>,
    tcp: Option<(TcpStream, Vec<u8>)>,
    server: SocketAddr,
    username: String,
    key: Vec<u8>,
    nonce: String,
    tid: u32,
}

impl Raw {
    fn udp_from(server: SocketAddr, src_ip: &str, user: &str) -> Raw {
        let s = UdpSocket::bind((src_ip, 0)).expect("bind client");
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        Self::new(server, Some(s), None, user)
    }

    fn udp(server: SocketAddr, user: &str) -> Raw {
        Self::udp_from(server, "127.0.0.1", user)
    }

    fn tcp(server: SocketAddr, user: &str) -> Raw {
        let s = TcpStream::connect_timeout(&server, Duration::from_secs(3)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        Self::new(server, None, Some((s, Vec::new())), user)
    }

    fn new(server: SocketAddr, udp: Option<UdpSocket>, tcp: Option<(TcpStream, Vec<u8>)>, user: &str) -> Raw {
        let (username, password) = rest_credential(&Secret::new(SECRET), user, 4_000_000_000);
        let key = long_term_key(&username, REALM, &password).as_ref().to_vec();
        Raw {
            udp,
            tcp,
            server,
            username,
            key,
            nonce: String::new(),
            tid: 0,
        }
    }

    fn next_tid(&mut self) -> TransactionId {
        self.tid += 1;
        let mut t = [7u8; 12];
        t[..4].copy_from_slice(&self.tid.to_be_bytes());
        TransactionId(t)
    }

    fn send_raw(&mut self, bytes: &[u8]) {
        if let Some(s) = &self.udp {
            s.send_to(bytes, self.server).unwrap();
        } else if let Some((s, _)) = &mut self.tcp {
            s.write_all(bytes).unwrap();
        }
    }

    /// The next STUN message or ChannelData frame, or None on timeout.
    fn recv_raw(&mut self) -> Option<Vec<u8>> {
        if let Some(s) = &self.udp {
            let mut buf = vec![0u8; 65536];
            return s.recv(&mut buf).ok().map(|n| buf[..n].to_vec());
        }
        let (s, buf) = self.tcp.as_mut().unwrap();
        loop {
            if let Ok(Some(len)) = tcp_frame_len(buf) {
                return Some(buf.drain(..len).collect());
            }
            let mut chunk = [0u8; 65536];
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    fn build(&mut self, method: Method, attrs: &[Attribute<'_>], key: Option<Vec<u8>>) -> (TransactionId, Vec<u8>) {
        let tid = self.next_tid();
        let mut b = MessageBuilder::new(Class::Request, method, tid);
        for a in attrs {
            b.add(a);
        }
        if !self.nonce.is_empty() {
            let key = key.unwrap_or_else(|| self.key.clone());
            b.add(&Attribute::Username(&self.username))
                .add(&Attribute::Realm(REALM))
                .add(&Attribute::Nonce(&self.nonce))
                .add_integrity(IntegrityKind::Sha1, &key);
        }
        (tid, b.finish())
    }

    /// One request, answering one 401/438 challenge; returns (error code, response).
    fn call(&mut self, method: Method, attrs: &[Attribute<'_>]) -> (Option<u16>, Vec<u8>) {
        for _ in 0..3 {
            let (tid, req) = self.build(method, attrs, None);
            self.send_raw(&req);
            let resp = loop {
                let r = self.recv_raw().expect("a response within 3 s");
                if Message::decode(&r).is_ok_and(|m| m.transaction_id() == tid) {
                    break r;
                }
            };
            let m = Message::decode(&resp).unwrap();
            let code = m.error_code().map(|e| e.code);
            if matches!(code, Some(401 | 438)) && m.nonce().is_some_and(|n| n != self.nonce) {
                self.nonce = m.nonce().unwrap().to_owned();
                continue;
            }
            return (code, resp.clone());
        }
        panic!("server kept challenging");
    }

    fn allocate(&mut self) -> SocketAddr {
        let (code, resp) = self.call(Method::ALLOCATE, &[Attribute::RequestedTransport(17)]);
        assert_eq!(code, None, "allocate refused");
        Message::decode(&resp)
            .unwrap()
            .find(|a| match a {
                Attribute::XorRelayedAddress(r) => Some(*r),
                _ => None,
            })
            .unwrap()
    }

    fn permit(&mut self, peer: SocketAddr) -> Option<u16> {
        self.call(Method::CREATE_PERMISSION, &[Attribute::XorPeerAddress(peer)])
            .0
    }

    fn send_indication(&mut self, peer: SocketAddr, data: &[u8]) {
        let mut b = MessageBuilder::new(Class::Indication, Method::SEND, self.next_tid());
        b.add(&Attribute::XorPeerAddress(peer)).add(&Attribute::Data(data));
        let m = b.finish();
        self.send_raw(&m);
    }

    /// The payload of the next Data indication, or None on timeout.
    fn recv_data(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        loop {
            let r = self.recv_raw()?;
            let Ok(m) = Message::decode(&r) else { continue };
            if m.method() == Method::DATA {
                return Some((m.peer_addresses().next()?, m.data()?.to_vec()));
            }
        }
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS in /proc status")
}

/// Row "the peer filter's own-relay exception admits any port of the relay range": a
/// plain UDP service on 127.0.0.1 on a port of the relay range must not get a client's
/// data, while a live relay of this server on the same address stays reachable, and
/// stops being reachable once its allocation is gone.
#[test]
fn a_local_service_in_the_relay_range_is_not_a_relay() {
    let server = start_firstcall(&["--turn-secret", SECRET]);
    // The relay range's last port, bound by a plain service before any allocation exists.
    let service = UdpSocket::bind(("127.0.0.1", server.relay.1)).expect("bind the service");
    service.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let service_addr = service.local_addr().unwrap();

    let mut a = Raw::udp(server.turn, "alice");
    let ra = a.allocate();
    let mut b = Raw::udp(server.turn, "bob");
    let rb = b.allocate();
    assert_ne!(rb, service_addr);
    assert_ne!(ra, service_addr);

    let refused = a.permit(service_addr);
    // Whatever the permission said, try to deliver through a Send indication too.
    a.send_indication(service_addr, b"to the service");
    let mut got = [0u8; 64];
    let leaked = service.recv_from(&mut got).ok();
    eprintln!("service {service_addr}: CreatePermission -> {refused:?}, service received {leaked:?}");
    assert_eq!(refused, Some(403), "a non-relay port of the relay range is refused");
    assert!(leaked.is_none(), "the service must not receive the client's data");
    assert!(server.metric("firstcall_turn_peers_refused_total{reason=\"loopback\"}") >= 1);

    // A live relay of this server on the same address is reachable, both ways.
    assert_eq!(a.permit(rb), None);
    assert_eq!(b.permit(ra), None);
    a.send_indication(rb, b"relay to relay");
    assert_eq!(b.recv_data(), Some((ra, b"relay to relay".to_vec())));

    // Once B's allocation is deleted, its port is no longer a relay: A's permission for
    // 127.0.0.1 must not carry data to whatever binds that port next.
    let (code, _) = b.call(Method::REFRESH, &[Attribute::Lifetime(0)]);
    assert_eq!(code, None);
    let dropped_before = server.metric("firstcall_turn_peers_refused_total{reason=\"loopback\"}");
    let reused = wait_until(Duration::from_secs(3), || UdpSocket::bind(rb).is_ok());
    assert!(reused, "B's relay port is released");
    let squatter = UdpSocket::bind(rb).expect("bind B's old relay port");
    squatter.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    a.send_indication(rb, b"after release");
    assert!(
        wait_until(Duration::from_secs(3), || server
            .metric("firstcall_turn_peers_refused_total{reason=\"loopback\"}")
            > dropped_before),
        "the Send to a released relay port is refused and counted"
    );
    assert!(squatter.recv_from(&mut got).is_err(), "the squatter got nothing");
}

/// Row "TURN does not throttle authentication failures": wrong-password Allocates from
/// one address, as fast as the client can send, for two seconds.
#[test]
fn error_responses_are_rate_limited_per_source_ip() {
    let server = start_firstcall(&[
        "--turn-secret",
        SECRET,
        "--turn-error-rate",
        "2",
        "--turn-error-burst",
        "20",
    ]);
    let mut guesser = Raw::udp(server.turn, "alice");
    // One challenge for a nonce, then guesses under it.
    let (code, _) = guesser.call(Method::ALLOCATE, &[Attribute::RequestedTransport(17)]);
    assert_eq!(code, None, "the right password works first");
    let sock = guesser.udp.as_ref().unwrap().try_clone().unwrap();
    let _ = socket2::SockRef::from(&sock).set_recv_buffer_size(8 << 20);
    sock.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    // Transaction ids of every answer, until the server has been silent for 1 s (twice
    // the refill interval).
    let reader = std::thread::spawn(move || {
        let mut tids = Vec::new();
        let mut last = Instant::now();
        let mut buf = [0u8; 1500];
        while let Ok(n) = sock.recv(&mut buf) {
            tids.push(Message::decode(&buf[..n]).unwrap().transaction_id());
            last = Instant::now();
        }
        (tids, last)
    });
    // Not a whole number of refill intervals (500 ms), so that the right password below
    // comes half an interval after the last refill, not on one.
    let window = Duration::from_millis(2250);
    let started = Instant::now();
    let mut sent = 0u64;
    while started.elapsed() < window {
        let (_, req) = guesser.build(
            Method::REFRESH,
            &[Attribute::Lifetime(600)],
            Some(format!("guess-{sent}").into_bytes()),
        );
        guesser.send_raw(&req);
        sent += 1;
        if sent.is_multiple_of(64) {
            // Stay below what loopback and the server can take without drops.
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let secs = started.elapsed().as_secs_f64();
    // The right password right behind the guesses, while the address is limited.
    let (right_tid, right) = guesser.build(Method::REFRESH, &[Attribute::Lifetime(600)], None);
    guesser.send_raw(&right);
    let (answers, last_answer) = reader.join().unwrap();
    let answered = answers.len() as u64;
    let limited = server.metric("firstcall_turn_dropped_total{reason=\"error_rate_limited\"}");
    eprintln!(
        "{sent} wrong passwords in {secs:.2} s: {answered} answered ({:.1}/s), {limited} unanswered and counted",
        answered as f64 / secs
    );
    // 20 at once (less the first Allocate's challenge), then 2 a second for as long as
    // answers came (the server may lag behind the sender under load).
    let span = last_answer.saturating_duration_since(started).as_secs_f64();
    let bound = 19 + (2.0 * span) as u64 + 1;
    assert!(
        answered <= bound,
        "{answered} answers in {span:.2} s, limit is 20 + 2/s"
    );
    assert!(answered >= 19, "the burst is answered");
    assert!(limited > 0 && limited + answered >= sent / 2, "the rest is counted");
    assert!(
        !answers.contains(&right_tid),
        "a limited address gets no answer, right password or wrong: it is not examined"
    );
    // Another address is served at once…
    let mut other = Raw::udp_from(server.turn, "127.0.0.2", "bob");
    let (code, _) = other.call(Method::ALLOCATE, &[Attribute::RequestedTransport(17)]);
    assert_eq!(code, None, "another source address is not limited");
    // …and the limited one recovers as its bucket refills (a token every 500 ms).
    guesser
        .udp
        .as_ref()
        .unwrap()
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let recovered = wait_until(Duration::from_secs(3), || {
        let (tid, req) = guesser.build(Method::REFRESH, &[Attribute::Lifetime(600)], None);
        guesser.send_raw(&req);
        std::iter::from_fn(|| guesser.recv_raw())
            .take(50)
            .any(|r| Message::decode(&r).is_ok_and(|m| m.transaction_id() == tid))
    });
    assert!(recovered, "the right password works again once the bucket refills");
}

/// Row "an Allocate without credentials is answered 7× larger": a 20-byte Allocate
/// with no attributes at all gets no answer.
///
/// RFC 8656 §7.1: "The client MUST include a REQUESTED-TRANSPORT attribute". §7.2 has
/// the server check it after authentication ("If the REQUESTED-TRANSPORT attribute is
/// not included or is malformed, the server rejects the request with a 400 (Bad
/// Request) error"), so an unauthenticated request without it would first earn the
/// 401 challenge: a reflection of 20 bytes into 140. No conforming client sends such
/// a request, so it is dropped unanswered (and counted) before authentication; an
/// authenticated one still gets its 400.
#[test]
fn an_allocate_without_requested_transport_is_not_answered() {
    let server = start_firstcall(&["--turn-secret", SECRET]);
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let bare = MessageBuilder::new(Class::Request, Method::ALLOCATE, TransactionId([1; 12])).finish();
    assert_eq!(bare.len(), 20);
    s.send_to(&bare, server.turn).unwrap();
    // A Binding after it: the same 5-tuple meets the same worker, in order, so the first
    // answer on this socket would be the Allocate's if there were one.
    let binding = MessageBuilder::new(Class::Request, Method::BINDING, TransactionId([2; 12])).finish();
    s.send_to(&binding, server.turn).unwrap();
    let mut buf = [0u8; 1500];
    let n = s.recv(&mut buf).expect("the Binding is answered");
    let first = Message::decode(&buf[..n]).unwrap();
    eprintln!(
        "20-byte Allocate without REQUESTED-TRANSPORT: first answer is {:?} ({n} B)",
        first.method()
    );
    assert_eq!(first.method(), Method::BINDING, "the Allocate got an answer ({n} B)");
    assert_eq!(
        server.metric("firstcall_turn_dropped_total{reason=\"allocate_without_transport\"}"),
        1
    );
    // With REQUESTED-TRANSPORT the client is challenged as usual.
    let mut c = Raw::udp(server.turn, "carol");
    c.allocate();
}

/// Row "TURN TCP/TLS send queue bounded in frames (512), not bytes": a TCP client that
/// never reads while a peer sends 700 × 60 KB through its relay.
#[test]
fn a_non_reading_tcp_client_costs_bounded_memory() {
    let server = start_firstcall(&[
        "--turn-secret",
        SECRET,
        "--allow-peer",
        "127.0.0.1/32",
        "--max-bps",
        "0",
        "--user-max-bps",
        "0",
        "--turn-stream-queue",
        "262144",
    ]);
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut c = Raw::tcp(server.turn, "dave");
    let relayed = c.allocate();
    assert_eq!(c.permit(peer.local_addr().unwrap()), None);
    // The client reads nothing from here on, and keeps a small receive window.
    let _ = socket2::SockRef::from(&c.tcp.as_ref().unwrap().0).set_recv_buffer_size(4096);
    let before = rss_kib(server.proc.pid());
    let payload = vec![0x5a; 60_000];
    let relayed_metric = "firstcall_turn_relayed_packets_total{direction=\"to_client\"}";
    for batch in 0..70 {
        // 10 × 60 KB fit the relay socket's 1 MiB receive buffer.
        for _ in 0..10 {
            peer.send_to(&payload, relayed).unwrap();
        }
        // Pace on the server's own count so the relay socket's buffer never overflows.
        let want = (batch + 1) * 10;
        assert!(
            wait_until(Duration::from_secs(5), || server.metric(relayed_metric) >= want),
            "the server took {} of {want} datagrams",
            server.metric(relayed_metric)
        );
    }
    let after = rss_kib(server.proc.pid());
    let full = server.metric("firstcall_turn_dropped_total{reason=\"stream_queue_full\"}");
    eprintln!(
        "non-reading TCP client, 700 x 60 KB: RSS {before} -> {after} KiB (+{} KiB), {full} frames dropped at the queue",
        after.saturating_sub(before)
    );
    assert!(full > 0, "the byte bound is hit and counted");
    assert!(
        after.saturating_sub(before) < 8 * 1024,
        "RSS grew {} KiB",
        after.saturating_sub(before)
    );
}

/// Row "its idle timeout restarts on every byte": a client that trickles one byte of a
/// frame every 200 ms is cut when the frame deadline passes.
#[test]
fn a_trickling_tcp_client_is_cut_at_the_frame_deadline() {
    let server = start_firstcall(&["--turn-secret", SECRET, "--turn-stream-timeout", "2s"]);
    let mut s = TcpStream::connect(server.turn).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    // A Binding request header announcing 400 bytes of attributes that never all come.
    let mut frame = MessageBuilder::new(Class::Request, Method::BINDING, TransactionId([3; 12])).finish();
    frame[2..4].copy_from_slice(&400u16.to_be_bytes());
    frame.resize(20 + 400, 0);
    let started = Instant::now();
    let mut cut = None;
    for byte in frame.iter().take(60) {
        if s.write_all(&[*byte]).is_err() {
            cut = Some(started.elapsed());
            break;
        }
        let mut b = [0u8; 16];
        match s.read(&mut b) {
            Ok(0) => {
                cut = Some(started.elapsed());
                break;
            }
            Ok(_) => panic!("an answer to half a frame"),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => {
                cut = Some(started.elapsed());
                break;
            }
        }
    }
    eprintln!("trickling client cut after {cut:?}");
    let cut = cut.expect("the trickling client was never cut (60 bytes over 12 s)");
    assert!(
        cut >= Duration::from_millis(1800) && cut < Duration::from_secs(5),
        "cut after {cut:?}"
    );
    assert!(wait_until(Duration::from_secs(2), || server
        .metric("firstcall_turn_dropped_total{reason=\"stream_frame_timeout\"}")
        == 1));
}

/// Two allocations on this server, A sending `count` × 1000-byte ChannelData to B's relay
/// in one tight loop; returns (datagrams B received, what the server dropped for `reason`).
fn flood_between_relays(server: &Server, user_a: &str, user_b: &str, count: u64, reason: &str) -> (u64, u64) {
    let mut a = Raw::udp(server.turn, user_a);
    let mut b = Raw::udp(server.turn, user_b);
    let ra = a.allocate();
    let rb = b.allocate();
    let (code, _) = a.call(
        Method::CHANNEL_BIND,
        &[Attribute::ChannelNumber(0x4001), Attribute::XorPeerAddress(rb)],
    );
    assert_eq!(code, None);
    assert_eq!(b.permit(ra), None);
    // Room for every datagram that may pass, so that none is lost at B's socket.
    let _ = socket2::SockRef::from(b.udp.as_ref().unwrap()).set_recv_buffer_size(4 << 20);
    let sock = a.udp.as_ref().unwrap();
    let mut frame = vec![0x40, 0x01, 0x03, 0xe8];
    frame.extend_from_slice(&[0x77; 1000]);
    let dropped = format!("firstcall_turn_dropped_total{{reason=\"{reason}\"}}");
    let relayed = "firstcall_turn_relayed_packets_total{direction=\"to_peer\"}";
    let base = server.metric(relayed) + server.metric(&dropped);
    for _ in 0..count {
        sock.send_to(&frame, server.turn).unwrap();
    }
    // Every datagram is accounted for, relayed or dropped, before B's count is read.
    assert!(
        wait_until(Duration::from_secs(5), || server.metric(relayed)
            + server.metric(&dropped)
            >= base + count),
        "the server accounted for {} of {count}",
        server.metric(relayed) + server.metric(&dropped) - base
    );
    let bs = b.udp.as_ref().unwrap();
    bs.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let mut got = 0;
    let mut buf = [0u8; 2048];
    while bs.recv(&mut buf).is_ok() {
        got += 1;
    }
    (got, server.metric(&dropped))
}

/// Issue 17, TURN point: a bandwidth quota per allocation (`--max-bps`, coturn's
/// max-bps): 100 KB/s, so of 400 KB sent at once about the first 100 KB pass.
#[test]
fn max_bps_drops_and_counts_what_exceeds_an_allocations_rate() {
    let server = start_firstcall(&["--turn-secret", SECRET, "--max-bps", "100000", "--user-max-bps", "0"]);
    let started = Instant::now();
    let (got, dropped) = flood_between_relays(&server, "frank", "grace", 400, "bandwidth_allocation");
    let secs = started.elapsed().as_secs_f64();
    eprintln!("--max-bps 100000: 400 x 1000 B sent at once, {got} relayed, {dropped} dropped ({secs:.2} s)");
    // 100 datagrams of burst, plus 100 a second for as long as the sending took.
    assert!(got >= 100 && got <= 100 + (secs * 100.0) as u64 + 1, "{got} relayed");
    assert_eq!(got + dropped, 400);
}

/// Issue 17, TURN point: the per-user quota (`--user-max-bps`) through the real binary,
/// with no per-allocation quota (that one user's allocations share it is shown in the
/// core test bandwidth_quotas_per_allocation_and_per_user).
#[test]
fn user_max_bps_limits_a_users_relayed_bytes() {
    let server = start_firstcall(&["--turn-secret", SECRET, "--max-bps", "0", "--user-max-bps", "100000"]);
    let started = Instant::now();
    let (got, dropped) = flood_between_relays(&server, "heidi", "heidi", 400, "bandwidth_user");
    let secs = started.elapsed().as_secs_f64();
    eprintln!("--user-max-bps 100000: 400 x 1000 B sent at once, {got} relayed, {dropped} dropped ({secs:.2} s)");
    assert!(got >= 100 && got <= 100 + (secs * 100.0) as u64 + 1, "{got} relayed");
    assert_eq!(got + dropped, 400);
}

/// Row "the default relay range overlaps the kernel's ephemeral ports": the server warns
/// at start-up when its relay range overlaps the ephemeral range (read from this
/// machine's kernel) or one of its own listeners, and not otherwise.
#[test]
fn a_relay_range_overlapping_ephemeral_ports_or_a_listener_is_warned_about() {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").expect("Linux");
    let eph: Vec<u16> = text.split_whitespace().map(|v| v.parse().unwrap()).collect();
    let reserved = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_reserved_ports").unwrap_or_default();
    if !reserved.trim().is_empty() {
        eprintln!(
            "SKIP the ephemeral part: this kernel reserves ports ({})",
            reserved.trim()
        );
    } else {
        // No allocation is made: the server binds nothing in this range.
        let turn = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let server = start_firstcall_relays(turn, (eph[0], eph[0] + 99), &["--turn-secret", SECRET]);
        let log = server.log_text();
        assert!(
            log.contains("overlap the kernel's ephemeral ports") && log.contains("ip_local_reserved_ports"),
            "no ephemeral-range warning:\n{log}"
        );
    }
    let port = free_port();
    let server = start_firstcall_relays(
        SocketAddr::from(([127, 0, 0, 1], port)),
        (port, port),
        &["--turn-secret", SECRET],
    );
    let log = server.log_text();
    assert!(
        log.contains(&format!("TURN listener's port {port} is inside the relay port range")),
        "no listener warning:\n{log}"
    );
    assert!(!log.contains("ephemeral ports"), "{port} is below the ephemeral range");
    // The usual test range, below the ephemeral ports and clear of listeners: silent.
    let server = start_firstcall(&["--turn-secret", SECRET]);
    let log = server.log_text();
    assert!(log.contains("firstcall listening"));
    assert!(
        !log.contains("relay port range") && !log.contains("ephemeral ports"),
        "{log}"
    );
}

/// The error limit's table is bounded (`--turn-error-table`): with room for two source
/// addresses, a third and fourth share one overflow bucket, counted when used.
#[test]
fn the_error_limit_table_is_bounded_and_counted() {
    let server = start_firstcall(&[
        "--turn-secret",
        SECRET,
        "--turn-error-rate",
        "1",
        "--turn-error-burst",
        "1",
        "--turn-error-table",
        "2",
    ]);
    let challenged = |src: &str| {
        let s = UdpSocket::bind((src, 0)).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        let mut b = MessageBuilder::new(Class::Request, Method::ALLOCATE, TransactionId([5; 12]));
        b.add(&Attribute::RequestedTransport(17));
        s.send_to(&b.finish(), server.turn).unwrap();
        let mut buf = [0u8; 1500];
        s.recv(&mut buf).is_ok()
    };
    // Two addresses fill the table (and spend their one token each, so they stay).
    assert!(challenged("127.0.0.2"));
    assert!(challenged("127.0.0.3"));
    assert_eq!(
        server.metric("firstcall_turn_dropped_total{reason=\"error_rate_table_full\"}"),
        0
    );
    // The next ones share the overflow bucket: one token between them.
    assert!(challenged("127.0.0.4"));
    assert!(!challenged("127.0.0.5"), "the overflow bucket is spent");
    assert!(server.metric("firstcall_turn_dropped_total{reason=\"error_rate_table_full\"}") >= 2);
    assert_eq!(
        server.metric("firstcall_turn_dropped_total{reason=\"error_rate_limited\"}"),
        1
    );
}
