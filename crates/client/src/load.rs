//! Load generation for the benchmarks: the same generator for every server.
//!
//! Relay throughput: `flows` pairs of TURN clients (A, B) on one server; A sends
//! ChannelData to B's relayed address through A's allocation, the server relays it
//! to B's allocation and on to B as ChannelData: two relay hops per packet. The offer
//! is open-loop (paced at a fixed rate, never waiting for replies), and loss is what
//! B did not receive.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;

use crate::turn::{Client, Credentials, Kind, Transport, TurnError};

/// One flow: a sending socket and a receiving socket, and what the sender must write.
pub struct Flow {
    /// A's socket (connected to the server).
    pub tx: Arc<UdpSocket>,
    /// B's socket.
    pub rx: Arc<UdpSocket>,
    /// The datagram header A prefixes (ChannelData header, or a flow id for the bare forwarder).
    pub header: Vec<u8>,
}

/// Set up `n` TURN flows: allocations, permissions and channels both ways.
pub async fn turn_flows(server: SocketAddr, creds: &Credentials, n: usize) -> Result<Vec<Flow>, TurnError> {
    let mut flows = Vec::with_capacity(n);
    for _ in 0..n {
        let mut a = Client::connect(server, &Kind::Udp, creds.clone()).await?;
        let mut b = Client::connect(server, &Kind::Udp, creds.clone()).await?;
        let ra = a.allocate(Some(3600)).await?.relayed;
        let rb = b.allocate(Some(3600)).await?.relayed;
        a.bind_channel(0x4001, rb).await?;
        b.bind_channel(0x4001, ra).await?;
        let (Transport::Udp(ta), Transport::Udp(tb)) = (a.transport, b.transport) else {
            unreachable!("Kind::Udp makes a UDP transport")
        };
        flows.push(Flow {
            tx: Arc::new(ta),
            rx: Arc::new(tb),
            header: vec![0x40, 0x01],
        });
    }
    Ok(flows)
}

/// Set up `n` flows through the bare forwarder at `server`: B registers with one
/// datagram `[flow id]`, A prefixes `[flow id]` to each datagram.
pub async fn bare_flows(server: SocketAddr, n: usize) -> std::io::Result<Vec<Flow>> {
    let mut flows = Vec::with_capacity(n);
    for i in 0..n {
        let id = (i as u32).to_be_bytes().to_vec();
        let rx = UdpSocket::bind("127.0.0.1:0").await?;
        rx.connect(server).await?;
        let mut reg = vec![b'R'];
        reg.extend_from_slice(&id);
        // Registration is acknowledged so no flow starts before the forwarder knows it.
        let mut ack = [0u8; 8];
        let mut ok = false;
        for _ in 0..20 {
            rx.send(&reg).await?;
            if tokio::time::timeout(Duration::from_millis(200), rx.recv(&mut ack))
                .await
                .is_ok()
            {
                ok = true;
                break;
            }
        }
        if !ok {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "forwarder did not acknowledge a flow",
            ));
        }
        let tx = UdpSocket::bind("127.0.0.1:0").await?;
        tx.connect(server).await?;
        let mut header = vec![b'D'];
        header.extend_from_slice(&id);
        flows.push(Flow {
            tx: Arc::new(tx),
            rx: Arc::new(rx),
            header,
        });
    }
    Ok(flows)
}

/// Result of one open-loop run.
#[derive(Debug, Clone, Copy)]
pub struct RunResult {
    /// Packets offered.
    pub sent: u64,
    /// Packets received at the far end.
    pub received: u64,
    /// Wall time of the offer.
    pub duration: Duration,
}

impl RunResult {
    /// Loss fraction.
    pub fn loss(&self) -> f64 {
        if self.sent == 0 {
            return 0.0;
        }
        1.0 - self.received as f64 / self.sent as f64
    }
}

/// Offer `rate` packets/s of `payload` bytes (after the header), spread over the
/// flows, for `duration`; count what arrives (waiting 300 ms for stragglers).
pub async fn run(flows: &[Flow], payload: usize, rate: u64, duration: Duration) -> RunResult {
    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = vec![];
    for f in flows {
        let rx = f.rx.clone();
        let (received, stop) = (received.clone(), stop.clone());
        readers.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(50), rx.recv(&mut buf)).await {
                    received.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let packets: Vec<Vec<u8>> = flows
        .iter()
        .map(|f| {
            let mut p = f.header.clone();
            if p.len() == 2 {
                // ChannelData: channel then length.
                p.extend_from_slice(&(payload as u16).to_be_bytes());
            }
            p.resize(p.len() + payload, 0xAB);
            p
        })
        .collect();
    // Pace in 1 ms ticks: each tick sends what the rate owes so far, round-robin.
    let started = Instant::now();
    let total = (rate as f64 * duration.as_secs_f64()) as u64;
    let mut sent = 0u64;
    let mut i = 0usize;
    while sent < total {
        let due = ((started.elapsed().as_secs_f64() * rate as f64) as u64).min(total);
        while sent < due {
            let f = &flows[i % flows.len()];
            // A full socket buffer is loss the sender caused, not the server: count it
            // as sent and lost, which is what open-loop means.
            let _ = f.tx.try_send(&packets[i % flows.len()]);
            sent += 1;
            i += 1;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = started.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        let _ = r.await;
    }
    RunResult {
        sent,
        received: received.load(Ordering::Relaxed),
        duration: elapsed,
    }
}

/// An allocation whose relayed address the control-plane benchmark uses as its peer.
pub async fn setup_anchor(server: SocketAddr, creds: &Credentials) -> Result<(Client, SocketAddr), TurnError> {
    let mut c = Client::connect(server, &Kind::Udp, creds.clone()).await?;
    let relayed = c.allocate(Some(3600)).await?.relayed;
    Ok((c, relayed))
}

/// Control plane: one full TURN setup (challenge, Allocate, CreatePermission, ChannelBind).
pub async fn setup_one(server: SocketAddr, creds: &Credentials, peer: SocketAddr) -> Result<Client, TurnError> {
    let mut c = Client::connect(server, &Kind::Udp, creds.clone()).await?;
    c.allocate(Some(3600)).await?;
    c.permit(peer).await?;
    c.bind_channel(0x4001, peer).await?;
    Ok(c)
}
