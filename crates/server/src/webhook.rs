//! Signed webhook POSTs (a device that sleeps: the app sends a VoIP or FCM push).
//!
//! Body: JSON with an idempotency `id`, also in `X-Firstcall-Event-Id`. Header
//! `X-Firstcall-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>` with
//! `X-Firstcall-Timestamp: <unix>`, so a captured request cannot be replayed later.
//! Posted with hyper-util's pooled keep-alive client, retried with backoff on connection
//! errors, timeouts, 429 and 5xx, in order per device; docs/webhooks.md.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full, Limited};
use hyper::{header, Request, StatusCode, Uri};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::{Notify, Semaphore};

/// A webhook target.
#[derive(Clone)]
pub struct Webhook {
    url: Uri,
    secret: Arc<String>,
    /// Pooled keep-alive connections to the receiver.
    client: Client,
    policy: Policy,
    coalescer: Arc<Mutex<Coalescer>>,
    /// Free POST slots (`Policy::concurrency`), taken for one attempt at a time.
    slots: Arc<Semaphore>,
    /// Each device's events not yet started, in order, while one of its events is being
    /// delivered (the lane's task posts them one after another). A lane is here exactly
    /// while its task runs.
    lanes: Arc<Mutex<HashMap<Lane, VecDeque<Value>>>>,
    /// Woken when an event is finished (for [`Webhook::flush`]).
    finished: Arc<Notify>,
    /// Told of each event once it is finished (delivered or given up): with several
    /// nodes, the leader acknowledges it in the cluster's hook stream only then.
    on_finished: Arc<std::sync::OnceLock<Finished>>,
    /// Answer tokens put in each `call.ring`, and how long they last.
    answers: Option<(crate::reload::Live<crate::answer_token::AnswerTokens>, Duration)>,
    /// Counters.
    pub metrics: Arc<WebhookMetrics>,
}

/// See [`Webhook::on_finished`]: the body of an event tracked and finished.
pub type Finished = Arc<dyn Fn(&Value) + Send + Sync>;

/// What [`Webhook::post`] did with an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Posted {
    /// Queued for delivery.
    Queued,
    /// Not posted, and never will be (coalesced, or the queue was full).
    Skipped(Skipped),
}

/// Whose events go out in order: the user and the device (`None`: events for the user
/// as a whole, `call.pending` and a `call.missed` with no device).
type Lane = (String, Option<String>);

/// How many webhooks go out, and how fast.
#[derive(Clone, Debug)]
pub struct Policy {
    /// POSTs in flight at once.
    pub concurrency: usize,
    /// Events accepted and not yet posted; past it new events are dropped.
    pub queue: usize,
    /// At least this long between two events of one caller and callee pair (zero: no
    /// spacing).
    pub pair_interval: Duration,
    /// At most this many events per caller and callee pair within `callee_window`: a
    /// caller who cancels and calls again rings the phone again, an invite-and-cancel
    /// loop does not ring it more than this.
    pub pair_burst: u32,
    /// At most this many callers' events per callee within `callee_window` (each
    /// caller's own events count once here, and against `pair_burst`).
    pub callee_burst: u32,
    /// See `callee_burst`; also the window of `caller_burst`.
    pub callee_window: Duration,
    /// At most this many events per caller within `callee_window`, whoever they call.
    pub caller_burst: u32,
    /// Callers, callees and pairs remembered at most; past it new events are skipped.
    pub max_entries: usize,
    /// Attempts per event, the first included.
    pub attempts: u32,
    /// How long one attempt may take, connection included.
    pub timeout: Duration,
}

/// The first retry's delay; each next one doubles, up to [`MAX_BACKOFF`]; each is
/// jittered down to half of it, so that events failed together are not retried together.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// The longest delay between two attempts of ours.
const MAX_BACKOFF: Duration = Duration::from_secs(8);
/// A receiver's `Retry-After` (in seconds) is waited up to this; a longer one waits this
/// long (a call's push is worth little later than that).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

/// How long a call's decision is kept for its later events. They all come while it rings
/// (an answer ends the pushes: `call.answered_elsewhere` goes out then), so this is the
/// longest sensible ring timeout.
const CALL_MEMORY: Duration = Duration::from_secs(600);

/// Why an event was not posted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skipped {
    /// The same caller and callee had one within `pair_interval`, or `pair_burst`
    /// within `callee_window`.
    Pair,
    /// The callee had `callee_burst` other callers' events within `callee_window`.
    Callee,
    /// `queue` events were already waiting.
    QueueFull,
    /// The caller had `caller_burst` within the window.
    Caller,
    /// `max_entries` callers, callees and pairs are remembered already.
    TableFull,
    /// How a call ended, for a device that was never pushed for it (its first event was
    /// not posted): the phone never saw the call.
    NotRung,
}

impl Skipped {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Skipped::Pair => "coalesced_pair",
            Skipped::Callee => "coalesced_callee",
            Skipped::QueueFull => "queue_full",
            Skipped::Caller => "coalesced_caller",
            Skipped::TableFull => "table_full",
            Skipped::NotRung => "not_rung",
        }
    }
}

/// Webhook counters.
#[derive(Debug, Default)]
pub struct WebhookMetrics {
    /// Delivered (2xx).
    pub delivered: AtomicU64,
    /// Given up after every attempt.
    pub failed: AtomicU64,
    /// Answered with a status that is not retried (4xx but 429, 3xx): given up at once.
    pub rejected: AtomicU64,
    /// Attempts after an event's first.
    pub retries: AtomicU64,
    /// Events accepted and not yet finished (waiting, being posted, or between attempts).
    pub queued: AtomicUsize,
    /// Not posted: [`Skipped::Pair`].
    pub coalesced_pair: AtomicU64,
    /// Not posted: [`Skipped::Callee`].
    pub coalesced_callee: AtomicU64,
    /// Not posted: [`Skipped::QueueFull`].
    pub queue_full: AtomicU64,
    /// Not posted: [`Skipped::Caller`].
    pub coalesced_caller: AtomicU64,
    /// Not posted: [`Skipped::TableFull`].
    pub table_full: AtomicU64,
    /// Not posted: [`Skipped::NotRung`].
    pub not_rung: AtomicU64,
}

impl WebhookMetrics {
    fn skipped(&self, why: Skipped) {
        match why {
            Skipped::Pair => &self.coalesced_pair,
            Skipped::Callee => &self.coalesced_callee,
            Skipped::QueueFull => &self.queue_full,
            Skipped::Caller => &self.coalesced_caller,
            Skipped::TableFull => &self.table_full,
            Skipped::NotRung => &self.not_rung,
        }
        .fetch_add(1, Relaxed);
    }

    /// Prometheus text.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let name = "firstcall_webhook_events_total";
        let _ = writeln!(
            out,
            "# HELP {name} Webhook events by outcome: delivered, failed after every attempt, rejected by the receiver (not retried), or not posted (coalesced, queue full).\n# TYPE {name} counter"
        );
        for (label, n) in [
            ("delivered", &self.delivered),
            ("failed", &self.failed),
            ("rejected", &self.rejected),
            (Skipped::Pair.as_str(), &self.coalesced_pair),
            (Skipped::Callee.as_str(), &self.coalesced_callee),
            (Skipped::QueueFull.as_str(), &self.queue_full),
            (Skipped::Caller.as_str(), &self.coalesced_caller),
            (Skipped::TableFull.as_str(), &self.table_full),
            (Skipped::NotRung.as_str(), &self.not_rung),
        ] {
            let _ = writeln!(out, "{name}{{outcome=\"{label}\"}} {}", n.load(Relaxed));
        }
        let _ = writeln!(
            out,
            "# HELP firstcall_webhook_retries_total Webhook attempts after an event's first (connection errors, timeouts, 429, 5xx).\n# TYPE firstcall_webhook_retries_total counter\nfirstcall_webhook_retries_total {}",
            self.retries.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP firstcall_webhook_queued Webhook events accepted and not yet finished (bounded by --webhook-queue).\n# TYPE firstcall_webhook_queued gauge\nfirstcall_webhook_queued {}",
            self.queued.load(Relaxed)
        );
    }
}

/// Which events may go out, by caller and callee, as a function of time: per pair, one
/// per `pair_interval` and `pair_burst` per `callee_window`; per callee, `callee_burst`
/// callers per `callee_window`; per caller, `caller_burst` per `callee_window`. Invite and
/// cancel in a loop would otherwise push the callee's phone once per invite.
#[derive(Debug)]
pub struct Coalescer {
    policy: Policy,
    pairs: HashMap<(String, String), Instant>,
    /// Each callee's recent events, with their callers.
    callees: HashMap<String, VecDeque<(Instant, String)>>,
    /// Each caller's recent events.
    callers: HashMap<String, VecDeque<Instant>>,
    /// Recent calls whose first event was posted: their later events follow it. Only
    /// admitted calls are kept, so the map is bounded by what the budgets admit.
    calls: HashMap<String, Instant>,
    /// Entries past this many trigger a sweep of expired ones.
    sweep_at: usize,
}

impl Coalescer {
    /// Under `policy`.
    pub fn new(policy: Policy) -> Coalescer {
        Coalescer {
            policy,
            pairs: HashMap::new(),
            callees: HashMap::new(),
            callers: HashMap::new(),
            calls: HashMap::new(),
            sweep_at: 1024,
        }
    }

    /// Whether an event about `call` may be posted at `now`. A call's first event (its
    /// `call.pending`, or its first device's `call.ring`) is admitted or not as
    /// [`Coalescer::admit`] says; the call's later events (the other devices' rings, and
    /// how the call ended for each device that was pushed) follow that decision without
    /// counting again, so a phone that was rung always hears how the call ended, and one
    /// that was not is not told of a call it never saw.
    ///
    /// `opens`: the event can be a call's first (`call.pending`, `call.ring`, a
    /// `call.missed` for the user); otherwise it tells a device how a call ended, and is
    /// posted only if the call's first event was.
    pub fn admit_event(
        &mut self,
        call: Option<&str>,
        opens: bool,
        from: &str,
        to: &str,
        now: Instant,
    ) -> Result<(), Skipped> {
        let Some(call) = call else {
            return self.admit(from, to, now);
        };
        if self.calls.contains_key(call) {
            return Ok(());
        }
        if !opens {
            return Err(Skipped::NotRung);
        }
        // Not admitted: not kept (a refused call's other rings meet the same budgets).
        self.admit(from, to, now)?;
        self.calls.insert(call.to_owned(), now);
        Ok(())
    }

    /// Whether an event from `from` to `to` may be posted at `now` (and if so, it counts).
    pub fn admit(&mut self, from: &str, to: &str, now: Instant) -> Result<(), Skipped> {
        self.sweep(now);
        let p = &self.policy;
        let (pi, w) = (p.pair_interval, p.callee_window);
        let key = (from.to_owned(), to.to_owned());
        if self
            .pairs
            .get(&key)
            .is_some_and(|at| now.saturating_duration_since(*at) < pi)
        {
            return Err(Skipped::Pair);
        }
        let expire = |q: &mut VecDeque<Instant>| {
            while q.front().is_some_and(|at| now.saturating_duration_since(*at) >= w) {
                q.pop_front();
            }
        };
        if let Some(q) = self.callers.get_mut(from) {
            expire(q);
            if q.len() >= p.caller_burst as usize {
                return Err(Skipped::Caller);
            }
        }
        if let Some(q) = self.callees.get_mut(to) {
            while q.front().is_some_and(|(at, _)| now.saturating_duration_since(*at) >= w) {
                q.pop_front();
            }
            let mine = q.iter().filter(|(_, f)| f == from).count();
            if mine >= p.pair_burst as usize {
                return Err(Skipped::Pair);
            }
            // A caller already in the window keeps its place: the callee's budget counts
            // callers, so a single account cannot use it up and silence every other
            // caller's push, and a caller calling again is bounded by `pair_burst`.
            if mine == 0 {
                let mut others: Vec<&str> = q.iter().map(|(_, f)| f.as_str()).collect();
                others.sort_unstable();
                others.dedup();
                if others.len() >= p.callee_burst as usize {
                    return Err(Skipped::Callee);
                }
            }
        }
        if self.len() + 3 > p.max_entries {
            self.sweep_at = 0; // sweep at once next time, and refuse this one
            return Err(Skipped::TableFull);
        }
        self.callees
            .entry(to.to_owned())
            .or_default()
            .push_back((now, from.to_owned()));
        self.callers.entry(from.to_owned()).or_default().push_back(now);
        self.pairs.insert(key, now);
        Ok(())
    }

    /// Entries kept (the four maps): bounded by `max_entries`.
    pub fn len(&self) -> usize {
        self.pairs.len() + self.callees.len() + self.callers.len() + self.calls.len()
    }

    /// No entries kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn sweep(&mut self, now: Instant) {
        if self.len() < self.sweep_at {
            return;
        }
        let (pi, cw) = (self.policy.pair_interval, self.policy.callee_window);
        self.pairs.retain(|_, at| now.saturating_duration_since(*at) < pi);
        self.callees
            .retain(|_, w| w.back().is_some_and(|(at, _)| now.saturating_duration_since(*at) < cw));
        self.callers
            .retain(|_, w| w.back().is_some_and(|at| now.saturating_duration_since(*at) < cw));
        self.calls
            .retain(|_, at| now.saturating_duration_since(*at) < CALL_MEMORY);
        // Next sweep when the live entries have doubled: amortised O(1) per event.
        self.sweep_at = (self.len() * 2).max(1024);
    }
}

/// Why a webhook URL is unusable.
#[derive(Debug, thiserror::Error)]
#[error("--webhook-url {0:?}: expected http://host[:port]/path or https://...")]
pub struct BadUrl(String);

/// `url` as a URI hyper's client can use: `http` or `https`, with a host.
fn parse(url: &str) -> Result<Uri, BadUrl> {
    let bad = || BadUrl(url.to_owned());
    let uri: Uri = url.parse().map_err(|_| bad())?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none_or(|h| h.is_empty() || h == "[]") {
        return Err(bad());
    }
    Ok(uri)
}

/// How long an idle pooled connection is kept: under the 5 s of Node's default
/// `keepAliveTimeout` (and most servers' longer ones), so that the client does not pick a
/// connection the receiver is closing at that moment.
const POOL_IDLE: Duration = Duration::from_secs(4);

/// The largest response body read (and dropped): reading it to the end lets the
/// connection go back to the pool; a larger one closes the connection instead.
const MAX_RESPONSE_BODY: usize = 64 << 10;

/// The pooled HTTP/1.1 client: hyper-util's, over [`Connector`].
type Client = hyper_util::client::legacy::Client<Connector, Full<Bytes>>;

fn client(tls: Option<tokio_rustls::TlsConnector>, idle_per_host: usize) -> Client {
    let mut http = HttpConnector::new();
    // https URIs are ours to handle (`Connector` wraps the TCP stream in TLS).
    http.enforce_http(false);
    http.set_nodelay(true);
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE)
        .pool_max_idle_per_host(idle_per_host)
        .build(Connector { http, tls })
}

/// hyper-util's TCP connector (name resolution, IPv6 literals, connect), then rustls
/// with the web-PKI roots for `https` URLs.
#[derive(Clone)]
struct Connector {
    http: HttpConnector,
    tls: Option<tokio_rustls::TlsConnector>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower::Service<Uri> for Connector {
    type Response = Stream;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Stream, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let mut http = self.http.clone();
        let tls = self.tls.clone();
        Box::pin(async move {
            let tcp = http.call(uri.clone()).await?;
            if uri.scheme_str() != Some("https") {
                return Ok(Stream::Plain(tcp));
            }
            let tls = tls.ok_or("https URL without a TLS client")?;
            // IPv6 literals come bracketed in the URI.
            let host = uri.host().unwrap_or_default();
            let name = ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']').to_owned())?;
            Ok(Stream::Tls(Box::new(TokioIo::new(
                tls.connect(name, tcp.into_inner()).await?,
            ))))
        })
    }
}

/// A connection to the receiver, plain or TLS.
enum Stream {
    Plain(TokioIo<TcpStream>),
    Tls(Box<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>>),
}

impl Connection for Stream {
    fn connected(&self) -> Connected {
        match self {
            Stream::Plain(s) => s.connected(),
            Stream::Tls(s) => s.inner().get_ref().0.connected(),
        }
    }
}

impl hyper::rt::Read for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl hyper::rt::Write for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}

/// `sha256=<hex>` over `<timestamp>.<body>`.
pub fn signature(secret: &str, timestamp: u64, body: &[u8]) -> String {
    let mut m = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    m.update(timestamp.to_string().as_bytes());
    m.update(b".");
    m.update(body);
    let tag = m.finalize().into_bytes();
    format!("sha256={}", tag.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

impl Webhook {
    /// A webhook posting to `url`, signed with `secret`, as `policy` allows.
    pub fn new(url: &str, secret: String, policy: Policy) -> Result<Webhook, BadUrl> {
        let url = parse(url)?;
        let tls = (url.scheme_str() == Some("https")).then(crate::web_pki_client);
        Ok(Webhook {
            client: client(tls, policy.concurrency.max(1)),
            url,
            secret: Arc::new(secret),
            slots: Arc::new(Semaphore::new(policy.concurrency.max(1))),
            coalescer: Arc::new(Mutex::new(Coalescer::new(policy.clone()))),
            policy,
            lanes: Arc::default(),
            finished: Arc::default(),
            on_finished: Arc::default(),
            answers: None,
            metrics: Arc::new(WebhookMetrics::default()),
        })
    }

    /// Each `call.ring` carries an `answer_token` lasting `ttl` (the ring timeout): the
    /// phone it wakes signs in with it at once (docs/webhooks.md).
    pub fn with_answer_tokens(
        mut self,
        tokens: crate::reload::Live<crate::answer_token::AnswerTokens>,
        ttl: Duration,
    ) -> Webhook {
        self.answers = Some((tokens, ttl));
        self
    }

    /// An answer token for `to`'s `device` ringing for `call`, and when it expires.
    fn answer_token(&self, to: &str, call: &str, device: Option<&str>) -> Option<(String, u64)> {
        let (tokens, ttl) = self.answers.as_ref()?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let exp = now.saturating_add(ttl.as_secs().max(1));
        Some((tokens.load().mint(to, call, device, exp), exp))
    }

    /// Call `f` with each event's body once it is finished (delivered or given up); set
    /// once (the cluster's hook task), later calls are ignored.
    pub fn on_finished(&self, f: Finished) {
        let _ = self.on_finished.set(f);
    }

    /// POST in the background, unless the policy coalesces it or the queue is full
    /// (counted, and logged). A device's events go out in order, each delivered or given
    /// up before the next starts; different devices' in parallel, at most `concurrency`
    /// attempts at once. Each event gets up to `attempts` attempts (the same event id in
    /// each), with backoff.
    pub fn post(&self, mut body: Value) -> Posted {
        // The hub names its per-device events `<call>/<device>/<event>`; `call.pending` has
        // no `id` of its own: it gets the same form (one per call: `-` for no device).
        if body.get("id").is_none() {
            if let (Some(call), Some(event)) = (
                body.get("call").and_then(Value::as_str),
                body.get("event").and_then(Value::as_str),
            ) {
                body["id"] = Value::from(format!("{call}/-/{event}"));
            }
        }
        let text = |k: &str| body.get(k).and_then(Value::as_str);
        let (from, to) = (text("from").unwrap_or(""), text("to").unwrap_or(""));
        let (call, event, id, device) = (
            text("call"),
            text("event").unwrap_or(""),
            text("id").unwrap_or(""),
            text("device"),
        );
        let opens = match event {
            "call.pending" | "call.ring" => true,
            "call.missed" => device.is_none(),
            _ => false,
        };
        let queued = &self.metrics.queued;
        // One look at the coalescer: whether this tells a rung phone how its call ended
        // (never dropped for a full queue, bounded anyway: a few per admitted call, or
        // that phone would ring on), then the admission itself.
        let mut coalescer = self.coalescer.lock().unwrap_or_else(|e| e.into_inner());
        let follows = !opens && call.is_some_and(|c| coalescer.calls.contains_key(c));
        // A place in the queue first: an event dropped for a full queue must not use up
        // the pair's interval and the callee's budget for the retry that follows.
        if queued.fetch_add(1, Relaxed) >= self.policy.queue && !follows {
            drop(coalescer);
            queued.fetch_sub(1, Relaxed);
            self.metrics.skipped(Skipped::QueueFull);
            tracing::warn!(
                event,
                id,
                from,
                to,
                device,
                queue = self.policy.queue,
                "webhook dropped: queue full (the receiver is slow or down)"
            );
            return Posted::Skipped(Skipped::QueueFull);
        }
        let admitted = coalescer.admit_event(call, opens, from, to, Instant::now());
        drop(coalescer);
        if let Err(why) = admitted {
            queued.fetch_sub(1, Relaxed);
            self.metrics.skipped(why);
            tracing::info!(
                event,
                id,
                from,
                to,
                reason = why.as_str(),
                "webhook not posted: coalesced with recent ones"
            );
            return Posted::Skipped(why);
        }
        let lane: Lane = (to.to_owned(), device.map(str::to_owned));
        // Minted when posted (by the leader, with several nodes): it lasts from the push.
        let answer = match (event, call) {
            ("call.ring", Some(call)) => self.answer_token(to, call, device),
            _ => None,
        };
        if let Some((token, exp)) = answer {
            body["answer_token"] = Value::from(token);
            body["answer_token_expires"] = Value::from(exp);
        }
        let mut lanes = self.lanes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(waiting) = lanes.get_mut(&lane) {
            // The device's task is delivering an earlier event: this one goes after it.
            waiting.push_back(body);
            return Posted::Queued;
        }
        lanes.insert(lane.clone(), VecDeque::new());
        drop(lanes);
        let this = self.clone();
        tokio::spawn(async move { this.run_lane(lane, body).await });
        Posted::Queued
    }

    /// Deliver `first`, then the lane's events queued meanwhile, one after another; the
    /// lane ends when none is left. Each turn finishes one queued event, and the queue
    /// is bounded, so the task ends.
    async fn run_lane(self, lane: Lane, first: Value) {
        let mut body = first;
        loop {
            self.deliver_counted(&body).await;
            let mut lanes = self.lanes.lock().unwrap_or_else(|e| e.into_inner());
            match lanes.get_mut(&lane).and_then(VecDeque::pop_front) {
                Some(next) => body = next,
                None => {
                    lanes.remove(&lane);
                    return;
                }
            }
        }
    }

    /// Deliver one event and count how it went; it leaves the queue.
    async fn deliver_counted(&self, body: &Value) {
        let text = |k: &str| body.get(k).and_then(Value::as_str).unwrap_or("");
        let (event, id, to) = (text("event"), text("id"), text("to"));
        let device = body.get("device").and_then(Value::as_str);
        let outcome = self.deliver(&body.to_string(), id, event).await;
        self.metrics.queued.fetch_sub(1, Relaxed);
        if let Some(f) = self.on_finished.get() {
            f(body);
        }
        self.finished.notify_waiters();
        match outcome {
            Delivered::Yes => {
                self.metrics.delivered.fetch_add(1, Relaxed);
            }
            Delivered::Rejected(status) => {
                self.metrics.rejected.fetch_add(1, Relaxed);
                tracing::warn!(
                    event,
                    id,
                    to,
                    device,
                    status = status.as_u16(),
                    "webhook given up: the receiver refused it (an answer that is not retried)"
                );
            }
            Delivered::Failed => {
                self.metrics.failed.fetch_add(1, Relaxed);
                tracing::warn!(
                    event,
                    id,
                    to,
                    device,
                    attempts = self.policy.attempts,
                    "webhook given up after every attempt"
                );
            }
        }
    }

    /// Events accepted and not yet finished.
    pub fn queued(&self) -> usize {
        self.metrics.queued.load(Relaxed)
    }

    /// Wait until every accepted event is finished (delivered or given up), or until
    /// `deadline`; whether all were.
    pub async fn flush(&self, deadline: tokio::time::Instant) -> bool {
        // Bounded by the deadline; each wake-up is an event finished.
        loop {
            let finished = self.finished.notified();
            tokio::pin!(finished);
            // Registered before the check: an event finished in between wakes it.
            finished.as_mut().enable();
            if self.queued() == 0 {
                return true;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return self.queued() == 0,
                _ = finished => {}
            }
        }
    }

    /// Up to `attempts` attempts, each bounded by `timeout` and holding a POST slot
    /// while it runs (not while it waits to retry).
    async fn deliver(&self, body: &str, id: &str, event: &str) -> Delivered {
        let attempts = self.policy.attempts.max(1);
        for attempt in 1..=attempts {
            let retry_after = {
                let Ok(_slot) = self.slots.acquire().await else {
                    return Delivered::Failed; // the semaphore is never closed
                };
                match tokio::time::timeout(self.policy.timeout, self.send(body, id)).await {
                    Ok(Ok((status, _))) if status.is_success() => {
                        tracing::debug!(event, id, status = status.as_u16(), attempt, "webhook delivered");
                        return Delivered::Yes;
                    }
                    Ok(Ok((status, retry_after)))
                        if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() =>
                    {
                        tracing::warn!(event, id, status = status.as_u16(), attempt, "webhook refused for now");
                        retry_after
                    }
                    Ok(Ok((status, _))) => return Delivered::Rejected(status),
                    Ok(Err(e)) => {
                        tracing::warn!(event, id, error = %e, attempt, "webhook failed");
                        None
                    }
                    Err(_) => {
                        tracing::warn!(event, id, timeout = ?self.policy.timeout, attempt, "webhook timed out");
                        None
                    }
                }
            };
            if attempt < attempts {
                self.metrics.retries.fetch_add(1, Relaxed);
                tokio::time::sleep(backoff(attempt, retry_after)).await;
            }
        }
        Delivered::Failed
    }

    /// One POST: the response's status, its body read (bounded) so that the connection
    /// goes back to the pool.
    async fn send(&self, body: &str, id: &str) -> Result<(StatusCode, Option<Duration>), BoxError> {
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let req = Request::post(self.url.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::USER_AGENT, concat!("firstcall/", env!("CARGO_PKG_VERSION")))
            .header("X-Firstcall-Timestamp", ts)
            .header("X-Firstcall-Signature", signature(&self.secret, ts, body.as_bytes()))
            .header("X-Firstcall-Event-Id", id)
            .body(Full::new(Bytes::copy_from_slice(body.as_bytes())))?;
        let resp = self.client.request(req).await?;
        let status = resp.status();
        // Seconds only (an HTTP date is not honoured: our own backoff applies).
        let retry_after = resp
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        // Not needed, but read: a body left unread would close the connection.
        let _ = Limited::new(resp.into_body(), MAX_RESPONSE_BODY).collect().await;
        Ok((status, retry_after))
    }
}

/// How an event's delivery ended.
enum Delivered {
    /// A 2xx.
    Yes,
    /// An answer that is not retried.
    Rejected(StatusCode),
    /// Every attempt failed.
    Failed,
}

/// The wait after failed attempt `attempt` (1, 2, …): [`FIRST_BACKOFF`] doubling up to
/// [`MAX_BACKOFF`], jittered to between half of it and all of it; at least the receiver's
/// `Retry-After`, up to [`MAX_RETRY_AFTER`].
fn backoff(attempt: u32, retry_after: Option<Duration>) -> Duration {
    let full = FIRST_BACKOFF
        .saturating_mul(1 << attempt.saturating_sub(1).min(16))
        .min(MAX_BACKOFF);
    let jittered = full / 2 + full.mul_f64(rand::random::<f64>() / 2.0);
    retry_after.map_or(jittered, |r| r.min(MAX_RETRY_AFTER).max(jittered))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_calls_later_events_follow_its_first_and_refused_calls_are_not_kept() {
        let policy = Policy {
            concurrency: 1,
            queue: 10,
            pair_interval: Duration::from_secs(10),
            pair_burst: 3,
            callee_burst: 5,
            callee_window: Duration::from_secs(60),
            caller_burst: 10,
            max_entries: 100,
            attempts: 1,
            timeout: Duration::from_secs(1),
        };
        let mut c = Coalescer::new(policy);
        let t = Instant::now();
        // The first call's ring is posted; its other device's ring and its endings follow
        // without counting again.
        assert_eq!(c.admit_event(Some("c1"), true, "a", "b", t), Ok(()));
        assert_eq!(c.admit_event(Some("c1"), true, "a", "b", t), Ok(()));
        assert_eq!(c.admit_event(Some("c1"), false, "a", "b", t), Ok(()));
        // A flood of invite-and-cancel from the same caller: refused, and nothing kept
        // for them; their endings are not posted to phones that never rang.
        let before = c.len();
        for i in 0..1000 {
            let id = format!("flood{i}");
            assert_eq!(c.admit_event(Some(&id), true, "a", "b", t), Err(Skipped::Pair));
            assert_eq!(c.admit_event(Some(&id), false, "a", "b", t), Err(Skipped::NotRung));
        }
        assert_eq!(c.len(), before, "refused calls leave nothing behind");
    }

    #[test]
    fn urls() {
        let u = parse("http://127.0.0.1:9000/hook?k=v").unwrap();
        assert_eq!(
            (
                u.scheme_str(),
                u.host(),
                u.port_u16(),
                u.path_and_query().map(|p| p.as_str())
            ),
            (Some("http"), Some("127.0.0.1"), Some(9000), Some("/hook?k=v"))
        );
        let u = parse("https://push.example.org").unwrap();
        assert_eq!((u.scheme_str(), u.port_u16(), u.path()), (Some("https"), None, "/"));
        let u = parse("http://[::1]:8081/x").unwrap();
        assert_eq!((u.host(), u.port_u16()), (Some("[::1]"), Some(8081)));
        assert!(parse("ftp://x").is_err());
        assert!(parse("http://:80/").is_err());
        assert!(parse("/relative").is_err());
    }

    fn policy() -> Policy {
        Policy {
            concurrency: 2,
            queue: 4,
            pair_interval: Duration::from_secs(10),
            pair_burst: 2,
            callee_burst: 3,
            callee_window: Duration::from_secs(60),
            caller_burst: 100,
            max_entries: 1_000_000,
            attempts: 1,
            timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn a_pair_is_spaced_and_bounded_per_window() {
        let mut c = Coalescer::new(policy());
        let t = Instant::now();
        let at = |s| t + Duration::from_secs(s);
        assert_eq!(c.admit("mallory", "victim", t), Ok(()));
        assert_eq!(c.admit("mallory", "victim", at(9)), Err(Skipped::Pair), "spacing");
        // Another caller is another pair; the other direction too.
        assert_eq!(c.admit("bob", "victim", at(1)), Ok(()));
        assert_eq!(c.admit("victim", "mallory", t), Ok(()));
        // A caller who cancelled and calls again past the interval rings again...
        assert_eq!(c.admit("mallory", "victim", at(10)), Ok(()));
        // ...up to `pair_burst` per window.
        assert_eq!(c.admit("mallory", "victim", at(20)), Err(Skipped::Pair), "burst");
        assert_eq!(c.admit("mallory", "victim", at(60)), Ok(()), "the window moved");
    }

    #[test]
    fn a_zero_pair_interval_means_no_spacing() {
        let mut c = Coalescer::new(Policy {
            pair_interval: Duration::ZERO,
            ..policy()
        });
        let t = Instant::now();
        assert_eq!(c.admit("a", "b", t), Ok(()));
        assert_eq!(c.admit("a", "b", t), Ok(()));
        assert_eq!(c.admit("a", "b", t), Err(Skipped::Pair), "the burst still holds");
    }

    #[test]
    fn a_callee_gets_a_bounded_burst_per_window() {
        let mut c = Coalescer::new(policy());
        let t = Instant::now();
        for (i, from) in ["a", "b", "c"].iter().enumerate() {
            assert_eq!(c.admit(from, "victim", t + Duration::from_secs(i as u64)), Ok(()));
        }
        assert_eq!(c.admit("d", "victim", t + Duration::from_secs(5)), Err(Skipped::Callee));
        // A caller already in the window calls again: it holds its place, no new one.
        assert_eq!(c.admit("c", "victim", t + Duration::from_secs(15)), Ok(()));
        // A refused event does not count: the window frees up 60 s after the first.
        assert_eq!(c.admit("d", "victim", t + Duration::from_secs(60)), Ok(()));
        assert_eq!(
            c.admit("e", "victim", t + Duration::from_secs(60)),
            Err(Skipped::Callee)
        );
        assert_eq!(c.admit("e", "other", t + Duration::from_secs(60)), Ok(()));
    }

    #[test]
    fn one_caller_cannot_use_up_a_callee_or_the_queue() {
        // Review findings: one account re-inviting every pair interval kept the callee's
        // window full (6 per minute against a budget of 5), and invite+cancel to fresh
        // callees filled the shared queue.
        let mut c = Coalescer::new(Policy {
            caller_burst: 3,
            ..policy()
        });
        let t = Instant::now();
        assert_eq!(c.admit("mallory", "victim", t), Ok(()));
        // Mallory re-inviting every pair interval: bounded by the pair's burst, and
        // counted once in the callee's budget, so bob and carol still get through.
        assert_eq!(c.admit("mallory", "victim", t + Duration::from_secs(10)), Ok(()));
        assert_eq!(
            c.admit("mallory", "victim", t + Duration::from_secs(20)),
            Err(Skipped::Pair)
        );
        assert_eq!(c.admit("carol", "victim", t + Duration::from_secs(11)), Ok(()));
        assert_eq!(c.admit("bob", "victim", t + Duration::from_secs(12)), Ok(()));
        // Mallory has had 2 of the caller burst of 3.
        assert_eq!(c.admit("mallory", "x1", t + Duration::from_secs(13)), Ok(()));
        assert_eq!(
            c.admit("mallory", "x2", t + Duration::from_secs(14)),
            Err(Skipped::Caller)
        );
        assert_eq!(
            c.admit("mallory", "x2", t + Duration::from_secs(60)),
            Ok(()),
            "the window moved"
        );
    }

    #[test]
    fn the_tables_are_bounded() {
        let mut c = Coalescer::new(Policy {
            max_entries: 30,
            ..policy()
        });
        let t = Instant::now();
        let admitted = (0..100)
            .filter(|i| c.admit(&format!("u{i}"), &format!("v{i}"), t).is_ok())
            .count();
        assert_eq!(admitted, 10, "three entries per event, 30 at most");
        assert!(c.len() <= 30);
        assert_eq!(c.admit("late", "one", t), Err(Skipped::TableFull));
        // Once they expire, room again.
        assert_eq!(c.admit("late", "one", t + Duration::from_secs(61)), Ok(()));
    }

    #[test]
    fn entries_are_swept_once_expired() {
        let mut c = Coalescer::new(policy());
        let t = Instant::now();
        for i in 0..600u64 {
            c.admit(&format!("u{i}"), &format!("v{i}"), t).unwrap();
        }
        // Past both windows: the old entries go at the next sweep, which comes once the
        // map has doubled since the last one.
        let later = t + Duration::from_secs(61);
        for i in 0..500u64 {
            c.admit(&format!("x{i}"), &format!("y{i}"), later).unwrap();
        }
        assert_eq!(c.len(), 3 * 500, "only the live entries are kept");
    }

    #[test]
    fn backoff_doubles_with_jitter_and_honours_a_short_retry_after() {
        for _ in 0..100 {
            let first = backoff(1, None);
            assert!((FIRST_BACKOFF / 2..=FIRST_BACKOFF).contains(&first), "{first:?}");
            let third = backoff(3, None);
            assert!((FIRST_BACKOFF * 2..=FIRST_BACKOFF * 4).contains(&third), "{third:?}");
            assert!(backoff(30, None) <= MAX_BACKOFF);
            assert_eq!(backoff(1, Some(Duration::from_secs(3))), Duration::from_secs(3));
            assert_eq!(backoff(1, Some(Duration::from_secs(3600))), MAX_RETRY_AFTER);
            assert!(backoff(5, Some(Duration::ZERO)) >= MAX_BACKOFF / 2);
        }
    }

    #[test]
    fn signature_is_hmac_sha256_of_timestamp_and_body() {
        // Cross-checked: python3 -c 'import hmac,hashlib;print(hmac.new(b"k",b"1700000000.{}",hashlib.sha256).hexdigest())'
        assert_eq!(
            signature("k", 1_700_000_000, b"{}"),
            format!(
                "sha256={}",
                "c6ef4734033cee2367414a0939385eca0397754aa7a59716da7463a9298b5146"
            )
        );
    }
}
