//! The relay path through the real binary: nothing a client sends is lost on the way.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use firstcall_client::turn::{Client, Credentials, Kind, Relayed};
use firstcall_turn::auth::{rest_credential, Secret};

/// A firstcall with TURN secret `secret`, a runtime for the clients, and a REST
/// credential for `user` valid for ten minutes.
fn setup(secret: &str, user: &str) -> (Server, tokio::runtime::Runtime, Credentials) {
    setup_with(secret, user, &[])
}

/// As [`setup`], with `extra` flags for the server.
fn setup_with(secret: &str, user: &str, extra: &[&str]) -> (Server, tokio::runtime::Runtime, Credentials) {
    let server = start_firstcall(&[&["--turn-secret", secret], extra].concat());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime builds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is past 1970")
        .as_secs();
    let (username, password) = rest_credential(&Secret::new(secret), user, now + 600);
    (server, rt, Credentials { username, password })
}

/// Two relayed clients of `server`, each with a channel to the other's relayed
/// address: A's is 0x4001, B's 0x4002. Returns (A, B, A's relayed, B's relayed).
async fn channel_pair(server: &Server, creds: &Credentials) -> (Client, Client, SocketAddr, SocketAddr) {
    let mut a = Client::connect(server.turn, &Kind::Udp, creds.clone()).await.unwrap();
    let mut b = Client::connect(server.turn, &Kind::Udp, creds.clone()).await.unwrap();
    let ra = a.allocate(None).await.unwrap().relayed;
    let rb = b.allocate(None).await.unwrap().relayed;
    a.bind_channel(0x4001, rb).await.unwrap();
    b.bind_channel(0x4002, ra).await.unwrap();
    (a, b, ra, rb)
}

/// Regression: the first datagram through a freshly opened relay socket used to be
/// dropped (`relay_send_would_block`), because tokio refused to send before its
/// reactor had seen the new socket writable. That first datagram is often a call's
/// first connectivity check, so every allocation here sends at once and must arrive.
#[test]
fn the_first_datagram_through_a_fresh_relay_arrives() {
    let (server, rt, creds) = setup("fresh", "relay-test");
    const ROUNDS: usize = 30;
    let delivered = rt.block_on(async {
        let mut delivered = 0;
        // Every client stays open to the end: a closed client's port may come back as a
        // later client's, whose Allocate then rightly meets the old allocation (437).
        let mut keep = Vec::new();
        for i in 0..ROUNDS {
            let mut a = Client::connect(server.turn, &Kind::Udp, creds.clone()).await.unwrap();
            let mut b = Client::connect(server.turn, &Kind::Udp, creds.clone()).await.unwrap();
            let ra = a.allocate(None).await.unwrap().relayed;
            let rb = b.allocate(None).await.unwrap().relayed;
            b.permit(ra).await.unwrap();
            a.permit(rb).await.unwrap();
            let payload = format!("first-{i}").into_bytes();
            a.send_indication(rb, &payload).await.unwrap();
            // Generous bound: on loopback the datagram arrives in well under 1 ms, and a
            // lost one never does.
            match b.recv_relayed(Duration::from_secs(3)).await {
                Ok(Relayed::Data { peer, data }) if peer == ra && data == payload => delivered += 1,
                other => eprintln!("round {i}: {other:?}"),
            }
            keep.push((a, b));
        }
        delivered
    });
    assert_eq!(delivered, ROUNDS, "every first datagram must be relayed");
    for reason in [
        "relay_send_would_block",
        "client_send_would_block",
        "relay_send_error",
        "client_send_error",
    ] {
        assert_eq!(
            server.metric(&format!("firstcall_turn_dropped_total{{reason=\"{reason}\"}}")),
            0,
            "{reason}"
        );
    }
}

/// Relay bursts leave in batched (GSO) sends: a run of equal-size datagrams to one
/// destination becomes one `sendmsg`, which the kernel cuts apart again. Every
/// datagram must still arrive alone, whole and in order, in both hops, including a
/// shorter one ending a run and a longer one starting the next.
#[test]
fn a_burst_through_two_relays_arrives_whole_and_in_order() {
    let (server, rt, creds) = setup("burst", "burst-test");
    // Sizes in runs: equal ones batch, a shorter one closes a batch, a longer one opens one.
    let sizes: Vec<usize> = (0..80)
        .map(|i| match i % 40 {
            0..=29 => 500,
            30 => 120,
            31..=38 => 1100,
            _ => 7,
        })
        .collect();
    let got = rt.block_on(async {
        let (a, mut b, _, _) = channel_pair(&server, &creds).await;
        // One tight loop, no await between datagrams, so that the server finds runs of
        // them queued and batches its sends.
        let firstcall_client::turn::Transport::Udp(sock) = &a.transport else {
            unreachable!("Kind::Udp")
        };
        sock.writable().await.unwrap();
        for (i, n) in sizes.iter().enumerate() {
            let payload: Vec<u8> = (0..*n).map(|k| (i + k) as u8).collect();
            let mut frame = vec![0x40, 0x01];
            frame.extend_from_slice(&(*n as u16).to_be_bytes());
            frame.extend_from_slice(&payload);
            let sent = socket2::SockRef::from(sock).send(&frame).unwrap();
            assert_eq!(sent, frame.len());
        }
        let mut got = Vec::new();
        while got.len() < sizes.len() {
            match b.recv_relayed(Duration::from_secs(3)).await {
                Ok(Relayed::Channel { channel, data }) => {
                    assert_eq!(channel, 0x4002);
                    got.push(data);
                }
                other => panic!("after {} datagrams: {other:?}", got.len()),
            }
        }
        got
    });
    for (i, (data, n)) in got.iter().zip(&sizes).enumerate() {
        let want: Vec<u8> = (0..*n).map(|k| (i + k) as u8).collect();
        assert_eq!(data, &want, "datagram {i} (size {n}) arrived changed or out of order");
    }
    assert_eq!(
        server.metric("firstcall_turn_relayed_packets_total{direction=\"to_client\"}"),
        sizes.len() as u64
    );
}

/// With several workers, a relay-to-relay datagram whose destination relay sits on
/// another worker is queued for that worker instead of crossing the kernel: every
/// datagram of pairs spread over two workers arrives, whole and in order, and each is
/// counted as handed over. The kernel spreads clients by hash: with 32 pairs, none
/// straddling the two workers has odds of 2^-32.
#[test]
fn relay_to_relay_across_workers_skips_the_kernel() {
    let (server, rt, creds) = setup_with("handoff", "handoff-test", &["--threads", "2"]);
    const PAIRS: usize = 32;
    const N: usize = 20;
    let hairpinned = "firstcall_turn_hairpinned_packets_total";
    rt.block_on(async {
        let mut pairs = Vec::new();
        for _ in 0..PAIRS {
            pairs.push(channel_pair(&server, &creds).await);
        }
        // Relay ports are split in two blocks, one per worker: the lower half is worker 0's.
        let span = server.relay.1 - server.relay.0 + 1;
        let mid = server.relay.0 + span / 2;
        let straddling = pairs
            .iter()
            .filter(|(_, _, ra, rb)| (ra.port() < mid) != (rb.port() < mid))
            .count();
        assert!(straddling > 0, "no pair straddles the two workers");
        for (a, b, _, _) in pairs.iter_mut() {
            for i in 0..N {
                a.send_channel(0x4001, format!("a{i}").as_bytes()).await.unwrap();
                b.send_channel(0x4002, format!("b{i}").as_bytes()).await.unwrap();
            }
        }
        for (k, (a, b, _, _)) in pairs.iter_mut().enumerate() {
            for (rx, channel, from) in [(&mut *b, 0x4002, "a"), (&mut *a, 0x4001, "b")] {
                for i in 0..N {
                    match rx.recv_relayed(Duration::from_secs(3)).await {
                        Ok(Relayed::Channel { channel: c, data }) => {
                            assert_eq!(c, channel);
                            assert_eq!(
                                data,
                                format!("{from}{i}").into_bytes(),
                                "pair {k}, datagram {i} from {from}"
                            );
                        }
                        other => panic!("pair {k}, datagram {i} from {from}: {other:?}"),
                    }
                }
            }
        }
        assert_eq!(
            server.metric(hairpinned),
            (2 * N * PAIRS) as u64,
            "{straddling} pairs straddled"
        );
        assert_eq!(
            server.metric("firstcall_turn_dropped_total{reason=\"handoff_queue_full\"}"),
            0
        );
    });
}

/// Both parties of a call relayed by one server: with one worker, the hop from one
/// allocation's relay socket to the other's is handed over in-process instead of
/// through the kernel. Everything still arrives whole and in order both ways, the
/// receiving allocation's permissions still decide, and the metric counts each
/// datagram that skipped the kernel.
#[test]
fn relay_to_relay_on_one_worker_skips_the_kernel_and_keeps_permissions() {
    let (server, rt, creds) = setup_with("hairpin", "hairpin-test", &["--threads", "1"]);
    const N: usize = 50;
    let hairpinned = "firstcall_turn_hairpinned_packets_total";
    let refused = "firstcall_turn_dropped_total{reason=\"no_permission\"}";
    rt.block_on(async {
        let (mut a, mut b, _, _) = channel_pair(&server, &creds).await;
        for i in 0..N {
            a.send_channel(0x4001, format!("a{i}").as_bytes()).await.unwrap();
            b.send_channel(0x4002, format!("b{i}").as_bytes()).await.unwrap();
        }
        for (rx, channel, from) in [(&mut b, 0x4002, "a"), (&mut a, 0x4001, "b")] {
            for i in 0..N {
                match rx.recv_relayed(Duration::from_secs(3)).await {
                    Ok(Relayed::Channel { channel: c, data }) => {
                        assert_eq!(c, channel);
                        assert_eq!(data, format!("{from}{i}").into_bytes(), "datagram {i} from {from}");
                    }
                    other => panic!("datagram {i} from {from}: {other:?}"),
                }
            }
        }
        assert_eq!(server.metric(hairpinned), 2 * N as u64);
        assert_eq!(server.metric(refused), 0);

        // C's allocation never permitted A's relayed address: A may send (it permitted
        // C), the datagram is handed over, and C's side refuses it as the kernel path would.
        let mut c = Client::connect(server.turn, &Kind::Udp, creds.clone()).await.unwrap();
        let rc = c.allocate(None).await.unwrap().relayed;
        a.permit(rc).await.unwrap();
        a.send_indication(rc, b"not permitted").await.unwrap();
        // The refusal is counted in the same pass as the hand-over; wait for the count.
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        while server.metric(refused) == 0 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            server.metric(refused),
            1,
            "C's allocation refuses a peer it never permitted"
        );
        assert_eq!(server.metric(hairpinned), 2 * N as u64 + 1);
        assert!(
            c.recv_relayed(Duration::from_millis(200)).await.is_err(),
            "nothing reaches C"
        );
    });
}
