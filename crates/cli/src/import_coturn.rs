//! `firstcall import-coturn`: translate coturn's `turnserver.conf` into a firstcall
//! config file, and say what became of every coturn setting (carried over, not needed,
//! not carried and why, unknown). Secrets go into the file (where they are needed) and
//! never into the report.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use firstcall_server::config::{ServeArgs, DEFAULT_RELAY_PORTS};
use firstcall_turn::filter::{default_denied, Cidr};

/// `firstcall import-coturn FILE`.
#[derive(clap::Args)]
pub struct ImportArgs {
    /// coturn's configuration file, e.g. /etc/turnserver.conf.
    pub file: PathBuf,
    /// Write the firstcall config here (created with mode 0600) instead of stdout.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
    /// Replace --output if it exists.
    #[arg(long)]
    pub force: bool,
}

/// Run the import; the process exit code (0, or 2 for bad input or an unwritable output).
pub fn run(a: &ImportArgs) -> i32 {
    match run_inner(a) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("firstcall import-coturn: {e}");
            2
        }
    }
}

fn run_inner(a: &ImportArgs) -> Result<(), String> {
    let bytes = std::fs::read(&a.file).map_err(|e| format!("cannot read {}: {e}", a.file.display()))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let line = e.as_bytes()[..e.utf8_error().valid_up_to()]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1;
        format!("{}:{line}: not UTF-8 text", a.file.display())
    })?;
    let base = a
        .file
        .canonicalize()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."));
    let imported = import(&text, &base).map_err(|e| format!("{}:{e}", a.file.display()))?;
    let (toml, report) = imported.render(&a.file);
    // The file must load in `firstcall serve --config`: check it with the same code.
    let check = ServeArgs {
        jwt_secret: Some("check".into()),
        turn_secret: vec!["check".into()],
        ..ServeArgs::default()
    };
    if let Err(e) = check.resolve_with(Some((Path::new("imported.toml"), &toml))) {
        return Err(format!(
            "the translated config does not load ({e}); please report this with the coturn file"
        ));
    }
    match &a.output {
        None => print!("{toml}"),
        Some(out) => {
            write_private(out, &toml, a.force).map_err(|e| format!("cannot write {}: {e}", out.display()))?;
        }
    }
    eprint!("{report}");
    if let Some(out) = &a.output {
        eprintln!(
            "Wrote {} (mode 0600). Start it with: firstcall serve --config {}",
            out.display(),
            out.display()
        );
    }
    Ok(())
}

fn write_private(path: &Path, text: &str, force: bool) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true);
    if force {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            std::io::Error::new(e.kind(), "it exists (give --force to replace it)")
        } else {
            e
        }
    })?;
    std::io::Write::write_all(&mut f, text.as_bytes())
}

/// What became of one coturn line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Carried over: what it became.
    Carried(String),
    /// firstcall does it already (or it was switched off).
    NotNeeded(String),
    /// Not carried over, with why.
    NotCarried(String),
    /// Not a coturn setting this importer knows.
    Unknown,
}

/// One setting line of the coturn file.
#[derive(Debug, Clone)]
pub struct Entry {
    /// 1-based line number.
    pub line: usize,
    /// The option name.
    pub key: String,
    value: Option<String>,
    /// What happened to it.
    pub outcome: Outcome,
}

impl Entry {
    /// The line as shown in the report: secrets hidden.
    pub fn shown(&self) -> String {
        match (&self.value, self.key.as_str()) {
            (None, k) => k.to_owned(),
            (Some(v), "user") => format!("user={}:(hidden)", v.split_once(':').map_or(v.as_str(), |(u, _)| u)),
            (Some(_), k) if SECRET_KEYS.contains(&k) => format!("{k}=(hidden)"),
            (Some(v), k) => format!("{k}={v}"),
        }
    }
}

/// Settings whose value is (or holds) a secret.
const SECRET_KEYS: &[&str] = &[
    "static-auth-secret",
    "cli-password",
    "pkey-pwd",
    "psql-userdb",
    "mysql-userdb",
    "mongo-userdb",
    "redis-userdb",
    "redis-statsdb",
];

/// coturn settings that are flags: bare, or with a boolean value.
const FLAGS: &[&str] = &[
    "fingerprint",
    "lt-cred-mech",
    "no-auth",
    "use-auth-secret",
    "no-udp",
    "no-tcp",
    "no-tls",
    "no-dtls",
    "no-udp-relay",
    "no-tcp-relay",
    "stun-only",
    "no-stun",
    "secure-stun",
    "mobility",
    "allow-loopback-peers",
    "no-loopback-peers",
    "no-multicast-peers",
    "no-cli",
    "web-admin",
    "web-admin-listen-on-workers",
    "server-relay",
    "udp-self-balance",
    "check-origin-consistency",
    "no-software-attribute",
    "no-rfc5780",
    "no-stun-backward-compatibility",
    "response-origin-only-with-rfc5780",
    "verbose",
    "Verbose",
    "syslog",
    "no-stdout-log",
    "simple-log",
    "new-log-timestamp",
    "log-binding",
    "daemon",
    "prometheus",
    "prometheus-username-labels",
    "keep-address-family",
    "no-dynamic-ip-list",
    "no-dynamic-realms",
    "no-auth-pings",
    "oauth",
    "dh566",
    "dh1066",
    "no-tlsv1",
    "no-tlsv1_1",
    "no-tlsv1_2",
    "no-tlsv1_3",
    "no-sslv2",
    "no-sslv3",
];

const LOGS: &str = "firstcall logs to stderr (the journal under systemd): choose where in the service unit \
                    (e.g. StandardError=append:/var/log/firstcall.log), the level with `log`, JSON with log_format = \"json\"";
const NO_DB: &str = "firstcall has no user database: users get TURN REST credentials from its signaling, \
                     fixed accounts are static_user";
const NO_CLI: &str = "firstcall has no telnet CLI: /metrics, /healthz and /readyz on the HTTP listener instead";
const NO_WEB: &str = "firstcall has no web admin: /metrics, /healthz and /readyz on the HTTP listener instead";
const RUSTLS: &str = "firstcall's TLS (rustls) picks its own modern cipher suites and groups; not configurable";
const TLS12: &str = "firstcall's TLS (rustls) speaks only TLS 1.2 and 1.3";
const NO_BALANCE: &str = "firstcall has no ALTERNATE-SERVER redirection or auxiliary listeners: spread clients \
                          over several firstcall nodes by DNS or a load balancer";
const SYSTEMD: &str = "firstcall runs in the foreground without a pid file: let systemd run it (User=, Group=)";
const RFC5780: &str = "firstcall does not implement RFC 5780 NAT behaviour discovery (no alternate address or port)";
const FAMILY: &str = "firstcall relays in the address family of relay_ip only; a request for the other gets 440";

/// The fixed answer for a setting that needs no translation logic.
fn simple(key: &str) -> Option<Outcome> {
    use Outcome::{NotCarried as No, NotNeeded as Done};
    let s = |m: &str| m.to_owned();
    Some(match key {
        "fingerprint" => Done(s("firstcall adds FINGERPRINT to every response whose request carries one (as WebRTC clients' do)")),
        "lt-cred-mech" => Done(s("firstcall always uses the long-term credential mechanism (TURN REST credentials, and static_user accounts)")),
        "use-auth-secret" => Done(s("firstcall always accepts TURN REST credentials (coturn's use-auth-secret scheme)")),
        "no-dtls" => Done(s("firstcall has no DTLS listener")),
        "no-tcp-relay" => Done(s("firstcall makes UDP relays only (no RFC 6062 TCP relays)")),
        "no-multicast-peers" => Done(s("firstcall's peer filter refuses multicast peers by default")),
        "no-loopback-peers" => Done(s("firstcall's peer filter refuses loopback peers by default")),
        "no-cli" => Done(s("firstcall has no telnet CLI")),
        "no-rfc5780" => Done(s(RFC5780)),
        "response-origin-only-with-rfc5780" => Done(s("firstcall never sends RESPONSE-ORIGIN")),
        "no-tlsv1" | "no-tlsv1_1" | "no-sslv2" | "no-sslv3" => Done(s(TLS12)),
        "no-dynamic-ip-list" | "no-dynamic-realms" | "no-auth-pings" => Done(s("firstcall has no database to poll")),
        "prometheus" => Done(s("firstcall always serves Prometheus metrics at /metrics on the HTTP listener (metrics_listen = \"ADDR:PORT\" moves them)")),
        "ne" => Done(s("coturn's internal network engine choice")),
        "prometheus-port" => No(s("firstcall's /metrics is on the HTTP listener; set metrics_listen = \"ADDR:PORT\" for a listener of its own")),
        "prometheus-username-labels" => No(s("firstcall's metrics carry no per-user labels")),
        "log-file" | "syslog" | "syslog-facility" | "no-stdout-log" | "simple-log" | "new-log-timestamp"
        | "new-log-timestamp-format" | "log-binding" => No(s(LOGS)),
        "daemon" | "pidfile" | "proc-user" | "proc-group" => No(s(SYSTEMD)),
        "stale-nonce" => No(s("firstcall's nonces go stale after 1 hour; not configurable")),
        "max-allocate-lifetime" => No(s("firstcall caps allocation lifetimes at 3600 s (RFC 8656); not configurable")),
        "channel-lifetime" => No(s("firstcall keeps RFC 8656's 600 s channel lifetime; not configurable")),
        "permission-lifetime" => No(s("firstcall keeps RFC 8656's 300 s permission lifetime; not configurable")),
        "max-allocate-timeout" => No(s("firstcall has no allocation-establishment timeout setting")),
        "alt-listening-port" | "alt-tls-listening-port" => No(s(RFC5780)),
        "aux-server" | "udp-self-balance" | "alternate-server" | "tls-alternate-server" => No(s(NO_BALANCE)),
        "tcp-proxy-port" => No(s("firstcall has no PROXY-protocol listener")),
        "listening-device" | "relay-device" => No(s("firstcall binds addresses, not devices: give the device's address as listening-ip/relay-ip (turn_listen, relay_ip)")),
        "no-udp" => No(s("firstcall always listens on UDP at turn_listen: block it in the firewall if unwanted")),
        "no-tcp" => No(s("firstcall always listens on TCP at turn_listen: block it in the firewall if unwanted")),
        "no-udp-relay" => No(s("firstcall's relays are UDP relays; they cannot be turned off")),
        "stun-only" => No(s("firstcall always serves TURN as well; only users with credentials from its signaling can allocate")),
        "no-stun" => No(s("firstcall always answers STUN Binding requests")),
        "secure-stun" => No(s("firstcall answers STUN Binding requests without authentication")),
        "mobility" => No(s("firstcall has no MICE (mobility) support")),
        "check-origin-consistency" => No(s("firstcall ignores ORIGIN")),
        "server-relay" => No(s("firstcall always checks permissions on relayed packets")),
        "no-software-attribute" => No(s("firstcall always sends SOFTWARE (firstcall VERSION)")),
        "no-stun-backward-compatibility" => No(s("firstcall answers only RFC 5389+ requests (magic cookie) but puts MAPPED-ADDRESS next to XOR-MAPPED-ADDRESS in Binding responses; not configurable")),
        "keep-address-family" | "allocation-default-address-family" => No(s(FAMILY)),
        "cli-ip" | "cli-port" | "cli-password" | "cli-max-output-sessions" => No(s(NO_CLI)),
        "web-admin" | "web-admin-ip" | "web-admin-port" | "web-admin-listen-on-workers" => No(s(NO_WEB)),
        "acme-redirect" => No(s("firstcall does not answer ACME challenges: renew certificates with a separate ACME client")),
        "userdb" | "db" | "psql-userdb" | "mysql-userdb" | "mongo-userdb" | "redis-userdb" | "secret-key-file" => No(s(NO_DB)),
        "redis-statsdb" => No(s("firstcall keeps no statistics in Redis: /metrics instead")),
        "oauth" | "server-name" => No(s("firstcall has no TURN OAuth (RFC 7635): users get TURN REST credentials from its signaling")),
        "no-auth" => No(s("firstcall always requires credentials: users get TURN REST credentials from its signaling")),
        "cipher-list" | "ec-curve-name" | "dh566" | "dh1066" | "dh-file" => No(s(RUSTLS)),
        "CA-file" => No(s("firstcall does not verify TURN clients' certificates")),
        "pkey-pwd" => No(s("firstcall reads unencrypted PEM keys only: decrypt it (openssl pkey -in KEY -out PLAIN.pem, mode 0600) and point tls_key at the result")),
        "no-tlsv1_2" => No(s("firstcall accepts TLS 1.2 and 1.3; it cannot be limited to 1.3")),
        "no-tlsv1_3" => No(s("firstcall always offers TLS 1.3 (and 1.2)")),
        "bps-capacity" => No(s("firstcall has no server-wide bandwidth cap; it caps each allocation (max_bps) and each user (user_max_bps)")),
        _ => return None,
    })
}

/// Settings with translation logic (and a required value unless a flag).
const HANDLED: &[&str] = &[
    "listening-port",
    "tls-listening-port",
    "listening-ip",
    "relay-ip",
    "external-ip",
    "min-port",
    "max-port",
    "relay-threads",
    "static-auth-secret",
    "user",
    "realm",
    "user-quota",
    "total-quota",
    "max-bps",
    "cert",
    "pkey",
    "no-tls",
    "denied-peer-ip",
    "allowed-peer-ip",
    "allow-loopback-peers",
    "verbose",
    "Verbose",
    "rest-api-separator",
    "use-auth-secret",
];

/// The result of an import: the coturn lines with their outcomes, the firstcall keys
/// (in ServeArgs order, TOML values) with the lines they came from, and notes.
#[derive(Debug, Default)]
pub struct Imported {
    /// Every setting line, in file order.
    pub entries: Vec<Entry>,
    /// firstcall key, TOML value, source lines.
    pub keys: Vec<(&'static str, String, Vec<usize>)>,
    /// Where firstcall's defaults differ from coturn's, for this file.
    pub defaults: Vec<String>,
    /// What to do before starting firstcall.
    pub todo: Vec<String>,
    /// Whether the TOML holds a secret.
    pub has_secret: bool,
}

/// Split coturn's text into setting lines: `name=value`, `name value` or a bare `name`;
/// `#` starts a comment line. Errors name the line.
fn parse_lines(text: &str) -> Result<Vec<Entry>, String> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let l = raw.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let end = l.find(|c: char| c == '=' || c.is_whitespace()).unwrap_or(l.len());
        let key = &l[..end];
        let rest = l[end..].trim_start();
        let rest = rest.strip_prefix('=').unwrap_or(rest).trim();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(format!(
                "{line}: {:?} is not a coturn setting (expected `name=value`, `name value` or a bare `name`)",
                truncate(l, 60)
            ));
        }
        let unquoted = ['"', '\'']
            .iter()
            .find_map(|q| rest.strip_prefix(*q).and_then(|r| r.strip_suffix(*q)))
            .unwrap_or(rest);
        out.push(Entry {
            line,
            key: key.to_owned(),
            value: (!unquoted.is_empty()).then(|| unquoted.to_owned()),
            outcome: Outcome::Unknown,
        });
    }
    Ok(out)
}

fn truncate(s: &str, n: usize) -> String {
    match s.char_indices().nth(n) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

/// coturn's boolean words.
fn parse_bool(v: Option<&str>) -> Option<bool> {
    match v.map(str::to_ascii_lowercase).as_deref() {
        None => Some(true),
        Some("1" | "on" | "yes" | "true" | "t" | "y") => Some(true),
        Some("0" | "off" | "no" | "false" | "f" | "n") => Some(false),
        _ => None,
    }
}

/// An inclusive address range of one family, as a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Range {
    v6: bool,
    lo: u128,
    hi: u128,
}

fn ip_num(ip: IpAddr) -> (bool, u128) {
    match ip {
        IpAddr::V4(a) => (false, u128::from(u32::from(a))),
        IpAddr::V6(a) => (true, u128::from(a)),
    }
}

fn num_ip(v6: bool, n: u128) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from(n))
    } else {
        IpAddr::V4(Ipv4Addr::from(n as u32))
    }
}

/// `A-B` (coturn's form), a single address, or a CIDR.
fn parse_range(s: &str) -> Result<Range, String> {
    let ip = |x: &str| {
        x.trim()
            .parse::<IpAddr>()
            .map_err(|_| format!("{:?} is not an IP address", x.trim()))
    };
    if let Some((a, b)) = s.split_once('-') {
        let ((fa, lo), (fb, hi)) = (ip_num(ip(a)?), ip_num(ip(b)?));
        if fa != fb {
            return Err(format!("{s:?} mixes IPv4 and IPv6"));
        }
        if lo > hi {
            return Err(format!("{s:?}: the first address is above the last"));
        }
        return Ok(Range { v6: fa, lo, hi });
    }
    if let Some((a, len)) = s.split_once('/') {
        let (v6, n) = ip_num(ip(a)?);
        let bits = if v6 { 128 } else { 32 };
        let len: u32 = len
            .trim()
            .parse()
            .ok()
            .filter(|l| *l <= bits)
            .ok_or_else(|| format!("{s:?}: bad prefix length"))?;
        let host = ones(bits - len);
        return Ok(Range {
            v6,
            lo: n & !host,
            hi: (n & !host) | host,
        });
    }
    let (v6, n) = ip_num(ip(s)?);
    Ok(Range { v6, lo: n, hi: n })
}

/// 2^k - 1.
fn ones(k: u32) -> u128 {
    if k >= 128 {
        u128::MAX
    } else {
        (1u128 << k) - 1
    }
}

/// Sorted, merged (overlapping or adjacent joined).
fn merge(mut rs: Vec<Range>) -> Vec<Range> {
    rs.sort_by_key(|r| (r.v6, r.lo));
    let mut out: Vec<Range> = Vec::new();
    for r in rs {
        match out.last_mut() {
            Some(l) if l.v6 == r.v6 && r.lo <= l.hi.saturating_add(1) => l.hi = l.hi.max(r.hi),
            _ => out.push(r),
        }
    }
    out
}

/// `rs` without the addresses in `holes`.
fn subtract(rs: &[Range], holes: &[Range]) -> Vec<Range> {
    let mut cur = merge(rs.to_vec());
    for h in merge(holes.to_vec()) {
        let mut next = Vec::new();
        for r in cur {
            if r.v6 != h.v6 || h.hi < r.lo || h.lo > r.hi {
                next.push(r);
                continue;
            }
            if h.lo > r.lo {
                next.push(Range { hi: h.lo - 1, ..r });
            }
            if h.hi < r.hi {
                next.push(Range { lo: h.hi + 1, ..r });
            }
        }
        cur = next;
    }
    cur
}

/// The fewest CIDRs covering exactly `r`.
fn to_cidrs(r: Range) -> Vec<Cidr> {
    let bits = if r.v6 { 128 } else { 32 };
    let mut out = Vec::new();
    let mut start = r.lo;
    loop {
        let mut k = if start == 0 {
            bits
        } else {
            start.trailing_zeros().min(bits)
        };
        while ones(k) > r.hi - start {
            k -= 1;
        }
        out.push(Cidr::new(num_ip(r.v6, start), (bits - k) as u8).expect("prefix within the family"));
        let last = start + ones(k);
        if last >= r.hi {
            break;
        }
        start = last + 1;
    }
    out
}

fn list(c: &[Cidr]) -> String {
    const SHOWN: usize = 12;
    let mut s = c
        .iter()
        .take(SHOWN)
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    if c.len() > SHOWN {
        let _ = write!(s, ", … ({} in all)", c.len());
    }
    s
}

/// A TOML basic string.
fn q(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(o, "\\u{:04X}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn q_list<S: AsRef<str>>(items: &[S]) -> String {
    format!(
        "[{}]",
        items.iter().map(|s| q(s.as_ref())).collect::<Vec<_>>().join(", ")
    )
}

/// Translate coturn's config `text`; relative paths are taken from `base` (the file's
/// directory, as coturn does). Errors are `LINE: message`.
pub fn import(text: &str, base: &Path) -> Result<Imported, String> {
    let mut entries = parse_lines(text)?;
    // Flags: parse their value; a switched-off flag is the same as an absent one.
    for e in entries.iter_mut().filter(|e| FLAGS.contains(&e.key.as_str())) {
        match parse_bool(e.value.as_deref()) {
            Some(true) => {}
            Some(false) => e.outcome = Outcome::NotNeeded("switched off: the same as leaving it out".into()),
            None => {
                return Err(format!(
                    "{}: {} takes no value or a boolean (1/0, on/off, yes/no, true/false), not {:?}",
                    e.line,
                    e.key,
                    e.value.as_deref().unwrap_or_default()
                ))
            }
        }
    }
    for e in &entries {
        if e.value.is_none() && HANDLED.contains(&e.key.as_str()) && !FLAGS.contains(&e.key.as_str()) {
            return Err(format!("{}: {} needs a value", e.line, e.key));
        }
    }
    let mut t = Translate {
        entries,
        out: Imported::default(),
        base: base.to_path_buf(),
    };
    t.run()?;
    let mut out = t.out;
    out.entries = t.entries;
    // ServeArgs order.
    const ORDER: &[&str] = &[
        "turn_listen",
        "turn_tls_listen",
        "tls_cert",
        "tls_key",
        "turn_secret",
        "realm",
        "external_ip",
        "relay_ip",
        "relay_ports",
        "allow_peer",
        "deny_peer",
        "threads",
        "static_user",
        "max_allocations",
        "max_allocations_per_user",
        "log",
        "max_bps",
    ];
    out.keys.sort_by_key(|(k, _, _)| ORDER.iter().position(|o| o == k));
    Ok(out)
}

struct Translate {
    entries: Vec<Entry>,
    out: Imported,
    base: PathBuf,
}

impl Translate {
    /// Indices of the active (not switched-off) lines of `key`.
    fn idx(&self, key: &str) -> Vec<usize> {
        (0..self.entries.len())
            .filter(|i| self.entries[*i].key == key && !matches!(self.entries[*i].outcome, Outcome::NotNeeded(_)))
            .collect()
    }
    fn has(&self, key: &str) -> bool {
        !self.idx(key).is_empty()
    }
    fn value(&self, i: usize) -> &str {
        self.entries[i].value.as_deref().unwrap_or_default()
    }
    fn line(&self, i: usize) -> usize {
        self.entries[i].line
    }
    fn set(&mut self, i: usize, o: Outcome) {
        self.entries[i].outcome = o;
    }
    /// The last line of a single-valued key (coturn keeps the last); earlier ones are
    /// marked overridden.
    fn last(&mut self, key: &str) -> Option<usize> {
        let idx = self.idx(key);
        let last = *idx.last()?;
        let l = self.line(last);
        for i in &idx[..idx.len() - 1] {
            self.set(
                *i,
                Outcome::NotCarried(format!("given again at line {l}, which coturn uses")),
            );
        }
        Some(last)
    }
    fn emit(&mut self, key: &'static str, value: String, lines: Vec<usize>) {
        self.out.keys.push((key, value, lines));
    }
    fn err(&self, i: usize, msg: impl std::fmt::Display) -> String {
        format!("{}: {}: {msg}", self.line(i), self.entries[i].key)
    }
    fn port(&self, i: usize) -> Result<u16, String> {
        self.value(i)
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| self.err(i, format!("{:?} is not a port (1-65535)", self.value(i))))
    }
    fn ip(&self, i: usize, s: &str) -> Result<IpAddr, String> {
        s.trim().parse().map_err(|_| {
            self.err(
                i,
                format!("{s:?} is not an IP address (firstcall takes addresses, not host names)"),
            )
        })
    }
    fn number(&self, i: usize) -> Result<u64, String> {
        self.value(i)
            .parse()
            .map_err(|_| self.err(i, format!("{:?} is not a whole number", self.value(i))))
    }
    fn path(&self, i: usize) -> Result<String, String> {
        let p = Path::new(self.value(i));
        let p = if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        };
        p.to_str()
            .map(str::to_owned)
            .ok_or_else(|| self.err(i, "the path is not UTF-8"))
    }

    fn run(&mut self) -> Result<(), String> {
        self.listeners()?;
        self.auth()?;
        self.relays()?;
        self.peers()?;
        self.limits()?;
        self.logs();
        for e in &mut self.entries {
            if e.outcome == Outcome::Unknown {
                if let Some(o) = simple(&e.key) {
                    e.outcome = o;
                }
            }
        }
        let unknown = self.entries.iter().filter(|e| e.outcome == Outcome::Unknown).count();
        if unknown > 0 {
            self.out.todo.push(format!(
                "{unknown} setting(s) are unknown to this importer (listed above): check them by hand"
            ));
        }
        Ok(())
    }

    fn listeners(&mut self) -> Result<(), String> {
        let ips = self.idx("listening-ip");
        let ip = match ips.first() {
            Some(&i) => Some((i, self.ip(i, self.value(i))?)),
            None => None,
        };
        for &i in ips.iter().skip(1) {
            self.ip(i, self.value(i))?;
            self.set(
                i,
                Outcome::NotCarried(format!(
                    "firstcall has one TURN listener address (line {} carried); listen on 0.0.0.0 or [::] to serve several",
                    self.line(ips[0])
                )),
            );
        }
        let port = match self.last("listening-port") {
            Some(i) => Some((i, self.port(i)?)),
            None => None,
        };
        let listen_ip = ip.map_or(IpAddr::from([0, 0, 0, 0]), |(_, a)| a);
        if ip.is_some() || port.is_some() {
            let addr = SocketAddr::new(listen_ip, port.map_or(3478, |(_, p)| p));
            let lines: Vec<usize> = ip.iter().map(|(i, _)| *i).chain(port.iter().map(|(i, _)| *i)).collect();
            for &i in &lines {
                self.set(i, Outcome::Carried(format!("turn_listen = \"{addr}\" (UDP and TCP)")));
            }
            let src = lines.iter().map(|i| self.line(*i)).collect();
            self.emit("turn_listen", q(&addr.to_string()), src);
        } else {
            self.out.defaults.push(
                "TURN listener: coturn listens on every IPv4 and IPv6 address by default, firstcall on 0.0.0.0:3478 \
                 (IPv4); set turn_listen = \"[::]:3478\" for IPv6"
                    .into(),
            );
        }
        // TLS: both files, and not switched off.
        let cert = self.last("cert");
        let pkey = self.last("pkey");
        let no_tls = self.last("no-tls");
        let tls_port = match self.last("tls-listening-port") {
            Some(i) => Some((i, self.port(i)?)),
            None => None,
        };
        let tls_on = match (cert, pkey, no_tls) {
            (Some(c), Some(k), None) => {
                let (cp, kp) = (self.path(c)?, self.path(k)?);
                for (i, key, p) in [(c, "tls_cert", &cp), (k, "tls_key", &kp)] {
                    let warn = match std::fs::File::open(p) {
                        Ok(_) => String::new(),
                        Err(e) => format!(" (cannot read it now: {e}; firstcall must be able to)"),
                    };
                    self.set(i, Outcome::Carried(format!("{key} = \"{p}\"{warn}")));
                }
                let (lc, lk) = (self.line(c), self.line(k));
                self.emit("tls_cert", q(&cp), vec![lc]);
                self.emit("tls_key", q(&kp), vec![lk]);
                self.out.defaults.push(
                    "TLS: firstcall serves TURN over TLS (turns:, TCP) with these files but no DTLS, which coturn offered on the same port"
                        .into(),
                );
                true
            }
            (None, None, Some(n)) => {
                self.set(
                    n,
                    Outcome::NotNeeded("firstcall has no TLS listener without cert and pkey".into()),
                );
                false
            }
            (c, k, Some(n)) => {
                for i in c.into_iter().chain(k) {
                    self.set(
                        i,
                        Outcome::NotCarried(format!(
                            "no-tls (line {}): no TLS listener; firstcall has no DTLS to use the certificate for",
                            self.line(n)
                        )),
                    );
                }
                self.set(
                    n,
                    Outcome::Carried("no TLS listener (tls_cert and tls_key left out)".into()),
                );
                false
            }
            (Some(i), None, None) | (None, Some(i), None) => {
                let missing = if self.entries[i].key == "cert" { "pkey" } else { "cert" };
                self.set(i, Outcome::NotCarried(format!(
                    "firstcall needs both the certificate and the key, and {missing} is not given (coturn's default file name is not carried over): add tls_cert and tls_key"
                )));
                false
            }
            (None, None, None) => false,
        };
        if let Some((i, p)) = tls_port {
            if tls_on {
                let addr = SocketAddr::new(listen_ip, p);
                self.set(i, Outcome::Carried(format!("turn_tls_listen = \"{addr}\"")));
                let l = self.line(i);
                self.emit("turn_tls_listen", q(&addr.to_string()), vec![l]);
            } else {
                self.set(
                    i,
                    Outcome::NotCarried(
                        "no TLS listener: firstcall listens for TLS only with both cert and pkey".into(),
                    ),
                );
            }
        }
        Ok(())
    }

    fn auth(&mut self) -> Result<(), String> {
        let rest = self.has("use-auth-secret");
        let secrets = self.idx("static-auth-secret");
        if !secrets.is_empty() {
            let values: Vec<String> = secrets.iter().map(|i| self.value(*i).to_owned()).collect();
            for (n, &i) in secrets.iter().enumerate() {
                let role = if n == 0 && secrets.len() > 1 {
                    ", the first: it mints firstcall's credentials"
                } else {
                    ""
                };
                self.set(
                    i,
                    Outcome::Carried(format!("turn_secret (in the file, not shown here{role})")),
                );
            }
            let src = secrets.iter().map(|i| self.line(*i)).collect();
            self.emit("turn_secret", q_list(&values), src);
            self.out.has_secret = true;
            if !rest {
                self.out.todo.push(
                    "static-auth-secret is given without use-auth-secret: coturn did not use it, firstcall will (TURN REST credentials are always on)"
                        .into(),
                );
            }
        } else if rest {
            self.out.todo.push(
                "use-auth-secret without static-auth-secret: coturn read the secret from its database, which is not carried over. \
                 firstcall generates a secret in its data dir (turn-secret); give the old one as FIRSTCALL_TURN_SECRET if other \
                 services mint credentials with it"
                    .into(),
            );
        }
        if !rest && secrets.is_empty() && !self.has("lt-cred-mech") && !self.has("user") {
            self.out.defaults.push(
                "credentials: with no credential setting coturn relays for anyone (no-auth); firstcall always requires \
                 credentials, which its signaling hands to signed-in users"
                    .into(),
            );
        }
        // Static users: carried as static_user, except where coturn did not use them.
        let users = self.idx("user");
        let mut carried = Vec::new();
        let mut lines = Vec::new();
        for i in users {
            let v = self.value(i).to_owned();
            let Some((name, pass)) = v.split_once(':').filter(|(u, p)| !u.is_empty() && !p.is_empty()) else {
                return Err(self.err(i, "expects NAME:PASSWORD or NAME:0xKEY"));
            };
            let o = if rest {
                Outcome::NotCarried("coturn ignores static users together with use-auth-secret (every username is checked as a TURN REST credential); carrying it would open an account that did not work".into())
            } else if pass.len() > 2
                && pass[..2].eq_ignore_ascii_case("0x")
                && pass[2..].chars().all(|c| c.is_ascii_hexdigit())
            {
                Outcome::NotCarried(format!(
                    "a turnadmin key (0x…), not a password: firstcall derives the key from the password and realm itself. \
                     Give static_user = \"{name}:PASSWORD\" by hand (FIRSTCALL_STATIC_USER), or move the client to TURN REST credentials"
                ))
            } else {
                carried.push(v.clone());
                lines.push(self.line(i));
                Outcome::Carried(format!(
                    "static_user \"{name}:…\" (password in the file, not shown here)"
                ))
            };
            self.set(i, o);
        }
        if !carried.is_empty() {
            self.emit("static_user", q_list(&carried), lines);
            self.out.has_secret = true;
        }
        if let Some(i) = self.last("realm") {
            let r = self.value(i).to_owned();
            if r.len() > 127 {
                return Err(self.err(i, "firstcall takes realms of 1 to 127 characters"));
            }
            self.set(
                i,
                Outcome::Carried(format!("realm = {} (credentials depend on it: keep it)", q(&r))),
            );
            let l = self.line(i);
            self.emit("realm", q(&r), vec![l]);
        } else {
            self.out.defaults.push(
                "realm: coturn falls back to the host's domain name, firstcall to \"firstcall\"; clients learn it from the server, \
                 but turnadmin keys (user=NAME:0x…) depend on it"
                    .into(),
            );
        }
        if let Some(i) = self.last("rest-api-separator") {
            let o = if self.value(i) == ":" {
                Outcome::NotNeeded("firstcall's TURN REST usernames use ':' too".into())
            } else {
                Outcome::NotCarried("firstcall's TURN REST usernames are EXPIRY:USER with ':'; other services minting credentials must use ':'".into())
            };
            self.set(i, o);
        }
        Ok(())
    }

    fn relays(&mut self) -> Result<(), String> {
        let relay_ips = self.idx("relay-ip");
        let mut relay_ip = None;
        for (n, &i) in relay_ips.iter().enumerate() {
            let ip = self.ip(i, self.value(i))?;
            if n == 0 {
                relay_ip = Some((i, ip));
            } else {
                self.set(
                    i,
                    Outcome::NotCarried(format!(
                        "firstcall relays from one address (line {} carried)",
                        self.line(relay_ips[0])
                    )),
                );
            }
        }
        // external-ip: PUBLIC or PUBLIC/PRIVATE; prefer the mapping of relay-ip.
        let mut maps = Vec::new();
        for i in self.idx("external-ip") {
            let v = self.value(i).to_owned();
            let (public, private) = match v.split_once('/') {
                Some((p, l)) => (self.ip(i, p)?, Some(self.ip(i, l)?)),
                None => (self.ip(i, &v)?, None),
            };
            if public.is_unspecified() || public.is_multicast() {
                return Err(self.err(i, "the public address must be a unicast address clients can reach"));
            }
            maps.push((i, public, private));
        }
        let chosen = maps
            .iter()
            .position(|(_, _, p)| relay_ip.is_some_and(|(_, r)| Some(r) == *p))
            .or((!maps.is_empty()).then_some(0));
        let mut relay_from_map = None;
        if let Some(c) = chosen {
            let (i, public, private) = maps[c];
            let mut what = format!("external_ip = \"{public}\"");
            match (private, relay_ip) {
                (Some(p), None) => {
                    what.push_str(&format!(
                        " and relay_ip = \"{p}\" (relays bind the private side, clients are told the public one)"
                    ));
                    relay_from_map = Some((i, p));
                }
                (Some(p), Some((_, r))) if p != r => what.push_str(&format!(
                    " (the private side {p} is not relay-ip {r}: relays bind {r} and are advertised as {public})"
                )),
                _ => {}
            }
            self.set(i, Outcome::Carried(what));
            let l = self.line(i);
            self.emit("external_ip", q(&public.to_string()), vec![l]);
            let carried_line = self.line(i);
            for (n, (j, _, _)) in maps.iter().enumerate() {
                if n != c {
                    self.set(
                        *j,
                        Outcome::NotCarried(format!(
                            "firstcall advertises one external address (line {carried_line} carried)"
                        )),
                    );
                }
            }
        }
        match (relay_ip, relay_from_map) {
            (Some((i, ip)), _) => {
                self.set(i, Outcome::Carried(format!("relay_ip = \"{ip}\"")));
                let l = self.line(i);
                self.emit("relay_ip", q(&ip.to_string()), vec![l]);
            }
            (None, Some((i, ip))) => {
                let l = self.line(i);
                self.emit("relay_ip", q(&ip.to_string()), vec![l]);
            }
            (None, None) => {}
        }
        // Relay ports.
        let min = match self.last("min-port") {
            Some(i) => Some((i, self.port(i)?)),
            None => None,
        };
        let max = match self.last("max-port") {
            Some(i) => Some((i, self.port(i)?)),
            None => None,
        };
        if min.is_none() && max.is_none() {
            self.out.defaults.push(format!(
                "relay ports: coturn's default is 49152-65535, firstcall's {DEFAULT_RELAY_PORTS} (above Linux's ephemeral ports \
                 32768-60999): open {DEFAULT_RELAY_PORTS}/udp in the firewall, or set relay_ports"
            ));
        } else {
            let (lo, hi) = (min.map_or(49152, |(_, p)| p), max.map_or(65535, |(_, p)| p));
            if lo > hi {
                let i = max.or(min).map(|(i, _)| i).unwrap_or_default();
                return Err(self.err(i, format!("min-port {lo} is above max-port {hi}")));
            }
            let range = format!("{lo}-{hi}");
            let mut what = format!("relay_ports = \"{range}\"");
            if min.is_none() || max.is_none() {
                what.push_str(" (the other end is coturn's default)");
            }
            if lo <= 60999 && hi >= 32768 {
                what.push_str(
                    "; it overlaps Linux's ephemeral ports 32768-60999, whose sockets can take relay ports (firstcall warns at start; \
                     docs/operations.md, Ports)",
                );
            }
            let lines: Vec<usize> = min.iter().chain(max.iter()).map(|(i, _)| *i).collect();
            for &i in &lines {
                self.set(i, Outcome::Carried(what.clone()));
            }
            let src = lines.iter().map(|i| self.line(*i)).collect();
            self.emit("relay_ports", q(&range), src);
        }
        if let Some(i) = self.last("relay-threads") {
            let n = self.number(i)?;
            let threads = n.clamp(1, 1024);
            let note = if n == 0 {
                " (coturn's 0 is one thread)"
            } else if n > 1024 {
                " (firstcall's most)"
            } else {
                ""
            };
            self.set(i, Outcome::Carried(format!("threads = {threads}{note}")));
            let l = self.line(i);
            self.emit("threads", threads.to_string(), vec![l]);
        }
        if !self.has("no-tcp-relay") {
            self.out.defaults.push(
                "TCP relays: coturn offers RFC 6062 TCP relays, firstcall only UDP relays (clients may still reach it over TCP and TLS)".into(),
            );
        }
        Ok(())
    }

    fn peers(&mut self) -> Result<(), String> {
        let mut allowed = Vec::new();
        let mut allow_lines = Vec::new();
        for i in self.idx("allowed-peer-ip") {
            let r = parse_range(self.value(i)).map_err(|e| self.err(i, e))?;
            let cidrs = to_cidrs(r);
            self.set(i, Outcome::Carried(format!("allow_peer: {}", list(&cidrs))));
            allowed.push(r);
            allow_lines.push(self.line(i));
        }
        if let Some(i) = self.last("allow-loopback-peers") {
            for r in ["127.0.0.0/8", "::1"] {
                allowed.push(parse_range(r).expect("loopback range"));
            }
            self.set(
                i,
                Outcome::Carried("allow_peer: 127.0.0.0/8, ::1/128 (relaying into this host: for tests only)".into()),
            );
            allow_lines.push(self.line(i));
        }
        let mut denied = Vec::new();
        let mut deny_lines = Vec::new();
        for i in self.idx("denied-peer-ip") {
            let r = parse_range(self.value(i)).map_err(|e| self.err(i, e))?;
            let all = to_cidrs(r);
            let left = subtract(&[r], &allowed);
            let cidrs: Vec<Cidr> = left.iter().flat_map(|r| to_cidrs(*r)).collect();
            let (covered, kept): (Vec<Cidr>, Vec<Cidr>) = cidrs.iter().partition(|c| default_denied(c).is_some());
            let mut parts = vec![format!("= {}", list(&all))];
            if left != merge(vec![r]) {
                parts.push("allowed-peer-ip keeps part of it open (coturn's allowed wins over denied; firstcall's deny would win, so the allowed part is left out)".into());
            }
            if !kept.is_empty() {
                parts.push(format!("deny_peer: {}", list(&kept)));
            }
            if !covered.is_empty() {
                let mut reasons: Vec<&str> = covered.iter().filter_map(default_denied).map(|r| r.as_str()).collect();
                reasons.dedup();
                parts.push(format!(
                    "already refused by firstcall's default peer filter ({}): {}, left out of deny_peer",
                    reasons.join(", "),
                    list(&covered)
                ));
            }
            let what = parts.join("; ");
            self.set(
                i,
                if kept.is_empty() {
                    Outcome::NotNeeded(what)
                } else {
                    Outcome::Carried(what)
                },
            );
            denied.push(r);
            if !kept.is_empty() {
                deny_lines.push(self.line(i));
            }
        }
        let allow: Vec<String> = merge(allowed.clone())
            .into_iter()
            .flat_map(to_cidrs)
            .map(|c| c.to_string())
            .collect();
        let deny: Vec<String> = subtract(&denied, &allowed)
            .into_iter()
            .flat_map(to_cidrs)
            .filter(|c| default_denied(c).is_none())
            .map(|c| c.to_string())
            .collect();
        if !allow.is_empty() {
            self.emit("allow_peer", q_list(&allow), allow_lines);
        }
        if !deny.is_empty() {
            self.emit("deny_peer", q_list(&deny), deny_lines);
        }
        self.out.defaults.push(
            "peers: coturn relays to private (RFC 1918), CGNAT, link-local and other special addresses unless denied-peer-ip \
             says otherwise; firstcall refuses them by default (docs/operations.md, Peer filtering). If clients must reach \
             such peers (an internal network), add them to allow_peer"
                .into(),
        );
        Ok(())
    }

    fn limits(&mut self) -> Result<(), String> {
        for (key, fkey, default, what) in [
            ("user-quota", "max_allocations_per_user", 64, "per user"),
            ("total-quota", "max_allocations", 10_000, "in all"),
        ] {
            match self.last(key) {
                Some(i) => match self.number(i)? {
                    0 => {
                        self.set(i, Outcome::NotCarried(format!(
                            "coturn's 0 is no quota; firstcall always caps allocations {what}: its default {fkey} = {default} stays"
                        )));
                    }
                    n => {
                        self.set(i, Outcome::Carried(format!("{fkey} = {n}")));
                        let l = self.line(i);
                        self.emit(fkey, n.to_string(), vec![l]);
                    }
                },
                None => self.out.defaults.push(format!(
                    "{key}: coturn has no quota by default, firstcall caps allocations {what} at {default} ({fkey})"
                )),
            }
        }
        match self.last("max-bps") {
            Some(i) => {
                let n = self.number(i)?;
                let note = if n == 0 { " (no limit, as in coturn)" } else { " (bytes per second per allocation, each direction, as coturn's)" };
                self.set(i, Outcome::Carried(format!("max_bps = {n}{note}")));
                let l = self.line(i);
                self.emit("max_bps", n.to_string(), vec![l]);
            }
            None => self.out.defaults.push(
                "max-bps: coturn has no bandwidth limit by default, firstcall limits each allocation to 4000000 bytes/s (max_bps) \
                 and each user to 12500000 bytes/s (user_max_bps), each direction"
                    .into(),
            ),
        }
        Ok(())
    }

    fn logs(&mut self) {
        let v = self.last("verbose");
        let vv = self.last("Verbose");
        let level = if vv.is_some() { "trace" } else { "debug" };
        for i in v.into_iter().chain(vv) {
            self.set(i, Outcome::Carried(format!("log = \"{level}\"")));
        }
        if v.is_some() || vv.is_some() {
            let lines = v.into_iter().chain(vv).map(|i| self.line(i)).collect();
            self.emit("log", q(level), lines);
        }
    }
}

/// Picks one report group's lines and their messages.
type Pick = fn(&Outcome) -> Option<&str>;

impl Imported {
    /// The firstcall TOML and the report (which the TOML also carries as comments).
    pub fn render(&self, source: &Path) -> (String, String) {
        let report = self.report(source);
        let mut t = String::new();
        let _ = writeln!(
            t,
            "# firstcall configuration imported from coturn's {}",
            source.display()
        );
        let _ = writeln!(
            t,
            "# by `firstcall import-coturn` (firstcall {}).",
            env!("CARGO_PKG_VERSION")
        );
        t.push_str("# Start it with: firstcall serve --config THIS_FILE\n#\n");
        t.push_str(
            "# firstcall refuses to start without a way to verify your app's tokens: give\n\
             # FIRSTCALL_JWT_SECRET in the service's environment (HS256), or add one of\n\
             #   jwt_public_key = \"/etc/firstcall/jwt.pem\"\n\
             #   jwks_url = \"https://sso.example.org/realms/app/protocol/openid-connect/certs\"\n\
             # Signaling, /healthz and /metrics listen on http_listen (default 0.0.0.0:8080).\n",
        );
        if self.has_secret {
            t.push_str(
                "#\n# WARNING: this file holds secrets (turn_secret or static_user). Keep it readable only\n\
                 # by the service's user, or remove those keys and give FIRSTCALL_TURN_SECRET and\n\
                 # FIRSTCALL_STATIC_USER in the environment instead (docs/operations.md, \"Secrets\").\n",
            );
        }
        t.push('\n');
        for (key, value, lines) in &self.keys {
            let from: Vec<String> = lines
                .iter()
                .map(|l| {
                    let k = self
                        .entries
                        .iter()
                        .find(|e| e.line == *l)
                        .map_or("", |e| e.key.as_str());
                    format!("{k} (line {l})")
                })
                .collect();
            let _ = writeln!(t, "# from {}", from.join(", "));
            let _ = writeln!(t, "{key} = {value}");
        }
        if self.keys.is_empty() {
            t.push_str("# Nothing to carry over: firstcall's defaults apply.\n");
        }
        t.push_str("\n# Import report (also printed on stderr):\n");
        for l in report.lines() {
            let _ = writeln!(t, "#{}{l}", if l.is_empty() { "" } else { " " });
        }
        (t, report)
    }

    fn report(&self, source: &Path) -> String {
        let mut r = String::new();
        let _ = writeln!(
            r,
            "firstcall import-coturn: {} setting line(s) in {}",
            self.entries.len(),
            source.display()
        );
        let groups: [(&str, Pick); 4] = [
            ("Carried over", |o| match o {
                Outcome::Carried(m) => Some(m),
                _ => None,
            }),
            (
                "Not needed: firstcall does it already, or it was switched off",
                |o| match o {
                    Outcome::NotNeeded(m) => Some(m),
                    _ => None,
                },
            ),
            ("Not carried over", |o| match o {
                Outcome::NotCarried(m) => Some(m),
                _ => None,
            }),
            ("Unknown to this importer, not carried over", |o| match o {
                Outcome::Unknown => Some("not a coturn 4.6 setting this importer knows: check it by hand"),
                _ => None,
            }),
        ];
        for (title, pick) in groups {
            let rows: Vec<(&Entry, &str)> = self
                .entries
                .iter()
                .filter_map(|e| pick(&e.outcome).map(|m| (e, m)))
                .collect();
            if rows.is_empty() {
                continue;
            }
            let _ = writeln!(r, "\n{title} ({}):", rows.len());
            for (e, m) in rows {
                let _ = writeln!(r, "  line {:<4} {}\n             -> {m}", e.line, e.shown());
            }
        }
        if !self.defaults.is_empty() {
            r.push_str("\nWhere firstcall's defaults differ from coturn's:\n");
            for d in &self.defaults {
                let _ = writeln!(r, "  - {d}");
            }
        }
        r.push_str("\nBefore starting firstcall:\n");
        r.push_str(
            "  - give it a way to verify your app's tokens (FIRSTCALL_JWT_SECRET, jwt_public_key or jwks_url): it refuses to start without\n\
             \x20 - open http_listen (default 0.0.0.0:8080) for signaling, or put it behind your reverse proxy\n",
        );
        if self.has_secret {
            r.push_str(
                "  - the output holds secrets (turn_secret/static_user): keep it mode 0600, or move them to FIRSTCALL_TURN_SECRET / \
                 FIRSTCALL_STATIC_USER (docs/operations.md, Secrets)\n",
            );
        }
        for d in &self.todo {
            let _ = writeln!(r, "  - {d}");
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidrs(s: &str) -> Vec<String> {
        to_cidrs(parse_range(s).unwrap())
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn ranges_become_the_fewest_cidrs() {
        assert_eq!(cidrs("172.16.0.0-172.31.255.255"), ["172.16.0.0/12"]);
        assert_eq!(
            cidrs("10.0.0.1-10.0.0.6"),
            ["10.0.0.1/32", "10.0.0.2/31", "10.0.0.4/31", "10.0.0.6/32"]
        );
        assert_eq!(cidrs("0.0.0.0-255.255.255.255"), ["0.0.0.0/0"]);
        assert_eq!(cidrs("::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"), ["::/0"]);
        assert_eq!(cidrs("83.166.68.45"), ["83.166.68.45/32"]);
        assert_eq!(cidrs("fd00::/8"), ["fd00::/8"]);
        assert_eq!(cidrs("2001:db8::-2001:db8::3"), ["2001:db8::/126"]);
        let left = subtract(
            &[parse_range("10.0.0.0-10.0.0.255").unwrap()],
            &[parse_range("10.0.0.5").unwrap()],
        );
        let c: Vec<String> = left.into_iter().flat_map(to_cidrs).map(|c| c.to_string()).collect();
        assert_eq!(
            c,
            [
                "10.0.0.0/30",
                "10.0.0.4/32",
                "10.0.0.6/31",
                "10.0.0.8/29",
                "10.0.0.16/28",
                "10.0.0.32/27",
                "10.0.0.64/26",
                "10.0.0.128/25"
            ]
        );
        for bad in ["10.0.0.9-10.0.0.1", "10.0.0.1-::1", "banana", "10.0.0.0/33"] {
            assert!(parse_range(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn line_syntax() {
        let e =
            parse_lines("# c\n\n  realm = a.b\nfingerprint\nlistening-port 3479\npidfile=\"/run/t.pid\"\n").unwrap();
        let kv: Vec<(&str, Option<&str>)> = e.iter().map(|e| (e.key.as_str(), e.value.as_deref())).collect();
        assert_eq!(
            kv,
            [
                ("realm", Some("a.b")),
                ("fingerprint", None),
                ("listening-port", Some("3479")),
                ("pidfile", Some("/run/t.pid"))
            ]
        );
        assert!(parse_lines("x\n[server]\n").unwrap_err().starts_with("2: "));
        assert!(import("fingerprint=maybe\n", Path::new("/"))
            .unwrap_err()
            .starts_with("1: fingerprint"));
        assert!(import("\nrealm\n", Path::new("/"))
            .unwrap_err()
            .starts_with("2: realm needs a value"));
        assert!(import("min-port=70000\n", Path::new("/"))
            .unwrap_err()
            .starts_with("1: min-port"));
        assert!(import("min-port=60000\nmax-port=50000\n", Path::new("/"))
            .unwrap_err()
            .starts_with("2: max-port"));
    }

    #[test]
    fn switched_off_flags_are_not_applied() {
        let i = import("no-tls=false\nverbose=0\nfingerprint=on\n", Path::new("/")).unwrap();
        assert!(i.keys.is_empty(), "{:?}", i.keys);
        assert!(matches!(i.entries[0].outcome, Outcome::NotNeeded(_)));
        assert!(matches!(i.entries[2].outcome, Outcome::NotNeeded(_)));
    }
}
