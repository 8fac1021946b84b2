//! Start-up checks of the relay port range against the kernel's ephemeral ports and our
//! own listeners.
//!
//! The kernel gives every outgoing socket without an explicit port (DNS lookups,
//! webhook POSTs, any other process's connections) one from `ip_local_port_range`. When
//! the relay range overlaps it, a relay bind can find its port taken (the core retries
//! another, then answers 508), and the ports taken cannot serve as relays. The peer
//! filter no longer lets clients reach such sockets (only live relays are peers), so
//! the overlap costs availability, not safety; the fix is another range or reserving the
//! range (`ip_local_reserved_ports`), which the warning says.

use std::net::SocketAddr;
use std::ops::RangeInclusive;

/// `net.ipv4.ip_local_port_range`, e.g. `"32768\t60999"`.
pub fn parse_port_range(text: &str) -> Option<RangeInclusive<u16>> {
    let mut it = text.split_whitespace().map(|v| v.parse::<u16>());
    match (it.next(), it.next(), it.next()) {
        (Some(Ok(a)), Some(Ok(b)), None) if a <= b => Some(a..=b),
        _ => None,
    }
}

/// `net.ipv4.ip_local_reserved_ports`, e.g. `"8080,61000-65535"` (empty: none).
pub fn parse_port_list(text: &str) -> Option<Vec<RangeInclusive<u16>>> {
    text.trim()
        .split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| match p.trim().split_once('-') {
            Some((a, b)) => {
                let (a, b) = (a.parse::<u16>().ok()?, b.parse::<u16>().ok()?);
                (a <= b).then_some(a..=b)
            }
            None => p.trim().parse::<u16>().ok().map(|a| a..=a),
        })
        .collect()
}

/// The kernel's ephemeral range and reserved ports, when readable.
pub fn kernel_ports() -> (Option<RangeInclusive<u16>>, Vec<RangeInclusive<u16>>) {
    let read = |p: &str| std::fs::read_to_string(p).ok();
    let ephemeral = read("/proc/sys/net/ipv4/ip_local_port_range").and_then(|t| parse_port_range(&t));
    let reserved = read("/proc/sys/net/ipv4/ip_local_reserved_ports")
        .and_then(|t| parse_port_list(&t))
        .unwrap_or_default();
    (ephemeral, reserved)
}

/// What is wrong with `relay` given the kernel's ports and the listeners; one message each.
pub fn relay_range_warnings(
    relay: &RangeInclusive<u16>,
    ephemeral: Option<&RangeInclusive<u16>>,
    reserved: &[RangeInclusive<u16>],
    listeners: &[(&str, SocketAddr)],
) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(eph) = ephemeral {
        let (lo, hi) = ((*relay.start()).max(*eph.start()), (*relay.end()).min(*eph.end()));
        if lo <= hi {
            let unreserved = (lo..=hi).filter(|p| !reserved.iter().any(|r| r.contains(p))).count();
            if unreserved > 0 {
                out.push(format!(
                    "relay ports {}-{} overlap the kernel's ephemeral ports {}-{} (net.ipv4.ip_local_port_range) in {lo}-{hi}, \
                     {unreserved} of them not reserved: outgoing sockets may take relay ports (relay binds then retry or fail with 508). \
                     Choose --relay-ports outside it (the default 61000-65535 is) or reserve them: \
                     sysctl -w net.ipv4.ip_local_reserved_ports={lo}-{hi}",
                    relay.start(),
                    relay.end(),
                    eph.start(),
                    eph.end(),
                ));
            }
        }
    }
    for (what, addr) in listeners {
        if relay.contains(&addr.port()) {
            out.push(format!(
                "the {what} listener's port {} is inside the relay port range {}-{}: move one of them",
                addr.port(),
                relay.start(),
                relay.end()
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_proc_files() {
        assert_eq!(parse_port_range("32768\t60999\n"), Some(32768..=60999));
        assert_eq!(parse_port_range("60999 32768"), None);
        assert_eq!(parse_port_range("x y"), None);
        assert_eq!(parse_port_list("\n"), Some(vec![]));
        assert_eq!(
            parse_port_list("8080,61000-65535\n"),
            Some(vec![8080..=8080, 61000..=65535])
        );
        assert_eq!(parse_port_list("8080,nope"), None);
    }

    #[test]
    fn warns_about_unreserved_overlap_and_listeners_only() {
        let eph = 32768..=60999;
        let listeners = [
            ("TURN", "0.0.0.0:3478".parse().unwrap()),
            ("HTTP", "0.0.0.0:8080".parse().unwrap()),
        ];
        assert!(relay_range_warnings(&(61000..=65535), Some(&eph), &[], &listeners).is_empty());
        let w = relay_range_warnings(&(49152..=65535), Some(&eph), &[], &listeners);
        assert_eq!(w.len(), 1);
        assert!(
            w[0].contains("49152-60999") && w[0].contains("11848 of them"),
            "{}",
            w[0]
        );
        // Reserved ports are not handed out: no overlap left, no warning.
        assert!(relay_range_warnings(&(49152..=65535), Some(&eph), &[40000..=60999], &listeners).is_empty());
        let w = relay_range_warnings(&(3000..=9000), Some(&eph), &[], &listeners);
        assert_eq!(w.len(), 2);
        assert!(w[0].contains("TURN listener's port 3478"), "{}", w[0]);
        assert!(w[1].contains("HTTP listener's port 8080"), "{}", w[1]);
        assert!(relay_range_warnings(&(49152..=65535), None, &[], &[]).is_empty());
    }
}
