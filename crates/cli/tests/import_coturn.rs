//! `firstcall import-coturn` (issue 19 point 7), through the real binary: Debian's own
//! turnserver.conf, a realistic production one whose translation is then served (health,
//! a TURN allocation with REST credentials from the same secret, the TLS listener, the
//! translated peer ranges), a malformed file, and lt-cred-mech with static users.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use firstcall_stun::{Attribute, Class, IntegrityKind, Message, MessageBuilder, Method, TransactionId};
use firstcall_turn::auth::{long_term_key, rest_credential, Secret};

const DEBIAN_CONF: &str = "/usr/share/doc/coturn/examples/etc/turnserver.conf";

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("firstcall-import-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn import(args: &[&str]) -> Output {
    run_bounded(
        Command::new(firstcall_bin()).arg("import-coturn").args(args),
        Duration::from_secs(30),
    )
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `firstcall serve --config FILE` with the HTTP listener and data dir from flags (the
/// coturn file has neither) and a JWT secret from the environment; waits for /healthz.
struct Served {
    _proc: Proc,
    http: SocketAddr,
}

fn serve(config: &Path, dir: &Path, extra: &[&str]) -> Served {
    let http = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let log = dir.join("serve.log");
    let mut cmd = Command::new(firstcall_bin());
    cmd.args(["serve", "--config", config.to_str().unwrap()])
        .args(["--http-listen", &http.to_string()])
        .args(["--data-dir", dir.join("data").to_str().unwrap()])
        .args(extra)
        .env_remove("FIRSTCALL_CONFIG")
        .env("FIRSTCALL_JWT_SECRET", "import-test-jwt-secret")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    let mut proc = Proc::spawn("firstcall", &mut cmd);
    let healthy = wait_until(Duration::from_secs(15), || {
        assert!(
            proc.alive(),
            "firstcall serve --config exited; log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        matches!(http_get(http, "/healthz", &[]), Ok((200, _)))
    });
    assert!(
        healthy,
        "not healthy within 15 s; log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    Served { _proc: proc, http }
}

/// A blocking TURN client over UDP with a long-term credential: allocate, then ask for
/// permissions on the same allocation.
struct Turn {
    s: UdpSocket,
    server: SocketAddr,
    user: String,
    realm: String,
    key: Vec<u8>,
    nonce: String,
    tid: u8,
}

impl Turn {
    fn allocate(server: SocketAddr, user: &str, pass: &str, realm: &str) -> (Turn, SocketAddr) {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut t = Turn {
            s,
            server,
            user: user.into(),
            realm: realm.into(),
            key: long_term_key(user, realm, pass).as_ref().to_vec(),
            nonce: String::new(),
            tid: 0,
        };
        let raw = t.request(Method::ALLOCATE, &[Attribute::RequestedTransport(17)], false);
        let challenge = Message::decode(&raw).unwrap();
        assert_eq!(challenge.error_code().map(|e| e.code), Some(401));
        assert_eq!(challenge.realm(), Some(realm), "the realm came from the coturn file");
        t.nonce = challenge.nonce().unwrap().to_owned();
        let raw = t.request(Method::ALLOCATE, &[Attribute::RequestedTransport(17)], true);
        let ok = Message::decode(&raw).unwrap();
        assert_eq!(ok.class(), Class::Success, "allocate: {:?}", ok.error_code());
        let relayed = ok
            .find(|a| match a {
                Attribute::XorRelayedAddress(r) => Some(*r),
                _ => None,
            })
            .unwrap();
        (t, relayed)
    }

    fn request(&mut self, method: Method, attrs: &[Attribute<'_>], auth: bool) -> Vec<u8> {
        self.tid += 1;
        let mut b = MessageBuilder::new(Class::Request, method, TransactionId([self.tid; 12]));
        for a in attrs {
            b.add(a);
        }
        if auth {
            b.add(&Attribute::Username(&self.user))
                .add(&Attribute::Realm(&self.realm))
                .add(&Attribute::Nonce(&self.nonce))
                .add_integrity(IntegrityKind::Sha1, &self.key);
        }
        self.s.send_to(&b.finish(), self.server).unwrap();
        let mut buf = [0u8; 1500];
        let n = self.s.recv(&mut buf).expect("an answer from the TURN server");
        buf[..n].to_vec()
    }

    /// The error code of a CreatePermission for `peer` (None: success). No packet goes
    /// to the peer: a permission only opens the relay for it.
    fn permission(&mut self, peer: &str) -> Option<u16> {
        let peer: SocketAddr = format!("{peer}:9").parse().unwrap();
        let raw = self.request(Method::CREATE_PERMISSION, &[Attribute::XorPeerAddress(peer)], true);
        Message::decode(&raw).unwrap().error_code().map(|e| e.code)
    }
}

/// (a) Debian's own file: the import succeeds, lists every setting line it has with its
/// line number, and its output loads in `firstcall serve --config`.
#[test]
fn debian_turnserver_conf() {
    if !Path::new(DEBIAN_CONF).exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{DEBIAN_CONF} is required in CI (scripts/install-deps installs coturn)"
        );
        eprintln!("SKIP: {DEBIAN_CONF} absent (install coturn: scripts/install-deps)");
        return;
    }
    let dir = temp_dir("debian");
    let out_path = dir.join("firstcall.toml");
    let out = import(&[DEBIAN_CONF, "--output", out_path.to_str().unwrap()]);
    let report = text(&out.stderr);
    eprintln!("{report}");
    assert_eq!(out.status.code(), Some(0), "{report}");
    let conf = std::fs::read_to_string(DEBIAN_CONF).unwrap();
    let settings: Vec<(usize, &str)> = conf
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert!(
        !settings.is_empty(),
        "Debian's file has settings (syslog, no-rfc5780, …)"
    );
    for (line, setting) in &settings {
        let key = setting.split(['=', ' ', '\t']).next().unwrap();
        assert!(
            report.contains(&format!("line {line:<4} {key}")),
            "line {line} ({key}) is not in the report:\n{report}"
        );
    }
    assert!(
        report.contains(&format!("{} setting line(s)", settings.len())),
        "{report}"
    );
    assert!(!report.contains("Unknown to this importer"), "{report}");
    let toml = std::fs::read_to_string(&out_path).unwrap();
    assert!(toml.contains("# Import report"), "{toml}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&out_path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // Not overwritten without --force.
    let again = import(&[DEBIAN_CONF, "--output", out_path.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(2));
    assert!(text(&again.stderr).contains("--force"), "{}", text(&again.stderr));
    // Debian's file sets no listener: give them on loopback.
    let turn = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let (lo, hi) = relay_range(20);
    let served = serve(
        &out_path,
        &dir,
        &[
            "--turn-listen",
            &turn.to_string(),
            "--relay-ports",
            &format!("{lo}-{hi}"),
        ],
    );
    assert_eq!(http_get(served.http, "/healthz", &[]).unwrap().0, 200);
    drop(served);
    let _ = std::fs::remove_dir_all(dir);
}

/// (b) A production-like coturn file: its translation is what the test expects, the
/// secret stays out of the report, and firstcall serves it: healthy, an allocation with
/// REST credentials minted from the same secret (relayed address: the external IP on a
/// port of min-port..max-port), TURN over TLS with the cert/pkey files, and the denied
/// range refused except the allowed address.
#[test]
fn realistic_config_is_served() {
    let dir = temp_dir("real");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    // cert by a path relative to the coturn file (coturn's rule), pkey absolute.
    std::fs::write(dir.join("turn_cert.pem"), cert.cert.pem()).unwrap();
    let key_path = dir.join("turn_key.pem");
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    let (turn_port, tls_port) = (free_port(), free_port());
    let (lo, hi) = relay_range(20);
    let secret = "coturn-rest-secret-4f9a";
    let conf = format!(
        "# coturn for turn.example.org\n\
         listening-ip=127.0.0.1\n\
         listening-port={turn_port}\n\
         tls-listening-port={tls_port}\n\
         external-ip=203.0.113.7/127.0.0.1\n\
         min-port={lo}\n\
         max-port={hi}\n\
         fingerprint\n\
         use-auth-secret\n\
         static-auth-secret={secret}\n\
         realm=turn.example.org\n\
         total-quota=100\n\
         user-quota=12\n\
         max-bps=64000\n\
         stale-nonce=600\n\
         cert=turn_cert.pem\n\
         pkey={}\n\
         cipher-list=\"ECDHE-RSA-AES256-GCM-SHA512:DHE-RSA-AES256-GCM-SHA512\"\n\
         no-multicast-peers\n\
         denied-peer-ip=0.0.0.0-0.255.255.255\n\
         denied-peer-ip=10.0.0.0-10.255.255.255\n\
         denied-peer-ip=172.16.0.0-172.31.255.255\n\
         denied-peer-ip=10.0.0.1-10.0.0.6\n\
         denied-peer-ip=83.166.64.0-83.166.95.255\n\
         allowed-peer-ip=83.166.68.45\n\
         no-cli\n\
         cli-password=qwerty-cli\n\
         no-tlsv1\n\
         no-tlsv1_1\n\
         log-file=/var/log/turnserver/turn.log\n\
         simple-log\n\
         pidfile=\"/var/run/turnserver.pid\"\n\
         proc-user=turnserver\n\
         no-udp\n",
        key_path.display()
    );
    let conf_path = dir.join("turnserver.conf");
    std::fs::write(&conf_path, &conf).unwrap();
    let out = import(&[conf_path.to_str().unwrap()]);
    let (toml, report) = (text(&out.stdout), text(&out.stderr));
    eprintln!("{report}");
    assert_eq!(out.status.code(), Some(0), "{report}");
    for want in [
        format!("turn_listen = \"127.0.0.1:{turn_port}\""),
        format!("turn_tls_listen = \"127.0.0.1:{tls_port}\""),
        format!("tls_cert = \"{}\"", dir.join("turn_cert.pem").display()),
        format!("tls_key = \"{}\"", key_path.display()),
        format!("turn_secret = [\"{secret}\"]"),
        "realm = \"turn.example.org\"".into(),
        "external_ip = \"203.0.113.7\"".into(),
        "relay_ip = \"127.0.0.1\"".into(),
        format!("relay_ports = \"{lo}-{hi}\""),
        "max_allocations = 100".into(),
        "max_allocations_per_user = 12".into(),
        "max_bps = 64000".into(),
        "allow_peer = [\"83.166.68.45/32\"]".into(),
        // 83.166.64.0/19 without 83.166.68.45: the private ranges are default-denied.
        "deny_peer = [\"83.166.64.0/22\", \"83.166.68.0/27\", \"83.166.68.32/29\", \"83.166.68.40/30\", \
         \"83.166.68.44/32\", \"83.166.68.46/31\", \"83.166.68.48/28\", \"83.166.68.64/26\", \"83.166.68.128/25\", \
         \"83.166.69.0/24\", \"83.166.70.0/23\", \"83.166.72.0/21\", \"83.166.80.0/20\"]"
            .into(),
        "WARNING: this file holds secrets".into(),
    ] {
        assert!(toml.contains(&want), "missing {want:?} in:\n{toml}");
    }
    // Ranges to CIDRs, and ranges firstcall refuses already, are named in the report.
    for want in [
        "denied-peer-ip=172.16.0.0-172.31.255.255\n             -> = 172.16.0.0/12; already refused by firstcall's default peer filter (private)",
        "-> = 10.0.0.1/32, 10.0.0.2/31, 10.0.0.4/31, 10.0.0.6/32; already refused",
        "-> = 83.166.64.0/19; allowed-peer-ip keeps part of it open",
        "static-auth-secret=(hidden)\n             -> turn_secret",
        "cli-password=(hidden)\n             -> firstcall has no telnet CLI",
        "no-udp\n             -> firstcall always listens on UDP",
        "fingerprint\n             -> firstcall adds FINGERPRINT",
        "stale-nonce=600\n             -> firstcall's nonces go stale after 1 hour",
        "Where firstcall's defaults differ from coturn's:",
        "no DTLS",
    ] {
        assert!(report.contains(want), "missing {want:?} in the report:\n{report}");
    }
    assert!(
        !report.contains(secret) && !report.contains("qwerty-cli"),
        "a secret in the report:\n{report}"
    );
    assert!(!toml.contains("qwerty-cli"), "{toml}");
    // Every setting line is accounted for.
    let lines = conf
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .count();
    assert!(report.contains(&format!("{lines} setting line(s)")), "{report}");

    let config = dir.join("firstcall.toml");
    std::fs::write(&config, &toml).unwrap();
    let served = serve(&config, &dir, &[]);
    let (status, body) = http_get(served.http, "/healthz", &[]).unwrap();
    assert_eq!(status, 200, "{body}");
    // REST credentials minted with coturn's static-auth-secret, as the app's backend did.
    let turn = SocketAddr::from(([127, 0, 0, 1], turn_port));
    let (user, pass) = rest_credential(&Secret::new(secret), "alice", 4_000_000_000);
    let (mut t, relayed) = Turn::allocate(turn, &user, &pass, "turn.example.org");
    assert_eq!(
        relayed.ip().to_string(),
        "203.0.113.7",
        "external-ip's public side is advertised"
    );
    assert!(
        (lo..=hi).contains(&relayed.port()),
        "{relayed} outside min-port..max-port"
    );
    // The denied range, minus the allowed address; a default-denied private address.
    assert_eq!(t.permission("83.166.70.1"), Some(403));
    assert_eq!(t.permission("83.166.68.45"), None, "allowed-peer-ip wins, as in coturn");
    assert_eq!(t.permission("172.20.0.1"), Some(403));
    assert_eq!(t.permission("8.8.8.8"), None);
    // TURN over TLS with coturn's cert and pkey: a Binding request answered.
    tls_binding(SocketAddr::from(([127, 0, 0, 1], tls_port)), cert.cert.der().clone());
    drop(served);
    let _ = std::fs::remove_dir_all(dir);
}

fn tls_binding(addr: SocketAddr, cert: rustls::pki_types::CertificateDer<'static>) {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(cfg), name).unwrap();
    let mut sock = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut tls = rustls::Stream::new(&mut conn, &mut sock);
    let req = MessageBuilder::new(Class::Request, Method::BINDING, TransactionId([9; 12])).finish();
    tls.write_all(&req).unwrap();
    let mut head = [0u8; 20];
    tls.read_exact(&mut head).unwrap();
    let len = u16::from_be_bytes([head[2], head[3]]) as usize;
    let mut body = vec![0u8; len];
    tls.read_exact(&mut body).unwrap();
    let raw = [&head[..], &body].concat();
    let msg = Message::decode(&raw).unwrap();
    assert_eq!(msg.class(), Class::Success);
}

/// (c) Bad input: a clear error naming the file and line, exit 2, nothing on stdout.
#[test]
fn malformed_input_exits_2_naming_the_line() {
    let dir = temp_dir("bad");
    for (conf, want) in [
        (
            "realm=a.example\nmin-port=abc\n",
            "turnserver.conf:2: min-port: \"abc\" is not a port",
        ),
        (
            "# x\nlistening-port=70000\n",
            "turnserver.conf:2: listening-port: \"70000\" is not a port",
        ),
        (
            "realm=a\n\n[server]\n",
            "turnserver.conf:3: \"[server]\" is not a coturn setting",
        ),
        (
            "external-ip=turn.example.org\n",
            "turnserver.conf:1: external-ip: \"turn.example.org\" is not an IP address",
        ),
        (
            "denied-peer-ip=10.0.0.9-10.0.0.1\n",
            "turnserver.conf:1: denied-peer-ip: \"10.0.0.9-10.0.0.1\": the first address is above the last",
        ),
        (
            "min-port=60000\nmax-port=50000\n",
            "turnserver.conf:2: max-port: min-port 60000 is above max-port 50000",
        ),
        (
            "fingerprint=maybe\n",
            "turnserver.conf:1: fingerprint takes no value or a boolean",
        ),
        ("realm\n", "turnserver.conf:1: realm needs a value"),
        (
            "lt-cred-mech\nuser=alice\n",
            "turnserver.conf:2: user: expects NAME:PASSWORD",
        ),
    ] {
        let p = dir.join("turnserver.conf");
        std::fs::write(&p, conf).unwrap();
        let out = import(&[p.to_str().unwrap()]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{conf:?}: {err}");
        assert!(err.contains(want), "{conf:?}: want {want:?}, got {err:?}");
        assert!(out.stdout.is_empty(), "{conf:?}");
        assert!(!err.contains("panicked"), "{err}");
    }
    std::fs::write(dir.join("turnserver.conf"), b"realm=ok\nrealm=\xff\xfe\n").unwrap();
    let out = import(&[dir.join("turnserver.conf").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("turnserver.conf:2: not UTF-8"),
        "{}",
        text(&out.stderr)
    );
    let out = import(&[dir.join("missing.conf").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("cannot read"), "{}", text(&out.stderr));
    let _ = std::fs::remove_dir_all(dir);
}

/// (d) lt-cred-mech with static users: a password user becomes a static_user (firstcall
/// has `--static-user`) and can allocate; a turnadmin key (0x…) cannot be carried over
/// (firstcall needs the password), and the report says why; no password is printed.
/// Under use-auth-secret coturn ignores static users, so they are not carried then.
#[test]
fn lt_cred_mech_users() {
    let dir = temp_dir("ltcred");
    let turn_port = free_port();
    let (lo, hi) = relay_range(20);
    let conf = format!(
        "lt-cred-mech\nrealm=calls.example.org\nlistening-ip=127.0.0.1\nlistening-port={turn_port}\n\
         min-port={lo}\nmax-port={hi}\nuser=alice:alice-pass-77\nuser=ninefingers:0xbc807ee29df3c9ffa736523fb2c4e8ee\n\
         userdb=/var/lib/turn/turndb\n"
    );
    let p = dir.join("turnserver.conf");
    std::fs::write(&p, conf).unwrap();
    let out = import(&[p.to_str().unwrap()]);
    let (toml, report) = (text(&out.stdout), text(&out.stderr));
    eprintln!("{report}");
    assert_eq!(out.status.code(), Some(0), "{report}");
    assert!(toml.contains("static_user = [\"alice:alice-pass-77\"]"), "{toml}");
    for want in [
        "line 1    lt-cred-mech\n             -> firstcall always uses the long-term credential mechanism",
        "user=alice:(hidden)\n             -> static_user \"alice:…\"",
        "Not carried over",
        "user=ninefingers:(hidden)\n             -> a turnadmin key (0x…), not a password: firstcall derives the key from the password and realm itself",
        "userdb=/var/lib/turn/turndb\n             -> firstcall has no user database",
    ] {
        assert!(report.contains(want), "missing {want:?} in:\n{report}");
    }
    assert!(
        !report.contains("alice-pass-77") && !report.contains("bc807ee2"),
        "{report}"
    );
    let config = dir.join("firstcall.toml");
    std::fs::write(&config, &toml).unwrap();
    let _served = serve(&config, &dir, &[]);
    let (_, relayed) = Turn::allocate(
        SocketAddr::from(([127, 0, 0, 1], turn_port)),
        "alice",
        "alice-pass-77",
        "calls.example.org",
    );
    assert!((lo..=hi).contains(&relayed.port()));

    // With use-auth-secret, coturn checks every username as a REST credential.
    std::fs::write(&p, "use-auth-secret\nstatic-auth-secret=x\nuser=alice:pw\n").unwrap();
    let out = import(&[p.to_str().unwrap()]);
    let (toml, report) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{report}");
    assert!(!toml.contains("static_user ="), "{toml}");
    assert!(
        report.contains("coturn ignores static users together with use-auth-secret"),
        "{report}"
    );
    let _ = std::fs::remove_dir_all(dir);
}
