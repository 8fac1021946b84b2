//! The `firstcall serve` process: TURN workers and the HTTP listener.

pub mod accept;
pub mod answer_token;
pub mod cluster;
pub mod config;
pub mod http;
pub mod jwks;
pub mod memory;
pub mod ports;
pub mod reload;
pub mod signal;
pub mod sockopt;
pub mod tcp;
pub mod tokens;
pub mod turn;
pub mod webhook;
pub mod websocket;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use firstcall_turn::auth::{Authenticator, Secret};
use firstcall_turn::filter::{Cidr, PeerFilter};
use firstcall_turn::metrics::TurnMetrics;
use firstcall_turn::ratelimit::Rate;
use firstcall_turn::server::{Config as CoreConfig, Quotas};
use socket2::Type;

use crate::config::ServeConfig;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A listener could not be bound.
    #[error("cannot bind {what} on {addr}: {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// Address.
        addr: SocketAddr,
        /// OS error.
        source: std::io::Error,
    },
    /// A `--allow-peer`/`--deny-peer` value is not a CIDR.
    #[error("bad CIDR {value:?} in {flag}: {message}")]
    BadCidr {
        /// The flag.
        flag: &'static str,
        /// The value.
        value: String,
        /// Why.
        message: String,
    },
    /// The TLS certificate or key could not be loaded.
    #[error("TLS: {0}")]
    Tls(String),
    /// The JWT key could not be loaded.
    #[error(transparent)]
    Token(#[from] tokens::TokenError),
    /// `--jwks-url` is unusable.
    #[error(transparent)]
    Jwks(#[from] jwks::JwksError),
    /// `--redis-url` is unusable, or Redis did not answer.
    #[error(transparent)]
    Cluster(#[from] cluster::ClusterError),
    /// The webhook URL is unusable.
    #[error(transparent)]
    Webhook(#[from] webhook::BadUrl),
    /// A setting or the data dir is unusable.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// `--xdp` could not be set up.
    #[error(transparent)]
    Xdp(#[from] turn::xdp::XdpError),
    /// `--turn-io uring` on a kernel that refuses io_uring or lacks what it needs.
    #[error("--turn-io uring: io_uring unavailable ({0}); use --turn-io epoll")]
    TurnIo(std::io::Error),
    /// Another I/O failure.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// A started server.
pub struct Running {
    /// HTTP listener address.
    pub http: SocketAddr,
    /// TURN UDP/TCP address (`None` with `--no-turn`).
    pub turn: Option<SocketAddr>,
    /// The separate metrics listener, with `--metrics-listen`.
    pub metrics: Option<SocketAddr>,
    /// TURN TLS address.
    pub turn_tls: Option<SocketAddr>,
    http_task: tokio::task::JoinHandle<std::io::Result<()>>,
    state: Arc<http::AppState>,
    drain_timeout: std::time::Duration,
    /// The webhook, to flush its queue before the exit.
    webhook: Option<webhook::Webhook>,
    /// What SIGHUP reloads; its `args` are the flags the process started with.
    pub reloader: reload::Reloader,
}

/// How a drain ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DrainEnd {
    /// Every live call ended.
    CallsEnded,
    /// `--drain-timeout` passed with calls still live.
    Timeout,
    /// A second stop signal.
    Interrupted,
}

impl Running {
    /// Run until the HTTP server stops (it does not, short of an error).
    pub async fn wait(&mut self) -> Result<(), ServeError> {
        match (&mut self.http_task).await {
            Ok(r) => Ok(r?),
            Err(e) => Err(ServeError::Io(std::io::Error::other(e))),
        }
    }

    /// Drain for a restart: `/readyz` answers 503, new sessions are refused with close
    /// code 1012, sessions no live call needs are sent elsewhere with 1012, and live
    /// calls carry on until they end, `--drain-timeout` passes or `interrupt` completes
    /// (a second SIGTERM). Then every socket left is closed with 1012.
    pub async fn drain(&self, interrupt: impl std::future::Future<Output = ()>) -> DrainEnd {
        let started = std::time::Instant::now();
        let signaling = &self.state.signaling;
        self.state.draining.store(true, Ordering::Release);
        signaling.start_drain();
        let calls = signaling.calls_held_here();
        tracing::info!(live_calls = calls, timeout = ?self.drain_timeout, "draining: /readyz says 503, new sessions are refused (1012), live calls carry on");
        let deadline = tokio::time::Instant::now() + self.drain_timeout;
        tokio::pin!(interrupt);
        let end = loop {
            if signaling.calls_held_here() == 0 {
                break DrainEnd::CallsEnded;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break DrainEnd::Timeout,
                _ = &mut interrupt => break DrainEnd::Interrupted,
                _ = tokio::time::sleep(DRAIN_POLL) => {}
            }
        };
        let left = signaling.calls_held_here();
        signaling.close_all();
        // The sockets' tasks write their close frames: give them a moment, bounded.
        let closing = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
        // (Counted to the end of each socket's task, its close frame and linger included:
        // the hub forgets a socket as soon as it is told to close it.)
        while websocket::live_sockets() > 0 && tokio::time::Instant::now() < closing {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        if let Some(link) = signaling.cluster() {
            // The others learn this node's sockets closed (their clients resume there)
            // and need not wait for its heartbeat to expire.
            link.leave().await;
        }
        match end {
            DrainEnd::CallsEnded => tracing::info!(took = ?started.elapsed(), "drained: no live call left"),
            _ => {
                tracing::warn!(took = ?started.elapsed(), live_calls = left, why = ?end, "drain cut short: live calls end with the process")
            }
        }
        end
    }

    /// Wait for the webhook events already accepted to be delivered (or given up), at
    /// most [`WEBHOOK_FLUSH`] or until `interrupt` completes: a `call.cancelled` made by
    /// the drain's last moments still stops the phone ringing. Whether none was left.
    pub async fn flush_webhooks(&self, interrupt: impl std::future::Future<Output = ()>) -> bool {
        let Some(w) = &self.webhook else { return true };
        let queued = w.queued();
        if queued == 0 {
            return true;
        }
        tracing::info!(queued, timeout = ?WEBHOOK_FLUSH, "delivering the queued webhooks before the exit");
        let deadline = tokio::time::Instant::now() + WEBHOOK_FLUSH;
        let flushed = tokio::select! {
            f = w.flush(deadline) => f,
            _ = interrupt => false,
        };
        if flushed {
            tracing::info!("webhooks flushed");
        } else {
            tracing::warn!(left = w.queued(), "webhooks left undelivered at the exit");
        }
        flushed
    }
}

/// How long the exit waits at most for queued webhooks, after the drain.
pub const WEBHOOK_FLUSH: std::time::Duration = std::time::Duration::from_secs(5);

/// How often a drain checks whether the live calls have ended.
const DRAIN_POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// Start and run until the process is stopped.
///
/// SIGTERM or Ctrl-C drains (see [`Running::drain`]), delivers the webhooks still queued
/// (see [`Running::flush_webhooks`]) and then returns `Ok`, so the process exits 0; a
/// second signal during the drain cuts it short, another one the flush.
///
/// SIGHUP reads the configuration again (`args`, with the `--config` file as it is
/// then) and applies new certificates, TURN secrets and JWT keys (see [`reload`]).
pub async fn serve(args: config::ServeArgs, config: ServeConfig) -> Result<(), ServeError> {
    // Before the listeners, so that a signal during the start is ours to handle, not
    // the default's. Until `start` returns no session is served: a signal then stops
    // the process at once (a cluster node may wait up to a minute for its Redis there).
    let mut stop = StopSignals::new()?;
    let mut hup = Hangups::new()?;
    let mut running = tokio::select! {
        r = start(config) => r?,
        _ = stop.next() => {
            tracing::info!("stopped during start-up");
            return Ok(());
        }
    };
    running.reloader.args = args;
    loop {
        tokio::select! {
            r = running.wait() => return r,
            _ = stop.next() => break,
            _ = hup.next() => match running.reloader.reload().await {
                Ok((reloaded, restart)) => {
                    tracing::info!(?reloaded, "SIGHUP: configuration reloaded; sessions and calls untouched");
                    if !restart.is_empty() {
                        tracing::warn!(settings = ?restart, "SIGHUP: these settings changed but apply only after a restart");
                    }
                }
                Err(e) => tracing::error!(error = %e, "SIGHUP: reload refused, the configuration in force is kept"),
            },
        }
    }
    running.drain(stop.next()).await;
    running.flush_webhooks(stop.next()).await;
    tracing::info!("stopped");
    Ok(())
}

/// SIGHUP, as a stream (never on other systems).
struct Hangups {
    #[cfg(unix)]
    hup: tokio::signal::unix::Signal,
}

impl Hangups {
    fn new() -> std::io::Result<Self> {
        #[cfg(unix)]
        return Ok(Hangups {
            hup: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?,
        });
        #[cfg(not(unix))]
        Ok(Hangups {})
    }

    async fn next(&mut self) {
        #[cfg(unix)]
        self.hup.recv().await;
        #[cfg(not(unix))]
        std::future::pending::<()>().await;
    }
}

/// SIGTERM and SIGINT, as a stream.
struct StopSignals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn new() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(StopSignals {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        Ok(StopSignals {})
    }

    async fn next(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.term.recv() => tracing::info!("SIGTERM"),
            _ = self.int.recv() => tracing::info!("SIGINT"),
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn parse_cidrs(values: &[String], flag: &'static str) -> Result<Vec<Cidr>, ServeError> {
    values
        .iter()
        .map(|v| {
            v.parse::<Cidr>().map_err(|e| ServeError::BadCidr {
                flag,
                value: v.clone(),
                message: e.to_string(),
            })
        })
        .collect()
}

/// The address clients should use to reach us, for XOR-RELAYED-ADDRESS and ICE URIs.
fn advertised_ip(config: &ServeConfig) -> IpAddr {
    if let Some(ip) = config.external_ip {
        return ip;
    }
    if !config.relay_ip.is_unspecified() {
        return config.relay_ip;
    }
    if !config.turn_listen.ip().is_unspecified() {
        return config.turn_listen.ip();
    }
    let ip = first_interface_ip().unwrap_or(IpAddr::from([127, 0, 0, 1]));
    tracing::warn!(%ip, "no --external-ip or --relay-ip given: advertising the first interface address; set --external-ip if clients reach this server through NAT");
    ip
}

fn first_interface_ip() -> Option<IpAddr> {
    let addrs = if_addrs::get_if_addrs().ok()?;
    addrs
        .iter()
        .map(|i| i.ip())
        .find(|ip| matches!(ip, IpAddr::V4(v4) if !v4.is_loopback() && !v4.is_link_local()))
}

fn host(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

/// A TLS client trusting the web PKI (webpki-roots), for the server's own outgoing
/// requests: webhooks and JWKS fetches.
pub(crate) fn web_pki_client() -> tokio_rustls::TlsConnector {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

/// Loud, whenever dev mode runs, and louder when it listens beyond loopback.
fn warn_dev_mode(config: &ServeConfig) {
    tracing::warn!("DEV MODE (--dev): any `dev:<user>` token is accepted and /v1/dev/token mints them, TURN credentials included. For trying firstcall on one machine only.");
    let turn = (!config.no_turn).then_some(config.turn_listen);
    let exposed: Vec<SocketAddr> = std::iter::once(config.http_listen)
        .chain(turn)
        .chain(config.turn_tls_listen.filter(|_| !config.no_turn))
        .filter(|a| !a.ip().is_loopback())
        .collect();
    if !exposed.is_empty() {
        tracing::warn!(listen = ?exposed, "DEV MODE SERVER LISTENING BEYOND LOOPBACK: anyone who reaches these addresses can sign in as any user and relay through this TURN server. Use --jwt-secret or --jwt-public-key for anything others can reach.");
    }
}

fn webhook_policy(config: &ServeConfig) -> webhook::Policy {
    webhook::Policy {
        concurrency: config.webhook_concurrency,
        queue: config.webhook_queue,
        pair_interval: config.webhook_pair_interval,
        pair_burst: config.webhook_pair_burst,
        callee_burst: config.webhook_callee_burst,
        callee_window: config.webhook_callee_window,
        caller_burst: config.webhook_caller_burst,
        max_entries: config.webhook_max_entries,
        attempts: config.webhook_attempts,
        timeout: config.webhook_timeout,
    }
}

/// Raise the open-files limit, warn when it stays low, and size the connection cap.
fn connection_limits(config: &ServeConfig) -> accept::Limits {
    let nofile = match accept::raise_nofile_limit() {
        Ok((before, after)) => {
            if after > before {
                tracing::info!(before, after, "open-files limit raised to the hard limit");
            }
            after
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the open-files limit; assuming 1024");
            1024
        }
    };
    let nofile = usize::try_from(nofile).unwrap_or(usize::MAX);
    let max_connections = config.max_connections.unwrap_or((nofile / 2).max(1));
    if nofile < 4096 {
        tracing::warn!(nofile, max_connections, "the open-files limit is low: each connection, TURN allocation and TCP TURN client takes a descriptor. Raise it (systemd LimitNOFILE=, ulimit -n) for production");
    }
    let turn = config.max_allocations;
    if max_connections.saturating_add(turn) > nofile {
        tracing::warn!(nofile, max_connections, max_allocations = turn, "--max-connections plus --max-allocations exceed the open-files limit: under load the kernel, not the caps, will refuse connections and allocations (508)");
    }
    // One address may not take the whole cap: a quarter of it by default, so that one
    // stranger's idle sockets leave room for everyone else (and for /healthz).
    let max_per_ip = config
        .max_connections_per_ip
        .unwrap_or((max_connections / 4).clamp(1, 256));
    tracing::info!(nofile, max_connections, max_per_ip, header_timeout = ?config.http_header_timeout, "HTTP listener bounds");
    accept::Limits {
        max_connections,
        max_per_ip,
        header_timeout: config.http_header_timeout,
    }
}

/// The embedded STUN/TURN server, once its listeners are bound and its workers run.
struct TurnStarted {
    /// UDP and TCP listener.
    addr: SocketAddr,
    /// TLS listener.
    tls: Option<SocketAddr>,
    /// Per-worker counters.
    metrics: Vec<Arc<TurnMetrics>>,
    /// Where relay sockets bind.
    relay_ip: IpAddr,
    /// The XDP fast path, when attached.
    fast: Option<Arc<turn::xdp::FastPath>>,
    /// The address in relayed addresses and (without --public-host) in the URIs.
    advertised: IpAddr,
    /// The workers' peer-grant queues, for the signaling hub (`--turn-peer-grant-ttl`).
    grants: Option<turn::grants::PeerGrants>,
}

/// Bind every TURN listener and start the TURN workers.
fn start_turn(
    config: &ServeConfig,
    cert: Option<&Arc<reload::CertSlot>>,
    auth: tokio::sync::watch::Receiver<Authenticator>,
) -> Result<TurnStarted, ServeError> {
    let threads = config.threads.max(1);
    let advertised = advertised_ip(config);
    let relay_ip = if config.relay_ip.is_unspecified() && !config.turn_listen.ip().is_unspecified() {
        config.turn_listen.ip()
    } else {
        config.relay_ip
    };
    let allow = parse_cidrs(&config.allow_peers, "--allow-peer")?;
    let deny = parse_cidrs(&config.deny_peers, "--deny-peer")?;
    let mut own_ips = vec![advertised, relay_ip];
    if relay_ip.is_unspecified() {
        if let Ok(addrs) = if_addrs::get_if_addrs() {
            own_ips.extend(addrs.iter().map(|i| i.ip()));
        }
    }
    let filter = PeerFilter::new(allow, deny).with_own_relays(own_ips);
    let error_rate = Rate {
        per_sec: config.turn_error_rate,
        burst: config.turn_error_burst,
    };
    let quotas = Arc::new(
        Quotas::new(config.max_allocations_per_user, config.max_allocations)
            .with_error_limit(error_rate, config.turn_error_table)
            .with_user_bandwidth(config.user_max_bps),
    );
    let tls = cert.map(|c| c.acceptor()).transpose()?;

    // Bind every TURN socket up front so a port conflict fails the start, loudly.
    let bind = |addr: SocketAddr, ty: Type, what: &'static str| {
        turn::bind_reuseport(addr, ty).map_err(|source| ServeError::Bind { what, addr, source })
    };
    let first_udp = bind(config.turn_listen, Type::DGRAM, "TURN UDP")?;
    let turn_addr = first_udp.local_addr()?.as_socket().unwrap_or(config.turn_listen);
    let tls_addr = config.turn_tls_listen.filter(|_| tls.is_some());
    let first_tls = match tls_addr {
        Some(a) => Some(bind(a, Type::STREAM, "TURN TLS")?),
        None => None,
    };
    let tls_addr = first_tls.as_ref().and_then(|s| s.local_addr().ok()?.as_socket());
    if config.turn_io == config::TurnIo::Uring {
        turn::probe_uring().map_err(ServeError::TurnIo)?;
    }
    let fast = match &config.xdp {
        Some(iface) => {
            if turn_addr.ip().is_unspecified() {
                return Err(ServeError::Xdp(turn::xdp::XdpError::Kernel {
                    iface: iface.clone(),
                    what: "configure",
                    message: "needs --turn-listen on one IPv4 address, the source of ChannelData to clients".into(),
                }));
            }
            let f = Arc::new(turn::xdp::FastPath::attach(iface, relay_ip, turn_addr)?);
            if config.max_bps != 0 || config.user_max_bps != 0 {
                tracing::warn!(
                    "--xdp: allocations with a bandwidth limit (--max-bps, --user-max-bps) stay on the user-space path; with the limits on, the fast path carries nothing"
                );
            }
            tracing::info!(iface = %iface, "XDP fast path attached");
            Some(f)
        }
        None => None,
    };
    let blocks = turn::split_ports(&config.relay_ports, threads);
    let handoffs = (blocks.len() > 1).then(|| turn::handoff::Handoffs::new(blocks.clone()));
    let mut metrics = Vec::new();
    let mut grants =
        (!config.turn_peer_grant_ttl.is_zero()).then(|| turn::grants::PeerGrants::new(config.turn_peer_grant_ttl));
    let mut first_udp = Some(first_udp);
    let mut first_tls = first_tls;
    for (index, block) in blocks.iter().enumerate() {
        let udp = match first_udp.take() {
            Some(s) => s,
            None => bind(turn_addr, Type::DGRAM, "TURN UDP")?,
        };
        let tcp = bind(turn_addr, Type::STREAM, "TURN TCP")?;
        let tls_listener = match (&tls, tls_addr) {
            (Some(acceptor), Some(addr)) => {
                let l = match first_tls.take() {
                    Some(s) => s,
                    None => bind(addr, Type::STREAM, "TURN TLS")?,
                };
                Some((l.into(), acceptor.clone()))
            }
            _ => None,
        };
        let mut core = CoreConfig::new(relay_ip, block.clone());
        core.advertised_ip = advertised;
        core.max_bps = config.max_bps;
        // A grant is only of use to an allocation: as many as the server may hold.
        core.max_peer_grants = config.max_allocations;
        let m = Arc::new(TurnMetrics::default());
        metrics.push(m.clone());
        let m_grants = m.clone();
        turn::spawn_worker(turn::WorkerSetup {
            index,
            config: core,
            auth: auth.clone(),
            filter: filter.clone(),
            quotas: quotas.clone(),
            metrics: m,
            udp: udp.into(),
            tcp: tcp.into(),
            tls: tls_listener,
            stream_queue: config.turn_stream_queue,
            stream_timeout: config.turn_stream_timeout,
            io: config.turn_io,
            fast: fast.clone(),
            grants: grants.as_mut().map(|g| g.worker(m_grants)),
            handoff: handoffs.clone(),
        })?;
    }
    Ok(TurnStarted {
        addr: turn_addr,
        tls: tls_addr,
        metrics,
        relay_ip,
        fast,
        advertised,
        grants,
    })
}

/// The embedded server's own URIs: on `--public-host` when given (a `turns:` URI must
/// name the host its certificate is for), else on the advertised address.
fn own_ice_uris(config: &ServeConfig, turn: &TurnStarted) -> Vec<String> {
    let h = match &config.public_host {
        Some(name) if name.contains(':') && !name.starts_with('[') => format!("[{name}]"),
        Some(name) => name.clone(),
        None => host(turn.advertised),
    };
    let port = turn.addr.port();
    let mut uris = vec![
        format!("stun:{h}:{port}"),
        format!("turn:{h}:{port}?transport=udp"),
        format!("turn:{h}:{port}?transport=tcp"),
    ];
    if let Some(a) = turn.tls {
        uris.push(format!("turns:{h}:{}?transport=tcp", a.port()));
    }
    uris
}

/// Bind every listener, start the TURN workers and the HTTP server.
pub async fn start(config: ServeConfig) -> Result<Running, ServeError> {
    let conn_limits = accept::ConnLimits::new(connection_limits(&config));
    memory::spawn_trimmer();
    let cert = config.tls.as_ref().map(reload::CertSlot::load).transpose()?;
    let secrets: Vec<Secret> = config.turn_secrets.iter().map(|s| Secret::new(s.clone())).collect();
    let (auth_tx, auth_rx) = tokio::sync::watch::channel(Authenticator::new(
        config.realm.clone(),
        secrets,
        config.static_users.clone(),
    ));
    let turn = if config.no_turn {
        None
    } else {
        Some(start_turn(&config, cert.as_ref(), auth_rx)?)
    };
    let own_uris = turn.as_ref().map(|t| own_ice_uris(&config, t)).unwrap_or_default();
    let extra_uris: Vec<String> = config.ice_servers.iter().map(|u| u.to_string()).collect();
    if config.no_turn {
        if extra_uris.is_empty() {
            tracing::warn!("--no-turn without --ice-server: clients get no ICE servers from this server (only what the app gives them in rtcConfig.iceServers); calls across NATs need TURN");
        } else {
            tracing::info!(ice_servers = ?extra_uris, "--no-turn: no embedded STUN/TURN server; clients get the --ice-server URIs");
        }
    } else if !extra_uris.is_empty() {
        tracing::info!(ice_servers = ?extra_uris, "clients get these ICE servers besides the embedded one");
    }
    if config.secret_generated && config.ice_servers.iter().any(|u| u.is_turn()) {
        tracing::warn!(file = %config.data_dir.join(config::SECRET_FILE).display(), "credentials for the --ice-server turn: URIs are minted with the TURN secret generated in the data dir: give the other TURN server that secret (coturn: static-auth-secret), or give both the same --turn-secret");
    }
    let ice_uris: Vec<String> = own_uris.iter().chain(&extra_uris).cloned().collect();
    let claims = tokens::Claims {
        audience: config.jwt_audience.clone(),
        issuer: config.jwt_issuer.clone(),
        user_claim: Some(config.jwt_user_claim.clone()),
        algorithms: tokens::parse_algorithms(&config.jwt_algorithms)?,
    };
    let tokens: reload::Live<tokens::Tokens> =
        reload::live(match (&config.jwt_secret, &config.jwt_public_key, &config.jwks_url) {
            (Some(s), _, _) => tokens::Tokens::with_secret(s, claims)?,
            (None, Some(p), _) => tokens::Tokens::with_public_key(p, claims)?,
            (None, None, Some(url)) => {
                let jwks = Arc::new(jwks::Jwks::new(url)?);
                // Not fatal: the provider may be down for a moment; a token naming a key
                // fetches again (at most every 10 s), so the server starts either way.
                if let Err(e) = jwks.fetch().await {
                    tracing::warn!(error = %e, "JWKS not fetched at start: tokens are refused until a fetch succeeds");
                }
                tokens::Tokens::with_jwks(jwks, claims)?
            }
            // `resolve` allows no JWT setting only with --dev.
            (None, None, None) => tokens::Tokens::Dev,
        });
    if !config.dev && config.jwt_audience.is_empty() {
        tracing::info!("no --jwt-audience: a token's aud is not checked; set it to the audience your issuer puts in tokens meant for this server");
    }
    if config.dev {
        warn_dev_mode(&config);
    }
    let turn_secret = reload::live(Secret::new(config.turn_secrets.first().cloned().unwrap_or_default()));
    // Every node shares the TURN secret: an answer token minted by one is good on all.
    let answers = reload::live(answer_token::AnswerTokens::from_turn_secret(
        config.turn_secrets.first().map_or("", String::as_str),
    ));
    let webhook = match &config.webhook_url {
        Some(url) => {
            let key = match &config.webhook_secret {
                Some(k) => k.clone(),
                None => {
                    let (key, path) =
                        config::load_or_create_named_secret(&config.data_dir, config::WEBHOOK_SECRET_FILE)?;
                    tracing::info!(file = %path.display(), "no --webhook-secret given: webhooks are signed with the generated key kept in the data dir (give it to the receiver)");
                    key
                }
            };
            Some(
                webhook::Webhook::new(url, key, webhook_policy(&config))?
                    .with_answer_tokens(answers.clone(), config.ring_timeout),
            )
        }
        None => None,
    };
    let hub_config = firstcall_signal::hub::HubConfig {
        session_ttl: config.session_ttl,
        ring_timeout: config.ring_timeout,
        max_calls_per_user: config.max_calls_per_user,
        max_unacked: config.max_unacked_frames,
        max_unacked_bytes: config.max_unacked_bytes,
        max_held_signals_per_call: config.max_held_signals,
        max_held_bytes_per_call: config.max_held_bytes,
        max_held_signals_per_user: config.max_held_signals_per_user,
        max_held_bytes_per_user: config.max_held_bytes_per_user,
        max_ringing_per_callee: config.max_ringing_per_callee,
        max_devices_per_user: config.max_devices_per_user,
        max_push_devices: config.max_push_devices,
        max_ended_calls: config.max_ended_calls,
        max_invite_pairs: config.max_invite_pairs,
        ..Default::default()
    };
    let ice = Arc::new(signal::TurnIce {
        secret: turn_secret.clone(),
        uris: own_uris,
        extra: config.ice_servers.clone(),
        ttl: config.credential_ttl,
    });
    let webhook_metrics = webhook.as_ref().map(|w| w.metrics.clone());
    // Sign-ins take the app's tokens and the answer tokens of `call.ring` pushes.
    let hub_tokens: Arc<dyn firstcall_signal::hub::TokenVerifier> = Arc::new(answer_token::WithAnswerTokens {
        tokens: Arc::new(reload::LiveTokens(tokens.clone())),
        answers: answers.clone(),
    });
    let signaling = match &config.redis_url {
        None => signal::Signaling::start(hub_config, hub_tokens, ice, webhook.clone(), config.slow_socket_queue),
        Some(url) => {
            let joined = cluster::join_patiently(
                url,
                &config.redis_prefix,
                config.redis_checkpoint_every,
                cluster::JOIN_PATIENCE,
            )
            .await?;
            signal::Signaling::start_cluster(
                hub_config,
                hub_tokens,
                ice,
                webhook.clone(),
                config.slow_socket_queue,
                joined,
            )
            .map_err(cluster::ClusterError::Snapshot)?
        }
    }
    .with_jwks(tokens.load().jwks().cloned())
    .with_peer_grants(turn.as_ref().and_then(|t| t.grants.clone()));
    let reloads = Arc::new(reload::ReloadCounts::default());
    let state = Arc::new(http::AppState {
        ready: false.into(),
        draining: false.into(),
        turn_metrics: turn.as_ref().map(|t| t.metrics.clone()).unwrap_or_default(),
        xdp: turn.as_ref().and_then(|t| t.fast.clone()),
        signal_metrics: signaling.metrics.clone(),
        signaling: signaling.clone(),
        turn_secret: turn_secret.clone(),
        credential_ttl: config.credential_ttl,
        ice_uris: ice_uris.clone(),
        tokens: tokens.clone(),
        conn_limits: conn_limits.clone(),
        webhook_metrics,
        presence: config.presence,
        metrics_public: config.metrics_listen.is_none(),
        reloads: reloads.clone(),
    });
    let listener = tokio::net::TcpListener::bind(config.http_listen)
        .await
        .map_err(|source| ServeError::Bind {
            what: "HTTP",
            addr: config.http_listen,
            source,
        })?;
    let http_addr = listener.local_addr()?;
    if let Some(link) = signaling.cluster() {
        // Ready once the replica has applied the whole log: before, a resume here
        // would find no session.
        link.caught_up().await;
        tracing::info!(node = %link.node, "cluster log applied: ready");
    }
    match &turn {
        Some(t) => {
            let (ephemeral, reserved) = ports::kernel_ports();
            let mut listeners = vec![("TURN", t.addr), ("HTTP", http_addr)];
            listeners.extend(t.tls.map(|a| ("TURN TLS", a)));
            for warning in ports::relay_range_warnings(&config.relay_ports, ephemeral.as_ref(), &reserved, &listeners) {
                tracing::warn!("{warning}");
            }
            state.ready.store(true, Ordering::Release);
            tracing::info!(http = %http_addr, turn = %t.addr, turn_tls = ?t.tls, relay_ip = %t.relay_ip, advertised = %t.advertised,
                relay_ports = ?config.relay_ports, workers = config.threads.max(1), ice_uris = ?ice_uris, "firstcall listening");
        }
        None => {
            state.ready.store(true, Ordering::Release);
            tracing::info!(http = %http_addr, ice_uris = ?ice_uris, "firstcall listening (signaling only: --no-turn)");
        }
    }
    let metrics_addr = match config.metrics_listen {
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| ServeError::Bind {
                    what: "metrics",
                    addr,
                    source,
                })?;
            let bound = l.local_addr()?;
            // Scrapers only: a handful of connections, bounded like the public listener.
            let limits = accept::ConnLimits::new(accept::Limits {
                max_connections: 64,
                max_per_ip: 0,
                header_timeout: config.http_header_timeout,
            });
            tokio::spawn(accept::serve(l, http::metrics_router(state.clone()), limits, None));
            tracing::info!(metrics = %bound, "metrics listening (not on the public listener)");
            Some(bound)
        }
        None => None,
    };
    let app = http::router(state.clone()).merge(
        axum::Router::new()
            .route("/v1/ws", axum::routing::get(signal::Signaling::upgrade))
            .with_state(signaling),
    );
    // --http-tls: the same certificate as TURN/TLS, on the HTTP listener.
    let http_tls = match (&cert, config.http_tls) {
        (Some(c), true) => Some(c.acceptor()?),
        _ => None,
    };
    let http_task = tokio::spawn(accept::serve(listener, app, conn_limits, http_tls));
    Ok(Running {
        metrics: metrics_addr,
        http: http_addr,
        turn: turn.as_ref().map(|t| t.addr),
        turn_tls: turn.as_ref().and_then(|t| t.tls),
        http_task,
        state,
        drain_timeout: config.drain_timeout,
        webhook,
        reloader: reload::Reloader {
            args: config::ServeArgs::default(),
            current: config,
            tokens,
            minting: turn_secret,
            answers,
            auth: turn.is_some().then_some(auth_tx),
            cert,
            counts: reloads,
        },
    })
}
