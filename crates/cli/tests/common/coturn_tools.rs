//! coturn's own client tools (Debian `coturn`) as independent TURN clients and peers:
//! `turnutils_uclient` and `turnutils_peer`.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use super::*;

/// What `turnutils_uclient` reported.
#[derive(Debug)]
pub struct UclientReport {
    pub sent: u64,
    pub received: u64,
    pub lost: u64,
    pub output: String,
}

/// Run `turnutils_uclient` against `server` with `flags` and `creds`, to `peer` when given.
pub fn uclient(server: &Server, flags: &[&str], peer: Option<SocketAddr>, creds: &[&str]) -> (bool, UclientReport) {
    let mut cmd = Command::new("turnutils_uclient");
    cmd.args(flags)
        .args(creds)
        .args(["-p", &server.turn.port().to_string()]);
    cmd.args(["-n", "40", "-m", "2", "-l", "170"]);
    if let Some(p) = peer {
        cmd.args(["-e", &p.ip().to_string(), "-r", &p.port().to_string()]);
    }
    cmd.arg("127.0.0.1");
    let out = run_bounded(&mut cmd, Duration::from_secs(60));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let num_after = |key: &str| -> Option<u64> {
        text.lines().rev().find_map(|l| {
            let i = l.find(key)?;
            l[i + key.len()..]
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
    };
    let report = UclientReport {
        sent: num_after("start_mclient: tot_send_msgs=").unwrap_or(0),
        received: num_after("tot_recv_msgs=").unwrap_or(0),
        lost: num_after("Total lost packets ").unwrap_or(u64::MAX),
        output: text,
    };
    (out.status.success(), report)
}

/// A `turnutils_peer` (an echoing UDP peer), stopped on drop.
pub struct Peer {
    _proc: Proc,
    /// Where it listens.
    pub addr: SocketAddr,
}

/// Start a `turnutils_peer` on `ip` (a loopback address) and a free port.
pub fn start_peer(ip: &str) -> Peer {
    let port = free_port();
    let proc = Proc::spawn(
        "turnutils_peer",
        Command::new("turnutils_peer")
            .args(["-L", ip, "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
    );
    // Ready when its UDP port is taken.
    assert!(
        wait_until(Duration::from_secs(5), || std::net::UdpSocket::bind((ip, port))
            .is_err()),
        "turnutils_peer did not bind"
    );
    let addr = SocketAddr::new(ip.parse().expect("an IP address"), port);
    Peer { _proc: proc, addr }
}
