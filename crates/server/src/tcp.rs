//! Non-blocking reads and writes on a tokio `TcpStream` shared by several tasks: the
//! signaling sockets use them, and so does the bench's load generator, which must not
//! pay more per frame than the server it measures.

use std::io;
use std::mem::MaybeUninit;

use tokio::io::Interest;
use tokio::net::TcpStream;

/// Read once from a socket known to be readable; the bytes read, empty at end of stream.
///
/// `buf` may be uninitialised, so that a reader's stack buffer is not zeroed before
/// every read: 4 KiB of `memset` per read was a fifth of the server's instructions per
/// relayed frame. Readiness is handled as [`read_once`] says.
pub fn read_some<'b>(sock: &TcpStream, buf: &'b mut [MaybeUninit<u8>]) -> io::Result<&'b mut [u8]> {
    let len = buf.len();
    let (n, ()) = read_once(sock, len, || Ok((socket2::SockRef::from(sock).recv(buf)?, ())))?;
    // SAFETY: `recv` returned `n`, the count of bytes it wrote at the front of `buf`.
    Ok(unsafe { filled(buf, n) })
}

/// The first `n` bytes of `buf`, which a read has just written there.
///
/// # Safety
///
/// The first `n` elements of `buf` must be initialised: pass what `recv`/`recvmsg` (or
/// any read into `buf`) returned as the count of bytes written. An `n` beyond
/// `buf.len()` panics rather than reading out of bounds; a kernel never returns one.
pub unsafe fn filled(buf: &mut [MaybeUninit<u8>], n: usize) -> &mut [u8] {
    let head = &mut buf[..n];
    // SAFETY: the caller vouches that `head` is initialised, and `MaybeUninit<u8>` has the
    // layout of `u8`.
    unsafe { &mut *(head as *mut [MaybeUninit<u8>] as *mut [u8]) }
}

/// Run `raw`, one read of at most `len` bytes from `sock` that says how many it got
/// (and whatever else it learnt, such as a receive timestamp), under tokio's readiness
/// flag for `sock`.
///
/// A read that comes back short has emptied the socket, so the readiness flag is
/// cleared then (as tokio's own `AsyncRead` does), sparing the read that would only say
/// `WouldBlock`: `try_read` keeps the flag, which cost two `recvfrom` per frame.
pub fn read_once<T>(
    sock: &TcpStream,
    len: usize,
    raw: impl FnOnce() -> io::Result<(usize, T)>,
) -> io::Result<(usize, T)> {
    let mut short = None;
    let r = sock.try_io(Interest::READABLE, || {
        let (n, got) = raw()?;
        if 0 < n && n < len {
            // Edge-triggered: bytes arriving after this read raise a new event, and
            // tokio clears the flag only if none has come since it was set.
            short = Some((n, got));
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok((n, got))
    });
    match short {
        Some(got) => Ok(got),
        None => r,
    }
}

/// Write from the front of `bytes`, removing what the kernel took, until it is empty
/// (true) or the socket would block (false).
pub fn write_front(sock: &TcpStream, bytes: &mut Vec<u8>) -> io::Result<bool> {
    while !bytes.is_empty() {
        match sock.try_write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) if n == bytes.len() => bytes.clear(),
            Ok(n) => {
                bytes.drain(..n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn filled_is_the_written_prefix_and_refuses_a_count_past_the_end() {
        let mut buf = [MaybeUninit::<u8>::uninit(); 8];
        for (i, b) in buf.iter_mut().take(3).enumerate() {
            b.write(i as u8 + 1);
        }
        // SAFETY: the first 3 bytes were written just above.
        assert_eq!(unsafe { filled(&mut buf, 3) }, &[1, 2, 3]);
        // SAFETY: nothing is read: the count is refused first.
        let past = std::panic::catch_unwind(move || unsafe { filled(&mut buf, 9).len() });
        assert!(past.is_err(), "a count past the buffer panics, never reads beyond it");
    }

    /// A short read hands back exactly the bytes sent and clears readiness, so the next
    /// read waits for the next write instead of asking the kernel for nothing.
    #[tokio::test]
    async fn short_read_returns_the_bytes_and_clears_readiness() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let mut tx = TcpStream::connect(l.local_addr().expect("bound"))
            .await
            .expect("connect");
        let (rx, _) = l.accept().await.expect("accept");
        tx.write_all(b"hello").await.expect("write");
        rx.readable().await.expect("readable");
        let mut buf = [MaybeUninit::<u8>::uninit(); 64];
        assert_eq!(read_some(&rx, &mut buf).expect("read"), b"hello");
        // The flag was cleared: the next read does not even reach the socket.
        let mut called = false;
        let r = read_once(&rx, 64, || {
            called = true;
            Ok((0, ()))
        });
        assert_eq!(r.expect_err("no bytes").kind(), io::ErrorKind::WouldBlock);
        assert!(!called, "readiness kept after a short read: a wasted recv per frame");
        tx.write_all(b"again").await.expect("write");
        rx.readable().await.expect("readable");
        assert_eq!(read_some(&rx, &mut buf).expect("read"), b"again");
        drop(tx);
        rx.readable().await.expect("readable");
        assert_eq!(read_some(&rx, &mut buf).expect("read"), b"");
    }
}
