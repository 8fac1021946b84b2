//! `firstcall doctor`: check a deployment end to end and say what to fix.

use std::io::{IsTerminal, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use firstcall_client::turn::{Client, Credentials, Kind, Relayed, TurnError};
use firstcall_turn::auth::{parse_rest_username, rest_credential, Secret};
use firstcall_turn::filter::PeerFilter;
use serde_json::{json, Value};

/// Flags of `firstcall doctor`.
#[derive(clap::Args, Debug)]
pub struct DoctorArgs {
    /// A firstcall server (http://host:port): credentials, WebSocket and every URI it hands out are checked.
    #[arg(long)]
    server: Option<String>,
    /// Bearer token for --server.
    #[arg(long, env = "FIRSTCALL_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A TURN/STUN URI to check alone (repeatable): turn:host:port?transport=udp|tcp, turns:host:port, stun:host:port.
    #[arg(long = "turn")]
    turn: Vec<String>,
    /// TURN REST secret (coturn static-auth-secret): doctor mints its own credentials.
    #[arg(long, hide_env_values = true, env = "FIRSTCALL_DOCTOR_SECRET")]
    secret: Option<String>,
    /// TURN username (with --password), for static or pre-minted credentials.
    #[arg(long)]
    user: Option<String>,
    /// TURN password.
    #[arg(long, hide_env_values = true)]
    password: Option<String>,
    /// The public IP relayed addresses must carry (catches a wrong or missing external-ip).
    #[arg(long)]
    expect_ip: Option<IpAddr>,
    /// The relay port range the server should use, MIN-MAX.
    #[arg(long)]
    relay_ports: Option<String>,
    /// Extra PEM trust anchor for turns: (a private CA).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
    /// Per-step timeout in seconds.
    #[arg(long, default_value_t = 4)]
    timeout: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Status {
    Pass,
    Warn,
    Fail,
}

struct Report {
    checks: Vec<Value>,
    color: bool,
    json: bool,
    worst: Status,
}

impl Report {
    fn add(&mut self, target: &str, name: &str, status: Status, detail: impl Into<String>, fix: Option<String>) {
        let detail = detail.into();
        self.worst = self.worst.max(status);
        if !self.json {
            let (mark, c) = match status {
                Status::Pass => ("PASS", "32"),
                Status::Warn => ("WARN", "33"),
                Status::Fail => ("FAIL", "31"),
            };
            let mark = if self.color {
                format!("\x1b[{c}m{mark}\x1b[0m")
            } else {
                mark.to_owned()
            };
            if self.color {
                print!("\r\x1b[K");
            }
            println!("{mark}  {name:<22} {target}  {detail}");
            if let Some(f) = &fix {
                println!("      fix: {f}");
            }
        }
        let s = match status {
            Status::Pass => "pass",
            Status::Warn => "warn",
            Status::Fail => "fail",
        };
        self.checks
            .push(json!({"target": target, "check": name, "status": s, "detail": detail, "fix": fix}));
    }

    fn progress(&self, what: &str) {
        if !self.json && self.color {
            print!("\r\x1b[K… {what}");
            let _ = std::io::stdout().flush();
        }
    }
}

#[derive(Clone, Debug)]
struct Target {
    uri: String,
    turn: bool,
    tls: bool,
    tcp: bool,
    host: String,
    port: u16,
}

fn parse_uri(uri: &str) -> anyhow::Result<Target> {
    let (scheme, rest) = uri
        .split_once(':')
        .context("URI needs a scheme (turn:, turns:, stun:)")?;
    let (hostport, query) = rest.split_once('?').unwrap_or((rest, ""));
    let tls = scheme == "turns" || scheme == "stuns";
    let transport = query
        .strip_prefix("transport=")
        .unwrap_or(if tls { "tcp" } else { "udp" });
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !hostport.ends_with(']') => {
            (h.trim_matches(['[', ']']).to_owned(), p.parse().context("bad port")?)
        }
        _ => (
            hostport.trim_matches(['[', ']']).to_owned(),
            if tls { 5349 } else { 3478 },
        ),
    };
    if !["turn", "turns", "stun", "stuns"].contains(&scheme) {
        bail!("unknown scheme {scheme} in {uri}");
    }
    Ok(Target {
        uri: uri.to_owned(),
        turn: scheme.starts_with("turn"),
        tls,
        tcp: tls || transport == "tcp",
        host,
        port,
    })
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Run doctor; returns the process exit code (0: nothing failed).
pub async fn run(a: DoctorArgs) -> anyhow::Result<i32> {
    let mut r = Report {
        checks: vec![],
        color: !a.json && std::io::stdout().is_terminal(),
        json: a.json,
        worst: Status::Pass,
    };
    let timeout = Duration::from_secs(a.timeout.max(1));
    let mut targets: Vec<(Target, Option<Credentials>)> = vec![];
    let mut secret = a.secret.clone().map(Secret::new);

    if let Some(server) = &a.server {
        let token = a
            .token
            .clone()
            .context("--server needs --token (dev mode: dev:<user>)")?;
        let base = server.trim_end_matches('/');
        match check_server(&mut r, base, &token, timeout).await {
            Some((uris, creds)) => {
                for u in uris {
                    match parse_uri(&u) {
                        Ok(t) => targets.push((t, Some(creds.clone()))),
                        Err(e) => r.add(
                            &u,
                            "uri",
                            Status::Fail,
                            e.to_string(),
                            Some("the server advertises a URI clients cannot parse".into()),
                        ),
                    }
                }
            }
            None => secret = None,
        }
    }
    for u in &a.turn {
        let t = parse_uri(u)?;
        let creds = match (&a.secret, &a.user, &a.password) {
            (Some(s), _, _) => {
                let (username, password) = rest_credential(&Secret::new(s.clone()), "doctor", unix_now() + 3600);
                Some(Credentials { username, password })
            }
            (None, Some(u), Some(p)) => Some(Credentials {
                username: u.clone(),
                password: p.clone(),
            }),
            _ if t.turn => bail!("--turn {u} needs --secret, or --user and --password"),
            _ => None,
        };
        targets.push((t, creds));
    }
    if targets.is_empty() && a.server.is_none() {
        bail!("nothing to check: give --server URL --token T, or --turn URI with --secret S (or --user/--password)");
    }
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(ca) = &a.ca {
        let pem = std::fs::read(ca).with_context(|| format!("reading --ca {}", ca.display()))?;
        for c in rustls_pemfile::certs(&mut pem.as_slice()) {
            roots.add(c?).context("adding --ca certificate")?;
        }
    }
    let roots = Arc::new(roots);
    let relay_range = match &a.relay_ports {
        Some(s) => Some(firstcall_server::config::parse_port_range(s)?),
        None => None,
    };
    for (t, creds) in targets {
        let ctx = Ctx {
            timeout,
            roots: roots.clone(),
            expect_ip: a.expect_ip,
            relay_range: relay_range.clone(),
            secret: secret.clone(),
        };
        check_target(&mut r, &t, creds, &ctx).await;
    }
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"ok": r.worst != Status::Fail, "checks": r.checks}))?
        );
    } else {
        let (f, w) = (count(&r, "fail"), count(&r, "warn"));
        println!("\n{} checks: {} failed, {} warnings", r.checks.len(), f, w);
    }
    Ok(if r.worst == Status::Fail { 1 } else { 0 })
}

fn count(r: &Report, s: &str) -> usize {
    r.checks.iter().filter(|c| c["status"] == s).count()
}

struct Ctx {
    timeout: Duration,
    roots: Arc<rustls::RootCertStore>,
    expect_ip: Option<IpAddr>,
    relay_range: Option<std::ops::RangeInclusive<u16>>,
    secret: Option<Secret>,
}

/// `--server`: credentials endpoint, WebSocket hello/welcome, ICE servers in the welcome.
async fn check_server(
    r: &mut Report,
    base: &str,
    token: &str,
    timeout: Duration,
) -> Option<(Vec<String>, Credentials)> {
    r.progress("fetching TURN credentials");
    let url = format!("{base}/v1/turn-credentials");
    let creds = match http_get_json(&url, token, timeout).await {
        Ok((200, v)) => v,
        Ok((status, v)) => {
            r.add(
                base,
                "credentials endpoint",
                Status::Fail,
                format!("HTTP {status}: {v}"),
                Some("check the token (JWT signed with the server's --jwt-secret, not expired)".into()),
            );
            return None;
        }
        Err(e) => {
            r.add(
                base,
                "credentials endpoint",
                Status::Fail,
                e.to_string(),
                Some("is the server running and the HTTP port reachable?".into()),
            );
            return None;
        }
    };
    let uris: Vec<String> = creds["uris"]
        .as_array()
        .map(|a| a.iter().filter_map(|u| u.as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    let ttl = creds["ttl"].as_u64().unwrap_or(0);
    r.add(
        base,
        "credentials endpoint",
        Status::Pass,
        format!("{} URIs, ttl {ttl} s", uris.len()),
        None,
    );
    let ws = format!("{}/v1/ws", base.replacen("http", "ws", 1));
    r.progress("WebSocket hello");
    let started = Instant::now();
    match tokio::time::timeout(
        timeout,
        firstcall_client::signal::SignalClient::connect(&ws, token, "firstcall-doctor"),
    )
    .await
    {
        Ok(Ok(c)) => {
            let w = &c.welcome;
            r.add(
                base,
                "websocket hello",
                Status::Pass,
                format!(
                    "welcome in {} ms, heartbeat {} ms",
                    started.elapsed().as_millis(),
                    w["heartbeat_ms"]
                ),
                None,
            );
            let ice: Vec<String> = w["ice_servers"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|s| s["urls"].as_array().cloned().unwrap_or_default())
                .filter_map(|u| u.as_str().map(str::to_owned))
                .collect();
            let ttl = w["ice_ttl"].as_u64().unwrap_or(0);
            if ice.is_empty() {
                r.add(
                    base,
                    "ice servers in welcome",
                    Status::Fail,
                    "the welcome carries no ICE servers",
                    Some("clients need TURN before their first call: run the embedded TURN server (no --no-turn) or give --ice-server URIs".into()),
                );
            } else if ttl < 600 {
                r.add(
                    base,
                    "ice servers in welcome",
                    Status::Warn,
                    format!("{} URIs but ttl only {ttl} s", ice.len()),
                    Some("raise --credential-ttl (credentials must outlive the call setup and refreshes)".into()),
                );
            } else {
                r.add(
                    base,
                    "ice servers in welcome",
                    Status::Pass,
                    format!("{} URIs, ttl {ttl} s", ice.len()),
                    None,
                );
            }
            if ice
                .iter()
                .any(|u| u.starts_with("turns:") || u.contains("transport=tcp"))
            {
                r.add(
                    base,
                    "tcp/tls fallback",
                    Status::Pass,
                    "a TCP or TLS TURN URI is offered",
                    None,
                );
            } else {
                r.add(
                    base,
                    "tcp/tls fallback",
                    Status::Warn,
                    "no TCP or TLS TURN URI",
                    Some("UDP-blocked networks cannot connect: offer turn:…?transport=tcp and turns:".into()),
                );
            }
        }
        Ok(Err(e)) => r.add(
            base,
            "websocket hello",
            Status::Fail,
            e.to_string(),
            Some("check the token and that /v1/ws is reachable (proxies must pass WebSocket upgrades)".into()),
        ),
        Err(_) => r.add(
            base,
            "websocket hello",
            Status::Fail,
            "no welcome in time",
            Some("is /v1/ws reachable? proxies must pass WebSocket upgrades".into()),
        ),
    }
    let username = creds["username"].as_str().unwrap_or_default().to_owned();
    let password = creds["password"].as_str().unwrap_or_default().to_owned();
    Some((uris, Credentials { username, password }))
}

async fn http_get_json(url: &str, token: &str, timeout: Duration) -> anyhow::Result<(u16, Value)> {
    let rest = url
        .strip_prefix("http://")
        .context("only http:// servers are supported yet (put doctor next to the TLS terminator)")?;
    let (hostport, path) = rest
        .split_once('/')
        .map(|(h, p)| (h, format!("/{p}")))
        .unwrap_or((rest, "/".into()));
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(hostport).await?;
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {hostport}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
        );
        tokio::io::AsyncWriteExt::write_all(&mut s, req.as_bytes()).await?;
        let mut body = vec![];
        tokio::io::AsyncReadExt::read_to_end(&mut s, &mut body).await?;
        anyhow::Ok(String::from_utf8_lossy(&body).into_owned())
    };
    let text = tokio::time::timeout(timeout, fut).await.context("timed out")??;
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    Ok((
        status,
        serde_json::from_str(body).unwrap_or(Value::String(body.chars().take(200).collect())),
    ))
}

async fn resolve(host: &str, port: u16) -> anyhow::Result<SocketAddr> {
    tokio::net::lookup_host((host, port))
        .await?
        .next()
        .with_context(|| format!("{host} does not resolve"))
}

fn kind(t: &Target, roots: &Arc<rustls::RootCertStore>) -> Kind {
    if t.tls {
        Kind::Tls {
            server_name: t.host.clone(),
            roots: roots.clone(),
        }
    } else if t.tcp {
        Kind::Tcp
    } else {
        Kind::Udp
    }
}

async fn connect(t: &Target, addr: SocketAddr, creds: Credentials, ctx: &Ctx) -> Result<Client, TurnError> {
    let mut c = tokio::time::timeout(ctx.timeout, Client::connect(addr, &kind(t, &ctx.roots), creds))
        .await
        .map_err(|_| TurnError::Timeout(ctx.timeout))??;
    c.timeout = ctx.timeout;
    Ok(c)
}

async fn check_target(r: &mut Report, t: &Target, creds: Option<Credentials>, ctx: &Ctx) {
    let name = &t.uri;
    let proto = if t.tls {
        "tls"
    } else if t.tcp {
        "tcp"
    } else {
        "udp"
    };
    let addr = match resolve(&t.host, t.port).await {
        Ok(a) => a,
        Err(e) => {
            return r.add(
                name,
                "resolve",
                Status::Fail,
                e.to_string(),
                Some("fix the DNS name in the URI".into()),
            )
        }
    };
    let creds = creds.unwrap_or(Credentials {
        username: String::new(),
        password: String::new(),
    });
    // 1. STUN binding (and, for TLS, the certificate).
    r.progress(&format!("{name}: binding"));
    let mut c = match connect(t, addr, creds.clone(), ctx).await {
        Ok(c) => {
            if t.tls {
                r.add(
                    name,
                    "tls certificate",
                    Status::Pass,
                    format!("chain and name verified for {}", t.host),
                    None,
                );
            }
            c
        }
        Err(e) => {
            let (check, fix) = if t.tls {
                ("tls certificate", format!("the TLS handshake failed: use a certificate valid for {} from a public CA (or pass --ca), and check it has not expired", t.host))
            } else {
                (
                    "connect",
                    format!(
                        "open {}/{proto} on the firewall and check the server listens there",
                        t.port
                    ),
                )
            };
            return r.add(name, check, Status::Fail, e.to_string(), Some(fix));
        }
    };
    match c.binding().await {
        Ok((mapped, rtt)) => r.add(name, &format!("stun binding ({proto})"), Status::Pass, format!("mapped {mapped}, rtt {:.1} ms", rtt.as_secs_f64() * 1000.0), None),
        Err(e) => r.add(name, &format!("stun binding ({proto})"), Status::Fail, e.to_string(), Some("STUN is off or blocked: enable it (coturn: remove no-stun) and open the port; clients then lose their server-reflexive candidates".into())),
    }
    if !t.turn {
        return;
    }
    // 2. Allocate: the 401 challenge, then the authenticated request.
    r.progress(&format!("{name}: allocate"));
    let first = c.allocate(Some(600)).await;
    let challenged = c.session.has_nonce();
    if challenged {
        r.add(
            name,
            "401 challenge",
            Status::Pass,
            format!("realm {:?} and a nonce", c.session.realm().unwrap_or("")),
            None,
        );
    } else if let Err(e) = &first {
        r.add(
            name,
            "401 challenge",
            Status::Fail,
            e.to_string(),
            Some("the server must answer an unauthenticated Allocate with 401, REALM and NONCE".into()),
        );
    }
    let alloc = match first {
        Ok(a) => {
            r.add(
                name,
                &format!("allocate ({proto})"),
                Status::Pass,
                format!("relayed {} lifetime {} s", a.relayed, a.lifetime),
                None,
            );
            a
        }
        Err(e) => {
            if e.code() == Some(401) && challenged {
                diagnose_credentials(r, name, &creds, t, addr, ctx).await;
            } else {
                r.add(
                    name,
                    &format!("allocate ({proto})"),
                    Status::Fail,
                    e.to_string(),
                    Some(allocate_fix(&e)),
                );
            }
            return;
        }
    };
    r.add(
        name,
        "credentials",
        Status::Pass,
        credential_detail(&creds.username),
        None,
    );
    check_relayed(r, name, alloc.relayed, ctx);
    match c.refresh(600).await {
        Ok(l) => r.add(
            name,
            "lifetimes",
            Status::Pass,
            format!(
                "allocation {} s, refresh granted {l} s, permissions 300 s (RFC 8656)",
                alloc.lifetime
            ),
            None,
        ),
        Err(e) => r.add(
            name,
            "lifetimes",
            Status::Fail,
            format!("refresh: {e}"),
            Some("the server refuses Refresh: clients lose their relay after the first lifetime".into()),
        ),
    }
    // 5. Data through the relay, both ways, Send and ChannelData.
    r.progress(&format!("{name}: relaying data"));
    match connect(t, addr, creds.clone(), ctx).await {
        Ok(mut b) => match b.allocate(Some(600)).await {
            Ok(balloc) => data_check(r, name, &mut c, alloc.relayed, &mut b, balloc.relayed, ctx).await,
            Err(e) => r.add(
                name,
                "relay data",
                Status::Fail,
                format!("second allocation: {e}"),
                Some(allocate_fix(&e)),
            ),
        },
        Err(e) => r.add(name, "relay data", Status::Fail, format!("second client: {e}"), None),
    }
    // 8. Security: relaying into loopback, private and metadata ranges must be refused.
    r.progress(&format!("{name}: peer filtering"));
    for (peer, critical) in [
        ("127.0.0.1:9", true),
        ("[::1]:9", true),
        ("[::ffff:127.0.0.1]:9", true),
        ("169.254.169.254:80", true),
        ("10.0.0.1:9", false),
    ] {
        let p: SocketAddr = peer.parse().expect("literal address");
        match c.permit(p).await {
            Err(e) if matches!(e.code(), Some(403 | 443)) => r.add(name, "peer filter", Status::Pass, format!("{peer} refused ({})", e.code().unwrap_or(0)), None),
            Ok(()) => r.add(
                name,
                "peer filter",
                if critical { Status::Fail } else { Status::Warn },
                format!("{peer} ACCEPTED: clients can reach it through the relay"),
                Some(if critical {
                    "refuse loopback and metadata peers (coturn: remove allow-loopback-peers, add denied-peer-ip=169.254.0.0-169.254.255.255; firstcall does this by default)".into()
                } else {
                    "deny private ranges unless relaying into them is intended (coturn: denied-peer-ip=10.0.0.0-10.255.255.255 …; firstcall: default)".into()
                }),
            ),
            Err(e) => r.add(name, "peer filter", Status::Warn, format!("{peer}: unexpected {e}"), None),
        }
    }
}

fn allocate_fix(e: &TurnError) -> String {
    match e.code() {
        Some(486) => {
            "allocation quota reached: raise the per-user/total quota or find who holds the allocations".into()
        }
        Some(508) => "no relay port could be bound: widen or free the relay port range".into(),
        Some(437) => "allocation mismatch: a previous allocation from this address is still alive".into(),
        Some(442) => "the server refuses UDP relaying".into(),
        _ => "see the error; check the TURN server log".into(),
    }
}

fn credential_detail(username: &str) -> String {
    match parse_rest_username(username) {
        Some(r) => format!(
            "REST credential for {:?}, expires in {} s",
            r.user,
            r.expiry_unix as i64 - unix_now() as i64
        ),
        None => format!("static user {username:?}"),
    }
}

/// 3. Tell a wrong secret from an expired credential from clock skew from an unknown user.
async fn diagnose_credentials(
    r: &mut Report,
    name: &str,
    creds: &Credentials,
    t: &Target,
    addr: SocketAddr,
    ctx: &Ctx,
) {
    let now = unix_now();
    if let Some(rest) = parse_rest_username(&creds.username) {
        if rest.expiry_unix < now {
            return r.add(
                name,
                "credentials",
                Status::Fail,
                format!(
                    "credential expired {} s ago (username {:?})",
                    now - rest.expiry_unix,
                    creds.username
                ),
                Some("mint fresh credentials: the TTL is too short or clients cache credentials past it".into()),
            );
        }
        if let Some(secret) = &ctx.secret {
            // Same secret, far-future expiry: if that works, the server's clock is ahead.
            let (username, password) = rest_credential(secret, rest.user, now + 10 * 365 * 86_400);
            if let Ok(mut c) = connect(t, addr, Credentials { username, password }, ctx).await {
                if c.allocate(Some(600)).await.is_ok() {
                    return r.add(
                        name,
                        "credentials",
                        Status::Fail,
                        format!(
                            "refused although it expires in {} s, while a 10-year credential works",
                            rest.expiry_unix - now
                        ),
                        Some("the server clock is ahead: fix NTP on the TURN server (or on this host)".into()),
                    );
                }
            }
            return r.add(
                name,
                "credentials",
                Status::Fail,
                "secret mismatch: credentials signed with this secret are refused",
                Some("use the server's static-auth-secret / --turn-secret (all nodes must share it)".into()),
            );
        }
        return r.add(name, "credentials", Status::Fail, format!("refused although it expires in {} s", rest.expiry_unix - now), Some("secret mismatch between the credential issuer and the TURN server, or server clock skew: compare static-auth-secret and clocks".into()));
    }
    r.add(
        name,
        "credentials",
        Status::Fail,
        format!("unknown user or wrong password for {:?}", creds.username),
        Some("check the static user and password (or use TURN REST credentials)".into()),
    );
}

/// 4. Is the relayed address public / the expected one / in the relay range?
fn check_relayed(r: &mut Report, name: &str, relayed: SocketAddr, ctx: &Ctx) {
    match ctx.expect_ip {
        Some(ip) if ip == relayed.ip() => r.add(name, "relayed address", Status::Pass, format!("{relayed} is the expected public address"), None),
        Some(ip) => r.add(name, "relayed address", Status::Fail, format!("{relayed}, expected {ip}"), Some(format!("the server advertises the wrong address: set --external-ip {ip} (coturn: external-ip={ip})"))),
        None => match PeerFilter::new(vec![], vec![]).check(relayed) {
            Ok(()) => r.add(name, "relayed address", Status::Pass, format!("{relayed} is public"), None),
            Err(why) => r.add(name, "relayed address", Status::Warn, format!("{relayed} is not public ({})", why.as_str()), Some("clients outside this network cannot reach it: behind a 1:1 NAT set --external-ip (coturn: external-ip)".into())),
        },
    }
    if let Some(range) = &ctx.relay_range {
        if range.contains(&relayed.port()) {
            r.add(
                name,
                "relay port range",
                Status::Pass,
                format!("port {} in {}-{}", relayed.port(), range.start(), range.end()),
                None,
            );
        } else {
            r.add(name, "relay port range", Status::Fail, format!("port {} outside {}-{}", relayed.port(), range.start(), range.end()), Some("the server uses other relay ports than the firewall opens: align min-port/max-port (--relay-ports) with the firewall".into()));
        }
    }
}

async fn data_check(
    r: &mut Report,
    name: &str,
    a: &mut Client,
    a_relay: SocketAddr,
    b: &mut Client,
    b_relay: SocketAddr,
    ctx: &Ctx,
) {
    if let Err(e) = a.permit(b_relay).await.and(b.permit(a_relay).await) {
        return r.add(
            name,
            "relay data",
            Status::Fail,
            format!("CreatePermission between the two relays: {e}"),
            Some("the server refuses relaying between its own relays (client-to-client calls need it)".into()),
        );
    }
    const N: usize = 10;
    let wait = Duration::from_millis(700).min(ctx.timeout);
    // Send indications A→B and B→A.
    let mut got = 0;
    let mut rtts = vec![];
    for i in 0..N {
        let payload = format!("doctor-send-{i}").into_bytes();
        let t0 = Instant::now();
        if a.send_indication(b_relay, &payload).await.is_err() {
            continue;
        }
        if let Ok(Relayed::Data { peer, data }) = b.recv_relayed(wait).await {
            if data == payload && peer == a_relay && b.send_indication(a_relay, &payload).await.is_ok() {
                if let Ok(Relayed::Data { data, .. }) = a.recv_relayed(wait).await {
                    if data == payload {
                        got += 1;
                        rtts.push(t0.elapsed());
                    }
                }
            }
        }
    }
    report_data(r, name, "relay data (send)", got, N, &rtts, ctx);
    // Channels both ways.
    if let Err(e) = a
        .bind_channel(0x4001, b_relay)
        .await
        .and(b.bind_channel(0x4002, a_relay).await)
    {
        return r.add(
            name,
            "relay data (channel)",
            Status::Fail,
            format!("ChannelBind: {e}"),
            None,
        );
    }
    let (mut got, mut rtts) = (0, vec![]);
    for i in 0..N {
        let payload = format!("doctor-chan-{i}").into_bytes();
        let t0 = Instant::now();
        if a.send_channel(0x4001, &payload).await.is_err() {
            continue;
        }
        if let Ok(Relayed::Channel { data, .. }) = b.recv_relayed(wait).await {
            if data == payload && b.send_channel(0x4002, &payload).await.is_ok() {
                if let Ok(Relayed::Channel { data, .. }) = a.recv_relayed(wait).await {
                    if data == payload {
                        got += 1;
                        rtts.push(t0.elapsed());
                    }
                }
            }
        }
    }
    report_data(r, name, "relay data (channel)", got, N, &rtts, ctx);
}

fn report_data(r: &mut Report, name: &str, check: &str, got: usize, n: usize, rtts: &[Duration], ctx: &Ctx) {
    let ports = ctx.relay_range.as_ref().map_or("the relay port range".to_owned(), |p| {
        format!("UDP {}-{}", p.start(), p.end())
    });
    if got == 0 {
        r.add(
            name,
            check,
            Status::Fail,
            format!("0/{n} round trips through the relay"),
            Some(format!(
                "relayed packets do not flow: open {ports} on the firewall (both directions) and check --external-ip"
            )),
        );
    } else {
        let avg = rtts.iter().sum::<Duration>().as_secs_f64() * 1000.0 / rtts.len() as f64;
        let status = if got == n { Status::Pass } else { Status::Warn };
        r.add(
            name,
            check,
            status,
            format!(
                "{got}/{n} round trips, loss {:.0}%, rtt {avg:.1} ms",
                100.0 * (n - got) as f64 / n as f64
            ),
            (got < n).then(|| format!("packet loss on the relay path: check {ports} and the network")),
        );
    }
}
