//! `firstcall doctor` against our own server and against Debian's coturn, healthy and
//! deliberately misconfigured. Servers and doctor run inside a network namespace with
//! 203.0.113.1, so relaying between relays works without opening loopback.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;

const SECRET: &str = "doctor-secret";
const IP: &str = "203.0.113.1";

struct Ns(String);

impl Ns {
    fn new(tag: &str) -> Option<Ns> {
        if !is_root() {
            assert!(
                std::env::var_os("CI").is_none(),
                "doctor tests need root (network namespaces) in CI"
            );
            eprintln!("SKIP: not root");
            return None;
        }
        let name = format!("fcd-{}-{tag}", std::process::id());
        let ip = |args: &[&str]| assert!(Command::new("ip").args(args).status().unwrap().success(), "ip {args:?}");
        ip(&["netns", "add", &name]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        ip(&[
            "-n", &name, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1",
        ]);
        ip(&["-n", &name, "addr", "add", &format!("{IP}/24"), "dev", "eth0"]);
        ip(&["-n", &name, "link", "set", "dev", "eth1", "up"]);
        ip(&["-n", &name, "link", "set", "dev", "eth0", "up"]);
        Some(Ns(name))
    }
    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0, program]);
        c
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "delete", &self.0]).status();
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Wait until a STUN binding (or, with --no-stun, the TCP port) answers in the namespace.
fn wait_listening(ns: &Ns, port: u16) {
    let probe = format!(
        "import socket,sys\ns=socket.socket();s.settimeout(0.2)\nsys.exit(0 if s.connect_ex(('{IP}',{port}))==0 else 1)"
    );
    assert!(
        wait_until(Duration::from_secs(15), || ns
            .cmd("python3")
            .args(["-c", &probe])
            .status()
            .is_ok_and(|s| s.success())),
        "server did not listen on {port}"
    );
}

fn start_coturn(ns: &Ns, extra: &[&str]) -> Proc {
    let mut c = ns.cmd("turnserver");
    c.args([
        "-n",
        "--listening-ip",
        IP,
        "--relay-ip",
        IP,
        "--listening-port",
        "3478",
        "--min-port",
        "50000",
        "--max-port",
        "50100",
    ])
    .args([
        "--use-auth-secret",
        "--static-auth-secret",
        SECRET,
        "--realm",
        "doctor.test",
        "--no-cli",
        "--no-tls",
        "--no-dtls",
    ])
    .args([
        "--denied-peer-ip=10.0.0.0-10.255.255.255",
        "--denied-peer-ip=169.254.0.0-169.254.255.255",
        "--log-file",
        "stdout",
    ])
    .args(extra)
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let p = Proc::spawn("turnserver", &mut c);
    wait_listening(ns, 3478);
    p
}

fn start_ours(ns: &Ns, extra: &[&str]) -> Proc {
    let dir = std::env::temp_dir().join(format!("firstcall-doctor-{}-{}", std::process::id(), ns.0));
    let mut c = ns.cmd(firstcall_bin());
    c.args([
        "serve",
        "--http-listen",
        &format!("{IP}:8080"),
        "--turn-listen",
        &format!("{IP}:3478"),
        "--relay-ports",
        "50000-50100",
    ])
    .args(["--turn-secret", SECRET, "--data-dir", dir.to_str().unwrap()])
    .args(extra)
    .arg("--dev")
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let p = Proc::spawn("firstcall", &mut c);
    wait_listening(ns, 8080);
    p
}

/// Run doctor in the namespace; returns (exit code, checks).
fn doctor(ns: &Ns, args: &[&str]) -> (i32, Vec<Value>) {
    let out = run_bounded(
        ns.cmd(firstcall_bin())
            .arg("doctor")
            .args(args)
            .args(["--json", "--timeout", "2"]),
        Duration::from_secs(120),
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "doctor output is not JSON ({e}):\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (
        out.status.code().unwrap_or(-1),
        v["checks"].as_array().cloned().unwrap_or_default(),
    )
}

fn udp_turn() -> String {
    format!("turn:{IP}:3478?transport=udp")
}

fn assert_clean(code: i32, checks: &[Value]) {
    let bad: Vec<&Value> = checks.iter().filter(|c| c["status"] != "pass").collect();
    assert!(bad.is_empty(), "healthy server not clean: {bad:#?}");
    assert_eq!(code, 0);
    assert!(checks.len() >= 10, "too few checks ran: {checks:#?}");
}

fn assert_fails(code: i32, checks: &[Value], check: &str, fix_contains: &str) {
    assert_eq!(code, 1, "doctor must exit 1 on a failure");
    let hit = checks
        .iter()
        .find(|c| c["status"] == "fail" && c["check"].as_str().unwrap_or("").starts_with(check));
    let Some(hit) = hit else {
        panic!("no failing {check:?} check in {checks:#?}")
    };
    let fix = hit["fix"].as_str().unwrap_or("");
    assert!(
        fix.contains(fix_contains),
        "fix for {check:?} should mention {fix_contains:?}: {hit:#?}"
    );
}

#[test]
fn our_server_healthy_passes_clean_over_udp_tcp_and_server_mode() {
    let Some(ns) = Ns::new("ours") else { return };
    let _s = start_ours(&ns, &[]);
    let tcp = format!("turn:{IP}:3478?transport=tcp");
    let (code, checks) = doctor(
        &ns,
        &[
            "--turn",
            &udp_turn(),
            "--turn",
            &tcp,
            "--secret",
            SECRET,
            "--expect-ip",
            IP,
            "--relay-ports",
            "50000-50100",
        ],
    );
    assert_clean(code, &checks);
    let (code, checks) = doctor(
        &ns,
        &[
            "--server",
            &format!("http://{IP}:8080"),
            "--token",
            "dev:doc",
            "--expect-ip",
            IP,
        ],
    );
    assert_clean(code, &checks);
    assert!(checks.iter().any(|c| c["check"] == "websocket hello"));
}

#[test]
fn our_server_with_a_wrong_external_ip() {
    let Some(ns) = Ns::new("ourext") else { return };
    let _s = start_ours(&ns, &["--external-ip", "198.51.100.77"]);
    let (code, checks) = doctor(&ns, &["--turn", &udp_turn(), "--secret", SECRET, "--expect-ip", IP]);
    assert_fails(code, &checks, "relayed address", "--external-ip 203.0.113.1");
}

#[test]
fn coturn_healthy_passes_clean() {
    if !have_tool("turnserver") {
        return;
    }
    let Some(ns) = Ns::new("cot") else { return };
    let _s = start_coturn(&ns, &[]);
    let (code, checks) = doctor(
        &ns,
        &[
            "--turn",
            &udp_turn(),
            "--secret",
            SECRET,
            "--expect-ip",
            IP,
            "--relay-ports",
            "50000-50100",
        ],
    );
    assert_clean(code, &checks);
}

#[test]
fn coturn_misconfigurations_each_fail_their_own_check() {
    if !have_tool("turnserver") {
        return;
    }
    let turn = udp_turn();
    // STUN disabled.
    {
        let ns = Ns::new("nostun").unwrap();
        let _s = start_coturn(&ns, &["--no-stun"]);
        let (code, checks) = doctor(&ns, &["--turn", &turn, "--secret", SECRET, "--expect-ip", IP]);
        assert_fails(code, &checks, "stun binding", "no-stun");
    }
    let ns = Ns::new("cotbad").unwrap();
    // Wrong secret, and expired credentials, against a healthy coturn.
    {
        let _s = start_coturn(&ns, &[]);
        let (code, checks) = doctor(&ns, &["--turn", &turn, "--secret", "not-the-secret", "--expect-ip", IP]);
        assert_fails(code, &checks, "credentials", "static-auth-secret");
        let expired = "1000000000:alice";
        let pw = firstcall_turn::auth::rest_password(&firstcall_turn::auth::Secret::new(SECRET), expired);
        let (code, checks) = doctor(
            &ns,
            &["--turn", &turn, "--user", expired, "--password", &pw, "--expect-ip", IP],
        );
        assert_fails(code, &checks, "credentials", "fresh credentials");
    }
    // Relay ports blocked by a firewall.
    {
        let _s = start_coturn(&ns, &[]);
        // Relay to relay only (both ports in the range): a bare `--dport` rule also
        // dropped coturn's answers to a doctor client whose ephemeral source port fell in
        // 50000-50100, and the check then failed as "no response" instead.
        let block = [
            "-A",
            "INPUT",
            "-p",
            "udp",
            "--sport",
            "50000:50100",
            "--dport",
            "50000:50100",
            "-j",
            "DROP",
        ];
        assert!(ns.cmd("iptables").args(block).status().unwrap().success());
        let (code, checks) = doctor(
            &ns,
            &[
                "--turn",
                &turn,
                "--secret",
                SECRET,
                "--expect-ip",
                IP,
                "--relay-ports",
                "50000-50100",
            ],
        );
        assert_fails(code, &checks, "relay data", "open UDP 50000-50100");
        assert!(ns.cmd("iptables").args(["-F", "INPUT"]).status().unwrap().success());
    }
    // Loopback peers allowed.
    {
        let _s = start_coturn(&ns, &["--allow-loopback-peers"]);
        let (code, checks) = doctor(&ns, &["--turn", &turn, "--secret", SECRET, "--expect-ip", IP]);
        assert_fails(code, &checks, "peer filter", "allow-loopback-peers");
    }
    // A wrong external IP.
    {
        let _s = start_coturn(&ns, &["--external-ip", "198.51.100.77"]);
        let (code, checks) = doctor(&ns, &["--turn", &turn, "--secret", SECRET, "--expect-ip", IP]);
        assert_fails(code, &checks, "relayed address", "external-ip=203.0.113.1");
    }
}
