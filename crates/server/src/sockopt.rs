//! Socket options socket2 has no setter for.

use std::io;

/// Set an integer socket option that socket2 has no setter for (`UDP_GRO`,
/// `SO_TIMESTAMPNS`).
pub fn set_int(
    fd: &impl std::os::fd::AsRawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: a live descriptor, and a c_int option value of the size given.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn get_int(fd: &impl AsRawFd, level: libc::c_int, name: libc::c_int) -> libc::c_int {
        let mut v: libc::c_int = -1;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: a live descriptor and a c_int-sized out value with its length.
        let r = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                level,
                name,
                (&mut v as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        assert_eq!(r, 0, "getsockopt: {}", io::Error::last_os_error());
        v
    }

    #[test]
    fn the_option_set_is_the_option_the_kernel_reports() {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind loopback");
        assert_eq!(get_int(&s, libc::SOL_UDP, libc::UDP_GRO), 0);
        set_int(&s, libc::SOL_UDP, libc::UDP_GRO, 1).expect("UDP_GRO");
        assert_eq!(get_int(&s, libc::SOL_UDP, libc::UDP_GRO), 1);
        set_int(&s, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 1).expect("SO_TIMESTAMPNS");
        assert_eq!(get_int(&s, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS), 1);
    }

    #[test]
    fn a_refused_option_is_an_error_not_silence() {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind loopback");
        // A TCP option on a UDP socket: the kernel refuses it, and the caller hears so.
        let e = set_int(&s, libc::SOL_TCP, libc::TCP_NODELAY, 1).expect_err("TCP option on a UDP socket");
        assert!(e.raw_os_error().is_some());
    }
}
