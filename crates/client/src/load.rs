//! Load generation for the benchmarks: the same generator for every server.
//!
//! Relay throughput: `flows` pairs of TURN clients (A, B) on one server; A sends
//! ChannelData to B's relayed address through A's allocation, the server relays it
//! to B's allocation and on to B as ChannelData: two relay hops per packet. The offer
//! is open-loop (paced at a fixed rate, never waiting for replies), and loss is what
//! B did not receive.
//!
//! The generator must not be what it measures, so it is cheap per packet: each A
//! writes its share of a 1 ms tick with one `sendmmsg` (separate datagrams, as many
//! clients would send them: no GSO, so no server gets pre-coalesced input), and each
//! B drains its socket with `recvmmsg`.

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
    /// The header B prefixes when it answers A (call-shaped runs): ChannelData when B is
    /// relayed too, nothing when B is a plain peer.
    pub rx_header: Vec<u8>,
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
        generator_buffers(&ta);
        generator_buffers(&tb);
        flows.push(Flow {
            tx: Arc::new(ta),
            rx: Arc::new(tb),
            header: vec![0x40, 0x01],
            rx_header: vec![0x40, 0x01],
        });
    }
    Ok(flows)
}

/// Set up `n` TURN flows where only A is relayed: A's allocation has a channel to B, a
/// plain UDP socket (a peer reached directly, such as the other party's host or
/// server-reflexive candidate), which writes to A's relayed address. Each packet crosses
/// the server once, as in a call where one side needs TURN and the other does not.
pub async fn turn_flows_direct(server: SocketAddr, creds: &Credentials, n: usize) -> Result<Vec<Flow>, TurnError> {
    let mut flows = Vec::with_capacity(n);
    for _ in 0..n {
        let mut a = Client::connect(server, &Kind::Udp, creds.clone()).await?;
        let ra = a.allocate(Some(3600)).await?.relayed;
        // On loopback the peer takes another loopback address (127.0.0.2): a peer on the
        // relay's own address could only be another relay of this server.
        // Elsewhere it takes the generator's own address toward the server.
        let peer_ip = match server.ip() {
            std::net::IpAddr::V4(ip) if ip.is_loopback() => std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2)),
            _ => {
                let probe = UdpSocket::bind(SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), 0)).await?;
                probe.connect(server).await?;
                probe.local_addr()?.ip()
            }
        };
        let b = UdpSocket::bind(SocketAddr::new(peer_ip, 0)).await?;
        a.bind_channel(0x4001, b.local_addr()?).await?;
        b.connect(ra).await?;
        let Transport::Udp(ta) = a.transport else {
            unreachable!("Kind::Udp makes a UDP transport")
        };
        generator_buffers(&ta);
        generator_buffers(&b);
        flows.push(Flow {
            tx: Arc::new(ta),
            rx: Arc::new(b),
            header: vec![0x40, 0x01],
            rx_header: vec![],
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
        generator_buffers(&tx);
        generator_buffers(&rx);
        let mut header = vec![b'D'];
        header.extend_from_slice(&id);
        flows.push(Flow {
            tx: Arc::new(tx),
            rx: Arc::new(rx),
            rx_header: vec![],
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
            let mut bufs = vec![[0u8; 2048]; RECV_BATCH];
            while !stop.load(Ordering::Relaxed) {
                if tokio::time::timeout(Duration::from_millis(50), rx.readable())
                    .await
                    .is_err()
                {
                    continue;
                }
                match rx.try_io(tokio::io::Interest::READABLE, || recv_batch(&rx, &mut bufs)) {
                    Ok(n) => {
                        received.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => {}
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
    let mut next = 0usize;
    let n = flows.len();
    while sent < total {
        let due = ((started.elapsed().as_secs_f64() * rate as f64) as u64).min(total);
        let owed = (due - sent) as usize;
        // Round-robin: flow `next` onwards gets one packet more when `owed` doesn't divide.
        for k in 0..n.min(owed.max(1)) {
            let idx = (next + k) % n;
            let count = owed / n + usize::from(k < owed % n);
            if count > 0 {
                // A full socket buffer is loss the sender caused, not the server: count
                // it as sent and lost, which is what open-loop means.
                send_batch(&flows[idx].tx, &packets[idx], count);
            }
        }
        next = (next + owed % n) % n;
        sent = due;
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

/// Socket buffers of the generator's own sockets. A B socket is drained by the same
/// thread that paces the A sockets, so it must hold a whole tick's burst (and more, when
/// the timer is late); the kernel's default (~200 KB, about 90 datagrams of 1000 B) was
/// the limit every server hit at the same rate. SO_*BUFFORCE passes net.core.*mem_max
/// when run as root (the bench is); otherwise the capped size is what we get.
fn generator_buffers(sock: &UdpSocket) {
    use std::os::fd::AsRawFd;
    const BYTES: libc::c_int = 8 << 20;
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        let set = |opt| {
            // SAFETY: a c_int option value of the right size, on a live socket.
            unsafe {
                libc::setsockopt(
                    sock.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    (&BYTES as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            }
        };
        if set(force) != 0 {
            set(plain);
        }
    }
}

/// Datagrams one `recvmmsg` may return.
const RECV_BATCH: usize = 64;

/// Receive what the socket holds, up to `bufs.len()` datagrams, in one `recvmmsg`.
fn recv_batch(sock: &UdpSocket, bufs: &mut [[u8; 2048]]) -> std::io::Result<usize> {
    recv_each(sock, bufs, &mut |_, _| {})
}

/// One `recvmmsg` into `bufs`; `each` hears every datagram's length, in order.
fn recv_each(sock: &UdpSocket, bufs: &mut [[u8; 2048]], each: &mut dyn FnMut(usize, u64)) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;
    let mut iovs: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: b.len(),
        })
        .collect();
    // Room for one SCM_TIMESTAMPNS message per datagram, aligned for cmsghdr.
    let mut control = vec![[0u64; 8]; iovs.len()];
    // SAFETY: an all-zero mmsghdr is a valid "no name, no control" header.
    let mut hdrs: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; iovs.len()];
    for ((h, iov), c) in hdrs.iter_mut().zip(iovs.iter_mut()).zip(control.iter_mut()) {
        h.msg_hdr.msg_iov = iov;
        h.msg_hdr.msg_iovlen = 1;
        h.msg_hdr.msg_control = c.as_mut_ptr().cast();
        h.msg_hdr.msg_controllen = std::mem::size_of_val(c) as _;
    }
    // SAFETY: every header points at one live iovec over a live buffer of its stated
    // length, and all of them outlive the call.
    let r = unsafe {
        libc::recvmmsg(
            sock.as_raw_fd(),
            hdrs.as_mut_ptr(),
            hdrs.len() as libc::c_uint,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let now = unix_now_ns();
    for h in &hdrs[..r as usize] {
        // SAFETY: the kernel filled this header's control buffer and its length.
        let waited_us = unsafe { stamp_wait_us(&h.msg_hdr, now) };
        each(h.msg_len as usize, waited_us);
    }
    Ok(r as usize)
}

/// Send `count` copies of `packet` on the connected socket, 64 per `sendmmsg`; returns
/// how many the kernel took (a full buffer stops the batch: those are lost).
fn send_batch(sock: &UdpSocket, packet: &[u8], count: usize) -> usize {
    use std::os::fd::AsRawFd;
    const MAX: usize = 64;
    let mut iov = libc::iovec {
        iov_base: packet.as_ptr() as *mut libc::c_void,
        iov_len: packet.len(),
    };
    // SAFETY: an all-zero mmsghdr is a valid "no name, no control" header.
    let mut hdrs: [libc::mmsghdr; MAX] = unsafe { std::mem::zeroed() };
    for h in hdrs.iter_mut() {
        h.msg_hdr.msg_iov = &mut iov;
        h.msg_hdr.msg_iovlen = 1;
    }
    let mut done = 0;
    while done < count {
        let n = (count - done).min(MAX);
        // SAFETY: every header points at the one iovec, which covers `packet` (only
        // read by sendmmsg) and outlives the call.
        let r = unsafe {
            libc::sendmmsg(
                sock.as_raw_fd(),
                hdrs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if r <= 0 {
            break;
        }
        done += r as usize;
        if (r as usize) < n {
            break;
        }
    }
    done
}

/// What a call-shaped run offers: `calls` calls, each an audio stream both ways (50
/// packets/s of 120-200 B, as Opus at 20 ms) and, with `video`, a video stream both ways
/// (30 frames/s, each frame 1-8 packets of 1,100 B leaving 2 per millisecond, as
/// libwebrtc's pacer sends a frame). Start times are jittered so the calls are not in phase.
#[derive(Debug, Clone, Copy)]
pub struct CallShape {
    /// Calls.
    pub calls: usize,
    /// With video.
    pub video: bool,
}

/// Result of a call-shaped run.
#[derive(Debug, Clone)]
pub struct CallRunResult {
    /// Packets offered (both directions).
    pub sent: u64,
    /// Packets received at the far ends.
    pub received: u64,
    /// Bytes offered (payloads with their headers).
    pub bytes: u64,
    /// Wall time of the offer.
    pub duration: Duration,
    /// Through the relay, sender to the kernel's receive timestamp at the receiver's
    /// socket (`SO_TIMESTAMPNS`), microseconds: p50 and p99. The generator's own wait
    /// before reading (one thread sends and receives) is left out.
    pub p50_us: u64,
    /// p99.
    pub p99_us: u64,
    /// As read by the generator, its own queueing included: p50.
    pub read_p50_us: u64,
    /// p99.
    pub read_p99_us: u64,
}

/// One direction of one call: where its packets leave from and what prefixes them.
struct Stream {
    tx: Arc<UdpSocket>,
    header: Vec<u8>,
    next_audio: Duration,
    next_frame: Duration,
    /// Video packets of the current frame still to send.
    frame_left: u32,
}

/// A small deterministic generator (xorshift64*): the load is the same on every server.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

/// Offer `shape` for `duration` over `flows`: with TURN flows one flow per call carries
/// both directions (A → B through A's channel, B → A through B's); the bare forwarder
/// relays one way, so `bidirectional` false takes two flows per call. One datagram per
/// syscall, as each real client sends its own. Each packet carries its send time, so the
/// receivers measure the time through the relay.
pub async fn run_calls(flows: &[Flow], bidirectional: bool, shape: CallShape, duration: Duration) -> CallRunResult {
    let per_call = if bidirectional { 1 } else { 2 };
    assert!(flows.len() >= shape.calls * per_call, "not enough flows for the calls");
    let started = Instant::now();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut streams = vec![];
    let mut receivers: Vec<Arc<UdpSocket>> = vec![];
    for c in 0..shape.calls {
        let pairs: Vec<(Arc<UdpSocket>, Arc<UdpSocket>)> = if bidirectional {
            let f = &flows[c];
            vec![(f.tx.clone(), f.rx.clone()), (f.rx.clone(), f.tx.clone())]
        } else {
            (0..2)
                .map(|k| (flows[2 * c + k].tx.clone(), flows[2 * c + k].rx.clone()))
                .collect()
        };
        for (k, (tx, rx)) in pairs.into_iter().enumerate() {
            let header = if bidirectional {
                if k == 0 {
                    flows[c].header.clone()
                } else {
                    flows[c].rx_header.clone()
                }
            } else {
                flows[2 * c + k].header.clone()
            };
            streams.push(Stream {
                tx,
                header,
                next_audio: Duration::from_micros(rng.below(20_000)),
                next_frame: Duration::from_micros(rng.below(33_333)),
                frame_left: 0,
            });
            receivers.push(rx);
        }
    }
    let mut readers = vec![];
    for rx in receivers {
        let stop = stop.clone();
        readers.push(tokio::spawn(async move {
            let mut bufs = vec![[0u8; 2048]; RECV_BATCH];
            let mut lat: Vec<(u32, u32)> = vec![];
            // The kernel stamps each datagram as it reaches this host's stack.
            let _ = stamp_arrivals(&*rx);
            while !stop.load(Ordering::Relaxed) {
                if tokio::time::timeout(Duration::from_millis(50), rx.readable())
                    .await
                    .is_err()
                {
                    continue;
                }
                if let Ok(lens) = rx.try_io(tokio::io::Interest::READABLE, || recv_lens(&rx, &mut bufs)) {
                    // After the read, as the waits were measured then.
                    let now = started.elapsed().as_micros() as u64;
                    for (b, (len, waited)) in bufs.iter().zip(lens) {
                        if len >= 8 {
                            let sent = u64::from_le_bytes(b[len - 8..len].try_into().expect("8 bytes"));
                            let read = now.saturating_sub(sent);
                            let clip = |v: u64| v.min(u32::MAX as u64) as u32;
                            lat.push((clip(read.saturating_sub(waited)), clip(read)));
                        }
                    }
                }
            }
            lat
        }));
    }
    let (mut sent, mut bytes) = (0u64, 0u64);
    let mut buf = vec![0xABu8; 2048];
    let send = |s: &Stream, size: usize, buf: &mut Vec<u8>| -> usize {
        let h = s.header.len();
        buf[..h].copy_from_slice(&s.header);
        let body = size;
        if h == 2 {
            // ChannelData: channel, then the length of what follows the header.
            buf[2..4].copy_from_slice(&(body as u16).to_be_bytes());
        }
        let start = if h == 2 { 4 } else { h };
        let total = start + body;
        let stamp = started.elapsed().as_micros() as u64;
        buf[total - 8..total].copy_from_slice(&stamp.to_le_bytes());
        // A full socket buffer is the sender's loss: counted as sent, never received.
        let _ = s.tx.try_send(&buf[..total]);
        total
    };
    while started.elapsed() < duration {
        let now = started.elapsed();
        for s in streams.iter_mut() {
            while s.next_audio <= now {
                let size = 120 + rng.below(81) as usize;
                bytes += send(s, size, &mut buf) as u64;
                sent += 1;
                s.next_audio += Duration::from_millis(20);
            }
            if shape.video {
                if s.next_frame <= now {
                    s.frame_left += 1 + rng.below(8) as u32;
                    s.next_frame += Duration::from_micros(33_333);
                }
                // The pacer: two packets of the frame per millisecond.
                for _ in 0..s.frame_left.min(2) {
                    bytes += send(s, 1100, &mut buf) as u64;
                    sent += 1;
                    s.frame_left -= 1;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = started.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut stamped, mut read) = (vec![], vec![]);
    for r in readers {
        for (s, r) in r.await.unwrap_or_default() {
            stamped.push(s);
            read.push(r);
        }
    }
    stamped.sort_unstable();
    read.sort_unstable();
    let pct = |lat: &[u32], p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0) as u64
    };
    CallRunResult {
        sent,
        received: stamped.len() as u64,
        bytes,
        duration: elapsed,
        p50_us: pct(&stamped, 0.50),
        p99_us: pct(&stamped, 0.99),
        read_p50_us: pct(&read, 0.50),
        read_p99_us: pct(&read, 0.99),
    }
}

/// The Unix time now, nanoseconds (the clock of the kernel's receive timestamps).
pub fn unix_now_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// How long, in microseconds, what a `recvmsg` read had waited since the kernel stamped
/// its arrival (`SCM_TIMESTAMPNS` in `msg`'s control data, see [`stamp_arrivals`]),
/// against `now_ns` ([`unix_now_ns`]); 0 without a timestamp.
///
/// # Safety
/// `msg` is a header a `recvmsg`/`recvmmsg` call just filled: its `msg_control` points
/// at a live buffer of `msg_controllen` bytes written by the kernel.
pub unsafe fn stamp_wait_us(msg: &libc::msghdr, now_ns: u128) -> u64 {
    let mut waited = 0;
    // SAFETY: per the contract, the CMSG_* macros walk within the kernel's control data.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let ts = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::timespec);
                let stamped = ts.tv_sec as u128 * 1_000_000_000 + ts.tv_nsec as u128;
                waited = (now_ns.saturating_sub(stamped) / 1000) as u64;
            }
            c = libc::CMSG_NXTHDR(msg, c);
        }
    }
    waited
}

/// Ask the kernel to stamp what arrives on `sock` (`SO_TIMESTAMPNS`), for
/// [`stamp_wait_us`].
pub fn stamp_arrivals(sock: &impl std::os::fd::AsRawFd) -> std::io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: a valid descriptor and a c_int option value of the stated size.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// As [`recv_batch`], with each datagram's length and how long it had waited in the
/// socket, microseconds (0 without `SO_TIMESTAMPNS` on the socket).
fn recv_lens(sock: &UdpSocket, bufs: &mut [[u8; 2048]]) -> std::io::Result<Vec<(usize, u64)>> {
    let mut lens = Vec::with_capacity(bufs.len());
    recv_each(sock, bufs, &mut |len, waited| lens.push((len, waited)))?;
    Ok(lens)
}
