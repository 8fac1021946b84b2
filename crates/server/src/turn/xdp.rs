//! The XDP fast path's user-space side (issue 23.3): loads `xdp/relay.bpf.c` (built by
//! build.rs with clang), attaches it to `--xdp IFACE`, and keeps its maps in step with the
//! TURN cores' [`FastPathSet`]s. The program relays established channels in the kernel
//! and passes everything else on; this side only writes what the cores allow.
//!
//! Shared by every worker: map updates are syscalls made after a pass that handled a
//! control message, never per relayed packet.

use std::collections::HashMap as StdMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Mutex;
use std::time::Instant;

use firstcall_turn::fastpath::FastPathSet;

/// Why the fast path could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    /// This binary was built without clang, so it has no program to load.
    #[error("this build has no XDP fast path (clang and libbpf-dev were missing when it was built)")]
    NotBuilt,
    /// The fast path relays IPv4 only, from one relay address.
    #[error("--xdp needs an IPv4 relay address (--relay-ip), not {0}")]
    NotIpv4(IpAddr),
    /// Loading, attaching or opening a map failed.
    #[error("--xdp {iface}: {what}: {message}")]
    Kernel {
        /// The interface.
        iface: String,
        /// What was being done.
        what: &'static str,
        /// The loader's error.
        message: String,
    },
}

/// What the fast path relayed, as its per-CPU counters add up.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct XdpStats {
    /// ChannelData from clients sent to peers.
    pub to_peer: u64,
    /// Peer datagrams sent to clients as ChannelData.
    pub to_client: u64,
    /// A client's ChannelData turned straight into another client's (both relayed here).
    pub relay_to_relay: u64,
}

// The maps' layouts, as in relay.bpf.c: addresses and ports in network byte order.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ChanKey {
    client_ip: u32,
    client_port: u16,
    channel: u16,
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct ChanVal {
    relay_ip: u32,
    peer_ip: u32,
    relay_port: u16,
    peer_port: u16,
    pad: u32,
    expires_ns: u64,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct PeerKey {
    peer_ip: u32,
    peer_port: u16,
    relay_port: u16,
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct PeerVal {
    client_ip: u32,
    server_ip: u32,
    client_port: u16,
    server_port: u16,
    channel: u16,
    pad: u16,
    expires_ns: u64,
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct Config {
    relay_ip: u32,
    server_ip: u32,
    mtu: u32,
    turn_port: u16,
    pad: u16,
}

// SAFETY: plain `repr(C)` integers with explicit padding fields: every bit pattern is valid.
unsafe impl aya::Pod for ChanKey {}
// SAFETY: as above.
unsafe impl aya::Pod for ChanVal {}
// SAFETY: as above.
unsafe impl aya::Pod for PeerKey {}
// SAFETY: as above.
unsafe impl aya::Pod for PeerVal {}
// SAFETY: as above.
unsafe impl aya::Pod for Config {}

fn wire_ip(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

fn wire_port(port: u16) -> u16 {
    port.to_be()
}

struct Maps {
    channels: aya::maps::HashMap<aya::maps::MapData, ChanKey, ChanVal>,
    peers: aya::maps::HashMap<aya::maps::MapData, PeerKey, PeerVal>,
    stats: aya::maps::PerCpuArray<aya::maps::MapData, u64>,
    /// What is installed per client, to remove what a new set no longer has.
    installed: StdMap<SocketAddr, Vec<(ChanKey, PeerKey)>>,
}

/// The loaded and attached program, and its maps.
pub struct FastPath {
    maps: Mutex<Maps>,
    relay_ip: Ipv4Addr,
    /// The TURN listener's address, the source of ChannelData to clients.
    server_ip: Ipv4Addr,
    turn_port: u16,
    /// `Instant` and `bpf_ktime_get_ns` read the same clock (CLOCK_MONOTONIC); this pairs
    /// one reading of each.
    anchor: (Instant, u64),
    /// Holds the program and its attachment (detached when dropped, and by the kernel
    /// when the process exits: a bpf_link).
    _ebpf: Mutex<aya::Ebpf>,
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid clock id and a live timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

impl FastPath {
    /// Load the program, attach it to `iface` and configure it for relayed addresses on
    /// `relay_ip` and the TURN listener on `server`.
    #[cfg(firstcall_xdp)]
    pub fn attach(iface: &str, relay_ip: IpAddr, server: SocketAddr) -> Result<FastPath, XdpError> {
        static PROGRAM: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/relay.bpf.o"));
        let IpAddr::V4(relay_ip) = relay_ip else {
            return Err(XdpError::NotIpv4(relay_ip));
        };
        let server_ip = match server.ip() {
            IpAddr::V4(ip) if !ip.is_unspecified() => ip,
            IpAddr::V4(_) => relay_ip,
            other => return Err(XdpError::NotIpv4(other)),
        };
        // Frames the program would send larger than this go the slow way.
        let mtu: u32 = std::fs::read_to_string(format!("/sys/class/net/{iface}/mtu"))
            .ok()
            .and_then(|m| m.trim().parse().ok())
            .ok_or_else(|| XdpError::Kernel {
                iface: iface.to_owned(),
                what: "read the MTU",
                message: "no /sys/class/net entry".into(),
            })?;
        let fail = |what: &'static str| {
            let iface = iface.to_owned();
            move |e: &dyn std::fmt::Display| XdpError::Kernel {
                iface,
                what,
                message: e.to_string(),
            }
        };
        let mut ebpf = aya::Ebpf::load(PROGRAM).map_err(|e| fail("load the object")(&e))?;
        let program: &mut aya::programs::Xdp = ebpf
            .program_mut("firstcall_relay")
            .ok_or_else(|| fail("find the program")(&"firstcall_relay missing"))?
            .try_into()
            .map_err(|e| fail("find the program")(&e))?;
        program.load().map_err(|e| fail("load the program")(&e))?;
        program
            .attach(iface, aya::programs::XdpMode::default())
            .map_err(|e| fail("attach")(&e))?;
        let take =
            |ebpf: &mut aya::Ebpf, name: &'static str| ebpf.take_map(name).ok_or_else(|| fail("open a map")(&name));
        let channels =
            aya::maps::HashMap::try_from(take(&mut ebpf, "FC_CHANNELS")?).map_err(|e| fail("open FC_CHANNELS")(&e))?;
        let peers =
            aya::maps::HashMap::try_from(take(&mut ebpf, "FC_PEERS")?).map_err(|e| fail("open FC_PEERS")(&e))?;
        let stats =
            aya::maps::PerCpuArray::try_from(take(&mut ebpf, "FC_STATS")?).map_err(|e| fail("open FC_STATS")(&e))?;
        let mut config: aya::maps::Array<_, Config> =
            aya::maps::Array::try_from(take(&mut ebpf, "FC_CONFIG")?).map_err(|e| fail("open FC_CONFIG")(&e))?;
        config
            .set(
                0,
                Config {
                    relay_ip: wire_ip(relay_ip),
                    server_ip: wire_ip(server_ip),
                    mtu,
                    turn_port: wire_port(server.port()),
                    pad: 0,
                },
                0,
            )
            .map_err(|e| fail("configure")(&e))?;
        Ok(FastPath {
            maps: Mutex::new(Maps {
                channels,
                peers,
                stats,
                installed: StdMap::new(),
            }),
            relay_ip,
            server_ip,
            turn_port: server.port(),
            anchor: (Instant::now(), monotonic_ns()),
            _ebpf: Mutex::new(ebpf),
        })
    }

    /// Without clang at build time there is nothing to attach.
    #[cfg(not(firstcall_xdp))]
    pub fn attach(_iface: &str, _relay_ip: IpAddr, _server: SocketAddr) -> Result<FastPath, XdpError> {
        Err(XdpError::NotBuilt)
    }

    fn ns(&self, at: Instant) -> u64 {
        let (i, n) = self.anchor;
        match at.checked_duration_since(i) {
            Some(d) => n.saturating_add(d.as_nanos() as u64),
            None => n.saturating_sub(i.duration_since(at).as_nanos() as u64),
        }
    }

    /// Make the maps hold exactly `set` for its client. Returns how many entries could not
    /// be written (a full map: those datagrams stay on the user-space path).
    pub fn apply(&self, set: &FastPathSet) -> usize {
        let SocketAddr::V4(client) = set.client else {
            return 0;
        };
        let mut m = self.maps.lock().unwrap_or_else(|e| e.into_inner());
        let mut want = Vec::with_capacity(set.entries.len());
        let mut failed = 0;
        for e in &set.entries {
            let SocketAddr::V4(peer) = e.peer else { continue };
            let ck = ChanKey {
                client_ip: wire_ip(*client.ip()),
                client_port: wire_port(client.port()),
                channel: e.channel.to_be(),
            };
            let pk = PeerKey {
                peer_ip: wire_ip(*peer.ip()),
                peer_port: wire_port(peer.port()),
                relay_port: wire_port(e.relay.0),
            };
            let expires_ns = self.ns(e.expires);
            let cv = ChanVal {
                relay_ip: wire_ip(self.relay_ip),
                peer_ip: wire_ip(*peer.ip()),
                relay_port: wire_port(e.relay.0),
                peer_port: wire_port(peer.port()),
                pad: 0,
                expires_ns,
            };
            let pv = PeerVal {
                client_ip: wire_ip(*client.ip()),
                server_ip: wire_ip(self.server_ip),
                client_port: wire_port(client.port()),
                server_port: wire_port(self.turn_port),
                channel: e.channel.to_be(),
                pad: 0,
                expires_ns,
            };
            let ok = m.channels.insert(ck, cv, 0).is_ok() && m.peers.insert(pk, pv, 0).is_ok();
            if ok {
                want.push((ck, pk));
            } else {
                failed += 1;
                let _ = m.channels.remove(&ck);
                let _ = m.peers.remove(&pk);
            }
        }
        let old = if want.is_empty() {
            m.installed.remove(&set.client).unwrap_or_default()
        } else {
            m.installed.insert(set.client, want.clone()).unwrap_or_default()
        };
        for (ck, pk) in old {
            if !want.iter().any(|(c, _)| *c == ck) {
                let _ = m.channels.remove(&ck);
            }
            // A relay port is reused by later allocations: remove only what is still ours.
            let ours = m
                .peers
                .get(&pk, 0)
                .is_ok_and(|v| v.client_ip == wire_ip(*client.ip()) && v.client_port == wire_port(client.port()));
            if ours && !want.iter().any(|(_, p)| *p == pk) {
                let _ = m.peers.remove(&pk);
            }
        }
        failed
    }

    /// The program's counters, summed over CPUs.
    pub fn stats(&self) -> XdpStats {
        let m = self.maps.lock().unwrap_or_else(|e| e.into_inner());
        let sum = |i: u32| m.stats.get(&i, 0).map(|v| v.iter().sum::<u64>()).unwrap_or(0);
        XdpStats {
            to_peer: sum(0),
            to_client: sum(1),
            relay_to_relay: sum(2),
        }
    }
}
