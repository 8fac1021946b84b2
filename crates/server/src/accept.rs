//! The HTTP/WebSocket listener's accept loop, with the bounds a public listener needs.
//!
//! axum's own `serve` builds hyper without a timer, so hyper's header-read timeout
//! silently never applies, and it accepts every connection it can: a client that
//! trickles a partial header, or simply opens sockets and sends nothing, holds them
//! for ever, and enough of them exhaust the process's descriptors (then `/healthz`
//! fails and TURN allocations get 508). Here every connection:
//! - takes a [`ConnSlot`] first, under a global cap and a per-IP cap (IPv6 grouped by
//!   /64, which one subscriber usually holds whole); the slot is released when the
//!   connection ends, or, for a WebSocket, when the socket's task ends;
//! - is served by hyper with a timer: a request's headers must arrive within the
//!   header timeout, and the same deadline closes an idle keep-alive connection (hyper
//!   starts it whenever it waits for a request head).
//!
//! When descriptors run out, `accept` fails with EMFILE/ENFILE while the connection
//! waits in the backlog, so the listener stays readable: the loop backs off (doubling
//! up to a second) instead of spinning, and [`ConnLimits::health`] reports it for a
//! while, so `/healthz` says `degraded`. Established sessions and allocations are not
//! touched.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tower::ServiceExt;

/// The listener's bounds.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Connections open at once.
    pub max_connections: usize,
    /// Connections open at once from one address (IPv6: one /64); 0 for no cap.
    pub max_per_ip: usize,
    /// Deadline for a request's headers, and for an idle keep-alive connection.
    pub header_timeout: Duration,
}

/// Why a connection was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// `--max-connections` reached.
    Total,
    /// `--max-connections-per-ip` reached for this address.
    PerIp,
}

impl Refused {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::Total => "max_connections",
            Refused::PerIp => "max_connections_per_ip",
        }
    }
}

/// How long `/healthz` keeps saying `degraded` after descriptors last ran out.
const DEGRADED_FOR: Duration = Duration::from_secs(30);
/// Longest back-off between accepts while descriptors are exhausted.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
const FIRST_BACKOFF: Duration = Duration::from_millis(20);

/// Counters of the listener.
#[derive(Debug, Default)]
pub struct ListenerMetrics {
    /// Connections open now (HTTP and WebSocket).
    pub open: AtomicI64,
    /// Connections accepted.
    pub accepted: AtomicU64,
    /// Refused by [`Refused::Total`].
    pub refused_total: AtomicU64,
    /// Refused by [`Refused::PerIp`].
    pub refused_per_ip: AtomicU64,
    /// `accept` failed: descriptors exhausted.
    pub fd_exhausted: AtomicU64,
    /// `accept` failed otherwise.
    pub accept_errors: AtomicU64,
    /// Connections closed because the request head did not arrive in time (or the
    /// keep-alive connection stayed idle), or (`--http-tls`) its TLS handshake.
    pub header_timeouts: AtomicU64,
    /// `--http-tls`: handshakes that failed (not TLS, no common version, bad records).
    pub tls_failures: AtomicU64,
}

impl ListenerMetrics {
    /// Prometheus text.
    pub fn render(&self, out: &mut String, max: usize) {
        use std::fmt::Write;
        let _ = writeln!(
            out,
            "# HELP firstcall_http_connections Open HTTP and WebSocket connections.\n# TYPE firstcall_http_connections gauge\nfirstcall_http_connections {}",
            self.open.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP firstcall_http_max_connections The cap on open HTTP and WebSocket connections.\n# TYPE firstcall_http_max_connections gauge\nfirstcall_http_max_connections {max}"
        );
        let _ = writeln!(
            out,
            "# HELP firstcall_http_connections_accepted_total Connections accepted.\n# TYPE firstcall_http_connections_accepted_total counter\nfirstcall_http_connections_accepted_total {}",
            self.accepted.load(Relaxed)
        );
        let name = "firstcall_http_connections_refused_total";
        let _ = writeln!(
            out,
            "# HELP {name} Connections closed at once because a cap was reached.\n# TYPE {name} counter"
        );
        for (r, n) in [
            (Refused::Total, &self.refused_total),
            (Refused::PerIp, &self.refused_per_ip),
        ] {
            let _ = writeln!(out, "{name}{{reason=\"{}\"}} {}", r.as_str(), n.load(Relaxed));
        }
        let name = "firstcall_http_accept_errors_total";
        let _ = writeln!(out, "# HELP {name} Failed accepts.\n# TYPE {name} counter");
        let _ = writeln!(
            out,
            "{name}{{reason=\"fd_exhausted\"}} {}",
            self.fd_exhausted.load(Relaxed)
        );
        let _ = writeln!(out, "{name}{{reason=\"other\"}} {}", self.accept_errors.load(Relaxed));
        let _ = writeln!(
            out,
            "# HELP firstcall_http_header_timeouts_total Connections closed for sending no complete request head (or TLS handshake) in time, or idling on keep-alive.\n# TYPE firstcall_http_header_timeouts_total counter\nfirstcall_http_header_timeouts_total {}",
            self.header_timeouts.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP firstcall_http_tls_failures_total Failed TLS handshakes on the HTTP listener (--http-tls).\n# TYPE firstcall_http_tls_failures_total counter\nfirstcall_http_tls_failures_total {}",
            self.tls_failures.load(Relaxed)
        );
    }
}

/// Connection accounting shared by the accept loop, the WebSocket tasks and `/healthz`.
#[derive(Debug)]
pub struct ConnLimits {
    limits: Limits,
    by_ip: Mutex<Counts>,
    /// When descriptors last ran out.
    exhausted_at: Mutex<Option<Instant>>,
    /// Counters.
    pub metrics: ListenerMetrics,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    by_ip: HashMap<IpAddr, usize>,
}

/// One connection's place under the caps; released on drop (clones share it).
#[derive(Clone, Debug)]
pub struct ConnSlot {
    /// Only dropped: the last clone's drop releases the slot.
    _held: Arc<SlotInner>,
}

#[derive(Debug)]
struct SlotInner {
    limits: Arc<ConnLimits>,
    key: IpAddr,
}

impl Drop for SlotInner {
    fn drop(&mut self) {
        self.limits.release(self.key);
    }
}

/// The address a per-IP cap counts under: IPv4 (and IPv4-mapped IPv6) as is, other
/// IPv6 by its /64.
pub fn ip_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// What `/healthz` reports about the listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// Open connections.
    pub open: usize,
    /// The cap.
    pub max: usize,
    /// Why the listener is degraded, if it is.
    pub degraded: Vec<String>,
}

impl ConnLimits {
    /// Accounting under `limits`.
    pub fn new(limits: Limits) -> Arc<ConnLimits> {
        Arc::new(ConnLimits {
            limits,
            by_ip: Mutex::new(Counts::default()),
            exhausted_at: Mutex::new(None),
            metrics: ListenerMetrics::default(),
        })
    }

    /// The bounds in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        // Only counter updates run under it; a poisoned lock still holds good counts.
        self.by_ip.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A slot for a connection from `ip`, or why not (counted).
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Result<ConnSlot, Refused> {
        let key = ip_key(ip);
        let mut c = self.counts();
        if c.total >= self.limits.max_connections {
            self.metrics.refused_total.fetch_add(1, Relaxed);
            return Err(Refused::Total);
        }
        let n = c.by_ip.entry(key).or_insert(0);
        if self.limits.max_per_ip != 0 && *n >= self.limits.max_per_ip {
            if *n == 0 {
                c.by_ip.remove(&key);
            }
            self.metrics.refused_per_ip.fetch_add(1, Relaxed);
            return Err(Refused::PerIp);
        }
        *n += 1;
        c.total += 1;
        self.metrics.open.fetch_add(1, Relaxed);
        self.metrics.accepted.fetch_add(1, Relaxed);
        Ok(ConnSlot {
            _held: Arc::new(SlotInner {
                limits: self.clone(),
                key,
            }),
        })
    }

    fn release(&self, key: IpAddr) {
        let mut c = self.counts();
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.by_ip.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                c.by_ip.remove(&key);
            }
        }
        self.metrics.open.fetch_sub(1, Relaxed);
    }

    /// Connections open now from `ip`'s group.
    pub fn open_from(&self, ip: IpAddr) -> usize {
        self.counts().by_ip.get(&ip_key(ip)).copied().unwrap_or(0)
    }

    fn exhausted(&self, now: Instant) {
        *self.exhausted_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(now);
        self.metrics.fd_exhausted.fetch_add(1, Relaxed);
    }

    /// The listener's state at `now`.
    pub fn health(&self, now: Instant) -> Health {
        let open = self.counts().total;
        let max = self.limits.max_connections;
        let mut degraded = Vec::new();
        if let Some(at) = *self.exhausted_at.lock().unwrap_or_else(|e| e.into_inner()) {
            let ago = now.saturating_duration_since(at);
            if ago < DEGRADED_FOR {
                degraded.push(format!(
                    "file descriptors ran out {} s ago: new connections were refused by the kernel; raise the open-files limit",
                    ago.as_secs()
                ));
            }
        }
        // 90% of the cap, rounded up, and never the whole of a tiny cap.
        if open * 10 >= max * 9 {
            degraded.push(format!("{open} of {max} connections open (--max-connections)"));
        }
        Health { open, max, degraded }
    }
}

fn is_fd_exhaustion(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Accept and serve `app` on `listener` until the listener fails for good (it does not:
/// every accept error is waited out).
/// With `tls`, every connection first completes a TLS handshake (https://, wss://), within
/// the header timeout: a client that stalls the handshake holds its slot no longer than one
/// that stalls its request head.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    limits: Arc<ConnLimits>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> std::io::Result<()> {
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.limits.header_timeout)
        .keep_alive(true);
    let builder = Arc::new(builder);
    let tls = tls.map(Arc::new);
    let mut backoff = FIRST_BACKOFF;
    let mut warned_at: Option<Instant> = None;
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) if is_fd_exhaustion(&e) => {
                let now = Instant::now();
                limits.exhausted(now);
                if warned_at.is_none_or(|w| now.duration_since(w) >= Duration::from_secs(10)) {
                    warned_at = Some(now);
                    tracing::warn!(error = %e, open = limits.counts().total, "out of file descriptors: not accepting for now (existing sessions and allocations carry on); raise the open-files limit or lower --max-connections");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
            Err(e) => {
                // ECONNABORTED and the like: the next accept is fine.
                limits.metrics.accept_errors.fetch_add(1, Relaxed);
                tracing::debug!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
        };
        backoff = FIRST_BACKOFF;
        let slot = match limits.try_acquire(peer.ip()) {
            Ok(s) => s,
            Err(why) => {
                tracing::debug!(%peer, reason = why.as_str(), "connection refused: cap reached");
                drop(tcp);
                continue;
            }
        };
        // Signaling frames are small and latency-bound: without TCP_NODELAY, Nagle plus
        // the peer's delayed ACK holds a frame back up to 40 ms whenever one is in flight.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
        let app = app.clone();
        let builder = builder.clone();
        let limits = limits.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let conn_slot = slot.clone();
            let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                // The WebSocket handler takes the slot over for the socket's life.
                req.extensions_mut().insert(conn_slot.clone());
                req.extensions_mut().insert(axum::extract::ConnectInfo(peer));
                let app = app.clone();
                async move { Ok::<_, Infallible>(app.oneshot(req).await.unwrap_or_else(|e| match e {})) }
            });
            let served = match &tls {
                None => builder.serve_connection_with_upgrades(TokioIo::new(tcp), svc).await,
                Some(acceptor) => {
                    match tokio::time::timeout(limits.limits.header_timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => builder.serve_connection_with_upgrades(TokioIo::new(stream), svc).await,
                        Ok(Err(e)) => {
                            limits.metrics.tls_failures.fetch_add(1, Relaxed);
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            limits.metrics.header_timeouts.fetch_add(1, Relaxed);
                            tracing::debug!(%peer, "no TLS handshake in time: closed");
                            return;
                        }
                    }
                }
            };
            if let Err(e) = served {
                let timeout = e.downcast_ref::<hyper::Error>().is_some_and(|h| h.is_timeout());
                if timeout {
                    limits.metrics.header_timeouts.fetch_add(1, Relaxed);
                    tracing::debug!(%peer, "no complete request head in time: closed");
                } else {
                    tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
                }
            }
            drop(slot);
        });
    }
}

/// The process's open-files limit: the soft limit raised to the hard one. Returns
/// (before, after).
pub fn raise_nofile_limit() -> std::io::Result<(u64, u64)> {
    let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE)?;
    if soft < hard {
        rlimit::setrlimit(rlimit::Resource::NOFILE, hard, hard)?;
    }
    let (after, _) = rlimit::getrlimit(rlimit::Resource::NOFILE)?;
    Ok((soft, after))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max: usize, per_ip: usize) -> Arc<ConnLimits> {
        ConnLimits::new(Limits {
            max_connections: max,
            max_per_ip: per_ip,
            header_timeout: Duration::from_secs(10),
        })
    }

    #[test]
    fn caps_count_and_release() {
        let l = limits(3, 2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let s1 = l.try_acquire(a).unwrap();
        let s2 = l.try_acquire(a).unwrap();
        assert_eq!(l.try_acquire(a).unwrap_err(), Refused::PerIp);
        let s3 = l.try_acquire(b).unwrap();
        assert_eq!(l.try_acquire(b).unwrap_err(), Refused::Total);
        assert_eq!(l.metrics.refused_per_ip.load(Relaxed), 1);
        assert_eq!(l.metrics.refused_total.load(Relaxed), 1);
        // A clone shares the slot: released once, when the last goes.
        let s1b = s1.clone();
        drop(s1);
        assert_eq!(l.open_from(a), 2);
        drop(s1b);
        assert_eq!(l.open_from(a), 1);
        assert!(
            l.try_acquire(b).is_ok(),
            "a freed slot is usable again (and dropped at once)"
        );
        drop((s2, s3));
        assert_eq!(l.metrics.open.load(Relaxed), 0);
        assert_eq!(l.counts().total, 0);
        assert!(
            l.counts().by_ip.is_empty(),
            "no entry kept for addresses with nothing open"
        );
    }

    #[test]
    fn per_ip_zero_is_no_cap_and_ipv6_counts_by_64() {
        let l = limits(100, 0);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let slots: Vec<_> = (0..50).map(|_| l.try_acquire(a).unwrap()).collect();
        assert_eq!(l.open_from(a), 50);
        drop(slots);
        let l = limits(100, 2);
        let x: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let y: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let z: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        let _a = l.try_acquire(x).unwrap();
        let _b = l.try_acquire(y).unwrap();
        assert_eq!(l.try_acquire(y).unwrap_err(), Refused::PerIp, "same /64");
        assert!(l.try_acquire(z).is_ok(), "another /64");
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(ip_key(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn health_degrades_near_the_cap_and_after_exhaustion() {
        let l = limits(10, 0);
        let t0 = Instant::now();
        assert!(l.health(t0).degraded.is_empty());
        let slots: Vec<_> = (0..9)
            .map(|_| l.try_acquire("192.0.2.1".parse().unwrap()).unwrap())
            .collect();
        let h = l.health(t0);
        assert_eq!((h.open, h.max), (9, 10));
        assert_eq!(h.degraded.len(), 1, "{h:?}");
        drop(slots);
        l.exhausted(t0);
        assert!(l.health(t0 + Duration::from_secs(29)).degraded[0].contains("file descriptors"));
        assert!(l.health(t0 + DEGRADED_FOR).degraded.is_empty());
    }
}
