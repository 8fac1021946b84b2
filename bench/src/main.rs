//! `firstcall-bench`: the load side of `bench/run`. Prints one JSON object per result.
//!
//!   firstcall-bench relay   --server ADDR --kind turn|bare [--secret S] --flows N --size B
//!                           --start PPS --max PPS --duration-ms D --server-pid PID
//!   firstcall-bench control --server ADDR --secret S --count N --concurrency C --server-pid PID

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use firstcall_client::load;
use firstcall_client::turn::Credentials;
use firstcall_turn::auth::{rest_credential, Secret};
use serde_json::json;

fn args() -> (String, HashMap<String, String>) {
    let mut it = std::env::args().skip(1);
    let cmd = it.next().unwrap_or_default();
    let mut m = HashMap::new();
    while let Some(k) = it.next() {
        let v = it.next().unwrap_or_default();
        m.insert(k.trim_start_matches("--").to_owned(), v);
    }
    (cmd, m)
}

fn get<T: std::str::FromStr>(m: &HashMap<String, String>, k: &str, default: Option<T>) -> T {
    match m.get(k) {
        Some(v) => v.parse().unwrap_or_else(|_| panic!("bad --{k} {v}")),
        None => default.unwrap_or_else(|| panic!("--{k} is required")),
    }
}

/// utime + stime of a process, seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = s.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0 // fields 14, 15 (1-based, counted after the comm)
}

/// Resident memory of a process, KiB.
fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()?.parse().ok()).unwrap_or(0)
}

fn creds(m: &HashMap<String, String>) -> Credentials {
    let secret: String = get(m, "secret", Some("bench-secret".into()));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (username, password) = rest_credential(&Secret::new(secret), "bench", now + 7200);
    Credentials { username, password }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let (cmd, m) = args();
    let server: SocketAddr = get(&m, "server", None);
    let pid: u32 = get(&m, "server-pid", Some(0));
    match cmd.as_str() {
        "relay" => {
            let kind: String = get(&m, "kind", Some("turn".into()));
            let n: usize = get(&m, "flows", Some(1));
            let size: usize = get(&m, "size", Some(100));
            let mut rate: u64 = get(&m, "start", Some(10_000));
            let max: u64 = get(&m, "max", Some(1_000_000));
            let dur = Duration::from_millis(get(&m, "duration-ms", Some(2000)));
            let flows = if kind == "bare" {
                load::bare_flows(server, n).await.expect("bare forwarder flows")
            } else {
                load::turn_flows(server, &creds(&m), n).await.expect("TURN flows")
            };
            let mut best: Option<serde_json::Value> = None;
            let mut good = 0u64;
            let mut bad = None;
            // Step the offered rate up by 1.4x until loss exceeds 1%, then narrow the gap
            // between the last good and the first bad rate twice (geometric midpoint).
            let mut refinements = 0;
            loop {
                if rate > max || (bad.is_some() && refinements > 2) {
                    break;
                }
                let cpu0 = cpu_seconds(pid);
                let r = load::run(&flows, size, rate, dur).await;
                let cpu = cpu_seconds(pid) - cpu0;
                let loss = r.loss();
                let per_million = if r.received > 0 { cpu / r.received as f64 * 1e6 } else { 0.0 };
                let achieved = r.sent as f64 / r.duration.as_secs_f64();
                println!("{}", json!({"step": true, "rate": rate, "achieved_rate": achieved, "sent": r.sent, "received": r.received, "loss": loss, "cpu_s": cpu, "cpu_s_per_million": per_million}));
                if loss > 0.01 {
                    bad = Some(rate);
                } else if rate > good {
                    good = rate;
                    best = Some(json!({"rate": rate, "achieved_rate": achieved, "loss": loss, "cpu_s_per_million": per_million, "mbit_s": achieved * size as f64 * 8.0 / 1e6}));
                }
                rate = match bad {
                    None => (rate as f64 * 1.4) as u64,
                    Some(b) => {
                        refinements += 1;
                        ((good.max(1) as f64 * b as f64).sqrt()) as u64
                    }
                };
            }
            println!("{}", json!({"result": best}));
        }
        "control" => {
            let count: usize = get(&m, "count", Some(1000));
            let conc: usize = get(&m, "concurrency", Some(16));
            let creds = creds(&m);
            // Permissions and channels point at a relayed address of the same server, the
            // one peer every server relays to by default and that carries no traffic here.
            let anchor = load::setup_anchor(server, &creds).await.expect("first allocation");
            let peer = anchor.1;
            let rss0 = rss_kib(pid);
            let started = Instant::now();
            let mut held = Vec::with_capacity(count);
            let mut failures = 0usize;
            let mut i = 0;
            while i < count {
                let mut set = tokio::task::JoinSet::new();
                for _ in i..(i + conc).min(count) {
                    let creds = creds.clone();
                    set.spawn(async move { load::setup_one(server, &creds, peer).await });
                }
                while let Some(r) = set.join_next().await {
                    match r {
                        Ok(Ok(c)) => held.push(c),
                        _ => failures += 1,
                    }
                }
                i += conc;
            }
            let secs = started.elapsed().as_secs_f64();
            // Let the server settle, then measure what it holds per live allocation.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let rss1 = rss_kib(pid);
            let ok = held.len();
            println!("{}", json!({"result": {
                "allocations": ok, "failures": failures, "concurrency": conc, "seconds": secs, "per_second": ok as f64 / secs,
                "rss_before_kib": rss0, "rss_after_kib": rss1,
                "bytes_per_allocation": if ok > 0 { (rss1.saturating_sub(rss0)) as f64 * 1024.0 / ok as f64 } else { 0.0 },
            }}));
        }
        _ => {
            eprintln!("usage: firstcall-bench relay|control --server ADDR ...");
            std::process::exit(2);
        }
    }
}
