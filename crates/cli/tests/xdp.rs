//! The XDP fast path (`--xdp`) on the real binary, with coturn's own clients: each test
//! moves its thread into a network namespace of its own (so the program attaches to that
//! namespace's loopback, never the host's), starts the server there with `--xdp lo`, and
//! checks that every datagram arrives and that the kernel, not the server, relayed them.
//! Needs root and a build with the fast path (clang and libbpf-dev, which the test
//! command installs).

mod common;

use std::process::Command;

use common::coturn_tools::*;
use common::*;

const SECRET: &str = "xdp-secret";

/// Put this test's thread (and what it spawns) in a fresh network namespace with its
/// loopback up. Returns false (the test then skips, or fails in CI) without root.
fn own_netns() -> bool {
    // SAFETY: unshare only changes this thread's namespace.
    if unsafe { libc::geteuid() } != 0 {
        assert!(std::env::var_os("CI").is_none(), "the XDP tests need root in CI");
        eprintln!("skipped: the XDP tests need root");
        return false;
    }
    // SAFETY: as above; the thread is the test's own.
    let r = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(r, 0, "unshare(CLONE_NEWNET): {}", std::io::Error::last_os_error());
    let up = Command::new("ip").args(["link", "set", "lo", "up"]).status();
    assert!(up.is_ok_and(|s| s.success()), "ip link set lo up");
    true
}

fn xdp_count(server: &Server, path: &str) -> u64 {
    server.metric(&format!("firstcall_turn_xdp_packets_total{{path=\"{path}\"}}"))
}

/// `turnutils_uclient` with `flags` (to `peer` when given), which must succeed; returns
/// (sent, received, lost) as it reports them, and its output.
fn run_uclient(server: &Server, flags: &[&str], peer: Option<std::net::SocketAddr>) -> (u64, u64, u64, String) {
    let (ok, r) = uclient(server, flags, peer, &["-W", SECRET, "-u", "alice"]);
    assert!(ok, "uclient {flags:?} failed:\n{}", r.output);
    (r.sent, r.received, r.lost, r.output)
}

fn xdp_server(extra: &[&str]) -> Server {
    let mut args = vec!["--turn-secret", SECRET, "--allow-peer", "127.0.0.0/8", "--xdp", "lo"];
    args.extend_from_slice(extra);
    start_firstcall(&args)
}

#[test]
fn channels_to_a_peer_are_relayed_by_the_kernel_both_ways_without_loss() {
    if !have_tool("turnutils_uclient") || !own_netns() {
        return;
    }
    let server = xdp_server(&["--max-bps", "0", "--user-max-bps", "0"]);
    let peer = start_peer("127.0.0.2");
    let (sent, received, lost, text) = run_uclient(&server, &[], Some(peer.addr));
    assert!(sent >= 80, "uclient sent only {sent}:\n{text}");
    assert_eq!((lost, received), (0, sent), "{text}");
    // The channel's datagrams went through the kernel: the program counted them, in
    // both directions (the first ones, before the channel was bound, went through the server).
    let (to_peer, to_client) = (xdp_count(&server, "to_peer"), xdp_count(&server, "to_client"));
    assert!(
        to_peer > sent / 2 && to_client > sent / 2,
        "to_peer {to_peer}, to_client {to_client} of {sent}\n{}",
        server.log_text()
    );
}

#[test]
fn two_clients_relayed_by_one_server_are_joined_in_the_kernel() {
    if !have_tool("turnutils_uclient") || !own_netns() {
        return;
    }
    let server = xdp_server(&["--max-bps", "0", "--user-max-bps", "0"]);
    let (sent, received, lost, text) = run_uclient(&server, &["-y"], None);
    assert!(sent >= 80, "uclient sent only {sent}:\n{text}");
    assert_eq!((lost, received), (0, sent), "{text}");
    let joined = xdp_count(&server, "relay_to_relay");
    assert!(
        joined > sent / 2,
        "relay_to_relay {joined} of {sent}\n{}",
        server.log_text()
    );
}

#[test]
fn allocations_with_a_bandwidth_limit_stay_on_the_user_space_path() {
    if !have_tool("turnutils_uclient") || !own_netns() {
        return;
    }
    // The defaults limit bandwidth per allocation and per user: the kernel cannot charge
    // those buckets, so nothing may bypass them.
    let server = xdp_server(&[]);
    let peer = start_peer("127.0.0.2");
    let (sent, received, lost, text) = run_uclient(&server, &[], Some(peer.addr));
    assert_eq!((lost, received), (0, sent), "{text}");
    assert_eq!(xdp_count(&server, "to_peer") + xdp_count(&server, "to_client"), 0);
    assert!(server.metric("firstcall_turn_relayed_packets_total{direction=\"to_peer\"}") >= sent);
}
