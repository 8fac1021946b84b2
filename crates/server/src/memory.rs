//! Giving freed heap back to the system.
//!
//! glibc's malloc keeps what a burst freed (60 KB signaling frames by the thousand, a flood's
//! sockets and buffers) in its arenas, and returns it only from the top of the heap. A
//! server that weathered a flood then holds its peak RSS for ever, though nothing is in
//! use: in the release soak, RSS stayed at its high-water mark (+25% over the baseline)
//! once every flood had ended and every session had expired. `malloc_trim(0)` releases the
//! free pages of every arena (glibc 2.8 and later). It walks the free lists, so it runs
//! once every [`TRIM_EVERY`], not after every burst.

use std::time::Duration;

/// How often free heap pages are handed back.
pub const TRIM_EVERY: Duration = Duration::from_secs(30);

/// Hand free heap pages back to the system now; true if some were.
pub fn trim() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim takes no pointer and only walks and trims glibc's own
        // arenas, under their locks; it is safe to call from any thread at any time.
        unsafe { libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Trim every [`TRIM_EVERY`], on a blocking thread (a trim of a large heap can take a few
/// milliseconds, which must not stall a runtime worker).
pub fn spawn_trimmer() {
    tokio::spawn(async {
        let mut tick = tokio::time::interval(TRIM_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let _ = tokio::task::spawn_blocking(trim).await;
        }
    });
}
