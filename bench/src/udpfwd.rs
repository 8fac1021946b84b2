//! `firstcall-udpfwd --listen ADDR`: the physical limit for the relay benchmark.
//!
//! The same path a TURN relay gives a packet, with no TURN logic: a datagram from A
//! (`D` + flow id + payload) enters on the listener, leaves through the flow's own
//! relay socket to the flow's second relay socket (the "peer" hop between two
//! allocations, through the kernel), and goes out of the listener to B (registered with
//! `R` + flow id). Each flow gets its own pair of relay sockets, as two TURN allocations
//! do. Reads use the same batched calls (quinn-udp recvmmsg/GRO) as firstcall; sends are
//! direct `sendto` calls, as firstcall's are (tokio's `try_send_to` refuses a send until
//! its reactor has seen the socket writable, which drops packets the kernel would take).

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

fn send(sock: &UdpSocket, data: &[u8], to: SocketAddr) {
    let _ = socket2::SockRef::from(sock).send_to(data, &to.into());
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
            }
        })
        .await;
    Ok(())
}

thread_local! {
    static STORAGE: RefCell<Vec<u8>> = RefCell::new(vec![0u8; BATCH_SIZE * SLOT]);
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
        true
    })
}
