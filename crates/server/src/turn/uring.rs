//! io_uring for a TURN worker's UDP traffic (issue 23.2): every relay socket's
//! receives and every UDP send, from any socket to any destination, go through one
//! ring per worker.
//!
//! Why: on call-shaped load each relay socket carries one flow of ~50 packets/s, so
//! the epoll driver made one `recvmmsg` per relayed packet and one `sendmsg` per
//! packet (a run to one destination is one GSO send, but calls make no runs): about
//! three syscalls per packet relayed through two allocations (`perf stat` of the
//! server under `firstcall-bench calls`: 397k `sendmsg` and 207k `recvmmsg` in 4 s at
//! 50k packets/s). With the ring, a relay socket has one multishot receive armed for
//! its lifetime (datagrams land in buffers the worker provided; no syscall per
//! packet), and a pass's sends are queued as SQEs and submitted together by one
//! `io_uring_enter`, whatever sockets and destinations they involve.
//!
//! The driving contract: the worker calls [`Ring::arm`] when it binds a relay socket
//! and [`Ring::cancel`] before it closes one, [`Ring::send`] for each outgoing
//! datagram (data copied into a slot the ring owns until its completion), and
//! [`Ring::submit`] at the end of every pass over input. Its ring task waits on
//! [`Ring::fd`] (readable when completions are queued) and takes them with
//! [`Ring::reap`]; a received datagram is read with [`Ring::datagram`] and its
//! buffer handed back with [`Ring::recycle`]. A multishot receive that stops (no free
//! buffer, an error) is re-armed by the worker.

use std::cell::{Cell, RefCell};
use std::io;
use std::net::{IpAddr, SocketAddr, SocketAddrV6};
use std::os::fd::RawFd;

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use super::TxSrc;

/// Receive buffers per worker.
const NBUF: u16 = 2048;
/// Largest datagram received from a peer: larger ones are truncated by the kernel,
/// then dropped and counted (`relay_datagram_too_large`). WebRTC media stays under
/// the path MTU (~1,200-1,500 B); 4 KiB leaves room for anything a UDP path carries
/// without fragments.
pub(super) const MAX_RECV: usize = 4096;
/// `io_uring_recvmsg_out` (16 B) and a `sockaddr_storage` (128 B) precede the payload.
const RECV_HEADER: usize = 16 + std::mem::size_of::<libc::sockaddr_storage>();
const BUF_LEN: usize = RECV_HEADER + MAX_RECV;
/// The provided-buffer group of the worker's receive buffers.
const GROUP: u16 = 0;
/// Most sends queued or in flight; past that a send is dropped and counted
/// (`send_queue_full`). Sends usually complete while they are submitted.
pub(super) const MAX_SENDS: usize = 4096;
/// Most bytes queued or in flight (a GSO send holds up to 64 KB): 16 MiB per worker.
pub(super) const MAX_SEND_BYTES: usize = 16 << 20;
const SQ_ENTRIES: u32 = 1024;
const CQ_ENTRIES: u32 = 16384;

/// What a completion's `user_data` says, in its top two bits.
const KIND_RECV: u64 = 1 << 62;
const KIND_SEND: u64 = 2 << 62;
const KIND_OTHER: u64 = 3 << 62;
const KIND_MASK: u64 = 3 << 62;

/// A relay socket's receive, as armed: the port and which binding of it (a port is
/// reused by later allocations; a late completion of an earlier one is recognised).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct RecvKey {
    pub port: u16,
    pub gen: u32,
}

impl RecvKey {
    fn user_data(self) -> u64 {
        KIND_RECV | (u64::from(self.gen) << 16) | u64::from(self.port)
    }
}

/// A completion, decoded.
#[derive(Debug)]
pub(super) enum Completion {
    /// A datagram in buffer `buf` (`len` bytes with the header), or the receive's
    /// error; `more` false when the multishot receive stopped and must be re-armed.
    Recv {
        key: RecvKey,
        result: Result<(u16, usize), io::Error>,
        more: bool,
    },
    /// A send finished: its slot is free again.
    Send {
        src: TxSrc,
        to: SocketAddr,
        /// Datagrams it carried (several with GSO).
        count: usize,
        result: Result<(), io::Error>,
        /// With GSO refused (EIO/EINVAL), the datagrams to send again one by one.
        resend: Option<(Vec<u8>, usize)>,
    },
}

/// Why a datagram could not be read from its buffer.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum RecvFault {
    /// Larger than [`MAX_RECV`]: truncated by the kernel.
    TooLarge,
    /// The kernel's header or the sender's address did not parse.
    Malformed,
}

struct SendSlot {
    hdr: libc::msghdr,
    iov: libc::iovec,
    name: libc::sockaddr_storage,
    /// Room for UDP_SEGMENT (u16) and IPV6_PKTINFO (20 B), each with its cmsghdr.
    control: [u64; 10],
    buf: Vec<u8>,
    src: TxSrc,
    to: SocketAddr,
    seg: usize,
    count: usize,
}

/// One ring per worker; see the module doc for how it is driven.
pub(super) struct Ring {
    ring: RefCell<IoUring>,
    /// Receive buffers, `NBUF` of `BUF_LEN`, written by the kernel between the
    /// completion that hands one over and [`Ring::recycle`]. Never moved or freed
    /// while the ring lives (boxed; the ring is dropped first, see `Drop`).
    bufs: *mut u8,
    bufs_len: usize,
    /// The template every multishot receive was armed with (name and control lengths).
    recv_hdr: Box<libc::msghdr>,
    slots: RefCell<Vec<Option<Box<SendSlot>>>>,
    free: RefCell<Vec<u32>>,
    /// Bytes held by queued or in-flight sends.
    send_bytes: Cell<usize>,
    /// The kernel refused a GSO send: send datagrams one by one from now on.
    gso_off: Cell<bool>,
    next_gen: Cell<u32>,
}

impl Ring {
    /// A ring with its receive buffers provided. Fails where io_uring is unavailable
    /// (old kernel, `kernel.io_uring_disabled`, a seccomp filter).
    pub(super) fn new() -> io::Result<Ring> {
        let ring = IoUring::builder()
            .setup_cqsize(CQ_ENTRIES)
            .setup_single_issuer()
            .setup_coop_taskrun()
            .build(SQ_ENTRIES)?;
        // Multishot receives with provided buffers (Linux 6.0).
        let mut probe = io_uring::Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        if !probe.is_supported(opcode::RecvMsgMulti::CODE) || !probe.is_supported(opcode::ProvideBuffers::CODE) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "io_uring lacks multishot recvmsg",
            ));
        }
        let bufs_len = usize::from(NBUF) * BUF_LEN;
        let bufs = Box::into_raw(vec![0u8; bufs_len].into_boxed_slice()).cast::<u8>();
        // SAFETY: a plain C struct; all-zero is its empty value.
        let mut recv_hdr: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
        recv_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        recv_hdr.msg_controllen = 0;
        let r = Ring {
            ring: RefCell::new(ring),
            bufs,
            bufs_len,
            recv_hdr,
            slots: RefCell::new(Vec::new()),
            free: RefCell::new(Vec::new()),
            send_bytes: Cell::new(0),
            gso_off: Cell::new(false),
            next_gen: Cell::new(0),
        };
        let provide = opcode::ProvideBuffers::new(r.bufs, BUF_LEN as i32, NBUF, GROUP, 0)
            .build()
            .user_data(KIND_OTHER);
        // SAFETY: the buffers live as long as the ring (see `bufs`).
        unsafe { r.push(&provide)? };
        {
            let mut ring = r.ring.borrow_mut();
            ring.submit_and_wait(1)?;
            let res = ring.completion().next().map(|c| c.result());
            match res {
                Some(n) if n >= 0 => {}
                Some(n) => return Err(io::Error::from_raw_os_error(-n)),
                None => return Err(io::Error::other("io_uring: no completion for the provided buffers")),
            }
        }
        Ok(r)
    }

    /// The ring's descriptor: readable while completions are queued.
    pub(super) fn fd(&self) -> RawFd {
        use std::os::fd::AsRawFd;
        self.ring.borrow().as_raw_fd()
    }

    /// Whether GSO sends are still allowed.
    pub(super) fn gso(&self) -> bool {
        !self.gso_off.get()
    }

    /// A fresh key for a relay socket bound on `port`.
    pub(super) fn key(&self, port: u16) -> RecvKey {
        let gen = self.next_gen.get().wrapping_add(1) & 0x3fff_ffff;
        self.next_gen.set(gen);
        RecvKey { port, gen }
    }

    /// Queue an SQE, submitting what is queued first if the submission queue is full.
    ///
    /// # Safety
    /// Every pointer in `e` must stay valid until its completion.
    unsafe fn push(&self, e: &squeue::Entry) -> io::Result<()> {
        let mut ring = self.ring.borrow_mut();
        for _ in 0..2 {
            // SAFETY: the caller's promise.
            if unsafe { ring.submission().push(e) }.is_ok() {
                return Ok(());
            }
            ring.submit()?;
        }
        Err(io::Error::other("io_uring submission queue stays full"))
    }

    /// Arm the multishot receive of a relay socket.
    pub(super) fn arm(&self, fd: RawFd, key: RecvKey) -> io::Result<()> {
        let e = opcode::RecvMsgMulti::new(types::Fd(fd), &*self.recv_hdr, GROUP)
            .build()
            .user_data(key.user_data());
        // SAFETY: `recv_hdr` and the buffers live as long as the ring; the socket's
        // receive is cancelled before its descriptor is closed (`cancel`).
        unsafe { self.push(&e) }
    }

    /// Cancel a relay socket's receive, now: the ring holds a reference to the socket
    /// until the receive ends, and the port must be free when this returns.
    pub(super) fn cancel(&self, key: RecvKey) -> io::Result<()> {
        let e = opcode::AsyncCancel::new(key.user_data()).build().user_data(KIND_OTHER);
        // SAFETY: no pointers.
        unsafe { self.push(&e)? };
        self.submit()
    }

    /// Queue one sendmsg of `data` (several datagrams of `seg` bytes when `count` > 1:
    /// a GSO send) from `fd` to `to`, from `src_ip` when given. `v6_socket`: the socket
    /// is IPv6 (a v4 destination is then written as v4-mapped).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn send(
        &self,
        fd: RawFd,
        v6_socket: bool,
        src: TxSrc,
        to: SocketAddr,
        src_ip: Option<IpAddr>,
        data: &[u8],
        seg: usize,
        count: usize,
    ) -> io::Result<()> {
        if self.send_bytes.get() + data.len() > MAX_SEND_BYTES {
            return Err(io::Error::new(io::ErrorKind::OutOfMemory, "send queue full"));
        }
        let index = match self.free.borrow_mut().pop() {
            Some(i) => i,
            None => {
                let mut slots = self.slots.borrow_mut();
                if slots.len() >= MAX_SENDS {
                    return Err(io::Error::new(io::ErrorKind::OutOfMemory, "send queue full"));
                }
                slots.push(None);
                (slots.len() - 1) as u32
            }
        };
        let mut slot = Box::new(SendSlot {
            // SAFETY: plain C structs, all-zero is their empty value.
            hdr: unsafe { std::mem::zeroed() },
            iov: libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            },
            // SAFETY: as above.
            name: unsafe { std::mem::zeroed() },
            control: [0; 10],
            buf: data.to_vec(),
            src,
            to,
            seg,
            count,
        });
        let dest = match (to, v6_socket) {
            (SocketAddr::V4(v4), true) => SocketAddr::V6(SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0)),
            (a, _) => a,
        };
        let name = socket2::SockAddr::from(dest);
        // SAFETY: `name.len()` bytes are a valid sockaddr, and fit a sockaddr_storage.
        unsafe {
            std::ptr::copy_nonoverlapping(
                name.as_ptr().cast::<u8>(),
                (&mut slot.name as *mut libc::sockaddr_storage).cast::<u8>(),
                name.len() as usize,
            );
        }
        slot.iov.iov_base = slot.buf.as_mut_ptr().cast();
        slot.iov.iov_len = slot.buf.len();
        slot.hdr.msg_name = (&mut slot.name as *mut libc::sockaddr_storage).cast();
        slot.hdr.msg_namelen = name.len();
        slot.hdr.msg_iov = &mut slot.iov;
        slot.hdr.msg_iovlen = 1;
        let control_len = write_control(&mut slot, v6_socket, src_ip);
        if control_len > 0 {
            slot.hdr.msg_control = slot.control.as_mut_ptr().cast();
            slot.hdr.msg_controllen = control_len;
        }
        let e = opcode::SendMsg::new(types::Fd(fd), &slot.hdr)
            .build()
            .user_data(KIND_SEND | u64::from(index));
        let len = slot.buf.len();
        self.slots.borrow_mut()[index as usize] = Some(slot);
        // SAFETY: the slot is boxed and stays in `slots` until its completion.
        if let Err(e) = unsafe { self.push(&e) } {
            self.slots.borrow_mut()[index as usize] = None;
            self.free.borrow_mut().push(index);
            return Err(e);
        }
        self.send_bytes.set(self.send_bytes.get() + len);
        Ok(())
    }

    /// Submit every queued SQE (one `io_uring_enter`).
    pub(super) fn submit(&self) -> io::Result<()> {
        let mut ring = self.ring.borrow_mut();
        if ring.submission().is_empty() {
            return Ok(());
        }
        match ring.submit() {
            Ok(_) => Ok(()),
            // The completion queue overflowed: the kernel keeps the overflow and takes
            // new submissions once it is reaped; the ring task reaps next.
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Take up to `max` completions into `out`.
    pub(super) fn reap(&self, out: &mut Vec<Completion>, max: usize) {
        let raw: Vec<(u64, i32, u32)> = {
            let mut ring = self.ring.borrow_mut();
            ring.completion()
                .take(max)
                .map(|c| (c.user_data(), c.result(), c.flags()))
                .collect()
        };
        for (ud, res, flags) in raw {
            match ud & KIND_MASK {
                KIND_RECV => {
                    let key = RecvKey {
                        port: (ud & 0xffff) as u16,
                        gen: ((ud >> 16) & 0x3fff_ffff) as u32,
                    };
                    let result = if res < 0 {
                        Err(io::Error::from_raw_os_error(-res))
                    } else {
                        match cqueue::buffer_select(flags) {
                            Some(bid) => Ok((bid, res as usize)),
                            None => Err(io::Error::other("receive completed without a buffer")),
                        }
                    };
                    out.push(Completion::Recv {
                        key,
                        result,
                        more: cqueue::more(flags),
                    });
                }
                KIND_SEND => {
                    let index = (ud & 0xffff_ffff) as usize;
                    let Some(slot) = self.slots.borrow_mut().get_mut(index).and_then(Option::take) else {
                        continue;
                    };
                    self.free.borrow_mut().push(index as u32);
                    self.send_bytes
                        .set(self.send_bytes.get().saturating_sub(slot.buf.len()));
                    let result = if res < 0 {
                        Err(io::Error::from_raw_os_error(-res))
                    } else {
                        Ok(())
                    };
                    let gso_refused = slot.count > 1 && matches!(-res, libc::EIO | libc::EINVAL);
                    if gso_refused {
                        self.gso_off.set(true);
                    }
                    out.push(Completion::Send {
                        src: slot.src,
                        to: slot.to,
                        count: slot.count,
                        result,
                        resend: gso_refused.then_some((slot.buf, slot.seg)),
                    });
                }
                _ => {}
            }
        }
    }

    /// The sender and payload of a received datagram in buffer `bid`.
    pub(super) fn datagram(&self, bid: u16, len: usize) -> Result<(SocketAddr, &[u8]), RecvFault> {
        if bid >= NBUF || len > BUF_LEN {
            return Err(RecvFault::Malformed);
        }
        // SAFETY: the kernel handed buffer `bid` over with this completion and does not
        // write it again until `recycle(bid)`; it lies within the region.
        let buf = unsafe { std::slice::from_raw_parts(self.bufs.add(usize::from(bid) * BUF_LEN), len) };
        let out = types::RecvMsgOut::parse(buf, &self.recv_hdr).map_err(|()| RecvFault::Malformed)?;
        if out.is_payload_truncated() {
            return Err(RecvFault::TooLarge);
        }
        if out.is_name_data_truncated() {
            return Err(RecvFault::Malformed);
        }
        let name = out.name_data();
        // SAFETY: a plain C struct; all-zero is its empty value.
        let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        // SAFETY: at most a sockaddr_storage's size (the template's name length).
        unsafe {
            std::ptr::copy_nonoverlapping(
                name.as_ptr(),
                (&mut storage as *mut libc::sockaddr_storage).cast::<u8>(),
                name.len().min(std::mem::size_of::<libc::sockaddr_storage>()),
            );
        }
        // SAFETY: storage holds the kernel's sockaddr of `name.len()` bytes.
        let addr = unsafe { socket2::SockAddr::new(storage, name.len() as libc::socklen_t) };
        let from = addr.as_socket().ok_or(RecvFault::Malformed)?;
        let payload = out.payload_data();
        let start = payload.as_ptr() as usize - buf.as_ptr() as usize;
        Ok((from, &buf[start..start + payload.len()]))
    }

    /// Give buffer `bid` back to the kernel (queued; submitted with the next batch).
    pub(super) fn recycle(&self, bid: u16) {
        if bid >= NBUF {
            return;
        }
        // SAFETY: within the region, which lives as long as the ring.
        let addr = unsafe { self.bufs.add(usize::from(bid) * BUF_LEN) };
        let e = opcode::ProvideBuffers::new(addr, BUF_LEN as i32, 1, GROUP, bid)
            .build()
            .user_data(KIND_OTHER);
        // SAFETY: as above.
        if let Err(e) = unsafe { self.push(&e) } {
            tracing::warn!(error = %e, "io_uring: a receive buffer could not be given back");
        }
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // Stop the kernel's use of every buffer and slot: closing the ring cancels its
        // requests and waits for them; only then are the buffers freed.
        let ring = std::mem::replace(
            self.ring.get_mut(),
            // A placeholder: dropping the real ring first is what matters.
            match IoUring::new(1) {
                Ok(r) => r,
                Err(_) => {
                    // Cannot build a placeholder: leak the buffers rather than free
                    // memory the kernel may still write.
                    return;
                }
            },
        );
        drop(ring);
        // SAFETY: allocated in `new` from a boxed slice of exactly this length.
        unsafe {
            drop(Box::from_raw(std::ptr::slice_from_raw_parts_mut(
                self.bufs,
                self.bufs_len,
            )))
        };
    }
}

/// Write the control messages a send needs (UDP_SEGMENT for GSO, a source address)
/// into the slot; returns their length.
fn write_control(slot: &mut SendSlot, v6_socket: bool, src_ip: Option<IpAddr>) -> usize {
    let mut at = 0usize;
    let base = slot.control.as_mut_ptr().cast::<u8>();
    let cap = std::mem::size_of_val(&slot.control);
    let mut put = |level: libc::c_int, ty: libc::c_int, data: &[u8]| {
        // SAFETY: CMSG_SPACE/CMSG_LEN are pure arithmetic.
        let (space, len) = unsafe {
            (
                libc::CMSG_SPACE(data.len() as u32) as usize,
                libc::CMSG_LEN(data.len() as u32) as usize,
            )
        };
        if at + space > cap {
            return;
        }
        let hdr = libc::cmsghdr {
            cmsg_len: len as _,
            cmsg_level: level,
            cmsg_type: ty,
        };
        // SAFETY: `at + space` fits the buffer; the header and data are copied
        // unaligned-safely into it (the buffer is u64-aligned and `at` a multiple of 8).
        unsafe {
            std::ptr::write_unaligned(base.add(at).cast::<libc::cmsghdr>(), hdr);
            let data_at = base.add(at + (len - data.len()));
            std::ptr::copy_nonoverlapping(data.as_ptr(), data_at, data.len());
        }
        at += space;
    };
    if slot.count > 1 {
        let seg = (slot.seg as u16).to_ne_bytes();
        put(libc::SOL_UDP, libc::UDP_SEGMENT, &seg);
    }
    match (src_ip, v6_socket) {
        (Some(IpAddr::V4(ip)), false) => {
            let info = libc::in_pktinfo {
                ipi_ifindex: 0,
                ipi_spec_dst: libc::in_addr {
                    s_addr: u32::from_ne_bytes(ip.octets()),
                },
                ipi_addr: libc::in_addr { s_addr: 0 },
            };
            // SAFETY: a plain C struct viewed as its bytes.
            let bytes = unsafe {
                std::slice::from_raw_parts(
                    (&info as *const libc::in_pktinfo).cast::<u8>(),
                    std::mem::size_of::<libc::in_pktinfo>(),
                )
            };
            put(libc::IPPROTO_IP, libc::IP_PKTINFO, bytes);
        }
        (Some(ip), true) => {
            let v6 = match ip {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            let info = libc::in6_pktinfo {
                ipi6_addr: libc::in6_addr { s6_addr: v6.octets() },
                ipi6_ifindex: 0,
            };
            // SAFETY: as above.
            let bytes = unsafe {
                std::slice::from_raw_parts(
                    (&info as *const libc::in6_pktinfo).cast::<u8>(),
                    std::mem::size_of::<libc::in6_pktinfo>(),
                )
            };
            put(libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, bytes);
        }
        // A v6 source on a v4 socket cannot be: send from the default address.
        (Some(IpAddr::V6(_)), false) | (None, _) => {}
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    /// The test suite's machine allows io_uring (README); say so loudly if not.
    fn ring() -> Ring {
        Ring::new().unwrap_or_else(|e| panic!("io_uring unavailable here: {e}"))
    }

    /// A ring with a multishot receive armed on a fresh relay socket, and a peer to write to it.
    fn armed() -> (Ring, UdpSocket, UdpSocket, RecvKey) {
        let r = ring();
        let relay = UdpSocket::bind("127.0.0.1:0").unwrap();
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        let key = r.key(relay.local_addr().unwrap().port());
        r.arm(relay.as_raw_fd(), key).unwrap();
        r.submit().unwrap();
        (r, relay, peer, key)
    }

    fn wait_for(r: &Ring, out: &mut Vec<Completion>) {
        r.ring.borrow().submit_and_wait(1).expect("wait");
        r.reap(out, 64);
    }

    #[test]
    fn a_multishot_receive_reads_each_datagram_with_its_sender_and_rearms_nothing() {
        let (r, relay, peer, key) = armed();
        let mut got = vec![];
        for i in 0..3u8 {
            peer.send_to(&[i; 100], relay.local_addr().unwrap()).unwrap();
            let mut out = vec![];
            wait_for(&r, &mut out);
            for c in out {
                let Completion::Recv { key: k, result, more } = c else {
                    panic!("not a receive")
                };
                assert_eq!(k, key);
                assert!(more, "a multishot receive keeps going");
                let (bid, len) = result.expect("datagram");
                let (from, data) = r.datagram(bid, len).expect("parsed");
                assert_eq!(from, peer.local_addr().unwrap());
                got.push(data.to_vec());
                r.recycle(bid);
            }
        }
        assert_eq!(got, vec![vec![0u8; 100], vec![1u8; 100], vec![2u8; 100]]);
    }

    #[test]
    fn a_datagram_larger_than_a_buffer_is_refused_as_too_large() {
        let (r, relay, peer, _) = armed();
        peer.send_to(&vec![7u8; MAX_RECV + 1], relay.local_addr().unwrap())
            .unwrap();
        let mut out = vec![];
        wait_for(&r, &mut out);
        let Some(Completion::Recv {
            result: Ok((bid, len)), ..
        }) = out.pop()
        else {
            panic!("no datagram")
        };
        assert_eq!(r.datagram(bid, len).map(|_| ()), Err(RecvFault::TooLarge));
    }

    #[test]
    fn sends_from_many_sockets_to_many_destinations_leave_in_one_submit() {
        let r = ring();
        let senders: Vec<UdpSocket> = (0..8).map(|_| UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
        let receivers: Vec<UdpSocket> = (0..8).map(|_| UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
        for (i, (s, d)) in senders.iter().zip(&receivers).enumerate() {
            let to = d.local_addr().unwrap();
            r.send(s.as_raw_fd(), false, TxSrc::Client, to, None, &[i as u8; 50], 50, 1)
                .unwrap();
        }
        r.submit().unwrap();
        let mut out = vec![];
        while out.len() < 8 {
            wait_for(&r, &mut out);
        }
        for c in &out {
            let Completion::Send { result, count, .. } = c else {
                panic!("not a send")
            };
            assert!(result.is_ok(), "{result:?}");
            assert_eq!(*count, 1);
        }
        for (i, d) in receivers.iter().enumerate() {
            let mut b = [0u8; 100];
            let (n, from) = d.recv_from(&mut b).unwrap();
            assert_eq!(&b[..n], &[i as u8; 50]);
            assert_eq!(from, senders[i].local_addr().unwrap());
        }
    }

    #[test]
    fn a_gso_send_arrives_as_separate_datagrams() {
        let r = ring();
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let d = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut data = vec![1u8; 300];
        data.extend_from_slice(&[2u8; 300]);
        data.extend_from_slice(&[3u8; 120]);
        r.send(
            s.as_raw_fd(),
            false,
            TxSrc::Client,
            d.local_addr().unwrap(),
            None,
            &data,
            300,
            3,
        )
        .unwrap();
        r.submit().unwrap();
        let mut out = vec![];
        wait_for(&r, &mut out);
        let Some(Completion::Send { result, count: 3, .. }) = out.pop() else {
            panic!("no send")
        };
        result.expect("GSO send");
        let mut b = [0u8; 1000];
        for (fill, n) in [(1u8, 300), (2, 300), (3, 120)] {
            let got = d.recv(&mut b).unwrap();
            assert_eq!(&b[..got], &vec![fill; n][..]);
        }
    }

    #[test]
    fn a_cancelled_receive_releases_the_port() {
        let r = ring();
        let relay = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = relay.local_addr().unwrap();
        let key = r.key(addr.port());
        r.arm(relay.as_raw_fd(), key).unwrap();
        r.submit().unwrap();
        r.cancel(key).unwrap();
        drop(relay);
        UdpSocket::bind(addr).expect("the port is free once the receive is cancelled and the socket closed");
        let mut out = vec![];
        r.reap(&mut out, 64);
        assert!(out
            .iter()
            .any(|c| matches!(c, Completion::Recv { key: k, more: false, .. } if *k == key)));
    }

    #[test]
    fn the_send_queue_is_bounded() {
        let r = ring();
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let d = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = d.local_addr().unwrap();
        // Queued, not submitted: the slots stay taken.
        for _ in 0..MAX_SENDS {
            r.send(s.as_raw_fd(), false, TxSrc::Client, to, None, b"x", 1, 1)
                .unwrap();
        }
        let e = r
            .send(s.as_raw_fd(), false, TxSrc::Client, to, None, b"x", 1, 1)
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::OutOfMemory);
    }
}
