//! What the hub remembers for a while after the fact: ended call ids (so a repeated
//! invite stays a no-op) and the last invite per user pair (first-attempt accounting).
//!
//! Both were maps swept by age only, so their size was whatever clients made in the
//! window: a 10-minute soak of ordinary calls grew the server by ~110 bytes per call
//! (18.6 -> 35.6 MiB after 156,000 calls), and an attacker inviting at its rate limit from
//! many sessions could grow them by hundreds of MiB. [`Recent`] keeps an entry for at most
//! its window *and* at most `cap` entries, forgetting the oldest first; forgetting early
//! only loses the no-op for a very late repeat, or one retry's accounting.

use std::borrow::Borrow;
use std::collections::VecDeque;
use std::hash::Hash;
use std::time::{Duration, Instant};

type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// Entries kept for `window` after their last insert, `cap` at most.
#[derive(Debug)]
pub struct Recent<K, V> {
    map: HashMap<K, (Instant, V)>,
    /// Inserts, oldest first; an entry whose time no longer matches the map's is stale
    /// (the key was inserted again later) and is skipped.
    order: VecDeque<(Instant, K)>,
    window: Duration,
    cap: usize,
}

impl<K: Hash + Eq + Clone, V> Recent<K, V> {
    /// Empty, keeping entries `window` long and `cap` at most (at least 1).
    pub fn new(window: Duration, cap: usize) -> Self {
        Recent {
            map: HashMap::default(),
            order: VecDeque::new(),
            window,
            cap: cap.max(1),
        }
    }

    /// Remember `k` at `now`; true if an older entry had to be forgotten early (the cap).
    /// `now` never goes back between calls.
    pub fn insert(&mut self, k: K, v: V, now: Instant) -> bool {
        let mut evicted = false;
        if !self.map.contains_key(&k) && self.map.len() >= self.cap {
            evicted = self.evict_oldest();
        }
        self.map.insert(k.clone(), (now, v));
        self.order.push_back((now, k));
        // Re-inserted keys leave stale entries behind: drop them once they outnumber
        // the live ones, so that the queue stays within twice the cap.
        if self.order.len() > 2 * self.cap {
            let map = &self.map;
            self.order.retain(|(at, k)| map.get(k).is_some_and(|(t, _)| t == at));
        }
        evicted
    }

    fn evict_oldest(&mut self) -> bool {
        while let Some((at, k)) = self.order.pop_front() {
            if self.map.get(&k).is_some_and(|(t, _)| *t == at) {
                self.map.remove(&k);
                return true;
            }
        }
        false
    }

    /// Forget what is older than the window.
    pub fn sweep(&mut self, now: Instant) {
        while let Some((at, _)) = self.order.front() {
            if *at + self.window > now {
                break;
            }
            let (at, k) = self.order.pop_front().expect("front exists");
            if self.map.get(&k).is_some_and(|(t, _)| *t == at) {
                self.map.remove(&k);
            }
        }
    }

    /// Whether `k` is remembered.
    pub fn contains_key<Q>(&self, k: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.contains_key(k)
    }

    /// When `k` was last inserted, and its value.
    pub fn get<Q>(&self, k: &Q) -> Option<&(Instant, V)>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.get(k)
    }

    /// `k`'s value, to change in place (its time stays).
    pub fn get_mut<Q>(&mut self, k: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.get_mut(k).map(|(_, v)| v)
    }

    /// Entries remembered.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Nothing remembered.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Queue entries (live and stale): tests check it stays within twice the cap.
    #[doc(hidden)]
    pub fn queued(&self) -> usize {
        self.order.len()
    }
}

/// Written for a hub snapshot: entries sorted by key (two replicas write the same bytes),
/// times as nanoseconds from the snapshot's base (`hub::snapshot`).
impl<K: Hash + Eq + Clone + Ord + serde::Serialize, V: serde::Serialize> serde::Serialize for Recent<K, V> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use crate::hub::snapshot::{offset, RecentState};
        use serde::ser::Error;
        let mut entries = Vec::with_capacity(self.map.len());
        for (k, (t, v)) in &self.map {
            entries.push((k, offset(*t).map_err(S::Error::custom)?, v));
        }
        entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let mut order = VecDeque::with_capacity(self.order.len());
        for (t, k) in &self.order {
            order.push_back((offset(*t).map_err(S::Error::custom)?, k));
        }
        RecentState {
            window_ns: self.window.as_nanos() as u64,
            cap: self.cap,
            entries,
            order,
        }
        .serialize(s)
    }
}

impl<'de, K: Hash + Eq + Clone + serde::Deserialize<'de>, V: serde::Deserialize<'de>> serde::Deserialize<'de>
    for Recent<K, V>
{
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use crate::hub::snapshot::{instant, RecentState};
        use serde::de::Error;
        let st = RecentState::<K, V>::deserialize(d)?;
        let mut r = Recent::new(Duration::from_nanos(st.window_ns), st.cap);
        for (k, ns, v) in st.entries {
            r.map.insert(k, (instant(ns).map_err(D::Error::custom)?, v));
        }
        for (ns, k) in st.order {
            r.order.push_back((instant(ns).map_err(D::Error::custom)?, k));
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forgets_by_age_and_by_count_oldest_first() {
        let t = Instant::now();
        let s = Duration::from_secs(1);
        let mut r: Recent<String, u32> = Recent::new(Duration::from_secs(10), 3);
        assert!(!r.insert("a".into(), 1, t));
        assert!(!r.insert("b".into(), 2, t + s));
        assert!(!r.insert("c".into(), 3, t + 2 * s));
        // Full: the oldest goes.
        assert!(r.insert("d".into(), 4, t + 3 * s));
        assert!(!r.contains_key("a") && r.contains_key("b") && r.len() == 3);
        // A re-insert refreshes its key without evicting anything.
        assert!(!r.insert("b".into(), 5, t + 4 * s));
        assert_eq!(r.get("b"), Some(&(t + 4 * s, 5)));
        // Now c is the oldest live one (b's first entry is stale).
        assert!(r.insert("e".into(), 6, t + 5 * s));
        assert!(!r.contains_key("c") && r.contains_key("b"));
        // Age: d (t+3) goes at t+13, b (t+4) stays until t+14.
        r.sweep(t + 13 * s);
        assert!(!r.contains_key("d") && r.contains_key("b") && r.contains_key("e"));
        *r.get_mut("b").unwrap() = 9;
        assert_eq!(r.get("b"), Some(&(t + 4 * s, 9)));
        r.sweep(t + 100 * s);
        assert!(r.is_empty());
    }

    #[test]
    fn repeated_keys_do_not_grow_the_queue_past_twice_the_cap() {
        let t = Instant::now();
        let mut r: Recent<u32, ()> = Recent::new(Duration::from_secs(600), 100);
        for i in 0..100_000u32 {
            r.insert(i % 7, (), t + Duration::from_millis(u64::from(i)));
            assert!(r.queued() <= 200, "queue {} at {i}", r.queued());
        }
        assert_eq!(r.len(), 7);
        for i in 0..1000u32 {
            r.insert(1000 + i, (), t + Duration::from_secs(200));
        }
        assert_eq!(r.len(), 100);
        assert!(r.queued() <= 200);
    }
}
