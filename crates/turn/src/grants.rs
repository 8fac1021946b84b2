//! Peer grants: a peer address the signaling side vouches for, let into a user's
//! allocations before that user's own CreatePermission arrives.
//!
//! Why: when a call is answered, each side's ICE agent starts checking at once, but a
//! check that reaches the other side's relay before that side has installed a
//! permission for it is dropped (RFC 8656 §10.3), and libwebrtc sends it again only
//! ~190 ms later. A relay candidate's owner installs the permission only once the other
//! side's candidate has crossed the signaling server to it, so the first checks often
//! lose that race (netsim, cone-cone-100ms: 8 of 20 calls ~185 ms slower, captures in
//! docs/netsim.md). The server that relays the answer knows both parties' addresses as
//! it sees them (their signaling sockets) and can tell its own TURN cores: for a short
//! while, datagrams from caller's address may reach the callee's allocations, and the
//! other way round. A grant installs an ordinary permission (same lifetime, same cap,
//! same peer filter) the first time a datagram from that address meets one of the
//! user's allocations; it is never broader than what the client itself would ask for
//! a moment later, once the candidate arrives.
//!
//! Bounded: at most [`MAX_GRANTS_PER_USER`] per user (the newest replace the
//! soonest to expire) and `cap` in all (`Config::max_peer_grants`, which the server sets
//! to `--max-allocations`), expired ones swept; refusals are counted.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

/// Most grants one user holds at once: a user is in a handful of calls at most.
pub const MAX_GRANTS_PER_USER: usize = 8;

/// Let datagrams from `ip` into `user`'s allocations until `until`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerGrant {
    /// The user part of the allocations' REST usernames (`<expiry>:<user>`), or the
    /// whole username for static users.
    pub user: Box<str>,
    /// The address vouched for.
    pub ip: IpAddr,
    /// When the grant lapses (a permission it installed lives on its own lifetime).
    pub until: Instant,
}

/// Why a grant was not stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GrantRefused {
    /// As many grants as the cap are live already.
    #[error("peer grant table full")]
    Full,
    /// Already lapsed when it arrived.
    #[error("peer grant already expired")]
    Expired,
}

/// The live grants of one core, by user.
#[derive(Debug, Default)]
pub(crate) struct Grants {
    by_user: HashMap<Box<str>, Vec<(IpAddr, Instant)>>,
    len: usize,
}

impl Grants {
    /// Store `g`, refreshing an existing grant of the same address. At `cap` grants,
    /// expired ones are swept first.
    pub(crate) fn insert(&mut self, g: PeerGrant, cap: usize, now: Instant) -> Result<(), GrantRefused> {
        if g.until <= now {
            return Err(GrantRefused::Expired);
        }
        if let Some(v) = self.by_user.get_mut(&g.user) {
            if let Some(slot) = v.iter_mut().find(|(ip, _)| *ip == g.ip) {
                slot.1 = slot.1.max(g.until);
                return Ok(());
            }
            if v.len() >= MAX_GRANTS_PER_USER {
                // Replace the one that lapses first: the newest call matters most.
                let (i, _) = v
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, (_, until))| *until)
                    .expect("a full list is not empty");
                v[i] = (g.ip, g.until);
                return Ok(());
            }
        }
        if self.len >= cap {
            self.sweep(now);
            if self.len >= cap {
                return Err(GrantRefused::Full);
            }
        }
        self.by_user.entry(g.user).or_default().push((g.ip, g.until));
        self.len += 1;
        Ok(())
    }

    /// Whether `ip` is granted into `user`'s allocations at `now`.
    pub(crate) fn allows(&self, user: &str, ip: IpAddr, now: Instant) -> bool {
        self.by_user
            .get(user)
            .is_some_and(|v| v.iter().any(|(g, until)| *g == ip && *until > now))
    }

    /// Forget lapsed grants.
    pub(crate) fn sweep(&mut self, now: Instant) {
        let mut removed = 0;
        self.by_user.retain(|_, v| {
            let before = v.len();
            v.retain(|(_, until)| *until > now);
            removed += before - v.len();
            !v.is_empty()
        });
        self.len -= removed;
    }

    /// Live and lapsed-but-unswept grants.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn g(user: &str, ip: [u8; 4], until: Instant) -> PeerGrant {
        PeerGrant {
            user: user.into(),
            ip: IpAddr::from(ip),
            until,
        }
    }

    #[test]
    fn a_grant_allows_its_address_for_its_user_until_it_lapses() {
        let now = Instant::now();
        let mut t = Grants::default();
        t.insert(g("bob", [192, 0, 2, 1], now + Duration::from_secs(30)), 10, now)
            .unwrap();
        assert!(t.allows("bob", IpAddr::from([192, 0, 2, 1]), now));
        assert!(!t.allows("bob", IpAddr::from([192, 0, 2, 2]), now), "another address");
        assert!(!t.allows("alice", IpAddr::from([192, 0, 2, 1]), now), "another user");
        assert!(
            !t.allows("bob", IpAddr::from([192, 0, 2, 1]), now + Duration::from_secs(30)),
            "lapsed"
        );
    }

    #[test]
    fn the_table_is_bounded_per_user_and_in_all() {
        let now = Instant::now();
        let mut t = Grants::default();
        for i in 0..20u8 {
            t.insert(
                g("bob", [192, 0, 2, i], now + Duration::from_secs(10 + u64::from(i))),
                100,
                now,
            )
            .unwrap();
        }
        assert_eq!(t.len(), MAX_GRANTS_PER_USER);
        // The newest replaced the soonest to lapse.
        assert!(t.allows("bob", IpAddr::from([192, 0, 2, 19]), now));
        assert!(!t.allows("bob", IpAddr::from([192, 0, 2, 0]), now));
        t.insert(g("carol", [198, 51, 100, 1], now + Duration::from_secs(5)), 9, now)
            .unwrap();
        assert_eq!(
            t.insert(g("dave", [198, 51, 100, 2], now + Duration::from_secs(5)), 9, now),
            Err(GrantRefused::Full)
        );
        // Once carol's lapses, the sweep at the cap makes room.
        let later = now + Duration::from_secs(6);
        t.insert(g("dave", [198, 51, 100, 2], later + Duration::from_secs(5)), 9, later)
            .unwrap();
        assert!(t.allows("dave", IpAddr::from([198, 51, 100, 2]), later));
        assert_eq!(t.len(), 9);
        assert_eq!(
            t.insert(g("erin", [198, 51, 100, 3], now), 9, now),
            Err(GrantRefused::Expired)
        );
    }
}
