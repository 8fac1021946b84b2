//! The HTTP listener: health, metrics, TURN credentials, dev tokens.

use std::fmt::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use firstcall_signal::metrics::SignalMetrics;
use firstcall_signal::protocol::UserId;
use firstcall_turn::auth::{rest_credential, Secret};
use firstcall_turn::metrics::{render_prometheus, TurnMetrics};
use serde_json::json;

use crate::tokens::Tokens;

/// What the HTTP handlers share.
pub struct AppState {
    /// True once every listener is bound.
    pub ready: AtomicBool,
    /// True once SIGTERM started the drain: `/readyz` answers 503.
    pub draining: AtomicBool,
    /// Per-worker TURN counters.
    pub turn_metrics: Vec<Arc<TurnMetrics>>,
    /// The XDP fast path, for its counters.
    pub xdp: Option<Arc<crate::turn::xdp::FastPath>>,
    /// Signaling counters.
    pub signal_metrics: Arc<SignalMetrics>,
    /// The signaling hub (for presence).
    pub signaling: crate::signal::Signaling,
    /// The newest TURN secret (credentials are minted with it).
    pub turn_secret: crate::reload::Live<Secret>,
    /// Lifetime of minted TURN credentials.
    pub credential_ttl: Duration,
    /// ICE URIs handed to clients.
    pub ice_uris: Vec<String>,
    /// Bearer token verification (dev mode when no JWT is configured).
    pub tokens: crate::reload::Live<Tokens>,
    /// The HTTP listener's connection accounting.
    pub conn_limits: Arc<crate::accept::ConnLimits>,
    /// Webhook counters, when a webhook is configured.
    pub webhook_metrics: Option<Arc<crate::webhook::WebhookMetrics>>,
    /// Who may list online users.
    pub presence: crate::config::Presence,
    /// `/metrics` on the public listener (no `--metrics-listen`).
    pub metrics_public: bool,
    /// SIGHUP reloads by result.
    pub reloads: Arc<crate::reload::ReloadCounts>,
}

impl AppState {
    fn dev_mode(&self) -> bool {
        self.tokens.load().is_dev()
    }
}

/// The metrics listener's router (`--metrics-listen`): `/metrics` and `/healthz`.
pub fn metrics_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// The public router.
pub fn router(state: Arc<AppState>) -> Router {
    let public_metrics = state.metrics_public;
    let r = Router::new();
    let r = if public_metrics {
        r.route("/metrics", get(metrics))
    } else {
        r
    };
    r.route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/v1/turn-credentials", get(turn_credentials))
        .route("/v1/dev/token", get(dev_token))
        .route("/v1/online", get(online))
        .route("/", get(|| async { asset("text/html; charset=utf-8", DEMO_HTML) }))
        .route(
            "/demo.js",
            get(|| async { asset("text/javascript; charset=utf-8", DEMO_JS) }),
        )
        .route(
            "/demo.css",
            get(|| async { asset("text/css; charset=utf-8", DEMO_CSS) }),
        )
        .route("/sdk/{file}", get(sdk_file))
        .with_state(state)
}

// The demo page and the SDK are built into the binary: `firstcall serve` alone serves them.
const DEMO_HTML: &str = include_str!("../../../web/demo/index.html");
const DEMO_JS: &str = include_str!("../../../web/demo/demo.js");
const DEMO_CSS: &str = include_str!("../../../web/demo/demo.css");

/// The SDK's modules as compiled to web/sdk/dist, each with its declarations, served
/// under /sdk/ (firstcall.js imports the others by relative path).
macro_rules! sdk_modules {
    ($($m:literal),* $(,)?) => {
        &[$(
            (concat!($m, ".js"), "text/javascript; charset=utf-8",
             include_str!(concat!("../../../web/sdk/dist/", $m, ".js"))),
            (concat!($m, ".d.ts"), "text/plain; charset=utf-8",
             include_str!(concat!("../../../web/sdk/dist/", $m, ".d.ts"))),
        )*]
    };
}
const SDK_FILES: &[(&str, &str, &str)] = sdk_modules![
    "firstcall",
    "protocol",
    "env",
    "emitter",
    "session",
    "client",
    "call",
    "negotiation",
    "quality",
    "stats",
    "stall",
];

async fn sdk_file(axum::extract::Path(file): axum::extract::Path<String>) -> Response {
    match SDK_FILES.iter().find(|(name, _, _)| *name == file) {
        Some((_, content_type, body)) => asset(content_type, body),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// Users online now, for the demo's contact list.
async fn online(State(s): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if s.presence == crate::config::Presence::Off {
        return error(
            StatusCode::NOT_FOUND,
            "presence_off",
            "presence is off on this server (--presence all lists online users to every signed-in user)",
        );
    }
    if let Err(message) = bearer_user(&headers, &s.tokens.load()) {
        return error(StatusCode::UNAUTHORIZED, "unauthorized", &message);
    }
    let users = s.signaling.online().await;
    Json(json!({ "users": users })).into_response()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(json!({"error": code, "message": message}))).into_response()
}

/// Whether this node should be sent new sessions: 503 while starting and while draining
/// (a load balancer's readiness check), 200 otherwise. `/healthz` is the liveness check:
/// a draining node is alive, and says so there.
async fn readyz(State(s): State<Arc<AppState>>) -> Response {
    let status = if !s.ready.load(Ordering::Acquire) {
        "starting"
    } else if s.draining.load(Ordering::Acquire) {
        "draining"
    } else if s.signaling.cluster().is_some_and(|l| !l.store_ok()) {
        // Redis does not answer: a new session here would be closed with 1013.
        "store_unreachable"
    } else {
        return Json(json!({"status": "ready"})).into_response();
    };
    let mut body = json!({ "status": status });
    if status == "draining" {
        body["live_calls"] = json!(s.signaling.call_count());
    }
    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}

async fn healthz(State(s): State<Arc<AppState>>) -> Response {
    if !s.ready.load(Ordering::Acquire) {
        return (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "starting"}))).into_response();
    }
    let listener = s.conn_limits.health(std::time::Instant::now());
    let status = if listener.degraded.is_empty() { "ok" } else { "degraded" };
    let mut body = json!({
        "status": status,
        "dev_mode": s.dev_mode(),
        "connections": listener.open,
        "max_connections": listener.max,
    });
    if s.draining.load(Ordering::Acquire) {
        body["draining"] = json!(true);
    }
    if !listener.degraded.is_empty() {
        body["degraded"] = json!(listener.degraded);
    }
    if s.dev_mode() {
        body["warning"] =
            json!("DEV MODE (--dev): any dev:<user> token is accepted; configure --jwt-secret or --jwt-public-key");
    }
    Json(body).into_response()
}

async fn metrics(State(s): State<Arc<AppState>>) -> Response {
    let mut out = String::with_capacity(8192);
    render_prometheus(&s.turn_metrics, &mut out);
    if let Some(x) = &s.xdp {
        let st = x.stats();
        out.push_str("# HELP firstcall_turn_xdp_packets_total Datagrams the XDP fast path relayed in the kernel (not in firstcall_turn_relayed_packets_total), by path.\n# TYPE firstcall_turn_xdp_packets_total counter\n");
        for (path, v) in [
            ("to_peer", st.to_peer),
            ("to_client", st.to_client),
            ("relay_to_relay", st.relay_to_relay),
        ] {
            out.push_str(&format!("firstcall_turn_xdp_packets_total{{path=\"{path}\"}} {v}\n"));
        }
    }
    s.signal_metrics.render(&mut out);
    out.push_str(&s.reloads.render());
    s.conn_limits
        .metrics
        .render(&mut out, s.conn_limits.limits().max_connections);
    if let Some(w) = &s.webhook_metrics {
        w.render(&mut out);
    }
    let _ = writeln!(
        out,
        "# HELP firstcall_dev_mode 1 when the server accepts dev tokens.\n# TYPE firstcall_dev_mode gauge\nfirstcall_dev_mode {}",
        u8::from(s.dev_mode())
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

/// The user a bearer token names.
fn bearer_user(headers: &HeaderMap, tokens: &Tokens) -> Result<UserId, String> {
    let v = headers
        .get(header::AUTHORIZATION)
        .ok_or("send Authorization: Bearer <token>")?;
    let token = v
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or("Authorization must be Bearer <token>")?;
    tokens.user(token.trim(), unix_now()).map_err(|r| r.to_string())
}

async fn turn_credentials(State(s): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let user = match bearer_user(&headers, &s.tokens.load()) {
        Ok(u) => u,
        Err(message) => return error(StatusCode::UNAUTHORIZED, "unauthorized", &message),
    };
    let ttl = s.credential_ttl.as_secs();
    let (username, password) = rest_credential(&s.turn_secret.load(), user.as_str(), unix_now() + ttl);
    Json(json!({"username": username, "password": password, "ttl": ttl, "uris": s.ice_uris})).into_response()
}

#[derive(serde::Deserialize)]
struct DevTokenQuery {
    user: String,
}

/// Dev mode only: a token for any user, so the demo page can sign in by name.
async fn dev_token(State(s): State<Arc<AppState>>, Query(q): Query<DevTokenQuery>) -> Response {
    if !s.dev_mode() {
        return error(StatusCode::NOT_FOUND, "not_found", "dev tokens exist only in dev mode");
    }
    match UserId::parse(&q.user) {
        Some(u) => Json(json!({"token": format!("dev:{u}"), "user": u})).into_response(),
        None => error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "user must be 1-128 printable characters without spaces",
        ),
    }
}
