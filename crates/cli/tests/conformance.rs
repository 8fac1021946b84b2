//! The conformance kit's runner for the Rust client crate (docs/conformance.md): every
//! scenario in conformance/scenarios/ against the real binary, through the crate's
//! session layer ([`SignalClient`]: seq, ack, resume) and call layer ([`Calls`]).

mod common;

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use firstcall_client::call::{Calls, Media};
use firstcall_client::signal::{ClientError, SignalClient};
use serde_json::{Map, Value};

/// One scenario client: its session, its call layer, frames received and not matched yet.
struct Client {
    user: String,
    device: String,
    session: Option<SignalClient>,
    calls: Calls,
    inbox: VecDeque<Value>,
    last_seq: u64,
}

/// `expected` holds in `actual`: objects by their listed keys only, arrays element by
/// element (same length), `"*"` for any value, other values equal.
fn matches(expected: &Value, actual: &Value) -> bool {
    match (expected, actual) {
        (Value::String(s), _) if s == "*" => !actual.is_null(),
        (Value::Object(e), Value::Object(a)) => e.iter().all(|(k, v)| a.get(k).is_some_and(|av| matches(v, av))),
        (Value::Array(e), Value::Array(a)) => e.len() == a.len() && e.iter().zip(a).all(|(x, y)| matches(x, y)),
        _ => expected == actual,
    }
}

impl Client {
    async fn connect(&mut self, url: &str) {
        let s = SignalClient::connect(url, &format!("dev:{}", self.user), &self.device)
            .await
            .unwrap_or_else(|e| panic!("{} connect: {e}", self.device));
        self.calls.handle_welcome(&s.welcome, &s.unprocessed_invites());
        self.session = Some(s);
    }

    fn session(&mut self) -> &mut SignalClient {
        self.session.as_mut().expect("the client is connected")
    }

    /// The next frame from the server within `until`, fed to the call layer.
    async fn receive(&mut self, until: Instant) -> Option<Value> {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        match self.session().next(left).await {
            Ok(f) => {
                // The call layer must read every server frame; a frame it cannot read is a
                // server bug the kit reports.
                if let Err(e) = self.calls.handle_frame(&f) {
                    panic!("{}: {e} in {f}", self.device);
                }
                Some(f)
            }
            Err(ClientError::Timeout) => None,
            Err(e) => panic!("{}: {e}", self.device),
        }
    }

    /// The first frame (buffered or arriving) matching `want`, or, with `next`, the
    /// next call or error frame, which must match.
    async fn expect(&mut self, want: &Value, within: Duration, next: bool) -> Result<Value, String> {
        let until = Instant::now() + within;
        let relevant = |f: &Value| {
            let t = f["type"].as_str().unwrap_or_default();
            t.starts_with("call.") || t == "error"
        };
        loop {
            if next {
                if let Some(i) = self.inbox.iter().position(relevant) {
                    let f = self.inbox.remove(i).unwrap();
                    return if matches(want, &f) {
                        Ok(f)
                    } else {
                        Err(format!("next frame {f} is not {want}"))
                    };
                }
            } else if let Some(i) = self.inbox.iter().position(|f| matches(want, f)) {
                return Ok(self.inbox.remove(i).unwrap());
            }
            match self.receive(until).await {
                Some(f) => self.inbox.push_back(f),
                None => return Err(format!("no {want} within {within:?}; unmatched: {:?}", self.inbox)),
            }
        }
    }

    /// Send through the call layer (which checks the call's state and builds the frame)
    /// when it has a method for the type; `raw` bypasses it, for misuse.
    async fn send(&mut self, frame: &Value, raw: bool) {
        if !raw {
            let s = |k: &str| frame[k].as_str().unwrap_or_default();
            let built = match s("type") {
                "call.invite" => {
                    let media = if s("media") == "video" {
                        Media::Video
                    } else {
                        Media::Audio
                    };
                    let meta: Option<Map<String, Value>> = frame["meta"].as_object().cloned();
                    Some(self.calls.invite(s("call"), s("to"), media, s("sdp"), meta))
                }
                "call.accept" => Some(self.calls.accept(s("call"), s("sdp"))),
                "call.reject" => Some(self.calls.reject(s("call"))),
                "call.cancel" => Some(self.calls.cancel(s("call"))),
                "call.hangup" => Some(self.calls.hangup(s("call"))),
                "call.signal" => Some(self.calls.signal(s("call"), frame["data"].clone())),
                _ => None,
            };
            if let Some(built) = built {
                let built = built.unwrap_or_else(|e| panic!("{}: the call layer refused {frame}: {e}", self.device));
                assert!(
                    matches(&built, frame),
                    "the call layer built {built}, the scenario sends {frame}"
                );
            }
        }
        self.last_seq = self.session().send(frame.clone()).await;
    }
}

fn scenarios() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../conformance/scenarios");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no scenarios in {}", dir.display());
    files
}

async fn run(path: &PathBuf) {
    let sc: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    let flags: Vec<String> = sc["server"]
        .as_array()
        .map(|a| a.iter().map(|v| v.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let server = start_firstcall(&flags);
    let url = ws_url(&server);
    let mut clients: BTreeMap<String, Client> = BTreeMap::new();
    for (id, c) in sc["clients"].as_object().unwrap() {
        let mut client = Client {
            user: c["user"].as_str().unwrap().to_owned(),
            device: c["device"].as_str().unwrap().to_owned(),
            session: None,
            calls: Calls::new(),
            inbox: VecDeque::new(),
            last_seq: 0,
        };
        if c["late"] != true {
            client.connect(&url).await;
        }
        clients.insert(id.clone(), client);
    }
    for (i, step) in sc["steps"].as_array().unwrap().iter().enumerate() {
        let at = format!("{name} step {i}: {step}");
        let c = clients.get_mut(step["client"].as_str().unwrap()).unwrap();
        let within = Duration::from_millis(step["within_ms"].as_u64().unwrap_or(3000));
        let resolve = |v: &Value, last: u64| -> Value {
            let mut v = v.clone();
            if v["ref"] == "$last_seq" {
                v["ref"] = last.into();
            }
            v
        };
        if let Some(f) = step.get("send") {
            c.send(f, false).await;
        } else if let Some(f) = step.get("send_raw") {
            c.send(f, true).await;
        } else if let Some(want) = step.get("expect") {
            let want = resolve(want, c.last_seq);
            if let Err(e) = c.expect(&want, within, false).await {
                panic!("{at}: {e}");
            }
        } else if let Some(want) = step.get("expect_next") {
            if let Err(e) = c.expect(want, within, true).await {
                panic!("{at}: {e}");
            }
        } else if let Some(unwanted) = step.get("expect_none") {
            let window = Duration::from_millis(step["for_ms"].as_u64().unwrap_or(300));
            if let Ok(f) = c.expect(unwanted, window, false).await {
                panic!("{at}: got {f}");
            }
        } else if let Some(want) = step.get("welcome") {
            let got = &c.session().welcome;
            assert!(matches(want, got), "{at}: welcome {got}");
        } else if let Some(want) = step.get("calls") {
            let want: BTreeMap<String, String> = serde_json::from_value(want.clone()).unwrap();
            let got: BTreeMap<String, String> =
                c.calls.snapshot().into_iter().map(|(k, v)| (k, v.to_owned())).collect();
            assert_eq!(got, want, "{at}");
        } else if step.get("cut").is_some() {
            c.session().cut();
        } else if step.get("resume").is_some() {
            c.session().reconnect().await.unwrap_or_else(|e| panic!("{at}: {e}"));
            let welcome = c.session().welcome.clone();
            if welcome["resumed"] != true {
                let unprocessed = c.session().unprocessed_invites();
                c.calls.handle_welcome(&welcome, &unprocessed);
            }
        } else if step.get("connect").is_some() {
            c.connect(&url).await;
        } else {
            panic!("{at}: unknown step");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_client_passes_the_conformance_kit() {
    for path in scenarios() {
        run(&path).await;
    }
}
