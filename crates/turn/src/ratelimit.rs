//! Token buckets: the error-response limit per source address and the bandwidth quotas.
//!
//! Sans-IO like the rest of the crate: every call takes `now`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A rate: `per_sec` tokens a second, at most `burst` saved up. `per_sec == 0` is no limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// Tokens added per second.
    pub per_sec: u64,
    /// Most tokens held.
    pub burst: u64,
}

impl Rate {
    /// No limit.
    pub const UNLIMITED: Rate = Rate { per_sec: 0, burst: 0 };

    /// Whether this rate limits anything.
    pub fn is_limited(&self) -> bool {
        self.per_sec > 0
    }
}

/// One token bucket (its [`Rate`] is kept by the owner, so a table of buckets stays small).
#[derive(Clone, Copy, Debug)]
pub struct TokenBucket {
    tokens: u64,
    last: Instant,
}

const NANOS: u128 = 1_000_000_000;

impl TokenBucket {
    /// A full bucket.
    pub fn full(rate: Rate, now: Instant) -> Self {
        TokenBucket {
            tokens: rate.burst,
            last: now,
        }
    }

    fn refill(&mut self, rate: Rate, now: Instant) {
        if now <= self.last || self.tokens >= rate.burst {
            self.last = self.last.max(now);
            return;
        }
        // u64 arithmetic on the per-datagram path (a division by a constant is a multiply):
        // whole seconds, then the nanoseconds (below 1e9, so no overflow for any rate under
        // 1.8e10 per second).
        let elapsed = now - self.last;
        let add = u128::from(elapsed.as_secs()) * u128::from(rate.per_sec)
            + u128::from(u64::from(elapsed.subsec_nanos()).saturating_mul(rate.per_sec) / NANOS as u64);
        if add == 0 {
            // Less than one token's worth: keep `last`, so the fraction is not lost.
            return;
        }
        let tokens = u128::from(self.tokens) + add;
        if tokens >= u128::from(rate.burst) {
            self.tokens = rate.burst;
            self.last = now;
        } else {
            self.tokens = tokens as u64;
            // Advance by exactly the time those whole tokens took.
            self.last += Duration::from_nanos((add * NANOS / u128::from(rate.per_sec)) as u64);
        }
    }

    /// Take `n` tokens if the bucket holds them. An unlimited rate always allows.
    pub fn take(&mut self, rate: Rate, n: u64, now: Instant) -> bool {
        if !rate.is_limited() {
            return true;
        }
        self.refill(rate, now);
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }

    /// Give back `n` tokens taken for something that was then refused elsewhere.
    pub fn refund(&mut self, rate: Rate, n: u64) {
        if rate.is_limited() {
            self.tokens = self.tokens.saturating_add(n).min(rate.burst);
        }
    }

    /// Whether at least one token is there (nothing taken).
    pub fn has_token(&mut self, rate: Rate, now: Instant) -> bool {
        if !rate.is_limited() {
            return true;
        }
        self.refill(rate, now);
        self.tokens > 0
    }

    /// Whether the bucket is full at `now` (it then says nothing a new bucket would not).
    fn is_full(&mut self, rate: Rate, now: Instant) -> bool {
        self.refill(rate, now);
        self.tokens >= rate.burst
    }
}

/// What [`ErrorLimiter::allow`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Within the address's budget (a token was taken).
    Allow,
    /// The address spent its budget.
    Limited,
}

/// The source addresses an error limiter tracks: an IPv4 address, or an IPv6 /64 (one
/// host usually holds a whole /64, so limiting single IPv6 addresses limits nothing).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct SourceKey(u128);

impl SourceKey {
    fn of(ip: IpAddr) -> SourceKey {
        match crate::filter::normalise(ip) {
            IpAddr::V4(v4) => SourceKey(u128::from(u32::from(v4))),
            IpAddr::V6(v6) => SourceKey((u128::from(v6) & !((1u128 << 64) - 1)) | 1),
        }
    }
}

/// Error responses per source address: a token bucket each, in a table of bounded size.
///
/// Shared by every core of a server (a client's packets may meet any core). When the
/// table is full, idle entries (full buckets) are dropped, at most once a second; if it
/// is still full, every address without an entry shares one overflow bucket of the same
/// rate, so a flood from many (spoofed) addresses is bounded as a whole and never grows
/// the table.
#[derive(Debug)]
pub struct ErrorLimiter {
    rate: Rate,
    cap: usize,
    state: Mutex<LimiterState>,
}

#[derive(Debug)]
struct LimiterState {
    table: HashMap<SourceKey, TokenBucket>,
    overflow: Option<TokenBucket>,
    next_purge: Option<Instant>,
}

/// How often a full table is swept for idle entries.
const PURGE_INTERVAL: Duration = Duration::from_secs(1);

/// What a check of the limiter found, for metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checked {
    /// The decision.
    pub verdict: Verdict,
    /// The address had no entry and the table was full: it was judged by the shared
    /// overflow bucket.
    pub table_full: bool,
}

impl ErrorLimiter {
    /// `rate` per source address, at most `cap` addresses tracked. A zero rate disables it.
    pub fn new(rate: Rate, cap: usize) -> Self {
        ErrorLimiter {
            rate,
            cap: cap.max(1),
            state: Mutex::new(LimiterState {
                table: HashMap::new(),
                overflow: None,
                next_purge: None,
            }),
        }
    }

    /// No limit.
    pub fn disabled() -> Self {
        Self::new(Rate::UNLIMITED, 1)
    }

    /// Take one token for an error response to `ip`.
    pub fn allow(&self, ip: IpAddr, now: Instant) -> Checked {
        self.with_bucket(ip, now, |b, rate| b.take(rate, 1, now))
    }

    /// Whether `ip` has a token left (nothing taken): a limited address's requests are
    /// not even examined.
    pub fn has_budget(&self, ip: IpAddr, now: Instant) -> Checked {
        self.with_bucket(ip, now, |b, rate| b.has_token(rate, now))
    }

    /// Addresses tracked now.
    pub fn tracked(&self) -> usize {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).table.len()
    }

    fn with_bucket(&self, ip: IpAddr, now: Instant, f: impl FnOnce(&mut TokenBucket, Rate) -> bool) -> Checked {
        let verdict = |ok: bool| if ok { Verdict::Allow } else { Verdict::Limited };
        if !self.rate.is_limited() {
            return Checked {
                verdict: Verdict::Allow,
                table_full: false,
            };
        }
        let rate = self.rate;
        let key = SourceKey::of(ip);
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let s = &mut *s;
        if let Some(b) = s.table.get_mut(&key) {
            return Checked {
                verdict: verdict(f(b, rate)),
                table_full: false,
            };
        }
        if s.table.len() >= self.cap && s.next_purge.is_none_or(|t| t <= now) {
            s.table.retain(|_, b| !b.is_full(rate, now));
            s.next_purge = Some(now + PURGE_INTERVAL);
        }
        if s.table.len() < self.cap {
            let b = s.table.entry(key).or_insert_with(|| TokenBucket::full(rate, now));
            return Checked {
                verdict: verdict(f(b, rate)),
                table_full: false,
            };
        }
        let b = s.overflow.get_or_insert_with(|| TokenBucket::full(rate, now));
        Checked {
            verdict: verdict(f(b, rate)),
            table_full: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_gives_its_burst_then_its_rate_without_losing_fractions() {
        let t0 = Instant::now();
        let rate = Rate { per_sec: 10, burst: 5 };
        let mut b = TokenBucket::full(rate, t0);
        assert_eq!((0..8).filter(|_| b.take(rate, 1, t0)).count(), 5);
        // 10/s: one token every 100 ms, also when asked every 30 ms.
        let mut got = 0;
        for i in 1..=100u32 {
            if b.take(rate, 1, t0 + Duration::from_millis(30) * i) {
                got += 1;
            }
        }
        assert_eq!(got, 30, "3 s at 10/s");
        let mut u = TokenBucket::full(Rate::UNLIMITED, t0);
        assert!(u.take(Rate::UNLIMITED, u64::MAX, t0));
    }

    #[test]
    fn limiter_is_per_address_and_ipv6_per_64() {
        let t0 = Instant::now();
        let l = ErrorLimiter::new(Rate { per_sec: 1, burst: 2 }, 100);
        let a: IpAddr = "198.51.100.1".parse().unwrap();
        assert_eq!(l.allow(a, t0).verdict, Verdict::Allow);
        assert_eq!(l.allow(a, t0).verdict, Verdict::Allow);
        assert_eq!(l.allow(a, t0).verdict, Verdict::Limited);
        assert_eq!(l.has_budget(a, t0).verdict, Verdict::Limited);
        assert_eq!(
            l.allow("::ffff:198.51.100.1".parse().unwrap(), t0).verdict,
            Verdict::Limited,
            "the mapped form is the same address"
        );
        assert_eq!(l.allow("198.51.100.2".parse().unwrap(), t0).verdict, Verdict::Allow);
        assert_eq!(l.has_budget(a, t0 + Duration::from_secs(1)).verdict, Verdict::Allow);
        let v6: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        l.allow(v6, t0);
        l.allow(v6, t0);
        assert_eq!(
            l.allow("2001:db8:1:2::ffff".parse().unwrap(), t0).verdict,
            Verdict::Limited
        );
        assert_eq!(l.allow("2001:db8:1:3::1".parse().unwrap(), t0).verdict, Verdict::Allow);
    }

    #[test]
    fn a_full_table_purges_idle_entries_then_shares_one_bucket() {
        let t0 = Instant::now();
        let l = ErrorLimiter::new(Rate { per_sec: 1, burst: 1 }, 2);
        let ip = |i: u8| IpAddr::from([198, 51, 100, i]);
        assert!(!l.allow(ip(1), t0).table_full);
        assert!(!l.allow(ip(2), t0).table_full);
        // Full of busy entries: newcomers share the overflow bucket (one token).
        let c = l.allow(ip(3), t0);
        assert_eq!((c.verdict, c.table_full), (Verdict::Allow, true));
        assert_eq!(l.allow(ip(4), t0).verdict, Verdict::Limited);
        assert_eq!(l.tracked(), 2, "the table never grows past its cap");
        // A second later both entries are idle (full again) and make room.
        let c = l.allow(ip(5), t0 + Duration::from_secs(1));
        assert_eq!((c.verdict, c.table_full), (Verdict::Allow, false));
        assert_eq!(l.tracked(), 1);
    }

    #[test]
    fn disabled_allows_everything() {
        let l = ErrorLimiter::disabled();
        let t0 = Instant::now();
        for _ in 0..1000 {
            assert_eq!(l.allow("198.51.100.1".parse().unwrap(), t0).verdict, Verdict::Allow);
        }
        assert_eq!(l.tracked(), 0);
    }
}
