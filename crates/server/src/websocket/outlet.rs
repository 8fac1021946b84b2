//! One socket's way out: the frames queued for it and the writes that send them.

use std::net::IpAddr;
use std::sync::Mutex;

use firstcall_signal::ws::{self, OpCode};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::tcp::write_front;

/// One socket's way out. Frames are appended (by the hub under its lock, so they queue
/// in the order it produced them); whichever task comes next writes from the front.
pub struct Outlet {
    pub(super) sock: TcpStream,
    /// Unsent bytes (queued here, the kernel having refused them or not yet been
    /// offered them) past which the socket is too slow and is cut
    /// (`--slow-socket-queue`). See [`Outlet::bound`].
    limit: usize,
    out: Mutex<OutBuf>,
    /// Wakes the socket's own task: its socket would block, or it is to close.
    pub(super) wake: Notify,
    /// The client's address as the listener saw it (before any TLS bridge).
    peer_ip: Option<IpAddr>,
}

#[derive(Default)]
pub(super) struct OutBuf {
    /// Encoded frames not yet taken by the kernel.
    bytes: Vec<u8>,
    /// The socket's task waits for it to become writable; others only append.
    pub(super) blocked: bool,
    /// Already in a pending list of outlets to write (see [`Queued::First`]).
    listed: bool,
    /// A close frame is queued: after it, nothing more is sent.
    pub(super) closing: bool,
    /// A write failed: the peer is gone, drop whatever comes.
    pub(super) failed: bool,
    /// The socket was cut for being too slow: nothing more is queued, what is queued
    /// may still drain within the socket's linger, and its task counts and logs the cut,
    /// once.
    pub(super) slow: bool,
}

impl OutBuf {
    /// The socket is done (its peer gone): nothing more is queued or written.
    fn fail(&mut self) {
        self.failed = true;
        self.bytes = Vec::new();
    }
}

/// What became of a frame handed to [`Outlet::queue`].
#[derive(Debug, PartialEq, Eq)]
pub enum Queued {
    /// Queued, and the outlet was not yet listed for a [`Outlet::push`]: the caller
    /// lists it (once) and pushes it when its lock is released.
    First,
    /// Queued behind frames already listed for a push.
    Listed,
    /// The frame took the queue over its limit: the socket is cut (its task is told),
    /// nothing after this frame is sent, and the caller forgets the socket.
    Cut,
}

impl Outlet {
    /// The outlet of `sock` (from `peer_ip`), cut once more than `limit` bytes are unsent.
    pub(super) fn new(sock: TcpStream, limit: usize, peer_ip: Option<IpAddr>) -> Outlet {
        Outlet {
            sock,
            limit,
            out: Mutex::new(OutBuf::default()),
            wake: Notify::new(),
            peer_ip,
        }
    }

    /// The client's address as the listener saw it: the TCP peer, not the loopback end
    /// of a TLS bridge.
    pub fn peer_ip(&self) -> Option<IpAddr> {
        self.peer_ip
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, OutBuf> {
        // Nothing panics while holding it (appends and non-blocking writes).
        self.out.lock().expect("outlet lock poisoned by an earlier panic")
    }

    /// Queue one data frame for the next [`Outlet::push`].
    pub fn queue(&self, op: OpCode, payload: &[u8]) -> Queued {
        let mut b = self.lock();
        if !self.append(&mut b, op, payload) {
            return Queued::Cut;
        }
        Outlet::list(&mut b)
    }

    /// Queue the close frame with `code` and `reason` for the next [`Outlet::push`];
    /// nothing is sent after it. Over the limit, the socket is cut instead.
    pub fn queue_close(&self, code: u16, reason: &str) -> Queued {
        let mut b = self.lock();
        if !self.close_frame(&mut b, Some((code, reason))) {
            return Queued::Cut;
        }
        Outlet::list(&mut b)
    }

    fn list(b: &mut OutBuf) -> Queued {
        if b.listed {
            Queued::Listed
        } else {
            b.listed = true;
            Queued::First
        }
    }

    /// Queue one frame; false if that took the queue over its limit: the socket is then
    /// cut (and its task told), and nothing after this frame is sent.
    fn append(&self, b: &mut OutBuf, op: OpCode, payload: &[u8]) -> bool {
        if b.closing || b.failed || b.slow {
            return true;
        }
        ws::encode(&mut b.bytes, op, payload, None);
        self.bound(b)
    }

    /// Hold the queue to the limit: every unsent byte counts, whatever queued it (a
    /// relayed frame, the whole replay of a resume or a backlog the hub hands over in
    /// one call, a pong, a close frame).
    ///
    /// Past the limit the queue is first offered to the kernel, right here (on the
    /// appending task, under the hub's lock if the hub is appending): the limit then
    /// applies to the bytes the kernel refused, not to a burst that a reading client's
    /// socket takes at once. Only a queue over the limit gets this write, so the usual
    /// small frame still waits for the batched write after the read. If the socket's
    /// task already waits for writability, the kernel has refused and is not asked
    /// again. Still over: the socket is cut. The frame just queued is the last: nothing
    /// after it may go out (the client would see a gap), and its session keeps every
    /// frame for the resume. What is queued, at most the limit and that frame, may still
    /// drain while the socket lingers (a client that reads but was handed more than the
    /// kernel took at once then gets it all before it resumes); then it is closed.
    fn bound(&self, b: &mut OutBuf) -> bool {
        if b.bytes.len() <= self.limit {
            return true;
        }
        if !b.blocked {
            match write_queued(&self.sock, b) {
                Ok(true) => return true,
                Ok(false) => {
                    // The task waits for writability from now on.
                    b.blocked = true;
                    self.wake.notify_one();
                }
                Err(_) => {
                    // The peer is gone: not a slow socket.
                    b.fail();
                    self.wake.notify_one();
                    return true;
                }
            }
        }
        if b.bytes.len() <= self.limit {
            return true;
        }
        b.slow = true;
        self.wake.notify_one();
        false
    }

    /// Write what is queued, unless the socket's task is already waiting to. Wakes the
    /// task when the socket would block, failed, or has sent its close frame.
    pub fn push(&self) {
        let mut b = self.lock();
        b.listed = false;
        if b.failed {
            self.wake.notify_one();
            return;
        }
        if b.blocked {
            // Its task waits to write; a close must reach it even so, or a peer that
            // never reads again would keep the socket open for ever.
            if b.closing {
                self.wake.notify_one();
            }
            return;
        }
        match write_queued(&self.sock, &mut b) {
            Ok(true) if !b.closing => {}
            Ok(drained) => {
                b.blocked = !drained;
                self.wake.notify_one();
            }
            Err(_) => {
                b.fail();
                self.wake.notify_one();
            }
        }
    }

    /// Queue the close frame, with a status code and reason if given; nothing is sent
    /// after it. False if it took the queue over its limit (see [`Outlet::bound`]).
    fn close_frame(&self, b: &mut OutBuf, status: Option<(u16, &str)>) -> bool {
        if b.closing || b.failed || b.slow {
            return true;
        }
        match status {
            Some((code, reason)) => ws::encode_close(&mut b.bytes, code, reason, None),
            None => ws::encode(&mut b.bytes, OpCode::Close, &[], None),
        }
        b.closing = true;
        self.bound(b)
    }

    /// Answer a ping.
    pub(super) fn pong(&self, payload: &[u8]) {
        // Over the limit, the pong fails the socket like any frame; `push` then tells
        // the socket's task, which ends it.
        let _ = self.append(&mut self.lock(), OpCode::Pong, payload);
        self.push();
    }

    /// A close frame is queued, or the socket is done: nothing more goes out.
    pub(super) fn is_closing(&self) -> bool {
        let b = self.lock();
        b.closing || b.failed || b.slow
    }

    /// Send our close frame.
    pub(crate) fn close(&self, status: Option<(u16, &str)>) {
        // Over the limit, the close cuts the socket like any frame.
        let _ = self.close_frame(&mut self.lock(), status);
        self.push();
    }

    /// Write from the front of the queue until it is empty (true) or the socket would
    /// block (false).
    pub(super) fn write_queued(&self, b: &mut OutBuf) -> std::io::Result<bool> {
        write_queued(&self.sock, b)
    }
}

/// Write from the front of the queue until it is empty (true) or the socket would
/// block (false).
fn write_queued(sock: &TcpStream, b: &mut OutBuf) -> std::io::Result<bool> {
    let drained = write_front(sock, &mut b.bytes);
    // Give back a buffer a burst (or the welcome) grew, so that idle sockets stay
    // small; one relayed frame fits in what is kept.
    if b.bytes.is_empty() && b.bytes.capacity() > 512 {
        b.bytes = Vec::new();
    }
    drained
}
