//! Bad input against the real binary: every malformed packet gets the right error
//! response or is counted and dropped, and never stalls other clients.

mod common;

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::time::Duration;

use common::*;
use firstcall_stun::{Attribute, Class, IntegrityKind, Message, MessageBuilder, Method, TransactionId};

fn udp_client() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s
}

fn binding(tid: u8) -> Vec<u8> {
    MessageBuilder::new(Class::Request, Method::BINDING, TransactionId([tid; 12])).finish()
}

/// Send and read one reply.
fn exchange(s: &UdpSocket, server: &Server, packet: &[u8]) -> Vec<u8> {
    s.send_to(packet, server.turn).unwrap();
    let mut buf = [0u8; 2048];
    let (n, _) = s.recv_from(&mut buf).expect("a reply within 3 s");
    buf[..n].to_vec()
}

fn error_code(resp: &[u8]) -> Option<u16> {
    Message::decode(resp)
        .expect("server replies are well-formed")
        .error_code()
        .map(|e| e.code)
}

#[test]
fn malformed_udp_packets_are_answered_or_counted() {
    let mut server = start_firstcall(&["--turn-secret", "s"]);
    let c = udp_client();

    // Garbage and truncated packets: no reply, but counted; the socket keeps serving.
    for junk in [
        &[0xFFu8; 40][..],
        &[0x00, 0x01, 0x00],
        &binding(1)[..19],
        &[0x40, 0x00, 0x00, 0x10, 1, 2],
    ] {
        c.send_to(junk, server.turn).unwrap();
    }
    let resp = exchange(&c, &server, &binding(2));
    assert_eq!(
        Message::decode(&resp).unwrap().class(),
        Class::Success,
        "server still answers after junk"
    );
    assert!(server.metric("firstcall_turn_dropped_total{reason=\"not_stun_or_channel_data\"}") >= 1);
    assert!(server.metric("firstcall_turn_dropped_total{reason=\"truncated\"}") >= 2);
    assert!(server.metric("firstcall_turn_dropped_total{reason=\"malformed_channel_data\"}") >= 1);

    // A request with a malformed attribute: 400 (RFC 8489 §6.3.1).
    let mut bad = MessageBuilder::new(Class::Request, Method::ALLOCATE, TransactionId([3; 12])).finish();
    bad.extend_from_slice(&[0x00, 0x19, 0x00, 0x08, 17, 0, 0, 0]);
    bad[3] = 8;
    assert_eq!(error_code(&exchange(&c, &server, &bad)), Some(400));

    // Unknown comprehension-required attribute: 420 with UNKNOWN-ATTRIBUTES.
    let mut b = MessageBuilder::new(Class::Request, Method::BINDING, TransactionId([4; 12]));
    b.add(&Attribute::Other {
        typ: 0x7ABC,
        value: b"",
    });
    let resp = exchange(&c, &server, &b.finish());
    assert_eq!(error_code(&resp), Some(420));
    assert!(Message::decode(&resp)
        .unwrap()
        .attributes()
        .contains(&Attribute::UnknownAttributes(&[0x7A, 0xBC])));

    // Wrong integrity: 401 with a fresh nonce, counted by reason.
    let resp = exchange(&c, &server, &{
        let mut b = MessageBuilder::new(Class::Request, Method::ALLOCATE, TransactionId([5; 12]));
        b.add(&Attribute::RequestedTransport(17));
        b.finish()
    });
    let nonce = Message::decode(&resp).unwrap().nonce().unwrap().to_owned();
    let mut b = MessageBuilder::new(Class::Request, Method::ALLOCATE, TransactionId([6; 12]));
    b.add(&Attribute::RequestedTransport(17))
        .add(&Attribute::Username("4000000000:alice"))
        .add(&Attribute::Realm("firstcall.test"))
        .add(&Attribute::Nonce(&nonce))
        .add_integrity(IntegrityKind::Sha1, &[0u8; 16]);
    assert_eq!(error_code(&exchange(&c, &server, &b.finish())), Some(401));
    assert!(server.metric("firstcall_turn_auth_failures_total{reason=\"bad_integrity\"}") >= 1);

    // A tampered FINGERPRINT: dropped silently per RFC 8489 §7.3, counted.
    let mut b = MessageBuilder::new(Class::Request, Method::BINDING, TransactionId([7; 12]));
    b.add_fingerprint();
    let mut fp = b.finish();
    let last = fp.len() - 1;
    fp[last] ^= 0xFF;
    c.send_to(&fp, server.turn).unwrap();
    let resp = exchange(&c, &server, &binding(8));
    assert_eq!(
        Message::decode(&resp).unwrap().transaction_id(),
        TransactionId([8; 12]),
        "no reply to the bad fingerprint"
    );
    assert!(server.metric("firstcall_turn_dropped_total{reason=\"bad_fingerprint\"}") >= 1);
    assert!(server.proc.alive());
}

#[test]
fn broken_tcp_streams_are_closed_without_stalling_others() {
    let mut server = start_firstcall(&["--turn-secret", "s"]);

    // A stream that announces a 64 KiB ChannelData frame and stops half-way ...
    let mut slow = TcpStream::connect(server.turn).unwrap();
    slow.write_all(&[0x40, 0x00, 0xFF, 0xFF]).unwrap();
    slow.write_all(&[0u8; 1000]).unwrap();
    // ... and one that sends bytes no TURN frame starts with.
    let mut garbage = TcpStream::connect(server.turn).unwrap();
    garbage.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    garbage.write_all(&[0xC0; 64]).unwrap();

    // Meanwhile other clients, over TCP and UDP, are served at once.
    let mut good = TcpStream::connect(server.turn).unwrap();
    good.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    good.write_all(&binding(9)).unwrap();
    let mut resp = vec![0u8; 20];
    good.read_exact(&mut resp).unwrap();
    let len = u16::from_be_bytes([resp[2], resp[3]]) as usize;
    resp.resize(20 + len, 0);
    good.read_exact(&mut resp[20..]).unwrap();
    assert_eq!(Message::decode(&resp).unwrap().class(), Class::Success);
    let c = udp_client();
    assert_eq!(
        Message::decode(&exchange(&c, &server, &binding(10))).unwrap().class(),
        Class::Success
    );

    // The garbage stream is closed by the server (EOF), and counted.
    let mut buf = [0u8; 16];
    assert_eq!(garbage.read(&mut buf).expect("server closes, not times out"), 0);
    assert!(server.metric("firstcall_turn_dropped_total{reason=\"stream_framing_error\"}") >= 1);
    drop(slow);
    assert!(server.proc.alive());
}

/// Bound to a wildcard address, the server must answer from the address the client
/// wrote to: a reply from another address is dropped by any NAT in front of the client.
#[test]
fn wildcard_listener_replies_from_the_address_the_client_wrote_to() {
    let port = free_port();
    let server = start_firstcall_on(
        std::net::SocketAddr::from(([0, 0, 0, 0], port)),
        &["--turn-secret", "s", "--relay-ip", "127.0.0.1"],
    );
    let c = udp_client();
    for target in ["127.0.0.2", "127.0.0.3", "127.0.0.1"] {
        let to: std::net::SocketAddr = format!("{target}:{port}").parse().unwrap();
        c.send_to(&binding(11), to).unwrap();
        let mut buf = [0u8; 1500];
        let (n, from) = c.recv_from(&mut buf).expect("a reply");
        assert_eq!(from, to, "reply to a request sent to {to} came from {from}");
        assert_eq!(Message::decode(&buf[..n]).unwrap().class(), Class::Success);
    }
    drop(server);
}
