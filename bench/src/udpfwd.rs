//! `firstcall-udpfwd --listen ADDR`: the physical limit for the relay benchmark.
//!
//! The same path a TURN relay gives a packet, with no TURN logic: a datagram from A
//! (`D` + flow id + payload) enters on the listener, leaves through the flow's own
//! relay socket to the flow's second relay socket (the "peer" hop between two
//! allocations, through the kernel), and goes out of the listener to B (registered with
//! `R` + flow id). Each flow gets its own pair of relay sockets, as two TURN allocations
//! do. It uses the same batched calls as firstcall: reads are quinn-udp recvmmsg/GRO,
//! and a run of equal-size datagrams from one socket to one destination leaves in one
//! GSO sendmsg (written straight to the kernel: tokio's `try_send_to` refuses a send
//! until its reactor has seen the socket writable, which drops packets the kernel would
//! take).

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::rc::Rc;

use quinn_udp::{RecvMeta, UdpSocketState, BATCH_SIZE};
use tokio::net::UdpSocket;

const SLOT: usize = 64 * 1024;

/// One flow: where B is, and the relay socket pair its packets cross.
struct Route {
    out: Rc<UdpSocket>,
    hop_in: SocketAddr,
}

/// The buffer sizes firstcall's TURN driver asks for: 4 MiB on the listener, 1 MiB on
/// relay sockets (the kernel caps both at net.core.rmem_max/wmem_max).
fn buffers(sock: &UdpSocket, bytes: usize) {
    let s = socket2::SockRef::from(sock);
    let _ = s.set_recv_buffer_size(bytes);
    let _ = s.set_send_buffer_size(bytes);
}

/// Queue one datagram; it joins the pending GSO run when it can, else the run is sent.
fn send(sock: &Rc<UdpSocket>, data: &[u8], to: SocketAddr) {
    TX.with(|tx| {
        let mut tx = tx.borrow_mut();
        let Some(tx) = tx.as_mut() else { return };
        let joins = tx.key.as_ref().is_some_and(|(s, t)| Rc::ptr_eq(s, sock) && *t == to)
            && !tx.closed
            && data.len() <= tx.seg
            && tx.count < tx.max
            && tx.buf.len() + data.len() <= 64_000;
        if !joins {
            tx.flush();
            tx.key = Some((sock.clone(), to));
            tx.seg = data.len();
        } else if data.len() < tx.seg {
            tx.closed = true;
        }
        tx.buf.extend_from_slice(data);
        tx.count += 1;
    });
}

fn flush() {
    TX.with(|tx| {
        if let Some(tx) = tx.borrow_mut().as_mut() {
            tx.flush();
        }
    });
}

/// The pending run: one socket, one destination, one segment size.
struct Tx {
    state: UdpSocketState,
    key: Option<(Rc<UdpSocket>, SocketAddr)>,
    buf: Vec<u8>,
    seg: usize,
    count: usize,
    closed: bool,
    max: usize,
}

impl Tx {
    fn flush(&mut self) {
        if let Some((sock, to)) = self.key.take() {
            let t = quinn_udp::Transmit {
                destination: to,
                ecn: None,
                contents: &self.buf,
                segment_size: (self.count > 1).then_some(self.seg),
                src_ip: None,
            };
            let _ = self.state.try_send((&*sock).into(), &t);
        }
        self.buf.clear();
        self.count = 0;
        self.closed = false;
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let listen: SocketAddr = args
        .get(2)
        .and_then(|a| a.parse().ok())
        .expect("usage: firstcall-udpfwd --listen ADDR");
    let l = Rc::new(UdpSocket::bind(listen).await?);
    buffers(&l, 4 << 20);
    let tx_state = UdpSocketState::new((&*l).into())?;
    let max = tx_state.max_gso_segments().clamp(1, BATCH_SIZE);
    TX.with(|tx| {
        *tx.borrow_mut() = Some(Tx {
            state: tx_state,
            key: None,
            buf: Vec::with_capacity(128 * 1024),
            seg: 0,
            count: 0,
            closed: false,
            max,
        })
    });
    // Only this task touches the routes and the new registrations; the readers spawned
    // per flow need nothing but their own socket, B's address and the listener.
    let mut routes: HashMap<[u8; 4], Route> = HashMap::new();
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async move {
            let state = UdpSocketState::new((&*l).into()).expect("socket state");
            let mut pending: Vec<(SocketAddr, [u8; 4])> = Vec::new();
            loop {
                pump_once(&l, &state, |data, from| match data.first() {
                    Some(b'R') if data.len() >= 5 => {
                        let id: [u8; 4] = data[1..5].try_into().expect("4 bytes");
                        pending.push((from, id));
                    }
                    Some(b'D') if data.len() >= 5 => {
                        let id: [u8; 4] = data[1..5].try_into().expect("4 bytes");
                        if let Some(r) = routes.get(&id) {
                            send(&r.out, data, r.hop_in);
                        }
                    }
                    _ => {}
                })
                .await;
                // New flows: a relay socket pair each, and a reader on the far one.
                for (b, id) in std::mem::take(&mut pending) {
                    if routes.contains_key(&id) {
                        send(&l, b"ok", b);
                        continue;
                    }
                    let (Ok(out), Ok(hop_in)) = (
                        UdpSocket::bind("127.0.0.1:0").await,
                        UdpSocket::bind("127.0.0.1:0").await,
                    ) else {
                        continue;
                    };
                    let Ok(hop_in_addr) = hop_in.local_addr() else { continue };
                    buffers(&out, 1 << 20);
                    buffers(&hop_in, 1 << 20);
                    routes.insert(
                        id,
                        Route {
                            out: Rc::new(out),
                            hop_in: hop_in_addr,
                        },
                    );
                    let l2 = l.clone();
                    tokio::task::spawn_local(async move {
                        let state = UdpSocketState::new((&hop_in).into()).expect("socket state");
                        loop {
                            if !pump_once(&hop_in, &state, |data, _| send(&l2, data, b)).await {
                                return;
                            }
                        }
                    });
                    send(&l, b"ok", b);
                }
                flush();
            }
        })
        .await;
    Ok(())
}

thread_local! {
    static STORAGE: RefCell<Vec<u8>> = RefCell::new(vec![0u8; BATCH_SIZE * SLOT]);
    static TX: RefCell<Option<Tx>> = const { RefCell::new(None) };
}

/// Wait for one batch on `sock` and hand each datagram to `f`. False when the socket failed.
async fn pump_once(sock: &UdpSocket, state: &UdpSocketState, mut f: impl FnMut(&[u8], SocketAddr)) -> bool {
    if sock.readable().await.is_err() {
        return false;
    }
    // One buffer shared by every socket of this thread: a batch is handled before the next wait.
    STORAGE.with(|storage| {
        let mut storage = storage.borrow_mut();
        let mut metas = [RecvMeta::default(); BATCH_SIZE];
        let n = {
            let mut slots = storage.chunks_mut(SLOT);
            let mut iovs: [IoSliceMut<'_>; BATCH_SIZE] =
                std::array::from_fn(|_| IoSliceMut::new(slots.next().expect("BATCH_SIZE slots")));
            match sock.try_io(tokio::io::Interest::READABLE, || {
                state.recv(sock.into(), &mut iovs, &mut metas)
            }) {
                Ok(n) => n,
                Err(_) => return true,
            }
        };
        for (i, m) in metas.iter().take(n).enumerate() {
            let slot = &storage[i * SLOT..i * SLOT + m.len.min(SLOT)];
            for d in slot.chunks(m.stride.max(1)) {
                f(d, m.addr);
            }
        }
        flush();
        true
    })
}
