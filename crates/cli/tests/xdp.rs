//! The XDP fast path (`--xdp`) on the real binary, with coturn's own clients: each test
//! moves its thread into a network namespace of its own (so the program attaches to that
//! namespace's loopback, never the host's), starts the server there with `--xdp lo`, and
//! checks that every datagram arrives and that the kernel, not the server, relayed them.
//! Needs root and a build with the fast path (clang and libbpf-dev, which the test
//! command installs).

mod common;

use std::process::Command;
use std::time::Duration;

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

/// Run `turnutils_uclient` with `flags` (and a peer on 127.0.0.2 when given); returns
/// (sent, received, lost) as it reports them.
fn uclient(server: &Server, flags: &[&str], peer_port: Option<u16>) -> (u64, u64, u64, String) {
    let mut cmd = Command::new("turnutils_uclient");
    cmd.args(flags)
        .args(["-W", SECRET, "-u", "alice", "-p", &server.turn.port().to_string()])
        .args(["-n", "40", "-m", "2", "-l", "170"]);
    if let Some(p) = peer_port {
        cmd.args(["-e", "127.0.0.2", "-r", &p.to_string()]);
    }
    cmd.arg("127.0.0.1");
    let out = run_bounded(&mut cmd, Duration::from_secs(60));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "uclient {flags:?} failed:\n{text}");
    let num_after = |key: &str| -> u64 {
        text.lines()
            .rev()
            .find_map(|l| {
                let i = l.find(key)?;
                l[i + key.len()..]
                    .split(|c: char| !c.is_ascii_digit())
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or(u64::MAX)
    };
    (
        num_after("start_mclient: tot_send_msgs="),
        num_after("tot_recv_msgs="),
        num_after("Total lost packets "),
        text,
    )
}

fn start_peer() -> (Proc, u16) {
    let port = free_port();
    let proc = Proc::spawn(
        "turnutils_peer",
        Command::new("turnutils_peer")
            .args(["-L", "127.0.0.2", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
    );
    assert!(
        wait_until(Duration::from_secs(5), || std::net::UdpSocket::bind((
            "127.0.0.2",
            port
        ))
        .is_err()),
        "turnutils_peer did not bind"
    );
    (proc, port)
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
    let (_peer, port) = start_peer();
    let (sent, received, lost, text) = uclient(&server, &[], Some(port));
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
    let (sent, received, lost, text) = uclient(&server, &["-y"], None);
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
    let (_peer, port) = start_peer();
    let (sent, received, lost, text) = uclient(&server, &[], Some(port));
    assert_eq!((lost, received), (0, sent), "{text}");
    assert_eq!(xdp_count(&server, "to_peer") + xdp_count(&server, "to_client"), 0);
    assert!(server.metric("firstcall_turn_relayed_packets_total{direction=\"to_peer\"}") >= sent);
}
