//! Non-blocking reads and writes on a tokio `TcpStream` shared by several tasks: the
//! signaling sockets use them, and so does the bench's load generator, which must not
//! pay more per frame than the server it measures.

use std::io::{self, Read};

use tokio::net::TcpStream;

/// Read once from a socket known to be readable.
///
/// A read that comes back short has emptied the socket, so the readiness flag is
/// cleared then (as tokio's own `AsyncRead` does), sparing the read that would only say
/// `WouldBlock`: `try_read` keeps the flag, which cost two `recvfrom` per frame.
pub fn read_some(sock: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    let mut short = None;
    let r = sock.try_io(tokio::io::Interest::READABLE, || {
        let n = (&*socket2::SockRef::from(sock)).read(buf)?;
        if 0 < n && n < buf.len() {
            // Edge-triggered: bytes arriving after this read raise a new event, and
            // tokio clears the flag only if none has come since it was set.
            short = Some(n);
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    });
    match short {
        Some(n) => Ok(n),
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
