//! `firstcall-udpfwd --listen ADDR`: the physical limit for the relay benchmark.
//!
//! The same two hops a TURN relay makes, with no TURN logic: a datagram from A
//! (`D` + flow id + payload) enters on the listener, leaves through the flow's own
//! relay socket to the forwarder's second socket (the "peer" hop through the kernel),
//! and goes out of the listener to B (registered with `R` + flow id). Reads use the
//! same batched calls (quinn-udp recvmmsg/GRO) as firstcall's listener.

use std::collections::HashMap;
use std::io::IoSliceMut;
use std::net::SocketAddr;

use quinn_udp::{RecvMeta, UdpSocketState, BATCH_SIZE};
use tokio::net::UdpSocket;

const SLOT: usize = 64 * 1024;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let listen: SocketAddr = args.get(2).and_then(|a| a.parse().ok()).expect("usage: firstcall-udpfwd --listen ADDR");
    let l = std::sync::Arc::new(UdpSocket::bind(listen).await?);
    // The peer hop: every flow sends from `hop_out` to `hop_in`, as one relay to another.
    let hop_in = std::sync::Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
    let hop_out = UdpSocket::bind("127.0.0.1:0").await?;
    let hop_in_addr = hop_in.local_addr()?;
    let routes: std::rc::Rc<std::cell::RefCell<HashMap<[u8; 4], SocketAddr>>> = Default::default();
    let local = tokio::task::LocalSet::new();
    let (l2, routes2, hop_in2) = (l.clone(), routes.clone(), hop_in.clone());
    local.spawn_local(async move {
        let state = UdpSocketState::new((&*hop_in2).into()).expect("socket state");
        pump(&hop_in2, &state, |data, _from| {
            if data.len() >= 5 {
                let id: [u8; 4] = data[1..5].try_into().expect("4 bytes");
                if let Some(b) = routes2.borrow().get(&id) {
                    let _ = l2.try_send_to(data, *b);
                }
            }
        })
        .await;
    });
    local
        .run_until(async move {
            let state = UdpSocketState::new((&*l).into()).expect("socket state");
            pump(&l, &state, |data, from| match data.first() {
                Some(b'R') if data.len() >= 5 => {
                    routes.borrow_mut().insert(data[1..5].try_into().expect("4 bytes"), from);
                    let _ = l.try_send_to(b"ok", from);
                }
                Some(b'D') => {
                    let _ = hop_out.try_send_to(data, hop_in_addr);
                }
                _ => {}
            })
            .await;
        })
        .await;
    Ok(())
}

async fn pump(sock: &UdpSocket, state: &UdpSocketState, mut f: impl FnMut(&[u8], SocketAddr)) {
    let mut storage = vec![0u8; BATCH_SIZE * SLOT];
    let mut metas = [RecvMeta::default(); BATCH_SIZE];
    loop {
        let n = {
            let mut slots = storage.chunks_mut(SLOT);
            let mut iovs: [IoSliceMut<'_>; BATCH_SIZE] = std::array::from_fn(|_| IoSliceMut::new(slots.next().expect("slots")));
            if sock.readable().await.is_err() {
                return;
            }
            match sock.try_io(tokio::io::Interest::READABLE, || state.recv(sock.into(), &mut iovs, &mut metas)) {
                Ok(n) => n,
                Err(_) => continue,
            }
        };
        for (i, m) in metas.iter().take(n).enumerate() {
            let slot = &storage[i * SLOT..i * SLOT + m.len.min(SLOT)];
            for d in slot.chunks(m.stride.max(1)) {
                f(d, m.addr);
            }
        }
    }
}
