//! `firstcall serve` settings: flags, `FIRSTCALL_*` environment variables, an
//! optional TOML file, and safe defaults, in that order of precedence.
//!
//! Each setting is written once, as a field of [`ServeArgs`]: clap makes it a flag and
//! a variable, serde a file key (the same name with `_`). Clap carries no defaults so
//! the file can show through; [`ServeArgs::merge`] lays the flags over the file,
//! generically, and [`ServeArgs::resolve`] applies defaults and validates into the
//! typed [`ServeConfig`].

use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Why the configuration is unusable. Every message says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The `--config` file could not be read.
    #[error("cannot read config file {path}: {source}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// The TOML is invalid or has an unknown key.
    #[error("config file {path}: {message}")]
    ParseFile {
        /// The file.
        path: PathBuf,
        /// Parser message (names the key).
        message: String,
    },
    /// A value is out of range or inconsistent.
    #[error("{setting}: {message}")]
    Invalid {
        /// The flag.
        setting: &'static str,
        /// What is wrong and what to do.
        message: String,
    },
    /// The data directory or generated secret could not be written.
    #[error("data dir {path}: {source}")]
    DataDir {
        /// The path.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
}

/// Who may list the users online.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Presence {
    /// Nobody: `/v1/online` answers 404 (the default with real tokens: presence leaks who
    /// uses the app, and apps usually have their own).
    Off,
    /// Anyone holding a valid token (the default in dev mode, for the demo's contact list).
    All,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (tracing-subscriber's JSON format).
    Json,
}

/// How the TURN workers read and write UDP.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TurnIo {
    /// epoll: `recvmmsg` on each ready relay socket, one `sendmsg` per datagram or GSO run.
    #[default]
    Epoll,
    /// io_uring: one multishot receive per relay socket, every send queued and submitted
    /// once per pass (Linux 6.0 or later); the server refuses to start without it.
    /// Measured on call-shaped load it costs what epoll costs (docs/operations.md).
    Uring,
}

/// TLS certificate and key files (PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain.
    pub cert: PathBuf,
    /// Private key.
    pub key: PathBuf,
}

/// The resolved, validated configuration.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// HTTP listener (signaling, API, metrics, demo).
    pub http_listen: SocketAddr,
    /// TURN/STUN listener, UDP and TCP.
    pub turn_listen: SocketAddr,
    /// TURN over TLS listener (only with `tls`).
    pub turn_tls_listen: Option<SocketAddr>,
    /// Certificate and key for `turns:`.
    pub tls: Option<TlsFiles>,
    /// TURN REST secrets, newest first (the first mints credentials).
    pub turn_secrets: Vec<String>,
    /// True when the secret was generated and kept in the data dir.
    pub secret_generated: bool,
    /// TURN realm.
    pub realm: String,
    /// Public address behind a 1:1 NAT.
    pub external_ip: Option<IpAddr>,
    /// Address relay sockets bind to.
    pub relay_ip: IpAddr,
    /// Relay port range.
    pub relay_ports: RangeInclusive<u16>,
    /// `--allow-peer` CIDRs (parsed by the server).
    pub allow_peers: Vec<String>,
    /// `--deny-peer` CIDRs.
    pub deny_peers: Vec<String>,
    /// Where generated state lives.
    pub data_dir: PathBuf,
    /// TURN worker threads.
    pub threads: usize,
    /// `user:password` static TURN users.
    pub static_users: Vec<(String, String)>,
    /// Allocation cap for the whole server.
    pub max_allocations: usize,
    /// Allocation cap per user.
    pub max_allocations_per_user: usize,
    /// tracing filter.
    pub log: String,
    /// How long a disconnected signaling session keeps its frames.
    pub session_ttl: Duration,
    /// Bytes queued for a signaling socket that is not taking its frames before it is cut.
    pub slow_socket_queue: usize,
    /// How long a call rings.
    pub ring_timeout: Duration,
    /// How long SIGTERM waits for live calls to end before the process exits.
    pub drain_timeout: Duration,
    /// HS256 secret for bearer JWTs.
    pub jwt_secret: Option<String>,
    /// PEM public key (RS256/ES256) for bearer JWTs.
    pub jwt_public_key: Option<PathBuf>,
    /// The identity provider's JWKS URL: JWT keys by `kid`.
    pub jwks_url: Option<String>,
    /// Several nodes acting as one: the Redis that holds their log.
    pub redis_url: Option<String>,
    /// The cluster's Redis keys start with this (several clusters on one Redis).
    pub redis_prefix: String,
    /// Log entries between checkpoints (snapshot stored, log trimmed).
    pub redis_checkpoint_every: u64,
    /// Where pending-call events are POSTed.
    pub webhook_url: Option<String>,
    /// Key signing webhook bodies (generated and kept in the data dir when absent).
    pub webhook_secret: Option<String>,
    /// Lifetime of TURN credentials handed to clients.
    pub credential_ttl: Duration,
    /// Dev mode: `dev:<user>` tokens accepted and minted by `/v1/dev/token`.
    pub dev: bool,
    /// HTTP/WebSocket connections open at once; `None`: half the open-files limit.
    pub max_connections: Option<usize>,
    /// HTTP/WebSocket connections open at once from one IP address (IPv6: one /64);
    /// 0: no cap; `None`: a quarter of the connection cap, at most 256.
    pub max_connections_per_ip: Option<usize>,
    /// How long a client has to send a request's headers; also how long an idle
    /// keep-alive connection is kept.
    pub http_header_timeout: Duration,
    /// Webhook POSTs in flight at once.
    pub webhook_concurrency: usize,
    /// Webhook events waiting for a free slot; past it they are dropped (counted, logged).
    pub webhook_queue: usize,
    /// At least this long between two webhooks of one caller and callee pair (zero: no
    /// spacing).
    pub webhook_pair_interval: Duration,
    /// At most this many webhooks per caller and callee pair within
    /// `webhook_callee_window`.
    pub webhook_pair_burst: u32,
    /// At most this many callers' webhooks per callee within `webhook_callee_window`.
    pub webhook_callee_burst: u32,
    /// The window of `webhook_callee_burst`.
    pub webhook_callee_window: Duration,
    /// At most this many webhooks per caller within `webhook_callee_window`.
    pub webhook_caller_burst: u32,
    /// Callers, callees and pairs the webhook coalescing remembers at most.
    pub webhook_max_entries: usize,
    /// Attempts per webhook event (the first included) before it is given up.
    pub webhook_attempts: u32,
    /// How long one webhook attempt may take, connection included.
    pub webhook_timeout: Duration,
    /// Accepted JWT audiences (`aud`); empty: not checked.
    pub jwt_audience: Vec<String>,
    /// The accepted JWT issuer (`iss`); `None`: not checked.
    pub jwt_issuer: Option<String>,
    /// The JWT claim naming the user.
    pub jwt_user_claim: String,
    /// Accepted JWT algorithms; empty: the key's own.
    pub jwt_algorithms: Vec<String>,
    /// Who may list online users (`/v1/online`).
    pub presence: Presence,
    /// A separate listener for `/metrics` (then not served on the public one).
    pub metrics_listen: Option<SocketAddr>,
    /// Log lines as text or JSON.
    pub log_format: LogFormat,
    // Signaling limits (docs/operations.md, "Signaling limits").
    /// Live calls a user may have placed or answered.
    pub max_calls_per_user: usize,
    /// Unacknowledged frames a signaling session may hold before it is given up.
    pub max_unacked_frames: usize,
    /// Bytes of unacknowledged frames a signaling session may hold before it is given up.
    pub max_unacked_bytes: usize,
    /// Signals a caller may have held per ringing call.
    pub max_held_signals: usize,
    /// Bytes of signals held per ringing call.
    pub max_held_bytes: usize,
    /// Signals held over one user's ringing calls.
    pub max_held_signals_per_user: usize,
    /// Bytes of signals held over one user's ringing calls.
    pub max_held_bytes_per_user: usize,
    /// Invites ringing for one callee at once.
    pub max_ringing_per_callee: usize,
    /// Signaling sessions (devices) per user.
    pub max_devices_per_user: usize,
    /// Devices registered for pushes over all users.
    pub max_push_devices: usize,
    /// Ended call ids remembered for repeated invites.
    pub max_ended_calls: usize,
    /// User pairs' last invites remembered for first-attempt accounting.
    pub max_invite_pairs: usize,
    // TURN limits (issue 17).
    /// TURN error responses per second per source address (IPv6: per /64); 0 is no limit.
    pub turn_error_rate: u64,
    /// TURN error responses a source address may get at once.
    pub turn_error_burst: u64,
    /// Most source addresses the TURN error limit tracks.
    pub turn_error_table: usize,
    /// Relayed payload bytes per second per allocation, each direction; 0 is no limit.
    pub max_bps: u64,
    /// Relayed payload bytes per second per user, all allocations, each direction; 0 is no limit.
    pub user_max_bps: u64,
    /// Bytes queued for one TURN TCP/TLS client before further frames are dropped.
    pub turn_stream_queue: usize,
    /// A TURN TCP/TLS client that completes no frame for this long is disconnected.
    pub turn_stream_timeout: Duration,
    /// How long after a call is answered each party's address may reach the other's
    /// allocations ahead of their own permissions; zero turns peer grants off.
    pub turn_peer_grant_ttl: Duration,
    /// How the TURN workers read and write UDP.
    pub turn_io: TurnIo,
    /// Attach the XDP fast path to this interface.
    pub xdp: Option<String>,
    // ICE servers (issue 19).
    /// ICE servers handed to clients besides (or, with `no_turn`, instead of) the
    /// embedded one, validated; `turn:`/`turns:` ones get credentials minted with the
    /// first TURN secret.
    pub ice_servers: Vec<IceUri>,
    /// The name the embedded server's own URIs carry instead of its IP address.
    pub public_host: Option<String>,
    /// Signaling only: no embedded STUN/TURN listener at all.
    pub no_turn: bool,
    /// The HTTP listener speaks HTTPS (and WSS) with `tls`.
    pub http_tls: bool,
}

/// A validated `stun:`, `stuns:`, `turn:` or `turns:` URI (RFC 7064, RFC 7065).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IceUri {
    /// `stun`, `stuns`, `turn` or `turns`.
    pub scheme: &'static str,
    /// A DNS name, an IPv4 address, or an IPv6 address (without brackets).
    pub host: String,
    /// The port, when the URI names one (else 3478, or 5349 for `stuns:`/`turns:`).
    pub port: Option<u16>,
    /// `udp` or `tcp`, when the URI names one (`turn:`/`turns:` only).
    pub transport: Option<&'static str>,
}

impl IceUri {
    /// Parse and check one URI; the error says what is wrong with it.
    pub fn parse(uri: &str) -> Result<IceUri, String> {
        let bad = |why: &str| Err(format!("{uri:?}: {why}"));
        if uri.is_empty() {
            return bad("empty");
        }
        if !uri.bytes().all(|b| b.is_ascii_graphic()) {
            return bad("spaces or non-ASCII characters");
        }
        let Some((scheme, rest)) = uri.split_once(':') else {
            return bad("no scheme: expected stun:, stuns:, turn: or turns: followed by a host");
        };
        let scheme = match scheme {
            "stun" => "stun",
            "stuns" => "stuns",
            "turn" => "turn",
            "turns" => "turns",
            other => return bad(&format!("scheme {other:?} is not stun, stuns, turn or turns")),
        };
        if rest.starts_with("//") {
            return bad("no // after the scheme (turn:host:port, not turn://host:port)");
        }
        let (hostport, query) = match rest.split_once('?') {
            Some((h, q)) => (h, Some(q)),
            None => (rest, None),
        };
        if hostport.contains(['@', '/', '#']) {
            return bad("only host[:port] may follow the scheme (no user, path or fragment)");
        }
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let Some((addr, after)) = v6.split_once(']') else {
                return bad("an IPv6 address needs its closing ]");
            };
            if addr.parse::<std::net::Ipv6Addr>().is_err() {
                return bad(&format!("{addr:?} is not an IPv6 address"));
            }
            let port = match after {
                "" => None,
                p => match p.strip_prefix(':') {
                    Some(p) => Some(p),
                    None => return bad("expected :port after the IPv6 address"),
                },
            };
            (addr.to_owned(), port)
        } else {
            let (host, port) = match hostport.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            };
            if !valid_host(host) {
                return bad(&format!(
                    "{host:?} is not a host name or IPv4 address (an IPv6 address goes in brackets)"
                ));
            }
            (host.to_owned(), port)
        };
        let port = match port {
            None => None,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => Some(n),
                _ => return bad(&format!("port {p:?} is not 1 to 65535")),
            },
        };
        let transport = match query {
            None => None,
            Some(_) if scheme.starts_with("stun") => {
                return bad("a stun: or stuns: URI takes no ?transport= (RFC 7064)")
            }
            Some("transport=udp") => Some("udp"),
            Some("transport=tcp") => Some("tcp"),
            Some(q) => return bad(&format!("query {q:?}: only ?transport=udp or ?transport=tcp")),
        };
        Ok(IceUri {
            scheme,
            host,
            port,
            transport,
        })
    }

    /// Whether clients need credentials for it (`turn:`, `turns:`).
    pub fn is_turn(&self) -> bool {
        self.scheme.starts_with("turn")
    }
}

impl std::fmt::Display for IceUri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:", self.scheme)?;
        if self.host.contains(':') {
            write!(f, "[{}]", self.host)?;
        } else {
            f.write_str(&self.host)?;
        }
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        if let Some(t) = self.transport {
            write!(f, "?transport={t}")?;
        }
        Ok(())
    }
}

/// A DNS name (labels of letters, digits and `-`, 1-63 characters each, 253 in all, not
/// starting or ending with `-`) or an IPv4 address.
pub fn valid_host(host: &str) -> bool {
    if host.parse::<std::net::Ipv4Addr>().is_ok() {
        return true;
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    !name.is_empty()
        && name.len() <= 253
        // All digits and dots would be a malformed IPv4 address, not a name.
        && !name.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// The settings of `firstcall serve`, each written once: a flag, a `FIRSTCALL_<NAME>`
/// variable (clap) and a key of the `--config` TOML file (serde, the flag's name with
/// `_`). Flags and variables win over the file ([`ServeArgs::merge`], generic over the
/// fields); [`ServeArgs::resolve`] applies defaults and validates into [`ServeConfig`].
#[derive(Debug, Clone, Default, clap::Args, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServeArgs {
    /// TOML file with any of these settings (keys use `_`: `turn_listen = "..."`).
    #[arg(long, env = "FIRSTCALL_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// HTTP listener [default: 0.0.0.0:8080].
    #[arg(long, env = "FIRSTCALL_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,
    /// TURN/STUN listener for UDP and TCP [default: 0.0.0.0:3478].
    #[arg(long, env = "FIRSTCALL_TURN_LISTEN")]
    pub turn_listen: Option<SocketAddr>,
    /// TURN over TLS listener, used when --tls-cert and --tls-key are given [default: 0.0.0.0:5349].
    #[arg(long, env = "FIRSTCALL_TURN_TLS_LISTEN")]
    pub turn_tls_listen: Option<SocketAddr>,
    /// PEM certificate chain for turns:.
    #[arg(long, env = "FIRSTCALL_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for turns:.
    #[arg(long, env = "FIRSTCALL_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// TURN REST secret (repeatable, newest first; env: comma-separated). Generated and kept in the data dir when absent.
    #[arg(
        long = "turn-secret",
        env = "FIRSTCALL_TURN_SECRET",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub turn_secret: Vec<String>,
    /// TURN realm [default: firstcall].
    #[arg(long, env = "FIRSTCALL_REALM")]
    pub realm: Option<String>,
    /// Public IP advertised in relayed addresses and ICE URIs (server behind a 1:1 NAT).
    #[arg(long, env = "FIRSTCALL_EXTERNAL_IP")]
    pub external_ip: Option<IpAddr>,
    /// Address relay sockets bind to [default: the --turn-listen address, else 0.0.0.0].
    #[arg(long, env = "FIRSTCALL_RELAY_IP")]
    pub relay_ip: Option<IpAddr>,
    /// Relay UDP port range MIN-MAX; one port per allocation [default: 61000-65535, above
    /// Linux's default ephemeral ports 32768-60999].
    #[arg(long, env = "FIRSTCALL_RELAY_PORTS")]
    pub relay_ports: Option<String>,
    /// Let relays reach this CIDR although the default filter refuses it (repeatable).
    #[arg(long = "allow-peer", env = "FIRSTCALL_ALLOW_PEER", value_delimiter = ',')]
    pub allow_peer: Vec<String>,
    /// Refuse relaying to this CIDR (repeatable; wins over --allow-peer).
    #[arg(long = "deny-peer", env = "FIRSTCALL_DENY_PEER", value_delimiter = ',')]
    pub deny_peer: Vec<String>,
    /// Directory for generated state [default: $XDG_STATE_HOME/firstcall or ~/.local/state/firstcall].
    #[arg(long, env = "FIRSTCALL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// TURN worker threads [default: number of cores].
    #[arg(long, env = "FIRSTCALL_THREADS")]
    pub threads: Option<usize>,
    /// Static TURN user USER:PASSWORD (repeatable).
    #[arg(
        long = "static-user",
        env = "FIRSTCALL_STATIC_USER",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub static_user: Vec<String>,
    /// Most live allocations in all [default: 10000].
    #[arg(long, env = "FIRSTCALL_MAX_ALLOCATIONS")]
    pub max_allocations: Option<usize>,
    /// Most live allocations per user [default: 64].
    #[arg(long, env = "FIRSTCALL_MAX_ALLOCATIONS_PER_USER")]
    pub max_allocations_per_user: Option<usize>,
    /// Log filter, tracing syntax [default: info].
    #[arg(long, env = "FIRSTCALL_LOG")]
    pub log: Option<String>,
    /// Keep a disconnected signaling session (and its unacknowledged frames) this long [default: 60s].
    #[arg(long, env = "FIRSTCALL_SESSION_TTL")]
    pub session_ttl: Option<String>,
    /// Cut a signaling socket once this many of its bytes are unsent, the kernel taking no more
    /// (its frames wait in the session for the resume) [default: 1048576].
    #[arg(long, env = "FIRSTCALL_SLOW_SOCKET_QUEUE")]
    pub slow_socket_queue: Option<usize>,
    /// Ring this long before a call ends with `timeout` [default: 45s].
    #[arg(long, env = "FIRSTCALL_RING_TIMEOUT")]
    pub ring_timeout: Option<String>,
    /// On SIGTERM, wait this long for live calls to end before exiting (new sessions go
    /// elsewhere meanwhile; a second SIGTERM exits at once) [default: 10m].
    #[arg(long, env = "FIRSTCALL_DRAIN_TIMEOUT")]
    pub drain_timeout: Option<String>,
    /// HS256 secret that signs bearer JWTs (`sub` is the user). Without JWT settings: dev mode.
    #[arg(long, env = "FIRSTCALL_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// PEM public key (RSA for RS256, EC P-256 for ES256) that verifies bearer JWTs.
    #[arg(long, env = "FIRSTCALL_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<PathBuf>,
    /// The identity provider's JWKS URL (Keycloak: <realm>/protocol/openid-connect/certs):
    /// JWT keys by `kid`, fetched at start and again for an unknown `kid` (at most every 10 s).
    #[arg(long, env = "FIRSTCALL_JWKS_URL")]
    pub jwks_url: Option<String>,
    /// Run as one node of several sharing this Redis (redis://[:password@]host:port/db):
    /// sessions resume on any node, calls span nodes, a node can be stopped or lost
    /// without hanging up a call. Without it, one process holds everything in memory.
    #[arg(long, env = "FIRSTCALL_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Prefix of the cluster's Redis keys [default: firstcall].
    #[arg(long, env = "FIRSTCALL_REDIS_PREFIX")]
    pub redis_prefix: Option<String>,
    /// Log entries between two checkpoints: the leader stores a snapshot of the hub and
    /// trims the log up to the previous one, which bounds it [default: 10000].
    #[arg(long, env = "FIRSTCALL_REDIS_CHECKPOINT_EVERY")]
    pub redis_checkpoint_every: Option<u64>,
    /// POST a signed event here when a callee has no device online (for VoIP push).
    #[arg(long, env = "FIRSTCALL_WEBHOOK_URL")]
    pub webhook_url: Option<String>,
    /// Key for the webhook signature [default: generated and kept in the data dir, file webhook-secret].
    #[arg(long, env = "FIRSTCALL_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,
    /// Lifetime of TURN credentials given to clients [default: 12h; refreshed at 80%].
    #[arg(long, env = "FIRSTCALL_CREDENTIAL_TTL")]
    pub credential_ttl: Option<String>,
    /// Dev mode, for trying firstcall on one machine: any `dev:<user>` token is accepted,
    /// `/v1/dev/token` mints them, and the listeners default to loopback. Never expose it.
    #[arg(long, env = "FIRSTCALL_DEV")]
    pub dev: bool,
    /// HTTP/WebSocket connections open at once [default: half the open-files limit].
    #[arg(long, env = "FIRSTCALL_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// HTTP/WebSocket connections open at once from one IP address (IPv6: one /64); 0 for
    /// no cap (behind a reverse proxy every connection comes from the proxy) [default: a
    /// quarter of --max-connections, at most 256].
    #[arg(long, env = "FIRSTCALL_MAX_CONNECTIONS_PER_IP")]
    pub max_connections_per_ip: Option<usize>,
    /// Time a client has to send a request's headers, and that an idle keep-alive
    /// connection is kept [default: 10s].
    #[arg(long, env = "FIRSTCALL_HTTP_HEADER_TIMEOUT")]
    pub http_header_timeout: Option<String>,
    /// Webhook POSTs in flight at once [default: 8].
    #[arg(long, env = "FIRSTCALL_WEBHOOK_CONCURRENCY")]
    pub webhook_concurrency: Option<usize>,
    /// Webhook events waiting for a free slot before new ones are dropped [default: 1024].
    #[arg(long, env = "FIRSTCALL_WEBHOOK_QUEUE")]
    pub webhook_queue: Option<usize>,
    /// At least this long between two webhooks of one caller and callee pair; 0s: no
    /// spacing [default: 2s].
    #[arg(long, env = "FIRSTCALL_WEBHOOK_PAIR_INTERVAL")]
    pub webhook_pair_interval: Option<String>,
    /// At most this many webhooks per caller and callee pair within
    /// --webhook-callee-window: a caller who cancels and calls again rings the phone again,
    /// an invite-and-cancel loop no more than this [default: 3].
    #[arg(long, env = "FIRSTCALL_WEBHOOK_PAIR_BURST")]
    pub webhook_pair_burst: Option<u32>,
    /// At most this many callers' webhooks per callee within --webhook-callee-window (a
    /// caller's repeated calls count once) [default: 5].
    #[arg(long, env = "FIRSTCALL_WEBHOOK_CALLEE_BURST")]
    pub webhook_callee_burst: Option<u32>,
    /// The window of --webhook-callee-burst [default: 60s].
    #[arg(long, env = "FIRSTCALL_WEBHOOK_CALLEE_WINDOW")]
    pub webhook_callee_window: Option<String>,
    /// At most this many webhooks per caller within --webhook-callee-window, whoever they
    /// call [default: 10].
    #[arg(long, env = "FIRSTCALL_WEBHOOK_CALLER_BURST")]
    pub webhook_caller_burst: Option<u32>,
    /// Callers, callees and pairs the webhook coalescing remembers at most; past it new
    /// events are skipped (counted) [default: 65536].
    #[arg(long, env = "FIRSTCALL_WEBHOOK_MAX_ENTRIES")]
    pub webhook_max_entries: Option<usize>,
    /// Attempts per webhook event, the first included, on connection errors, timeouts, 429
    /// and 5xx (other answers are not retried) [default: 4].
    #[arg(long, env = "FIRSTCALL_WEBHOOK_ATTEMPTS")]
    pub webhook_attempts: Option<u32>,
    /// How long one webhook attempt may take, connection included [default: 5s].
    #[arg(long, env = "FIRSTCALL_WEBHOOK_TIMEOUT")]
    pub webhook_timeout: Option<String>,
    /// Accept JWTs only with one of these audiences in `aud` (repeatable; env comma-separated)
    /// [default: aud not checked].
    #[arg(long = "jwt-audience", env = "FIRSTCALL_JWT_AUDIENCE", value_delimiter = ',')]
    pub jwt_audience: Vec<String>,
    /// Accept JWTs only from this issuer (`iss`), e.g. https://sso.example.org/realms/app.
    #[arg(long, env = "FIRSTCALL_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// The JWT claim that names the user [default: sub].
    #[arg(long, env = "FIRSTCALL_JWT_USER_CLAIM")]
    pub jwt_user_claim: Option<String>,
    /// Accepted JWT algorithms, e.g. RS256,PS256 [default: HS256 with --jwt-secret, RS256 or
    /// ES256 by the --jwt-public-key's type].
    #[arg(long = "jwt-algorithms", env = "FIRSTCALL_JWT_ALGORITHMS", value_delimiter = ',')]
    pub jwt_algorithms: Vec<String>,
    /// Who may list the users online (GET /v1/online): off or all [default: off; all in dev mode].
    #[arg(long, env = "FIRSTCALL_PRESENCE")]
    pub presence: Option<Presence>,
    /// Serve /metrics on this address only (e.g. 127.0.0.1:9090), not on the public listener.
    #[arg(long, env = "FIRSTCALL_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Log format: text or json [default: text].
    #[arg(long, env = "FIRSTCALL_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    // Signaling limits (docs/operations.md, "Signaling limits").
    /// Most live calls one user may have placed or answered (invites ringing for them do not count) [default: 8].
    #[arg(long, env = "FIRSTCALL_MAX_CALLS_PER_USER")]
    pub max_calls_per_user: Option<usize>,
    /// Give a signaling session up once this many of its frames are unacknowledged [default: 4096].
    #[arg(long, env = "FIRSTCALL_MAX_UNACKED_FRAMES")]
    pub max_unacked_frames: Option<usize>,
    /// Give a signaling session up once this many bytes of its frames are unacknowledged;
    /// also bounds a resume's replay [default: 1048576; at least 262144].
    #[arg(long, env = "FIRSTCALL_MAX_UNACKED_BYTES")]
    pub max_unacked_bytes: Option<usize>,
    /// Signals a caller may send while the call rings (held for callee devices that come later) [default: 64].
    #[arg(long, env = "FIRSTCALL_MAX_HELD_SIGNALS")]
    pub max_held_signals: Option<usize>,
    /// Bytes of signals held per ringing call [default: 65536].
    #[arg(long, env = "FIRSTCALL_MAX_HELD_BYTES")]
    pub max_held_bytes: Option<usize>,
    /// Signals held over all the ringing calls one user placed [default: 256].
    #[arg(long, env = "FIRSTCALL_MAX_HELD_SIGNALS_PER_USER")]
    pub max_held_signals_per_user: Option<usize>,
    /// Bytes of signals held over all the ringing calls one user placed [default: 262144].
    #[arg(long, env = "FIRSTCALL_MAX_HELD_BYTES_PER_USER")]
    pub max_held_bytes_per_user: Option<usize>,
    /// Invites that may ring for one callee at once; one more ends `busy` [default: 16].
    #[arg(long, env = "FIRSTCALL_MAX_RINGING_PER_CALLEE")]
    pub max_ringing_per_callee: Option<usize>,
    /// Signaling sessions (devices) one user may have; one more hello is refused (close 4009) [default: 16].
    #[arg(long, env = "FIRSTCALL_MAX_DEVICES_PER_USER")]
    pub max_devices_per_user: Option<usize>,
    /// Devices registered for pushes (`device.update`), over all users; past it a new
    /// device's registration is refused [default: 100000].
    #[arg(long, env = "FIRSTCALL_MAX_PUSH_DEVICES")]
    pub max_push_devices: Option<usize>,
    /// Ended call ids remembered (10 minutes at most) so that a repeated invite stays a
    /// no-op; past it the oldest are forgotten first [default: 16384].
    #[arg(long, env = "FIRSTCALL_MAX_ENDED_CALLS")]
    pub max_ended_calls: Option<usize>,
    /// User pairs whose last invite is remembered (2 minutes at most) to tell a retry from a
    /// first attempt; past it the oldest are forgotten first [default: 16384].
    #[arg(long, env = "FIRSTCALL_MAX_INVITE_PAIRS")]
    pub max_invite_pairs: Option<usize>,
    // TURN limits (issue 17).
    /// TURN error responses (401, 400, 403, …) per second per source address, IPv6 per /64;
    /// past it the address gets no error responses and its authenticated requests are not
    /// examined until the budget refills; 0 disables [default: 20].
    #[arg(long, env = "FIRSTCALL_TURN_ERROR_RATE")]
    pub turn_error_rate: Option<u64>,
    /// TURN error responses a source address may get at once [default: 100].
    #[arg(long, env = "FIRSTCALL_TURN_ERROR_BURST")]
    pub turn_error_burst: Option<u64>,
    /// Most source addresses the TURN error limit tracks; beyond them, idle ones are
    /// forgotten and the rest share one budget [default: 65536].
    #[arg(long, env = "FIRSTCALL_TURN_ERROR_TABLE")]
    pub turn_error_table: Option<usize>,
    /// Relayed payload bytes per second per allocation, each direction apart (coturn's
    /// max-bps); excess datagrams are dropped; 0 disables [default: 4000000].
    #[arg(long, env = "FIRSTCALL_MAX_BPS")]
    pub max_bps: Option<u64>,
    /// Relayed payload bytes per second per user over all their allocations, each direction
    /// apart; 0 disables [default: 12500000].
    #[arg(long, env = "FIRSTCALL_USER_MAX_BPS")]
    pub user_max_bps: Option<u64>,
    /// Bytes queued for one TURN TCP/TLS client that is not reading before further frames
    /// are dropped [default: 262144].
    #[arg(long, env = "FIRSTCALL_TURN_STREAM_QUEUE")]
    pub turn_stream_queue: Option<usize>,
    /// A TURN TCP/TLS client must complete a frame within this of connecting or of its
    /// previous frame, however it trickles bytes, or it is disconnected [default: 120s].
    #[arg(long, env = "FIRSTCALL_TURN_STREAM_TIMEOUT")]
    pub turn_stream_timeout: Option<String>,
    /// When a call is answered, each party's address (as its signaling socket shows it)
    /// may reach the other party's TURN allocations for this long before their own
    /// permissions are installed: the first ICE checks through a relay are not dropped.
    /// 0s turns it off [default: 30s].
    #[arg(long, env = "FIRSTCALL_TURN_PEER_GRANT_TTL")]
    pub turn_peer_grant_ttl: Option<String>,
    /// How the TURN workers read and write UDP: epoll or uring (io_uring; measured no
    /// cheaper on call-shaped load) [default: epoll].
    #[arg(long, env = "FIRSTCALL_TURN_IO")]
    pub turn_io: Option<TurnIo>,
    /// Relay established channels in the kernel: attach the XDP fast path to this
    /// interface (the one TURN traffic arrives on; IPv4, one --turn-listen address and
    /// --relay-ip; allocations with a bandwidth limit stay on the user-space path).
    #[arg(long, env = "FIRSTCALL_XDP")]
    pub xdp: Option<String>,
    // ICE servers (issue 19).
    /// Another STUN/TURN server for clients (repeatable; env comma-separated), e.g. an
    /// existing coturn: turn:turn.example.org:3478?transport=udp, stun:host:port. Credentials
    /// for turn:/turns: URIs are minted with --turn-secret (coturn: use-auth-secret with the
    /// same static-auth-secret).
    #[arg(long = "ice-server", env = "FIRSTCALL_ICE_SERVER", value_delimiter = ',')]
    pub ice_server: Vec<String>,
    /// The host name the embedded server's own URIs carry instead of its IP address (a
    /// turns: URI must name the host its certificate is for).
    #[arg(long, env = "FIRSTCALL_PUBLIC_HOST")]
    pub public_host: Option<String>,
    /// Signaling only: start no embedded STUN/TURN listener; clients get only the
    /// --ice-server URIs.
    #[arg(long, env = "FIRSTCALL_NO_TURN")]
    pub no_turn: bool,
    /// Serve the HTTP listener (API, demo page, /v1/ws) over TLS with --tls-cert and
    /// --tls-key: https:// and wss://, which browsers need for camera and microphone on a
    /// page not served from localhost. Without it, put a TLS reverse proxy in front
    /// (docs/operations.md).
    #[arg(long, env = "FIRSTCALL_HTTP_TLS")]
    pub http_tls: bool,
}

/// Relay ports unless configured: above Linux's default ephemeral range (32768-60999),
/// so the kernel never gives a relay port to an outgoing socket (see [`crate::ports`]).
pub const DEFAULT_RELAY_PORTS: &str = "61000-65535";

/// Name of the generated secret file in the data dir.
pub const SECRET_FILE: &str = "turn-secret";

impl ServeArgs {
    /// Read `--config` if given, merge, apply defaults and validate.
    pub fn resolve(self) -> Result<ServeConfig, ConfigError> {
        let file = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
                    path: path.clone(),
                    source,
                })?;
                Some((path.clone(), text))
            }
            None => None,
        };
        self.resolve_with(file.as_ref().map(|(p, t)| (p.as_path(), t.as_str())))
    }

    /// As [`ServeArgs::resolve`], with the file's path and text given.
    pub fn resolve_with(self, file: Option<(&Path, &str)>) -> Result<ServeConfig, ConfigError> {
        self.merge(file)?.resolve_merged()
    }

    /// These settings (flags and variables) over the file's: a setting given here wins,
    /// one left unset (no value, an empty list, a switch off) shows the file's through.
    /// Generic over the fields: both sides go through one TOML table.
    pub fn merge(self, file: Option<(&Path, &str)>) -> Result<ServeArgs, ConfigError> {
        let Some((path, text)) = file else {
            return Ok(self);
        };
        let file_error = |message: String| ConfigError::ParseFile {
            path: path.to_owned(),
            message,
        };
        // The file is parsed on its own first, so that a mistake names its key.
        let from_file: ServeArgs = toml::from_str(text).map_err(|e| file_error(e.message().to_owned()))?;
        let mut table = toml::Table::try_from(&from_file).map_err(|e| file_error(e.to_string()))?;
        let given = toml::Table::try_from(&self).map_err(|e| invalid("flags", e.to_string()))?;
        for (key, value) in given {
            let unset = match &value {
                toml::Value::Boolean(on) => !on,
                toml::Value::Array(items) => items.is_empty(),
                _ => false,
            };
            if !unset {
                table.insert(key, value);
            }
        }
        let mut merged: ServeArgs = table
            .try_into()
            .map_err(|e: toml::de::Error| file_error(e.message().to_owned()))?;
        merged.config = self.config;
        Ok(merged)
    }

    /// Defaults and validation, once flags and file are merged.
    fn resolve_merged(self) -> Result<ServeConfig, ConfigError> {
        let dev = self.dev;
        let jwt_configured = self.jwt_secret.as_deref().is_some_and(|s| !s.is_empty())
            || self.jwt_public_key.is_some()
            || self.jwks_url.is_some();
        if dev && jwt_configured {
            return Err(invalid(
                "--dev",
                "dev mode accepts any dev:<user> token: give --dev or a JWT setting (--jwt-secret, --jwt-public-key, --jwks-url), not both",
            ));
        }
        if !dev && !jwt_configured {
            return Err(invalid(
                "--jwt-secret",
                "no way to verify users' tokens. Give --jwt-secret (HS256, shared with the backend that \
                 signs them) or --jwt-public-key (RS256/ES256 PEM) or --jwks-url (your identity provider's keys) — as FIRSTCALL_JWT_SECRET or a config \
                 key in production, not a flag — or, to try firstcall on this machine, --dev (accepts any \
                 `dev:<user>` token, listens on loopback)",
            ));
        }
        // A signaling-only node: settings of the embedded STUN/TURN server would be
        // silently ignored, so they are refused, named.
        let no_turn = self.no_turn;
        if no_turn {
            let given: Vec<&str> = [
                ("--turn-listen", self.turn_listen.is_some()),
                ("--turn-tls-listen", self.turn_tls_listen.is_some()),
                ("--tls-cert", self.tls_cert.is_some()),
                ("--tls-key", self.tls_key.is_some()),
                ("--realm", self.realm.is_some()),
                ("--external-ip", self.external_ip.is_some()),
                ("--relay-ip", self.relay_ip.is_some()),
                ("--relay-ports", self.relay_ports.is_some()),
                ("--allow-peer", !self.allow_peer.is_empty()),
                ("--deny-peer", !self.deny_peer.is_empty()),
                ("--threads", self.threads.is_some()),
                ("--static-user", !self.static_user.is_empty()),
                ("--max-allocations", self.max_allocations.is_some()),
                ("--max-allocations-per-user", self.max_allocations_per_user.is_some()),
                ("--public-host", self.public_host.is_some()),
                ("--turn-error-rate", self.turn_error_rate.is_some()),
                ("--turn-error-burst", self.turn_error_burst.is_some()),
                ("--turn-error-table", self.turn_error_table.is_some()),
                ("--max-bps", self.max_bps.is_some()),
                ("--user-max-bps", self.user_max_bps.is_some()),
                ("--turn-stream-queue", self.turn_stream_queue.is_some()),
                ("--turn-stream-timeout", self.turn_stream_timeout.is_some()),
                ("--turn-peer-grant-ttl", self.turn_peer_grant_ttl.is_some()),
                ("--turn-io", self.turn_io.is_some()),
                ("--xdp", self.xdp.is_some()),
            ]
            .into_iter()
            .filter_map(|(flag, set)| set.then_some(flag))
            .collect();
            if !given.is_empty() {
                return Err(invalid(
                    "--no-turn",
                    format!(
                        "starts no embedded STUN/TURN server, so {} would do nothing: remove them, or drop --no-turn",
                        given.join(", ")
                    ),
                ));
            }
        }
        let ice_servers = self
            .ice_server
            .clone()
            .iter()
            .map(|u| IceUri::parse(u.trim()).map_err(|m| invalid("--ice-server", m)))
            .collect::<Result<Vec<_>, _>>()?;
        let public_host = self.public_host.clone();
        if let Some(h) = &public_host {
            let literal6 = h.trim_matches(['[', ']']).parse::<std::net::Ipv6Addr>().is_ok();
            if !valid_host(h) && !literal6 {
                return Err(invalid(
                    "--public-host",
                    format!("{h:?} is not a host name (e.g. turn.example.org) or IP address"),
                ));
            }
        }
        // Dev mode trusts anyone who can reach it: loopback unless told otherwise.
        let any_or_loopback = |port| {
            if dev {
                SocketAddr::from(([127, 0, 0, 1], port))
            } else {
                SocketAddr::from(([0, 0, 0, 0], port))
            }
        };
        let http_listen = self.http_listen.unwrap_or_else(|| any_or_loopback(8080));
        let turn_listen = self.turn_listen.unwrap_or_else(|| any_or_loopback(3478));
        let tls = match (self.tls_cert, self.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (None, None) => None,
            (Some(_), None) => return Err(invalid("--tls-cert", "given without --tls-key: give both or neither")),
            (None, Some(_)) => return Err(invalid("--tls-key", "given without --tls-cert: give both or neither")),
        };
        let turn_tls_listen = self.turn_tls_listen;
        let http_tls = self.http_tls;
        if http_tls && tls.is_none() {
            return Err(invalid("--http-tls", "needs --tls-cert and --tls-key"));
        }
        let key_settings = [
            self.jwt_secret.as_deref().is_some_and(|s| !s.is_empty()),
            self.jwt_public_key.is_some(),
            self.jwks_url.is_some(),
        ];
        if key_settings.iter().filter(|k| **k).count() > 1 {
            return Err(invalid(
                "--jwt-secret",
                "give one of --jwt-secret, --jwt-public-key and --jwks-url",
            ));
        }
        if turn_tls_listen.is_some() && tls.is_none() {
            return Err(invalid("--turn-tls-listen", "needs --tls-cert and --tls-key"));
        }
        let turn_tls_listen = tls
            .as_ref()
            .map(|_| turn_tls_listen.unwrap_or(SocketAddr::new(turn_listen.ip(), 5349)));
        let relay_ports = parse_port_range(&self.relay_ports.unwrap_or_else(|| DEFAULT_RELAY_PORTS.into()))?;
        let realm = self.realm.unwrap_or_else(|| "firstcall".into());
        if realm.is_empty() || realm.len() > 127 {
            return Err(invalid("--realm", "must be 1 to 127 characters"));
        }
        let external_ip = self.external_ip;
        if external_ip.is_some_and(|ip| ip.is_unspecified() || ip.is_multicast()) {
            return Err(invalid("--external-ip", "must be a unicast address clients can reach"));
        }
        let relay_ip = self.relay_ip.unwrap_or(turn_listen.ip());
        let static_users = self
            .static_user
            .into_iter()
            .map(|s| match s.split_once(':') {
                Some((u, p)) if !u.is_empty() && !p.is_empty() => Ok((u.to_owned(), p.to_owned())),
                _ => Err(invalid("--static-user", "expects USER:PASSWORD")),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let threads = self
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        if threads == 0 || threads > 1024 {
            return Err(invalid("--threads", "must be 1 to 1024"));
        }
        let data_dir = self.data_dir.unwrap_or_else(default_data_dir);
        let mut turn_secrets = self.turn_secret;
        turn_secrets.retain(|s| !s.is_empty());
        let secret_generated = turn_secrets.is_empty();
        if secret_generated {
            turn_secrets.push(load_or_create_secret(&data_dir)?);
        }
        // Signaling limits: each at least 1.
        let limit = |setting: &'static str, value: Option<usize>, default: usize| match value.unwrap_or(default) {
            0 => Err(invalid(setting, "must be at least 1")),
            n => Ok(n),
        };
        let max_calls_per_user = limit("--max-calls-per-user", self.max_calls_per_user, 8)?;
        let max_unacked_frames = limit("--max-unacked-frames", self.max_unacked_frames, 4096)?;
        let max_unacked_bytes = limit("--max-unacked-bytes", self.max_unacked_bytes, 1 << 20)?;
        let max_held_signals = limit("--max-held-signals", self.max_held_signals, 64)?;
        let max_held_bytes = limit("--max-held-bytes", self.max_held_bytes, 64 << 10)?;
        let max_held_signals_per_user = limit("--max-held-signals-per-user", self.max_held_signals_per_user, 256)?;
        let max_held_bytes_per_user = limit("--max-held-bytes-per-user", self.max_held_bytes_per_user, 256 << 10)?;
        let max_ringing_per_callee = limit("--max-ringing-per-callee", self.max_ringing_per_callee, 16)?;
        let max_devices_per_user = limit("--max-devices-per-user", self.max_devices_per_user, 16)?;
        let max_push_devices = limit("--max-push-devices", self.max_push_devices, 100_000)?;
        let max_ended_calls = limit("--max-ended-calls", self.max_ended_calls, 16_384)?;
        let max_invite_pairs = limit("--max-invite-pairs", self.max_invite_pairs, 16_384)?;
        // A late callee device gets the invite (its SDP up to 64 KiB) and every held
        // signal as unacknowledged frames: they must fit, or its session would be given
        // up on arrival.
        if max_unacked_bytes < (256 << 10).max(max_held_bytes + (128 << 10)) {
            return Err(invalid(
                "--max-unacked-bytes",
                format!(
                    "{max_unacked_bytes} is too small: at least 262144 and at least --max-held-bytes + 131072 ({})",
                    max_held_bytes + (128 << 10)
                ),
            ));
        }
        Ok(ServeConfig {
            http_listen,
            turn_listen,
            turn_tls_listen,
            tls,
            turn_secrets,
            secret_generated,
            realm,
            external_ip,
            relay_ip,
            relay_ports,
            allow_peers: self.allow_peer,
            deny_peers: self.deny_peer,
            data_dir,
            threads,
            static_users,
            max_allocations: self.max_allocations.unwrap_or(10_000),
            max_allocations_per_user: self.max_allocations_per_user.unwrap_or(64),
            log: self.log.unwrap_or_else(|| "info".into()),
            slow_socket_queue: self.slow_socket_queue.unwrap_or(1 << 20),
            session_ttl: parse_duration("--session-ttl", &self.session_ttl.unwrap_or_else(|| "60s".into()))?,
            ring_timeout: parse_duration("--ring-timeout", &self.ring_timeout.unwrap_or_else(|| "45s".into()))?,
            drain_timeout: parse_duration("--drain-timeout", &self.drain_timeout.unwrap_or_else(|| "10m".into()))?,
            jwt_secret: self.jwt_secret.filter(|s| !s.is_empty()),
            jwt_public_key: self.jwt_public_key,
            jwks_url: self.jwks_url.filter(|s| !s.is_empty()),
            redis_url: self.redis_url.filter(|s| !s.is_empty()),
            redis_prefix: self
                .redis_prefix
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "firstcall".into()),
            redis_checkpoint_every: self.redis_checkpoint_every.unwrap_or(10_000).max(1),
            webhook_url: self.webhook_url.filter(|s| !s.is_empty()),
            webhook_secret: self.webhook_secret.filter(|s| !s.is_empty()),
            credential_ttl: parse_duration("--credential-ttl", &self.credential_ttl.unwrap_or_else(|| "12h".into()))?,
            dev,
            max_connections: match self.max_connections {
                Some(0) => return Err(invalid("--max-connections", "must be at least 1")),
                n => n,
            },
            max_connections_per_ip: self.max_connections_per_ip,
            http_header_timeout: parse_duration(
                "--http-header-timeout",
                &self.http_header_timeout.unwrap_or_else(|| "10s".into()),
            )?,
            webhook_concurrency: match self.webhook_concurrency.unwrap_or(8) {
                0 => return Err(invalid("--webhook-concurrency", "must be at least 1")),
                n => n,
            },
            webhook_queue: self.webhook_queue.unwrap_or(1024),
            webhook_pair_interval: parse_duration_or_zero(
                "--webhook-pair-interval",
                &self.webhook_pair_interval.unwrap_or_else(|| "2s".into()),
            )?,
            webhook_pair_burst: match self.webhook_pair_burst.unwrap_or(3) {
                0 => return Err(invalid("--webhook-pair-burst", "must be at least 1")),
                n => n,
            },
            webhook_callee_burst: match self.webhook_callee_burst.unwrap_or(5) {
                0 => return Err(invalid("--webhook-callee-burst", "must be at least 1")),
                n => n,
            },
            webhook_callee_window: parse_duration(
                "--webhook-callee-window",
                &self.webhook_callee_window.unwrap_or_else(|| "60s".into()),
            )?,
            webhook_caller_burst: match self.webhook_caller_burst.unwrap_or(10) {
                0 => return Err(invalid("--webhook-caller-burst", "must be at least 1")),
                n => n,
            },
            webhook_max_entries: match self.webhook_max_entries.unwrap_or(65_536) {
                n if n < 3 => return Err(invalid("--webhook-max-entries", "must be at least 3")),
                n => n,
            },
            webhook_attempts: match self.webhook_attempts.unwrap_or(4) {
                n @ 1..=20 => n,
                _ => return Err(invalid("--webhook-attempts", "must be 1 to 20")),
            },
            webhook_timeout: parse_duration(
                "--webhook-timeout",
                &self.webhook_timeout.unwrap_or_else(|| "5s".into()),
            )?,
            jwt_audience: self.jwt_audience,
            jwt_issuer: self.jwt_issuer.filter(|s| !s.is_empty()),
            jwt_user_claim: self
                .jwt_user_claim
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "sub".into()),
            jwt_algorithms: self.jwt_algorithms,
            presence: self.presence.unwrap_or(if dev { Presence::All } else { Presence::Off }),
            metrics_listen: self.metrics_listen,
            log_format: self.log_format.unwrap_or_default(),
            max_calls_per_user,
            max_unacked_frames,
            max_unacked_bytes,
            max_held_signals,
            max_held_bytes,
            max_held_signals_per_user,
            max_held_bytes_per_user,
            max_ringing_per_callee,
            max_devices_per_user,
            max_push_devices,
            max_ended_calls,
            max_invite_pairs,
            // TURN limits (issue 17).
            turn_error_rate: self.turn_error_rate.unwrap_or(20),
            turn_error_burst: match self.turn_error_burst.unwrap_or(100) {
                0 => return Err(invalid("--turn-error-burst", "must be at least 1")),
                n => n,
            },
            turn_error_table: match self.turn_error_table.unwrap_or(65_536) {
                0 => return Err(invalid("--turn-error-table", "must be at least 1")),
                n => n,
            },
            max_bps: self.max_bps.unwrap_or(4_000_000),
            user_max_bps: self.user_max_bps.unwrap_or(12_500_000),
            turn_stream_queue: match self.turn_stream_queue.unwrap_or(256 * 1024) {
                n if n < 65_536 => {
                    return Err(invalid(
                        "--turn-stream-queue",
                        "must be at least 65536 (one largest frame)",
                    ))
                }
                n => n,
            },
            turn_stream_timeout: parse_duration(
                "--turn-stream-timeout",
                &self.turn_stream_timeout.unwrap_or_else(|| "120s".into()),
            )?,
            turn_peer_grant_ttl: parse_duration_or_zero(
                "--turn-peer-grant-ttl",
                &self.turn_peer_grant_ttl.unwrap_or_else(|| "30s".into()),
            )?,
            turn_io: self.turn_io.unwrap_or_default(),
            xdp: self.xdp.filter(|i| !i.is_empty()),
            ice_servers,
            public_host,
            no_turn,
            http_tls,
        })
    }
}

fn invalid(setting: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        setting,
        message: message.into(),
    }
}

/// Parse `MIN-MAX` (inclusive, 1..=65535, MIN <= MAX).
pub fn parse_port_range(s: &str) -> Result<RangeInclusive<u16>, ConfigError> {
    let bad = || {
        invalid(
            "--relay-ports",
            format!("{s:?} is not MIN-MAX with 1 <= MIN <= MAX <= 65535"),
        )
    };
    let (a, b) = s.trim().split_once('-').ok_or_else(bad)?;
    let (a, b) = (
        a.trim().parse::<u16>().map_err(|_| bad())?,
        b.trim().parse::<u16>().map_err(|_| bad())?,
    );
    if a == 0 || a > b {
        return Err(bad());
    }
    Ok(a..=b)
}

/// As [`parse_duration`], where zero (`0s`) is allowed: a setting zero turns off.
pub fn parse_duration_or_zero(setting: &'static str, s: &str) -> Result<Duration, ConfigError> {
    duration(setting, s, true)
}

/// Parse `90`, `90s`, `15m`, `12h`, `1d` (a bare number is seconds); must be positive.
pub fn parse_duration(setting: &'static str, s: &str) -> Result<Duration, ConfigError> {
    duration(setting, s, false)
}

fn duration(setting: &'static str, s: &str, zero_ok: bool) -> Result<Duration, ConfigError> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| invalid(setting, format!("{s:?} is not a duration like 60s, 15m, 12h")))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(invalid(setting, format!("{s:?}: unit must be s, m, h or d"))),
    };
    if n == 0 && !zero_ok {
        return Err(invalid(setting, "must be positive"));
    }
    Ok(Duration::from_secs(n.saturating_mul(mult)))
}

fn default_data_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("firstcall");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(h).join(".local/state/firstcall");
    }
    PathBuf::from("firstcall-data")
}

/// Name of the generated webhook signing key in the data dir.
pub const WEBHOOK_SECRET_FILE: &str = "webhook-secret";

/// The TURN secret kept in `dir`, created on first use.
fn load_or_create_secret(dir: &Path) -> Result<String, ConfigError> {
    load_or_create_named_secret(dir, SECRET_FILE).map(|(s, _)| s)
}

/// The secret kept in `dir`/`name`, created (32 random bytes, base64url, mode 0600) on
/// first use; with its path.
pub fn load_or_create_named_secret(dir: &Path, name: &str) -> Result<(String, PathBuf), ConfigError> {
    use base64::Engine;
    let err = |source| ConfigError::DataDir {
        path: dir.to_owned(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    let path = dir.join(name);
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => return Ok((s.trim().to_owned(), path)),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let mut bytes = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(&path).map_err(err)?;
    std::io::Write::write_all(&mut f, secret.as_bytes()).map_err(err)?;
    Ok((secret, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zero_duration_only_where_zero_turns_a_setting_off() {
        assert_eq!(parse_duration_or_zero("--x", "0s").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration_or_zero("--x", "0").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration_or_zero("--x", "2s").unwrap(), Duration::from_secs(2));
        assert!(parse_duration_or_zero("--x", "0ss").is_err());
        assert!(parse_duration("--x", "0s").is_err());
    }
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ServeArgs,
    }

    /// `serve` with `a`, and a JWT secret unless `a` chooses dev mode or a JWT setting.
    fn args(a: &[&str]) -> ServeArgs {
        let auth = !a.iter().any(|x| x.starts_with("--dev") || x.starts_with("--jwt"));
        let jwt = auth.then_some(["--jwt-secret", "k"]).into_iter().flatten();
        raw_args(&a.iter().copied().chain(jwt).collect::<Vec<_>>())
    }

    fn raw_args(a: &[&str]) -> ServeArgs {
        Cli::try_parse_from(std::iter::once("serve").chain(a.iter().copied()))
            .unwrap()
            .args
    }

    #[test]
    fn no_token_setting_refuses_to_start_and_says_how_to_choose() {
        let dir = temp_dir("devmode");
        let d = dir.to_str().unwrap();
        let e = raw_args(&["--data-dir", d]).resolve_with(None).unwrap_err().to_string();
        for hint in ["--jwt-secret", "--jwt-public-key", "--dev"] {
            assert!(e.contains(hint), "{e}");
        }
        // Empty secrets do not count as configured.
        assert!(raw_args(&["--data-dir", d, "--jwt-secret", ""])
            .resolve_with(None)
            .is_err());
        // Dev mode listens on loopback unless told otherwise.
        let c = raw_args(&["--data-dir", d, "--dev"]).resolve_with(None).unwrap();
        assert!(c.dev);
        assert_eq!(c.http_listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.turn_listen, "127.0.0.1:3478".parse().unwrap());
        let c = raw_args(&["--data-dir", d, "--dev", "--http-listen", "0.0.0.0:9000"])
            .resolve_with(None)
            .unwrap();
        assert_eq!(c.http_listen, "0.0.0.0:9000".parse().unwrap());
        // From the file too, and never together with a JWT setting.
        let c = raw_args(&["--data-dir", d])
            .resolve_with(Some((Path::new("x.toml"), "dev = true")))
            .unwrap();
        assert!(c.dev);
        let e = raw_args(&["--data-dir", d, "--dev", "--jwt-secret", "s"])
            .resolve_with(None)
            .unwrap_err();
        assert!(e.to_string().contains("not both"), "{e}");
        let c = raw_args(&["--data-dir", d])
            .resolve_with(Some((Path::new("x.toml"), "jwt_secret = \"s\"")))
            .unwrap();
        assert!(!c.dev);
        assert_eq!(c.http_listen, "0.0.0.0:8080".parse().unwrap());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn connection_and_webhook_limits() {
        let dir = temp_dir("limits");
        let d = dir.to_str().unwrap();
        let c = args(&["--data-dir", d]).resolve_with(None).unwrap();
        assert_eq!(c.max_connections, None);
        assert_eq!(c.max_connections_per_ip, None);
        assert_eq!(c.http_header_timeout, Duration::from_secs(10));
        assert_eq!((c.webhook_concurrency, c.webhook_queue), (8, 1024));
        assert_eq!((c.webhook_attempts, c.webhook_timeout), (4, Duration::from_secs(5)));
        let c = args(&[
            "--data-dir",
            d,
            "--max-connections",
            "50",
            "--max-connections-per-ip",
            "0",
        ])
        .resolve_with(Some((
            Path::new("x.toml"),
            "http_header_timeout = \"3s\"\nwebhook_callee_burst = 2\nwebhook_attempts = 2\nwebhook_timeout = \"1s\"",
        )))
        .unwrap();
        assert_eq!((c.webhook_attempts, c.webhook_timeout), (2, Duration::from_secs(1)));
        assert_eq!((c.max_connections, c.max_connections_per_ip), (Some(50), Some(0)));
        assert_eq!(c.http_header_timeout, Duration::from_secs(3));
        assert_eq!(c.webhook_callee_burst, 2);
        for bad in [
            &["--max-connections", "0"][..],
            &["--webhook-concurrency", "0"],
            &["--webhook-callee-burst", "0"],
            &["--webhook-attempts", "0"],
            &["--webhook-attempts", "21"],
            &["--webhook-timeout", "0s"],
            &["--http-header-timeout", "0s"],
        ] {
            let a: Vec<&str> = ["--data-dir", d].iter().chain(bad).copied().collect();
            assert!(args(&a).resolve_with(None).is_err(), "{bad:?}");
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    fn temp_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("firstcall-config-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn flag_beats_file_beats_default() {
        let dir = temp_dir("prec");
        let file = "realm = \"from-file\"\nturn_secret = [\"f1\", \"f2\"]\nthreads = 3\n";
        let p = Path::new("x.toml");
        let c = args(&["--realm", "from-flag", "--data-dir", dir.to_str().unwrap()])
            .resolve_with(Some((p, file)))
            .unwrap();
        assert_eq!(c.realm, "from-flag");
        assert_eq!(c.turn_secrets, vec!["f1", "f2"]);
        assert_eq!(c.threads, 3);
        let c = args(&[
            "--turn-secret",
            "a",
            "--turn-secret",
            "b",
            "--data-dir",
            dir.to_str().unwrap(),
        ])
        .resolve_with(Some((p, file)))
        .unwrap();
        assert_eq!(c.turn_secrets, vec!["a", "b"]);
        assert!(!c.secret_generated);
        let c = args(&["--data-dir", dir.to_str().unwrap(), "--turn-secret", "s"])
            .resolve_with(None)
            .unwrap();
        assert_eq!(c.realm, "firstcall");
        assert_eq!(c.relay_ports, 61000..=65535);
        assert_eq!(c.turn_listen, "0.0.0.0:3478".parse().unwrap());
        assert!(c.tls.is_none() && c.turn_tls_listen.is_none());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn flags_and_file_are_one_struct_merged_by_key() {
        // Every flag is a file key of the same name: a file setting each list, switch and
        // value merges under flags that leave them unset.
        let file = "dev = true\nallow_peer = [\"10.0.0.0/8\"]\nrealm = \"f\"\nlog_format = \"json\"\n";
        let m = raw_args(&["--realm", "cli"])
            .merge(Some((Path::new("x.toml"), file)))
            .unwrap();
        assert!(m.dev);
        assert_eq!(m.allow_peer, vec!["10.0.0.0/8"]);
        assert_eq!(m.realm.as_deref(), Some("cli"), "the flag wins");
        assert_eq!(m.log_format, Some(LogFormat::Json));
        let m = raw_args(&["--allow-peer", "192.0.2.0/24"])
            .merge(Some((Path::new("x.toml"), file)))
            .unwrap();
        assert_eq!(
            m.allow_peer,
            vec!["192.0.2.0/24"],
            "a list given as flags replaces the file's"
        );
        // `config` is a flag only: a file naming another file is refused.
        let e = raw_args(&[])
            .merge(Some((Path::new("x.toml"), "config = \"other.toml\"")))
            .unwrap_err();
        assert!(e.to_string().contains("config"), "{e}");
        // A value of the wrong type names the key.
        let e = raw_args(&[])
            .merge(Some((Path::new("x.toml"), "threads = \"four\"")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("x.toml") && e.contains("invalid type"), "{e}");
    }

    /// packaging/firstcall.toml (the Debian package's /etc/firstcall/firstcall.toml) lists
    /// every setting, commented out, with a value of the right type: uncommented, they
    /// all parse. Regenerate it with packaging/gen-config after adding a setting.
    #[test]
    fn packaged_config_names_every_setting() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging/firstcall.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let settings: Vec<(&str, &str)> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# ")?.split_once(" = "))
            .filter(|(k, _)| k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
            .collect();
        assert!(
            text.lines().all(|l| l.is_empty() || l.starts_with('#')),
            "every setting commented out"
        );
        let uncommented: String = settings.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
        let parsed: Result<ServeArgs, _> = toml::from_str(&uncommented);
        assert!(parsed.is_ok(), "{:?}", parsed.err());
        let cmd = <ServeArgs as clap::Args>::augment_args(clap::Command::new("serve"));
        let mut all: Vec<String> = cmd
            .get_arguments()
            .map(|a| a.get_id().to_string())
            .filter(|id| id != "config")
            .collect();
        let mut listed: Vec<String> = settings.iter().map(|(k, _)| k.to_string()).collect();
        all.sort();
        listed.sort();
        assert_eq!(
            listed, all,
            "packaging/firstcall.toml is out of date: run packaging/gen-config"
        );
    }

    #[test]
    fn unknown_file_key_is_named() {
        let e = raw_args(&[])
            .resolve_with(Some((Path::new("x.toml"), "turn_lisen = \"1.2.3.4:5\"")))
            .unwrap_err();
        assert!(e.to_string().contains("turn_lisen"), "{e}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("x", "90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("x", "15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("x", "1d").unwrap(), Duration::from_secs(86_400));
        for bad in ["", "0s", "5 minutes", "h", "-1s"] {
            assert!(parse_duration("x", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn relay_port_ranges() {
        assert_eq!(parse_port_range("50000-50010").unwrap(), 50000..=50010);
        for bad in ["70000-80000", "5-3", "abc", "0-10", "10", "-"] {
            assert!(parse_port_range(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn generated_secret_is_kept_and_reused() {
        let dir = temp_dir("secret");
        let a = args(&["--data-dir", dir.to_str().unwrap()]).resolve_with(None).unwrap();
        let b = args(&["--data-dir", dir.to_str().unwrap()]).resolve_with(None).unwrap();
        assert!(a.secret_generated);
        assert_eq!(a.turn_secrets, b.turn_secrets);
        assert!(a.turn_secrets[0].len() >= 40);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join(SECRET_FILE)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn tls_needs_both_files() {
        let e = args(&["--tls-cert", "c.pem", "--turn-secret", "s"])
            .resolve_with(None)
            .unwrap_err();
        assert!(e.to_string().contains("--tls-key"), "{e}");
        let c = args(&[
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem",
            "--turn-secret",
            "s",
            "--turn-listen",
            "127.0.0.1:3478",
        ])
        .resolve_with(None)
        .unwrap();
        assert_eq!(c.turn_tls_listen, Some("127.0.0.1:5349".parse().unwrap()));
    }

    #[test]
    fn turn_limits_have_defaults_flags_and_file_keys() {
        let c = args(&["--turn-secret", "s"]).resolve_with(None).unwrap();
        assert_eq!(
            (c.turn_error_rate, c.turn_error_burst, c.turn_error_table),
            (20, 100, 65_536)
        );
        assert_eq!((c.max_bps, c.user_max_bps), (4_000_000, 12_500_000));
        assert_eq!(c.turn_stream_queue, 256 * 1024);
        assert_eq!(c.turn_stream_timeout, Duration::from_secs(120));
        let file = "turn_error_rate = 5\nturn_error_burst = 7\nturn_error_table = 9\nmax_bps = 1000\n\
                    user_max_bps = 2000\nturn_stream_queue = 70000\nturn_stream_timeout = \"30s\"\n";
        let c = args(&["--turn-secret", "s", "--max-bps", "0"])
            .resolve_with(Some((Path::new("x.toml"), file)))
            .unwrap();
        assert_eq!((c.turn_error_rate, c.turn_error_burst, c.turn_error_table), (5, 7, 9));
        assert_eq!((c.max_bps, c.user_max_bps), (0, 2000), "the flag beats the file");
        assert_eq!(c.turn_stream_queue, 70_000);
        assert_eq!(c.turn_stream_timeout, Duration::from_secs(30));
        for bad in [
            &["--turn-error-burst", "0"][..],
            &["--turn-error-table", "0"],
            &["--turn-stream-queue", "1000"],
            &["--turn-stream-timeout", "0s"],
        ] {
            let e = args(&[&["--turn-secret", "s"][..], bad].concat())
                .resolve_with(None)
                .unwrap_err();
            assert!(e.to_string().contains(bad[0]), "{e}");
        }
    }

    #[test]
    fn static_users_and_bad_values() {
        let c = args(&["--static-user", "bob:pw", "--turn-secret", "s"])
            .resolve_with(None)
            .unwrap();
        assert_eq!(c.static_users, vec![("bob".into(), "pw".into())]);
        assert!(args(&["--static-user", "bob", "--turn-secret", "s"])
            .resolve_with(None)
            .is_err());
        assert!(args(&["--external-ip", "0.0.0.0", "--turn-secret", "s"])
            .resolve_with(None)
            .is_err());
    }

    #[test]
    fn signaling_limits_from_flags_file_and_defaults() {
        let dir = temp_dir("limits");
        let d = dir.to_str().unwrap();
        let c = args(&["--data-dir", d, "--turn-secret", "s"])
            .resolve_with(None)
            .unwrap();
        assert_eq!(
            (
                c.max_calls_per_user,
                c.max_unacked_frames,
                c.max_unacked_bytes,
                c.max_held_signals,
                c.max_held_bytes,
                c.max_held_signals_per_user,
                c.max_held_bytes_per_user,
                c.max_ringing_per_callee,
                c.max_devices_per_user
            ),
            (8, 4096, 1 << 20, 64, 65_536, 256, 262_144, 16, 16)
        );
        let file = "max_devices_per_user = 3\nmax_held_signals = 10\nmax_unacked_bytes = 500000\n";
        let c = args(&["--data-dir", d, "--turn-secret", "s", "--max-held-signals", "20"])
            .resolve_with(Some((Path::new("x.toml"), file)))
            .unwrap();
        assert_eq!(
            (c.max_devices_per_user, c.max_held_signals, c.max_unacked_bytes),
            (3, 20, 500_000)
        );
        let e = args(&["--data-dir", d, "--turn-secret", "s", "--max-ringing-per-callee", "0"])
            .resolve_with(None)
            .unwrap_err();
        assert!(e.to_string().contains("--max-ringing-per-callee"), "{e}");
        let e = args(&["--data-dir", d, "--turn-secret", "s", "--max-unacked-bytes", "100000"])
            .resolve_with(None)
            .unwrap_err();
        assert!(e.to_string().contains("--max-unacked-bytes"), "{e}");
        let e = args(&["--data-dir", d, "--turn-secret", "s", "--max-held-bytes", "1000000"])
            .resolve_with(None)
            .unwrap_err();
        assert!(e.to_string().contains("--max-held-bytes + 131072"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn ice_server_uris_are_validated() {
        for good in [
            "turn:turn.example.org:3478?transport=udp",
            "turn:turn.example.org:3478?transport=tcp",
            "turns:turn.example.org:5349?transport=tcp",
            "turns:turn.example.org",
            "stun:stun.example.org:19302",
            "stuns:stun.example.org",
            "turn:192.0.2.7:3478",
            "turn:[2001:db8::7]:3478?transport=udp",
            "stun:[2001:db8::7]",
            "turn:localhost",
        ] {
            let u = IceUri::parse(good).unwrap_or_else(|e| panic!("{good}: {e}"));
            assert_eq!(u.to_string(), good, "round trip");
        }
        for (bad, says) in [
            ("http://turn.example.org", "scheme"),
            ("turn://turn.example.org:3478", "no //"),
            ("turn:", "not a host name"),
            ("turn:turn.example.org:0", "port"),
            ("turn:turn.example.org:70000", "port"),
            ("turn:turn.example.org:34x", "port"),
            ("turn:turn.example.org:3478?transport=sctp", "only ?transport=udp"),
            ("turn:turn.example.org:3478?foo=bar", "only ?transport=udp"),
            ("stun:stun.example.org:3478?transport=udp", "no ?transport"),
            ("turn:user@turn.example.org", "no user"),
            ("turn:turn.example.org/path", "no user, path"),
            ("turn:bad_host:3478", "not a host name"),
            ("turn:-bad.example:3478", "not a host name"),
            ("turn:2001:db8::7:3478", "goes in brackets"),
            ("turn:[2001:db8::zz]:3478", "IPv6"),
            ("turn:[2001:db8::7:3478", "closing ]"),
            ("turn:300.1.1.1:3478", "not a host name"),
            ("turn:turn.example.org 3478", "spaces"),
            ("turn.example.org:3478", "scheme"),
            ("", "empty"),
        ] {
            let e = IceUri::parse(bad).expect_err(bad);
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn ice_servers_public_host_and_no_turn_from_flags_and_file() {
        let c = args(&[
            "--turn-secret",
            "s",
            "--ice-server",
            "turn:turn.example.org:3478?transport=udp",
            "--ice-server",
            "stun:stun.example.org",
            "--public-host",
            "turn.example.org",
        ])
        .resolve_with(None)
        .unwrap();
        assert_eq!(c.ice_servers.len(), 2);
        assert!(c.ice_servers[0].is_turn() && !c.ice_servers[1].is_turn());
        assert_eq!(c.public_host.as_deref(), Some("turn.example.org"));
        assert!(!c.no_turn);
        let file = "ice_server = [\"turns:turn.example.org:5349\"]\nno_turn = true\n";
        let c = args(&["--turn-secret", "s"])
            .resolve_with(Some((Path::new("x.toml"), file)))
            .unwrap();
        assert!(c.no_turn);
        assert_eq!(c.ice_servers[0].to_string(), "turns:turn.example.org:5349");
        // A bad URI is a start-up error naming the flag and the URI.
        let e = args(&[
            "--turn-secret",
            "s",
            "--ice-server",
            "turn:turn.example.org:3478?transport=sctp",
        ])
        .resolve_with(None)
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("--ice-server:") && e.contains("transport=sctp"), "{e}");
        let e = args(&["--turn-secret", "s", "--public-host", "not a host"])
            .resolve_with(None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--public-host"), "{e}");
        // --no-turn with settings of the TURN server it does not start: refused, named.
        let e = args(&[
            "--turn-secret",
            "s",
            "--no-turn",
            "--relay-ports",
            "50000-50010",
            "--max-bps",
            "9",
        ])
        .resolve_with(None)
        .unwrap_err()
        .to_string();
        assert!(e.contains("--no-turn") && e.contains("--relay-ports, --max-bps"), "{e}");
        let e = args(&["--turn-secret", "s", "--no-turn"])
            .resolve_with(Some((Path::new("x.toml"), "turn_listen = \"127.0.0.1:3478\"")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--turn-listen"), "{e}");
    }
}
