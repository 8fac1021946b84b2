//! `firstcall-linkem A B --delay-ms D --jitter-ms J --loss P --seed S`
//!
//! A user-space link emulator for kernels without netem: it forwards every Ethernet
//! frame between interfaces A and B (raw AF_PACKET sockets, both directions), holding
//! each for `delay + uniform(0, jitter)` ms and dropping it with probability `loss`.
//! A frame never leaves before the one ahead of it in the same direction: jitter is
//! queueing delay, and a FIFO link keeps a flow's packets in order (before 2026-12-03 each
//! frame drew its own delay, so two frames sent 0.2 ms apart swapped places whenever the
//! draws differed by more than that: see docs/netsim.md on what that did to DTLS).
//! `--reorder` brings that behaviour back, for a scenario that wants reordering.
//! Run it in a namespace whose only job is this link; A and B carry no addresses, so
//! the kernel itself never forwards between them. Stops on SIGTERM/SIGKILL.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::ffi::CString;
use std::time::{Duration, Instant};

struct Opts {
    a: String,
    b: String,
    delay: Duration,
    jitter: Duration,
    loss: f64,
    seed: u64,
    reorder: bool,
}

fn parse() -> Result<Opts, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut pos = vec![];
    let mut o = Opts {
        a: String::new(),
        b: String::new(),
        delay: Duration::ZERO,
        jitter: Duration::ZERO,
        loss: 0.0,
        seed: 1,
        reorder: false,
    };
    let mut i = 0;
    while i < args.len() {
        let val = |i: usize| args.get(i + 1).cloned().ok_or(format!("{} needs a value", args[i]));
        match args[i].as_str() {
            "--delay-ms" => {
                o.delay = Duration::from_secs_f64(val(i)?.parse::<f64>().map_err(|e| e.to_string())? / 1000.0)
            }
            "--jitter-ms" => {
                o.jitter = Duration::from_secs_f64(val(i)?.parse::<f64>().map_err(|e| e.to_string())? / 1000.0)
            }
            "--loss" => o.loss = val(i)?.parse().map_err(|e: std::num::ParseFloatError| e.to_string())?,
            "--seed" => o.seed = val(i)?.parse().map_err(|e: std::num::ParseIntError| e.to_string())?,
            "--reorder" => {
                o.reorder = true;
                i += 1;
                continue;
            }
            s if !s.starts_with("--") => {
                pos.push(s.to_owned());
                i += 1;
                continue;
            }
            s => return Err(format!("unknown flag {s}")),
        }
        i += 2;
    }
    if pos.len() != 2 {
        return Err(
            "usage: firstcall-linkem IFACE_A IFACE_B [--delay-ms D] [--jitter-ms J] [--loss P] [--seed S] [--reorder]"
                .into(),
        );
    }
    if !(0.0..=1.0).contains(&o.loss) {
        return Err("--loss is a probability in 0..=1".into());
    }
    o.a = pos[0].clone();
    o.b = pos[1].clone();
    Ok(o)
}

/// A raw packet socket bound to one interface.
struct Raw {
    fd: i32,
    ifindex: i32,
}

impl Raw {
    fn open(iface: &str) -> Result<Raw, String> {
        let name = CString::new(iface).map_err(|e| e.to_string())?;
        // SAFETY: plain libc calls with valid arguments; the fd is owned by Raw.
        unsafe {
            let ifindex = libc::if_nametoindex(name.as_ptr()) as i32;
            if ifindex == 0 {
                return Err(format!("no interface {iface}"));
            }
            let proto = (libc::ETH_P_ALL as u16).to_be() as i32;
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_NONBLOCK, proto);
            if fd < 0 {
                return Err(format!("socket: {}", std::io::Error::last_os_error()));
            }
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = proto as u16;
            sll.sll_ifindex = ifindex;
            if libc::bind(
                fd,
                &sll as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            ) < 0
            {
                return Err(format!("bind {iface}: {}", std::io::Error::last_os_error()));
            }
            // Ignore frames this socket itself sends (PACKET_IGNORE_OUTGOING = 23).
            let one: i32 = 1;
            libc::setsockopt(fd, libc::SOL_PACKET, 23, &one as *const _ as *const libc::c_void, 4);
            let big: i32 = 4 << 20;
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                &big as *const _ as *const libc::c_void,
                4,
            );
            Ok(Raw { fd, ifindex })
        }
    }

    /// One received frame sent by the peer of this interface (not one we sent), if any.
    fn recv(&self, buf: &mut [u8]) -> Option<usize> {
        // SAFETY: buf is valid for its length; sll is written by the kernel.
        unsafe {
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            let n = libc::recvfrom(
                self.fd,
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
                0,
                &mut sll as *mut _ as *mut libc::sockaddr,
                &mut len,
            );
            if n <= 0 {
                return None;
            }
            if sll.sll_pkttype == libc::PACKET_OUTGOING {
                return Some(0);
            }
            Some(n as usize)
        }
    }

    fn send(&self, frame: &[u8]) {
        // SAFETY: frame is valid; sll names our interface.
        unsafe {
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_ifindex = self.ifindex;
            sll.sll_halen = 6;
            sll.sll_addr[..6].copy_from_slice(&frame[..6.min(frame.len())]);
            libc::sendto(
                self.fd,
                frame.as_ptr() as *const libc::c_void,
                frame.len(),
                0,
                &sll as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
        }
    }
}

/// xorshift64*: deterministic per seed, good enough for loss and jitter draws.
struct Rng(u64);
impl Rng {
    fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A frame held back: release time, a sequence number keeping frames of equal release
/// time in FIFO order, direction, frame.
type Held = (Instant, u64, usize, Vec<u8>);

fn main() {
    let o = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("firstcall-linkem: {e}");
            std::process::exit(2);
        }
    };
    let (a, b) = match (Raw::open(&o.a), Raw::open(&o.b)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("firstcall-linkem: {e}");
            std::process::exit(1);
        }
    };
    let ends = [a, b];
    let mut rng = Rng(o.seed.max(1));
    let mut queue: BinaryHeap<Reverse<Held>> = BinaryHeap::new();
    let mut seq = 0u64;
    // When each direction's last frame leaves: the next one leaves no earlier.
    let mut last_out = [Instant::now(); 2];
    let mut buf = vec![0u8; 65536];
    let (mut forwarded, mut dropped) = (0u64, 0u64);
    eprintln!(
        "firstcall-linkem: {} <-> {} delay {:?} jitter {:?} loss {}",
        o.a, o.b, o.delay, o.jitter, o.loss
    );
    loop {
        let now = Instant::now();
        while let Some(Reverse((at, _, _, _))) = queue.peek() {
            if *at > now {
                break;
            }
            let Reverse((_, _, dir, frame)) = queue.pop().expect("peeked");
            ends[1 - dir].send(&frame);
            forwarded += 1;
        }
        let timeout_ms = queue.peek().map_or(100, |Reverse((at, ..))| {
            at.saturating_duration_since(now).as_millis().max(1) as i32
        });
        let mut fds = [
            libc::pollfd {
                fd: ends[0].fd,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: ends[1].fd,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: fds is a valid array of two pollfds.
        unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout_ms) };
        for (dir, end) in ends.iter().enumerate() {
            // Drain each socket (bounded per round so neither direction starves).
            for _ in 0..256 {
                let Some(n) = end.recv(&mut buf) else { break };
                if n == 0 {
                    continue;
                }
                if o.loss > 0.0 && rng.next_f64() < o.loss {
                    dropped += 1;
                    continue;
                }
                let extra = if o.jitter.is_zero() {
                    Duration::ZERO
                } else {
                    o.jitter.mul_f64(rng.next_f64())
                };
                seq += 1;
                let mut at = Instant::now() + o.delay + extra;
                if !o.reorder {
                    at = at.max(last_out[dir]);
                    last_out[dir] = at;
                }
                queue.push(Reverse((at, seq, dir, buf[..n].to_vec())));
            }
        }
        if (forwarded + dropped) % 100_000 == 99_999 {
            eprintln!("firstcall-linkem: forwarded {forwarded} dropped {dropped}");
        }
    }
}
