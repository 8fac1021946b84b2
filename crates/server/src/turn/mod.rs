//! The tokio driver for the sans-IO TURN core.
//!
//! One worker thread per core, each with its own current-thread runtime, its own
//! `Server` core and its own SO_REUSEPORT UDP socket, TCP listener and (with a
//! certificate) TLS listener on the shared TURN ports: the kernel spreads
//! clients over workers by 4-tuple hash, so a client always meets the same core
//! and workers share nothing on the packet path. Relay ports are split into one
//! contiguous block per worker; quotas are shared.
//!
//! Inside a worker every task runs on one thread, so the core lives in a
//! `RefCell` that is borrowed only between awaits. Relay sockets have no task of
//! their own: they sit in one per-worker `mio::Poll` (an epoll set), whose file
//! descriptor the worker's single relay task waits on. A live allocation then costs
//! the driver one file descriptor and one map entry, no task, no reactor
//! registration and no buffer; the relay task hands each datagram to the core and
//! sends the result itself, with no copy between tasks.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use firstcall_stun::{tcp_frame_len, ChannelData};
use firstcall_turn::auth::Authenticator;
use firstcall_turn::filter::PeerFilter;
use firstcall_turn::metrics::TurnMetrics;
use firstcall_turn::server::{ClientAddr, Command, Config, PeerAddr, Quotas, RelayPort, Server, Transport};
use rand::rngs::StdRng;
use rand::SeedableRng;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::Notify;

pub use crate::config::TurnIo;

pub mod grants;
pub mod handoff;
mod uring;
pub mod xdp;

/// Everything a worker needs, prepared (and every socket bound) before it starts.
pub struct WorkerSetup {
    /// Worker index, for logs.
    pub index: usize,
    /// Core settings (relay ports are this worker's block).
    pub config: Config,
    /// Credentials, replaced on reload (SIGHUP).
    pub auth: tokio::sync::watch::Receiver<Authenticator>,
    /// Peer filter.
    pub filter: PeerFilter,
    /// Shared quotas.
    pub quotas: Arc<Quotas>,
    /// This worker's counters.
    pub metrics: Arc<TurnMetrics>,
    /// UDP listener (SO_REUSEPORT).
    pub udp: std::net::UdpSocket,
    /// TCP listener (SO_REUSEPORT).
    pub tcp: std::net::TcpListener,
    /// TLS listener and its config.
    pub tls: Option<(std::net::TcpListener, tokio_rustls::TlsAcceptor)>,
    /// Bytes queued for one TCP/TLS client before further frames are dropped.
    pub stream_queue: usize,
    /// A TCP/TLS client must complete a frame within this of connecting or of its last one.
    pub stream_timeout: Duration,
    /// How UDP is read and written: io_uring or epoll.
    pub io: TurnIo,
    /// The XDP fast path, shared by every worker, when attached.
    pub fast: Option<Arc<xdp::FastPath>>,
    /// Peer grants from the signaling hub (`--turn-peer-grant-ttl`), when on.
    pub grants: Option<tokio::sync::mpsc::Receiver<firstcall_turn::grants::PeerGrant>>,
    /// Every worker's hand-off inbox, with more than one worker ([`handoff`]).
    pub handoff: Option<Arc<handoff::Handoffs>>,
}

/// Bind a socket with SO_REUSEPORT so every worker can hold one on the same port.
pub fn bind_reuseport(addr: SocketAddr, ty: Type) -> io::Result<Socket> {
    let proto = if ty == Type::DGRAM {
        Protocol::UDP
    } else {
        Protocol::TCP
    };
    let s = Socket::new(Domain::for_address(addr), ty, Some(proto))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(false)?;
    }
    s.set_nonblocking(true)?;
    if ty == Type::DGRAM {
        // Bursts of media arrive faster than one wake-up; a deeper queue avoids loss.
        let _ = s.set_recv_buffer_size(4 << 20);
        let _ = s.set_send_buffer_size(4 << 20);
    }
    s.bind(&addr.into())?;
    if ty == Type::STREAM {
        s.listen(1024)?;
    }
    Ok(s)
}

/// Whether this kernel runs what `--turn-io uring` needs (a ring, multishot receives,
/// provided buffers).
pub fn probe_uring() -> io::Result<()> {
    uring::Ring::new().map(drop)
}

/// Split `range` into `n` contiguous blocks, one per worker.
pub fn split_ports(range: &RangeInclusive<u16>, n: usize) -> Vec<RangeInclusive<u16>> {
    let (lo, hi) = (u32::from(*range.start()), u32::from(*range.end()));
    let span = hi - lo + 1;
    let n = (n as u32).clamp(1, span);
    (0..n)
        .map(|i| {
            let a = lo + span * i / n;
            let b = lo + span * (i + 1) / n - 1;
            (a as u16)..=(b as u16)
        })
        .collect()
}

/// Start a worker on its own thread. Returns when its runtime is up.
pub fn spawn_worker(setup: WorkerSetup) -> io::Result<std::thread::JoinHandle<()>> {
    let name = format!("turn-{}", setup.index);
    std::thread::Builder::new().name(name).spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, "TURN worker runtime failed to start");
                return;
            }
        };
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async move {
            if let Err(e) = run_worker(setup).await {
                tracing::error!(error = %e, "TURN worker stopped");
            }
        });
    })
}

/// Frames waiting for one TCP/TLS client's writer task, bounded in bytes (a frame may be
/// anything from a 4-byte ChannelData to 64 KiB, so a count of frames bounds nothing).
/// The frame being written counts until the socket has taken all of it.
struct StreamQueue {
    frames: RefCell<VecDeque<Vec<u8>>>,
    bytes: Cell<usize>,
    limit: usize,
    wake: Notify,
}

impl StreamQueue {
    fn new(limit: usize) -> Self {
        StreamQueue {
            frames: RefCell::new(VecDeque::new()),
            bytes: Cell::new(0),
            limit,
            wake: Notify::new(),
        }
    }

    /// Queue `frame`, or give it back when it would take the queue past its limit.
    fn push(&self, frame: Vec<u8>) -> Result<(), Vec<u8>> {
        let bytes = self.bytes.get() + frame.len();
        if bytes > self.limit {
            return Err(frame);
        }
        self.bytes.set(bytes);
        self.frames.borrow_mut().push_back(frame);
        self.wake.notify_one();
        Ok(())
    }
}

/// Write queued frames to the client until the socket fails.
async fn stream_writer<W: AsyncWrite + Unpin>(q: Rc<StreamQueue>, mut wr: W) {
    loop {
        let next = q.frames.borrow_mut().pop_front();
        let Some(frame) = next else {
            q.wake.notified().await;
            continue;
        };
        let failed = wr.write_all(&frame).await.is_err();
        q.bytes.set(q.bytes.get() - frame.len());
        if failed {
            break;
        }
    }
    let _ = wr.shutdown().await;
}

struct Worker {
    core: RefCell<Server<StdRng>>,
    udp: Rc<UdpSocket>,
    /// The client socket is IPv6 (dual-stack): v4 destinations are written v4-mapped.
    udp_v6: bool,
    udp_state: quinn_udp::UdpSocketState,
    /// Listening on a wildcard address: replies must leave from the address each client
    /// wrote to (else a NAT in front of the client drops them), so remember it.
    wildcard: bool,
    client_local: RefCell<HashMap<SocketAddr, IpAddr>>,
    relays: RefCell<HashMap<RelayPort, RelaySocket>>,
    /// Released relay sockets whose io_uring receive is cancelled but not yet finished:
    /// kept open until its last completion, so their descriptor numbers are not reused
    /// while the ring (or an SQE not yet submitted) may still name them.
    closing: RefCell<Vec<RelaySocket>>,
    /// How relay sockets are read and UDP datagrams sent.
    io: Io,
    streams: RefCell<HashMap<ClientAddr, Rc<StreamQueue>>>,
    stream_queue: usize,
    stream_timeout: Duration,
    timer: Notify,
    metrics: Arc<TurnMetrics>,
    /// The XDP fast path: after each pass, what the core allows it is written to its maps.
    fast: Option<Arc<xdp::FastPath>>,
    /// Outgoing UDP datagrams, gathered so that a run to one destination leaves in one
    /// GSO `sendmsg`; see [`TxBatch`].
    tx: RefCell<TxBatch>,
    /// Datagrams for other workers' relays, handed over at the end of each pass.
    handoff: Option<handoff::Outbox>,
}

/// A worker's UDP I/O: one of two drivers, chosen at start (`--turn-io`).
enum Io {
    /// Relay sockets in an epoll set, read with `recvmmsg` when ready; each send a
    /// `sendmsg`.
    Epoll {
        /// Where relay sockets are registered; the relay task owns the `Poll` itself.
        registry: mio::Registry,
        /// One receive buffer (`BATCH_SIZE` slots) for every relay socket of this worker.
        storage: RefCell<Vec<u8>>,
    },
    /// One io_uring: multishot receives on relay sockets, every send an SQE, one
    /// submit per pass ([`uring`]).
    Uring(Box<uring::Ring>),
}

/// Which socket a batched datagram leaves from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TxSrc {
    /// The shared client socket (to a UDP client).
    Client,
    /// An allocation's relay socket (to a peer).
    Relay(RelayPort),
}

/// Consecutive datagrams from one socket to one destination, of one size (the last may
/// be shorter), sent as one GSO `sendmsg`: the kernel cuts them apart again, so each
/// still leaves as its own datagram, for one syscall per run instead of one per packet.
/// A relay burst is exactly such a run (a peer's packets to its channel, a client's to
/// its peer). Every UDP send goes through here, in order, so batching never reorders a
/// destination's datagrams; the batch is flushed at the end of every pass over input.
struct TxBatch {
    key: Option<(TxSrc, SocketAddr)>,
    buf: Vec<u8>,
    seg: usize,
    count: usize,
    /// The last datagram was shorter than `seg`: GSO allows nothing after it.
    closed: bool,
}

/// Most bytes in one GSO send (the UDP length field, less headroom).
const MAX_GSO_BYTES: usize = 64_000;
/// Largest datagram sent in a GSO run: the kernel refuses a segment over the path MTU,
/// where a lone datagram would be fragmented and delivered. 1452 fits a 1500-byte MTU
/// with IPv6 and UDP headers; larger datagrams (rare in media) go out alone.
const MAX_GSO_SEGMENT: usize = 1452;

struct RelaySocket {
    sock: mio::net::UdpSocket,
    /// The address it is bound to (the relayed transport address, before any NAT).
    addr: SocketAddr,
    /// Bound to an IPv6 address (v4 destinations are then written v4-mapped).
    v6: bool,
    /// Its receive as armed on the ring (io_uring only).
    key: Option<uring::RecvKey>,
    /// Already in the relay task's ready queue: edge-triggered readiness reports a
    /// busy socket again on every new datagram, and it must be queued only once.
    queued: bool,
}

/// Largest datagram a relay socket receives (UDP payload limit).
const MAX_DATAGRAM: usize = 65_536;
/// A TLS handshake that has not completed within this is dropped.
const TLS_HANDSHAKE: Duration = Duration::from_secs(10);

async fn run_worker(s: WorkerSetup) -> io::Result<()> {
    let now = Instant::now();
    let mut core = Server::new(
        s.config.clone(),
        s.auth.borrow().clone(),
        s.filter,
        s.quotas,
        s.metrics.clone(),
        StdRng::from_entropy(),
        now,
        unix_now(),
    );
    if s.fast.is_some() {
        core.enable_fast_path();
    }
    let udp = UdpSocket::from_std(s.udp)?;
    let wildcard = udp.local_addr()?.ip().is_unspecified();
    let udp_v6 = udp.local_addr()?.is_ipv6();
    let udp_state = quinn_udp::UdpSocketState::new((&udp).into())?;
    let ring = match s.io {
        TurnIo::Epoll => None,
        TurnIo::Uring => Some(uring::Ring::new().map_err(|e| io::Error::other(format!("--turn-io uring: {e}")))?),
    };
    if s.index == 0 {
        tracing::info!(
            io = if ring.is_some() { "io_uring" } else { "epoll" },
            "TURN UDP driver"
        );
    }
    let (io, relay_poll) = match ring {
        Some(r) => (Io::Uring(Box::new(r)), None),
        None => {
            let poll = mio::Poll::new()?;
            let registry = poll.registry().try_clone()?;
            let storage = RefCell::new(vec![0u8; quinn_udp::BATCH_SIZE * RECV_SLOT]);
            (Io::Epoll { registry, storage }, Some(poll))
        }
    };
    let w = Rc::new(Worker {
        core: RefCell::new(core),
        udp: Rc::new(udp),
        udp_v6,
        udp_state,
        wildcard,
        client_local: RefCell::new(HashMap::new()),
        relays: RefCell::new(HashMap::new()),
        closing: RefCell::new(Vec::new()),
        io,
        streams: RefCell::new(HashMap::new()),
        stream_queue: s.stream_queue,
        stream_timeout: s.stream_timeout,
        timer: Notify::new(),
        metrics: s.metrics,
        fast: s.fast,
        tx: RefCell::new(TxBatch {
            key: None,
            buf: Vec::with_capacity(MAX_GSO_BYTES + MAX_DATAGRAM),
            seg: 0,
            count: 0,
            closed: false,
        }),
        handoff: s.handoff.map(|h| handoff::Outbox::new(s.index, h)),
    });
    let tcp = TcpListener::from_std(s.tcp)?;
    tokio::task::spawn_local(accept_loop(w.clone(), tcp, None));
    if let Some((l, acceptor)) = s.tls {
        tokio::task::spawn_local(accept_loop(w.clone(), TcpListener::from_std(l)?, Some(acceptor)));
    }
    tokio::task::spawn_local(timer_loop(w.clone()));
    tokio::task::spawn_local(auth_loop(w.clone(), s.auth));
    if let Some(rx) = s.grants {
        tokio::task::spawn_local(grants::grant_loop(w.clone(), rx));
    }
    let mut inbox_task = w
        .handoff
        .is_some()
        .then(|| tokio::task::spawn_local(handoff::inbox_loop(w.clone())));
    let mut relay_task = match relay_poll {
        Some(poll) => tokio::task::spawn_local(relay_loop(w.clone(), poll)),
        None => tokio::task::spawn_local(ring_loop(w.clone())),
    };
    // Any loop ending ends the worker: one without the others would keep granting
    // allocations it cannot serve (or take hand-offs nobody relays).
    let inbox_ended = async {
        match inbox_task.as_mut() {
            Some(t) => {
                let _ = t.await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    let r = tokio::select! {
        r = udp_loop(w) => r,
        _ = &mut relay_task => Err(io::Error::other("relay task stopped")),
        _ = inbox_ended => Err(io::Error::other("hand-off task stopped")),
    };
    relay_task.abort();
    if let Some(t) = inbox_task {
        t.abort();
    }
    r
}

/// Hands the core each new authenticator a reload sends (new TURN secrets).
async fn auth_loop(w: Rc<Worker>, mut auth: tokio::sync::watch::Receiver<Authenticator>) {
    while auth.changed().await.is_ok() {
        let new = auth.borrow_and_update().clone();
        w.core.borrow_mut().set_authenticator(new);
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Receive slot size: with GRO one slot may hold many datagrams from one sender.
const RECV_SLOT: usize = 64 * 1024;

/// One recvmmsg (quinn-udp, with GRO) into `storage`, cut into `BATCH_SIZE` slots of
/// `RECV_SLOT` bytes; returns how many slots were filled.
fn recv_batch(
    state: &quinn_udp::UdpSocketState,
    sock: quinn_udp::UdpSockRef<'_>,
    storage: &mut [u8],
    metas: &mut [quinn_udp::RecvMeta; quinn_udp::BATCH_SIZE],
) -> io::Result<usize> {
    use std::io::IoSliceMut;
    let mut slots = storage.chunks_mut(RECV_SLOT);
    let mut iovs: [IoSliceMut<'_>; quinn_udp::BATCH_SIZE] =
        std::array::from_fn(|_| IoSliceMut::new(slots.next().expect("storage holds BATCH_SIZE slots")));
    state.recv(sock, &mut iovs, metas)
}

/// The filled slots of a [`recv_batch`], each with its meta. A slot may hold several
/// datagrams: GRO coalesces same-sender datagrams of `meta.stride` bytes (the last may
/// be shorter).
fn reads<'a>(
    storage: &'a [u8],
    metas: &'a [quinn_udp::RecvMeta],
) -> impl Iterator<Item = (&'a quinn_udp::RecvMeta, &'a [u8])> {
    metas
        .iter()
        .enumerate()
        .map(|(i, m)| (m, &storage[i * RECV_SLOT..i * RECV_SLOT + m.len.min(RECV_SLOT)]))
}

/// The shared client socket carries every client's traffic, so it reads in
/// batches: recvmmsg and UDP GRO through quinn-udp, one syscall for up to
/// `BATCH_SIZE` buffers. Nothing is allocated per packet.
async fn udp_loop(w: Rc<Worker>) -> io::Result<()> {
    use quinn_udp::{RecvMeta, BATCH_SIZE};
    let mut storage = vec![0u8; BATCH_SIZE * RECV_SLOT];
    let mut metas = [RecvMeta::default(); BATCH_SIZE];
    loop {
        w.udp.readable().await?;
        let n = match w.udp.try_io(tokio::io::Interest::READABLE, || {
            recv_batch(&w.udp_state, (&*w.udp).into(), &mut storage, &mut metas)
        }) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            // ICMP port unreachable from an earlier send surfaces here on some
            // kernels; it concerns that send, not this socket.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
            Err(e) => return Err(e),
        };
        let now = Instant::now();
        for (meta, slot) in reads(&storage, &metas[..n]) {
            let client = ClientAddr {
                addr: meta.addr,
                transport: Transport::Udp,
            };
            if w.wildcard {
                if let Some(dst) = meta.dst_ip {
                    remember_local(&w, meta.addr, dst);
                }
            }
            for datagram in slot.chunks(meta.stride.max(1)) {
                let fwd = w.core.borrow_mut().handle_client_input(datagram, client, now);
                if let Some(f) = fwd {
                    send_to_peer(&w, f.relay, f.peer, f.data, now);
                }
            }
        }
        flush(&w);
    }
}

/// Send a client's datagram from its relay socket to a peer.
///
/// When the peer is another relay socket of this worker (both parties of a call
/// relayed by this server, the usual case when both sit behind NATs that need TURN),
/// the datagram is handed straight to that allocation as if it had arrived from the
/// sending relay's address: what the kernel would deliver over loopback, without the
/// two syscalls and the network stack in between. The receiving allocation still
/// checks its permission and quota. A peer on another worker's relay port is queued
/// for that worker ([`handoff`]), which relays it the same way.
fn send_to_peer(w: &Rc<Worker>, relay: RelayPort, peer: PeerAddr, data: &[u8], now: Instant) {
    let to_port = RelayPort(peer.0.port());
    let route = {
        let relays = w.relays.borrow();
        match (relays.get(&to_port), relays.get(&relay)) {
            (Some(to), Some(from)) if to.addr == peer.0 => Route::Here(from.addr),
            (_, Some(from)) if from.addr.ip() == peer.0.ip() => {
                match w.handoff.as_ref().and_then(|h| h.other_owner(to_port.0)) {
                    Some(owner) => Route::Worker(owner, from.addr),
                    None => Route::Kernel,
                }
            }
            _ => Route::Kernel,
        }
    };
    match route {
        Route::Here(from) => {
            w.metrics.hairpinned();
            relay_from_peer(w, to_port, PeerAddr(from), data, now);
        }
        Route::Worker(owner, from) => {
            // Counted as handed over once its worker's inbox took it (handoff::flush).
            if let Some(h) = &w.handoff {
                h.queue(owner, to_port, from, data);
            }
        }
        Route::Kernel => tx_push(w, TxSrc::Relay(relay), peer.0, &[data]),
    }
}

/// Where a datagram from a relay to a peer goes.
enum Route {
    /// Another relay of this worker: handed over now, from this relay's address.
    Here(SocketAddr),
    /// A relay of that worker: queued for it, from this relay's address.
    Worker(usize, SocketAddr),
    /// Anywhere else: out of the relay socket.
    Kernel,
}

/// Queue one datagram (the concatenation of `parts`) in the worker's batch, sending
/// the batch first if this datagram cannot join it.
fn tx_push(w: &Worker, src: TxSrc, to: SocketAddr, parts: &[&[u8]]) {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let joins = {
        let b = w.tx.borrow();
        // quinn-udp's limit (its batch size at most), which it lowers to 1 when the kernel
        // refuses GSO.
        let max_segments = match &w.io {
            Io::Uring(r) if !r.gso() => 1,
            _ => w.udp_state.max_gso_segments().min(quinn_udp::BATCH_SIZE),
        };
        b.key == Some((src, to))
            && !b.closed
            && len > 0
            && len <= b.seg
            && b.seg <= MAX_GSO_SEGMENT
            && b.count < max_segments
            && b.buf.len() + len <= MAX_GSO_BYTES
    };
    if !joins {
        tx_flush(w);
    }
    let mut b = w.tx.borrow_mut();
    if b.count == 0 {
        b.key = Some((src, to));
        b.seg = len;
    } else if len < b.seg {
        b.closed = true;
    }
    for p in parts {
        b.buf.extend_from_slice(p);
    }
    b.count += 1;
}

/// Send whatever the batch holds.
fn tx_flush(w: &Worker) {
    let mut b = w.tx.borrow_mut();
    let Some((src, to)) = b.key.take() else { return };
    let count = std::mem::take(&mut b.count);
    b.closed = false;
    if let Io::Uring(ring) = &w.io {
        if let Err(reason) = ring_send(w, ring, src, to, &b.buf, b.seg, count) {
            for _ in 0..count {
                w.metrics.dropped(reason);
            }
        }
        b.buf.clear();
        return;
    }
    let t = quinn_udp::Transmit {
        destination: to,
        ecn: None,
        contents: &b.buf,
        segment_size: (count > 1).then_some(b.seg),
        src_ip: None,
    };
    let mut lost = count;
    let sent = match tx_send(w, src, &t) {
        Err(e) if count > 1 && matches!(e.raw_os_error(), Some(libc::EIO) | Some(libc::EINVAL)) => {
            // The kernel refused the run as a whole (GSO unsupported on this route, or a
            // segment over the path MTU): quinn-udp has turned GSO off; send each alone.
            tracing::debug!(error = %e, %to, count, "GSO send refused; sending datagrams one by one");
            let mut last = Ok(());
            lost = 0;
            for chunk in b.buf.chunks(b.seg.max(1)) {
                let one = quinn_udp::Transmit {
                    contents: chunk,
                    segment_size: None,
                    ..t
                };
                if let Err(e) = tx_send(w, src, &one) {
                    lost += 1;
                    last = Err(e);
                }
            }
            last
        }
        r => r,
    };
    let failed = match (src, sent) {
        (_, Ok(())) => None,
        (TxSrc::Client, Err(e)) if e.kind() == io::ErrorKind::WouldBlock => Some("client_send_would_block"),
        (TxSrc::Relay(_), Err(e)) if e.kind() == io::ErrorKind::WouldBlock => Some("relay_send_would_block"),
        (_, Err(e)) if e.kind() == io::ErrorKind::NotFound => Some("relay_socket_missing"),
        (TxSrc::Client, Err(e)) => {
            tracing::trace!(error = %e, %to, "client send failed");
            Some("client_send_error")
        }
        (TxSrc::Relay(_), Err(e)) => {
            tracing::trace!(error = %e, peer = %to, "relay send failed");
            Some("relay_send_error")
        }
    };
    if let Some(reason) = failed {
        for _ in 0..lost {
            w.metrics.dropped(reason);
        }
    }
    b.buf.clear();
}

/// Queue one send (`count` datagrams of `seg` bytes, GSO when more than one) on the ring;
/// on refusal, the drop reason.
fn ring_send(
    w: &Worker,
    ring: &uring::Ring,
    src: TxSrc,
    to: SocketAddr,
    data: &[u8],
    seg: usize,
    count: usize,
) -> Result<(), &'static str> {
    use std::os::fd::AsRawFd;
    let (fd, v6, src_ip) = match src {
        TxSrc::Client => {
            // Replies leave from the address the client wrote to (see `wildcard`).
            let src_ip = if w.wildcard {
                w.client_local.borrow().get(&to).copied()
            } else {
                None
            };
            (w.udp.as_raw_fd(), w.udp_v6, src_ip)
        }
        TxSrc::Relay(port) => match w.relays.borrow().get(&port) {
            Some(r) => (r.sock.as_raw_fd(), r.v6, None),
            None => return Err("relay_socket_missing"),
        },
    };
    ring.send(fd, v6, src, to, src_ip, data, seg, count)
        .map_err(|e| match (src, e.kind()) {
            (_, io::ErrorKind::OutOfMemory) => "send_queue_full",
            (TxSrc::Client, _) => {
                tracing::debug!(error = %e, %to, "client send not queued");
                "client_send_error"
            }
            (TxSrc::Relay(_), _) => {
                tracing::debug!(error = %e, peer = %to, "relay send not queued");
                "relay_send_error"
            }
        })
}

/// Send what a pass queued: the batch, then (io_uring) one submit for every queued send,
/// and hand other workers their datagrams.
fn tx_commit(w: &Worker) {
    handoff::flush(w);
    tx_flush(w);
    if let Io::Uring(ring) = &w.io {
        if let Err(e) = ring.submit() {
            // Entries stay queued and go with the next submit.
            tracing::warn!(error = %e, "io_uring submit failed");
        }
    }
}

/// One sendmsg of `t` from `src`'s socket. A relay socket already released is
/// `NotFound`.
fn tx_send(w: &Worker, src: TxSrc, t: &quinn_udp::Transmit<'_>) -> io::Result<()> {
    match src {
        TxSrc::Client => {
            // Replies leave from the address the client wrote to (see `wildcard`).
            let src_ip = if w.wildcard {
                w.client_local.borrow().get(&t.destination).copied()
            } else {
                None
            };
            let t = quinn_udp::Transmit { src_ip, ..*t };
            // Straight to sendmsg: tokio's `try_send_to` refuses until its reactor has
            // seen the socket writable, which dropped a fresh socket's first datagram.
            w.udp_state.try_send((&*w.udp).into(), &t)
        }
        TxSrc::Relay(port) => match w.relays.borrow().get(&port) {
            Some(r) => w.udp_state.try_send((&r.sock).into(), t),
            None => Err(io::Error::new(io::ErrorKind::NotFound, "relay socket released")),
        },
    }
}

/// Most client addresses remembered for source-address selection; past that the map
/// starts over (replies then use the default source until clients speak again).
const MAX_REMEMBERED_CLIENTS: usize = 1 << 16;

fn remember_local(w: &Worker, client: SocketAddr, local: IpAddr) {
    let mut m = w.client_local.borrow_mut();
    if m.get(&client) != Some(&local) {
        if m.len() >= MAX_REMEMBERED_CLIENTS {
            m.clear();
        }
        m.insert(client, local);
    }
}

/// Send a datagram to a UDP client, from the address it wrote to.
fn send_udp(w: &Worker, to: SocketAddr, data: &[u8]) {
    tx_push(w, TxSrc::Client, to, &[data]);
}

fn send_to_client(w: &Worker, client: ClientAddr, payload: Vec<u8>) {
    match client.transport {
        Transport::Udp => send_udp(w, client.addr, &payload),
        Transport::Tcp | Transport::Tls => {
            let streams = w.streams.borrow();
            match streams.get(&client).map(|q| q.push(payload)) {
                Some(Ok(())) => {}
                Some(Err(_)) => w.metrics.dropped("stream_queue_full"),
                None => w.metrics.dropped("stream_gone"),
            }
        }
    }
}

/// Drain the core's transmits and commands.
fn flush(w: &Rc<Worker>) {
    loop {
        let (t, c) = {
            let mut core = w.core.borrow_mut();
            (core.poll_transmit(), core.poll_command())
        };
        if t.is_none() && c.is_none() {
            break;
        }
        if let Some(t) = t {
            send_to_client(w, t.dst, t.payload);
        }
        match c {
            Some(Command::BindRelay { ip, port }) => {
                let ok = match bind_relay(w, ip, port) {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::debug!(port = port.0, error = %e, "relay bind failed");
                        false
                    }
                };
                w.core.borrow_mut().handle_relay_bound(port, ok, Instant::now());
            }
            Some(Command::ReleaseRelay { port }) => {
                let released = w.relays.borrow_mut().remove(&port);
                if let Some(mut r) = released {
                    match (&w.io, r.key) {
                        // Closing the descriptor would drop it from the epoll set too;
                        // deregistering first keeps that explicit.
                        (Io::Epoll { registry, .. }, _) => {
                            let _ = registry.deregister(&mut r.sock);
                        }
                        // The ring holds the socket until its receive is cancelled.
                        (Io::Uring(ring), Some(key)) => {
                            if let Err(e) = ring.cancel(key) {
                                tracing::warn!(port = port.0, error = %e, "relay receive not cancelled");
                            }
                            w.closing.borrow_mut().push(r);
                        }
                        (Io::Uring(_), None) => {}
                    }
                }
            }
            None => {}
        }
    }
    tx_commit(w);
    if let Some(fast) = &w.fast {
        let now = Instant::now();
        loop {
            let Some(set) = w.core.borrow_mut().poll_fast_path(now) else {
                break;
            };
            let failed = fast.apply(&set);
            if failed > 0 {
                tracing::warn!(client = %set.client, failed, "XDP maps full: these channels stay on the user-space path");
            }
        }
    }
    w.timer.notify_one();
}

fn bind_relay(w: &Rc<Worker>, ip: IpAddr, port: RelayPort) -> io::Result<()> {
    let addr = SocketAddr::new(ip, port.0);
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    s.set_nonblocking(true)?;
    let _ = s.set_recv_buffer_size(1 << 20);
    let _ = s.set_send_buffer_size(1 << 20);
    s.bind(&addr.into())?;
    if matches!(w.io, Io::Epoll { .. }) {
        // GRO: a run of datagrams from one peer (a GSO send from another relay, on
        // loopback) arrives as one read. Without it each is read on its own, still correct.
        // (io_uring: none; each multishot completion is one datagram in one buffer.)
        enable_gro(&s);
    }
    let mut sock = mio::net::UdpSocket::from_std(s.into());
    let key = match &w.io {
        Io::Epoll { registry, .. } => {
            registry.register(&mut sock, mio::Token(usize::from(port.0)), mio::Interest::READABLE)?;
            None
        }
        Io::Uring(ring) => {
            use std::os::fd::AsRawFd;
            let key = ring.key(port.0);
            ring.arm(sock.as_raw_fd(), key)?;
            Some(key)
        }
    };
    let v6 = addr.is_ipv6();
    w.relays.borrow_mut().insert(
        port,
        RelaySocket {
            sock,
            addr,
            v6,
            key,
            queued: false,
        },
    );
    Ok(())
}

/// The worker's one relay task: waits on the epoll set of every relay socket, then
/// serves the ready sockets round-robin, one `recvmmsg` each per round, yielding
/// to the client-socket loop between rounds.
async fn relay_loop(w: Rc<Worker>, poll: mio::Poll) {
    // SAFETY: `mio::Poll` owns its epoll descriptor, never replaces it and closes it
    // only on drop, which cannot happen while the `AsyncFd` owns the `Poll`.
    let registered = unsafe { AsyncFd::register_with_interest(poll, tokio::io::Interest::READABLE) };
    let mut afd = match registered {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(error = %e, "relay poll could not be registered; relaying to clients is off");
            return;
        }
    };
    let mut events = mio::Events::with_capacity(1024);
    let mut ready: VecDeque<RelayPort> = VecDeque::new();
    loop {
        let polled = if ready.is_empty() {
            let mut guard = match afd.readable_mut().await {
                Ok(g) => g,
                Err(e) => {
                    tracing::error!(error = %e, "relay poll failed");
                    return;
                }
            };
            let r = guard.get_inner_mut().poll(&mut events, Some(Duration::ZERO));
            if r.is_ok() && events.is_empty() {
                // Nothing left in the set: wait for its next edge.
                guard.clear_ready();
                continue;
            }
            r
        } else {
            // Sockets still hold data; pick up newly ready ones without waiting.
            afd.get_mut().poll(&mut events, Some(Duration::ZERO))
        };
        match polled {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::error!(error = %e, "relay poll failed");
                return;
            }
        }
        {
            let mut relays = w.relays.borrow_mut();
            for ev in events.iter() {
                let Ok(p) = u16::try_from(ev.token().0) else { continue };
                let port = RelayPort(p);
                if let Some(r) = relays.get_mut(&port) {
                    if !r.queued {
                        r.queued = true;
                        ready.push_back(port);
                    }
                }
            }
        }
        for _ in 0..ready.len() {
            let Some(port) = ready.pop_front() else { break };
            let more = drain_relay(&w, port);
            if let Some(r) = w.relays.borrow_mut().get_mut(&port) {
                if more {
                    ready.push_back(port);
                } else {
                    r.queued = false;
                }
            }
        }
        tokio::task::yield_now().await;
    }
}

/// Relay what one `recvmmsg` on a relay socket returns (up to `BATCH_SIZE` reads, each
/// possibly several GRO-coalesced datagrams) to the clients. Returns whether the socket
/// may hold more.
fn drain_relay(w: &Rc<Worker>, port: RelayPort) -> bool {
    use quinn_udp::{RecvMeta, BATCH_SIZE};
    let Io::Epoll { storage, .. } = &w.io else { return false };
    let mut storage = storage.borrow_mut();
    let mut metas = [RecvMeta::default(); BATCH_SIZE];
    let received = match w.relays.borrow().get(&port) {
        Some(r) => recv_batch(&w.udp_state, (&r.sock).into(), &mut storage, &mut metas),
        None => return false,
    };
    let n = match received {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
        // ICMP unreachable from an earlier send to a peer: about that send only.
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => return true,
        Err(e) if e.kind() == io::ErrorKind::Interrupted => return true,
        Err(e) => {
            w.metrics.dropped("relay_recv_error");
            tracing::warn!(port = port.0, error = %e, "relay socket receive failed");
            return false;
        }
    };
    let now = Instant::now();
    for (meta, slot) in reads(&storage, &metas[..n]) {
        for datagram in slot.chunks(meta.stride.max(1)) {
            relay_from_peer(w, port, PeerAddr(meta.addr), datagram, now);
        }
    }
    drop(storage);
    tx_flush(w);
    n == BATCH_SIZE
}

/// A datagram a peer sent to relay `port`: to its client as ChannelData or a Data
/// indication, or whatever the core says.
fn relay_from_peer(w: &Rc<Worker>, port: RelayPort, peer: PeerAddr, datagram: &[u8], now: Instant) {
    let to = w.core.borrow_mut().handle_peer_traffic(datagram, peer, port, now);
    match to {
        Some(t) => {
            let Ok(len) = u16::try_from(datagram.len()) else {
                return;
            };
            let header = ChannelData::header(t.channel, len);
            if t.client.transport == Transport::Udp {
                tx_push(w, TxSrc::Client, t.client.addr, &[&header, datagram]);
            } else {
                // Over TCP/TLS, ChannelData is padded to a multiple of 4 (RFC 8656 §12.5).
                let mut frame = Vec::with_capacity(4 + datagram.len().next_multiple_of(4));
                frame.extend_from_slice(&header);
                frame.extend_from_slice(datagram);
                frame.resize(4 + datagram.len().next_multiple_of(4), 0);
                send_to_client(w, t.client, frame);
            }
        }
        None => flush(w),
    }
}

/// Completions taken per round before the ring task yields to the client-socket loop.
const RING_ROUND: usize = 1024;

/// The worker's relay task with io_uring: waits for completions (the ring's descriptor
/// turns readable), relays each received datagram, re-arms receives that stopped, and
/// submits the round's sends and returned buffers together.
async fn ring_loop(w: Rc<Worker>) {
    let Io::Uring(ring) = &w.io else { return };
    // SAFETY: the ring owns its descriptor and closes it only when dropped, after this
    // task (which holds the worker, and so the ring) has dropped the `AsyncFd`.
    let registered = unsafe { AsyncFd::register_with_interest(RingFd(ring.fd()), tokio::io::Interest::READABLE) };
    let afd = match registered {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(error = %e, "io_uring descriptor could not be registered; relaying to clients is off");
            return;
        }
    };
    let mut done = Vec::with_capacity(RING_ROUND);
    let mut rearm = Vec::new();
    loop {
        match afd.readable().await {
            // Cleared before reaping: a completion queued after the reap raises a new edge.
            Ok(mut guard) => guard.clear_ready(),
            Err(e) => {
                tracing::error!(error = %e, "io_uring wait failed");
                return;
            }
        }
        loop {
            ring.reap(&mut done, RING_ROUND);
            if done.is_empty() {
                break;
            }
            let now = Instant::now();
            let full = done.len() == RING_ROUND;
            for c in done.drain(..) {
                on_completion(&w, ring, c, now, &mut rearm);
            }
            for (port, key) in rearm.drain(..) {
                use std::os::fd::AsRawFd;
                let fd = w
                    .relays
                    .borrow()
                    .get(&port)
                    .filter(|r| r.key == Some(key))
                    .map(|r| r.sock.as_raw_fd());
                if let Some(fd) = fd {
                    if let Err(e) = ring.arm(fd, key) {
                        w.metrics.dropped("relay_recv_error");
                        tracing::warn!(port = port.0, error = %e, "relay receive not re-armed");
                    }
                }
            }
            tx_commit(&w);
            if full {
                tokio::task::yield_now().await;
            }
        }
    }
}

/// One completion of the ring.
fn on_completion(
    w: &Rc<Worker>,
    ring: &uring::Ring,
    c: uring::Completion,
    now: Instant,
    rearm: &mut Vec<(RelayPort, uring::RecvKey)>,
) {
    match c {
        uring::Completion::Recv { key, result, more } => {
            let port = RelayPort(key.port);
            // A late completion of a socket since released (or of an earlier binding of
            // its port) only hands its buffer back.
            let current = w.relays.borrow().get(&port).and_then(|r| r.key) == Some(key);
            match result {
                Ok((bid, len)) => {
                    if current {
                        match ring.datagram(bid, len) {
                            Ok((from, data)) => relay_from_peer(w, port, PeerAddr(from), data, now),
                            Err(uring::RecvFault::TooLarge) => w.metrics.dropped("relay_datagram_too_large"),
                            Err(uring::RecvFault::Malformed) => w.metrics.dropped("relay_recv_error"),
                        }
                    }
                    ring.recycle(bid);
                }
                // Out of buffers: the datagrams wait in the socket; re-armed below, after
                // this round's buffers go back.
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {}
                Err(e) if e.raw_os_error() == Some(libc::ECANCELED) => {}
                Err(e) if current => {
                    // ICMP unreachable from an earlier send to a peer is about that send.
                    if e.kind() != io::ErrorKind::ConnectionRefused {
                        w.metrics.dropped("relay_recv_error");
                        tracing::warn!(port = port.0, error = %e, "relay socket receive failed");
                    }
                }
                Err(_) => {}
            }
            if !more && current {
                rearm.push((port, key));
            }
            if !more && !current {
                // A released socket's receive has ended: now it may close.
                w.closing.borrow_mut().retain(|r| r.key != Some(key));
            }
        }
        uring::Completion::Send {
            src,
            to,
            count,
            result,
            resend,
        } => match (result, resend) {
            (Ok(()), _) => {}
            // GSO refused (no GSO on this route, or a segment over the path MTU): the
            // ring now sends one datagram per send; these go again that way.
            (Err(e), Some((buf, seg))) => {
                tracing::debug!(error = %e, %to, count, "GSO send refused; sending datagrams one by one");
                for chunk in buf.chunks(seg.max(1)) {
                    tx_push(w, src, to, &[chunk]);
                }
            }
            (Err(e), None) => {
                let reason = match src {
                    TxSrc::Client => {
                        tracing::trace!(error = %e, %to, "client send failed");
                        "client_send_error"
                    }
                    TxSrc::Relay(_) => {
                        tracing::trace!(error = %e, peer = %to, "relay send failed");
                        "relay_send_error"
                    }
                };
                for _ in 0..count {
                    w.metrics.dropped(reason);
                }
            }
        },
    }
}

/// The ring's descriptor for tokio's reactor (the ring owns and closes it).
struct RingFd(std::os::fd::RawFd);

impl std::os::fd::AsRawFd for RingFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0
    }
}

/// Ask the kernel to coalesce received datagrams (UDP_GRO); quinn-udp reads the
/// segment size it reports. Best effort: without it every datagram is read alone.
fn enable_gro(s: &Socket) {
    let _ = crate::sockopt::set_int(s, libc::SOL_UDP, libc::UDP_GRO, 1);
}

async fn timer_loop(w: Rc<Worker>) {
    loop {
        // Wake at least once a second to keep the core's wall clock anchored.
        let now = Instant::now();
        let deadline = w
            .core
            .borrow()
            .poll_timeout()
            .map_or(now + Duration::from_secs(1), |t| t.min(now + Duration::from_secs(1)));
        tokio::select! {
            _ = tokio::time::sleep_until(deadline.into()) => {
                let now = Instant::now();
                {
                    let mut core = w.core.borrow_mut();
                    core.set_unix_time(now, unix_now());
                    core.handle_timeout(now);
                }
                flush(&w);
            }
            _ = w.timer.notified() => {}
        }
    }
}

async fn accept_loop(w: Rc<Worker>, l: TcpListener, tls: Option<tokio_rustls::TlsAcceptor>) {
    loop {
        let (stream, from) = match l.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let w = w.clone();
        match tls.clone() {
            None => {
                tokio::task::spawn_local(stream_conn(
                    w,
                    stream,
                    ClientAddr {
                        addr: from,
                        transport: Transport::Tcp,
                    },
                ));
            }
            Some(acceptor) => {
                tokio::task::spawn_local(async move {
                    match tokio::time::timeout(TLS_HANDSHAKE, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => {
                            stream_conn(
                                w,
                                s,
                                ClientAddr {
                                    addr: from,
                                    transport: Transport::Tls,
                                },
                            )
                            .await
                        }
                        Ok(Err(e)) => {
                            w.metrics.dropped("tls_handshake_failed");
                            tracing::debug!(client = %from, error = %e, "TLS handshake failed");
                        }
                        Err(_) => w.metrics.dropped("tls_handshake_timeout"),
                    }
                });
            }
        }
    }
}

async fn stream_conn<S: AsyncRead + AsyncWrite + Unpin + 'static>(w: Rc<Worker>, stream: S, client: ClientAddr) {
    let (mut rd, wr) = tokio::io::split(stream);
    let queue = Rc::new(StreamQueue::new(w.stream_queue));
    w.streams.borrow_mut().insert(client, queue.clone());
    tracing::debug!(client = %client.addr, transport = client.transport.as_str(), "stream connected");
    let writer = tokio::task::spawn_local(stream_writer(queue, wr));
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = vec![0u8; 16 * 1024];
    // A deadline for the next complete frame, moved only when one completes: a client
    // trickling bytes that never finish a frame is cut as surely as a silent one.
    let mut deadline = tokio::time::Instant::now() + w.stream_timeout;
    let reason = 'conn: loop {
        let n = match tokio::time::timeout_at(deadline, rd.read(&mut chunk)).await {
            Ok(Ok(0)) => break 'conn "closed",
            Ok(Ok(n)) => n,
            Ok(Err(_)) => break 'conn "read_error",
            Err(_) => {
                w.metrics.dropped("stream_frame_timeout");
                break 'conn "frame_timeout";
            }
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut start = 0;
        loop {
            match tcp_frame_len(&buf[start..]) {
                Ok(Some(len)) => {
                    let frame = &buf[start..start + len];
                    let now = Instant::now();
                    let fwd = w.core.borrow_mut().handle_client_input(frame, client, now);
                    if let Some(f) = fwd {
                        send_to_peer(&w, f.relay, f.peer, f.data, now);
                    }
                    flush(&w);
                    start += len;
                    deadline = tokio::time::Instant::now() + w.stream_timeout;
                }
                Ok(None) => break,
                Err(e) => {
                    // The stream is out of sync: no later byte can be trusted.
                    w.metrics.dropped("stream_framing_error");
                    tracing::debug!(client = %client.addr, error = %e, "closing stream");
                    break 'conn "framing_error";
                }
            }
        }
        buf.drain(..start);
    };
    tracing::debug!(client = %client.addr, reason, "stream closed");
    w.streams.borrow_mut().remove(&client);
    w.core.borrow_mut().handle_client_closed(client);
    flush(&w);
    writer.abort();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_blocks_cover_the_range_without_overlap() {
        let blocks = split_ports(&(49152..=65535), 3);
        assert_eq!(blocks.len(), 3);
        assert_eq!(*blocks[0].start(), 49152);
        assert_eq!(*blocks[2].end(), 65535);
        for w in blocks.windows(2) {
            assert_eq!(*w[0].end() + 1, *w[1].start());
        }
        assert_eq!(split_ports(&(5000..=5001), 4).len(), 2, "never more blocks than ports");
    }
}
