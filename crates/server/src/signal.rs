//! The signaling hub as a WebSocket [`Endpoint`].
//!
//! The `Hub` sits behind one lock. Each socket has one task ([`crate::websocket`]),
//! which reads WebSocket frames (RFC 6455, [`firstcall_signal::ws`]) and hands their
//! messages to the hub itself; the frames the hub sends are written straight to their
//! sockets by the task that caused them. A socket whose unsent bytes pass the queue
//! limit is cut (closed without a close frame, which could not get through): its frames
//! stay unacknowledged in its session and are replayed when the client resumes, so
//! nothing is lost by cutting it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{Request, State};
use axum::response::Response;
use firstcall_signal::hub::{hello_token, ConnId, Hub, HubConfig, IceProvider, Output, TokenVerifier};
use firstcall_signal::metrics::{Limit, SignalMetrics};
use firstcall_signal::protocol::{close, IceServer, UserId, MAX_FRAME};
use firstcall_signal::ws::OpCode;
use firstcall_turn::auth::{rest_credential, Secret};
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::sync::Notify;

use crate::cluster::{self, Entry, Input, Link, NodeId, StreamId};
use crate::config::IceUri;
use crate::websocket::{self, Endpoint, Limits, Outlet, Queued};

/// TURN credentials for welcomes and refreshes, coturn REST style.
pub struct TurnIce {
    /// Secret that mints credentials.
    pub secret: crate::reload::Live<Secret>,
    /// The embedded server's URIs (none with `--no-turn`).
    pub uris: Vec<String>,
    /// `--ice-server` URIs: the `turn:`/`turns:` ones get the same credentials (the other
    /// servers share the TURN REST secret), the `stun:`/`stuns:` ones none.
    pub extra: Vec<IceUri>,
    /// Credential lifetime.
    pub ttl: Duration,
}

impl IceProvider for TurnIce {
    fn ice_servers(&self, user: &UserId, now_unix: u64) -> (Vec<IceServer>, u64) {
        let ttl = self.ttl.as_secs();
        let (username, credential) = rest_credential(&self.secret.load(), user.as_str(), now_unix + ttl);
        let mut servers = Vec::with_capacity(3);
        if !self.uris.is_empty() {
            servers.push(IceServer {
                urls: self.uris.clone(),
                username: Some(username.clone()),
                credential: Some(credential.clone()),
            });
        }
        let (turn, stun): (Vec<&IceUri>, Vec<&IceUri>) = self.extra.iter().partition(|u| u.is_turn());
        if !turn.is_empty() {
            servers.push(IceServer {
                urls: turn.iter().map(|u| u.to_string()).collect(),
                username: Some(username),
                credential: Some(credential),
            });
        }
        if !stun.is_empty() {
            servers.push(IceServer {
                urls: stun.iter().map(|u| u.to_string()).collect(),
                username: None,
                credential: None,
            });
        }
        (servers, ttl)
    }
}

/// Sockets by connection, looked up for every frame the hub sends (foldhash: the
/// keys are ours, and SipHash's cost buys nothing here).
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// The hub and the sockets it writes to, behind one lock.
struct Shared {
    hub: Hub<StdRng>,
    /// This node's sockets (with several nodes, the hub knows every node's).
    conns: HashMap<ConnId, Arc<Outlet>>,
    /// When the timer task will next wake, so that an earlier deadline can wake it.
    armed: Option<Instant>,
    /// With several nodes: the hub's time, taken from the log's entries.
    clock: Option<cluster::Clock>,
    /// With several nodes: entries applied since the last checkpoint, whether this node
    /// (as leader) asked for the next one at that count, and the last one's id.
    since_checkpoint: u64,
    checkpoint_asked: Option<u64>,
    last_checkpoint: Option<StreamId>,
}

/// Handle to the hub.
///
/// Each socket's task calls the hub itself, under a lock held only for the call and for
/// appending the frames it produced to the recipients' outlets; once the frames of the
/// read are handled, still on the same task, each recipient's frames are written to its
/// socket. A relayed frame thus costs at most one read and one write and no task
/// hand-off: the writer task per socket that tungstenite's split needed was a channel
/// send, a wake-up and a poll per frame.
/// A timer task fires the hub's timers.
#[derive(Clone)]
pub struct Signaling {
    shared: Arc<Mutex<Shared>>,
    timer: Arc<Notify>,
    webhook: Option<crate::webhook::Webhook>,
    next: Arc<AtomicU64>,
    /// Unsent bytes a socket may have queued before it counts as too slow and is cut
    /// (`--slow-socket-queue`): every byte, including what the hub hands over in one go
    /// such as a resume's replay (see `websocket::Outlet`).
    queue_limit: usize,
    /// With `--jwks-url`: a hello whose token names a key not fetched yet waits for a
    /// fetch on its socket's task (see [`Endpoint::gate`]) before the hub verifies it.
    jwks: Option<Arc<crate::jwks::Jwks>>,
    /// Verifies hello tokens, on the socket's task before the hub sees the hello.
    tokens: Arc<dyn TokenVerifier>,
    /// With `--redis-url`: this node's place in the cluster. Every input goes to the
    /// log instead of the hub, and the hub is fed the log (see [`crate::cluster`]).
    cluster: Option<Arc<Link>>,
    /// The embedded TURN server's peer-grant queues: an answered call lets each party's
    /// address into the other's allocations (`--turn-peer-grant-ttl`).
    /// Shared by every clone: a cluster's log reader holds one made before this is set.
    grants: Arc<std::sync::OnceLock<crate::turn::grants::PeerGrants>>,
    /// The hub's counters.
    pub metrics: Arc<SignalMetrics>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// What hub calls left to do once the hub's lock is released.
#[derive(Default)]
pub struct Writes {
    /// Outlets with frames queued, each once (see [`Queued::First`]).
    touched: Vec<Arc<Outlet>>,
    /// Peer grants to hand the TURN workers: (user, address let into their allocations).
    grants: Vec<(UserId, std::net::IpAddr)>,
    /// Webhook bodies to post.
    hooks: Vec<serde_json::Value>,
    /// The hub's next deadline is earlier than the timer task's.
    wake_timer: bool,
}

impl Signaling {
    /// Start the hub and its timer task.
    pub fn start(
        config: HubConfig,
        tokens: Arc<dyn TokenVerifier>,
        ice: Arc<dyn IceProvider>,
        webhook: Option<crate::webhook::Webhook>,
        queue_limit: usize,
    ) -> Signaling {
        let metrics = Arc::new(SignalMetrics::default());
        let hub = Hub::new(
            config,
            tokens.clone(),
            ice,
            metrics.clone(),
            StdRng::from_entropy(),
            Instant::now(),
            unix_now(),
        );
        let sig = Signaling {
            shared: Arc::new(Mutex::new(Shared {
                hub,
                conns: HashMap::default(),
                armed: None,
                clock: None,
                since_checkpoint: 0,
                checkpoint_asked: None,
                last_checkpoint: None,
            })),
            timer: Arc::new(Notify::new()),
            webhook,
            next: Arc::new(AtomicU64::new(1)),
            queue_limit,
            jwks: None,
            tokens,
            cluster: None,
            grants: Arc::default(),
            metrics,
        };
        tokio::spawn(timer_loop(sig.clone()));
        sig
    }

    /// Start this node's replica of the cluster's hub ([`crate::cluster`]): seeded,
    /// timed and fed by the log `joined` found, with every input of this node's
    /// sockets appended to it. Ready once it has applied the log up to its end
    /// ([`Signaling::caught_up`]).
    pub fn start_cluster(
        config: HubConfig,
        tokens: Arc<dyn TokenVerifier>,
        ice: Arc<dyn IceProvider>,
        webhook: Option<crate::webhook::Webhook>,
        queue_limit: usize,
        joined: cluster::Joined,
    ) -> Result<Signaling, firstcall_signal::hub::SnapshotError> {
        let metrics = Arc::new(SignalMetrics::default());
        let base = Instant::now();
        // Every replica verifies nothing itself: the node that took a hello says in the
        // log what its token check gave.
        let verifier: Arc<dyn TokenVerifier> = Arc::new(cluster::VerifiedInLog);
        let hub = match &joined.snapshot {
            None => Hub::new(
                config,
                verifier,
                ice,
                metrics.clone(),
                StdRng::from_seed(joined.seed),
                base,
                joined.base_ms / 1000,
            ),
            Some(snap) => Hub::from_snapshot(
                &snap.state,
                config,
                verifier,
                ice,
                metrics.clone(),
                StdRng::from_seed(cluster::replica_seed(&joined.seed, snap.id)),
                base,
            )?,
        };
        let last_checkpoint = joined.snapshot.as_ref().map(|s| s.id);
        let (link, tasks) = cluster::Link::new(&joined);
        let sig = Signaling {
            shared: Arc::new(Mutex::new(Shared {
                hub,
                conns: HashMap::default(),
                armed: None,
                clock: Some(cluster::Clock::new(base, joined.base_ms)),
                since_checkpoint: 0,
                checkpoint_asked: None,
                last_checkpoint,
            })),
            timer: Arc::new(Notify::new()),
            webhook,
            next: Arc::new(AtomicU64::new(1)),
            queue_limit,
            jwks: None,
            tokens,
            cluster: Some(link),
            grants: Arc::default(),
            metrics,
        };
        tasks.spawn(sig.clone(), joined);
        tokio::spawn(timer_loop(sig.clone()));
        Ok(sig)
    }

    /// With several nodes: this node's link to the others.
    pub fn cluster(&self) -> Option<&Arc<Link>> {
        self.cluster.as_ref()
    }

    /// Answered calls grant each party's address to the other's TURN allocations.
    pub fn with_peer_grants(self, grants: Option<crate::turn::grants::PeerGrants>) -> Signaling {
        if let Some(g) = grants {
            // Set once, at start-up, before any socket.
            let _ = self.grants.set(g);
        }
        self
    }

    /// Hellos naming a key `jwks` has not fetched wait for a fetch first.
    pub fn with_jwks(mut self, jwks: Option<Arc<crate::jwks::Jwks>>) -> Signaling {
        self.jwks = jwks;
        self
    }

    /// Users with a socket attached now.
    pub async fn online(&self) -> Vec<UserId> {
        self.lock().hub.online_users()
    }

    /// Start draining (see [`Hub::start_drain`]). With several nodes this node's
    /// sockets are closed with 1012 at once: their sessions and calls live on in every
    /// node's replica, and their clients resume on another node.
    pub fn start_drain(&self) {
        match &self.cluster {
            None => self.with_hub(|hub, _| hub.start_drain(Instant::now())),
            Some(link) => {
                link.start_drain();
                self.close_local(close::SERVICE_RESTART, "server restarting: resume on another node");
            }
        }
    }

    /// Live calls (ringing or answered), on every node.
    pub fn call_count(&self) -> usize {
        self.lock().hub.call_count()
    }

    /// Live calls a drain of this node waits for: with several nodes none (they carry
    /// on through the other nodes).
    pub fn calls_held_here(&self) -> usize {
        match &self.cluster {
            None => self.call_count(),
            Some(_) => 0,
        }
    }

    /// Close every socket with 1012, before the process exits.
    pub fn close_all(&self) {
        match &self.cluster {
            None => self.with_hub(|hub, _| hub.close_all(Instant::now())),
            Some(_) => self.close_local(close::SERVICE_RESTART, "server restarting: resume on another node"),
        }
    }

    /// Close this node's sockets (with several nodes), telling the others they are gone.
    fn close_local(&self, code: u16, reason: &'static str) {
        let outlets: Vec<(ConnId, Arc<Outlet>)> = self.lock().conns.drain().collect();
        for (conn, outlet) in outlets {
            outlet.close(Some((code, reason)));
            if let Some(link) = &self.cluster {
                let _ = link.append(Input::Disconnect { c: conn.into() });
            }
        }
    }

    /// Close one of this node's sockets because its input could not be appended to the
    /// log (Redis unreachable): the client resumes, here or elsewhere, and sends again
    /// what was not acknowledged. True if it was open.
    /// Counted in `cluster_sockets_closed{reason}` (before the client can see it).
    pub(crate) fn fail_conn(&self, conn: ConnId, reason: &'static str) -> bool {
        let outlet = self.lock().conns.remove(&conn);
        match outlet {
            Some(o) => {
                self.metrics.count("cluster_sockets_closed", reason);
                o.close(Some((close::TRY_AGAIN_LATER, "signaling store unreachable: reconnect")));
                true
            }
            None => false,
        }
    }

    /// With several nodes: append an input of `conn`'s, or close it with 1013 when
    /// [`cluster::MAX_QUEUED`] inputs wait already (Redis slow or unreachable).
    fn append_or_fail(&self, link: &Link, conn: ConnId, input: Input) {
        if !link.append(input) {
            self.metrics.limit_hit(Limit::ClusterQueue);
            if self.fail_conn(conn, "queue_full") {
                tracing::warn!(conn = conn.0, "cluster log queue full: socket closed with 1013");
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        // A panic inside the hub is a bug that has already ended signaling; nothing
        // sensible can continue on its half-updated state.
        self.shared
            .lock()
            .expect("signaling hub lock poisoned by an earlier panic")
    }

    /// Run `f` on the hub, queue everything it produced on the sockets' outlets (and
    /// post webhooks), write those sockets, and wake the timer task if the hub now has
    /// an earlier deadline.
    fn with_hub(&self, f: impl FnOnce(&mut Hub<StdRng>, &mut HashMap<ConnId, Arc<Outlet>>)) {
        let mut w = Writes::default();
        self.with_hub_into(&mut w, f);
        self.flush(w);
    }

    /// Run `f` on the hub and queue what it produced, leaving the writes (and webhooks,
    /// and the timer's wake-up) in `w` for [`Signaling::flush`].
    ///
    /// A socket's task calls the hub once per frame but writes only after the whole
    /// read: the frames one read held, to the same peer, then leave in one `sendto`. A
    /// read holds one frame unless its client sent several together or the server is
    /// behind; a frame then waits at most for the hub calls of the rest of its read
    /// (microseconds), and the syscalls per frame fall as the batch grows (1.85 frames
    /// per `sendto` at 139k frames/s on one core).
    fn with_hub_into(&self, w: &mut Writes, f: impl FnOnce(&mut Hub<StdRng>, &mut HashMap<ConnId, Arc<Outlet>>)) {
        let mut guard = self.lock();
        let s = &mut *guard;
        f(&mut s.hub, &mut s.conns);
        self.route(s, w);
    }

    /// Queue what the hub produced on this node's outlets, and its webhooks into `w`.
    fn route(&self, s: &mut Shared, w: &mut Writes) {
        loop {
            let mut slow = Vec::new();
            while let Some(o) = s.hub.poll_output() {
                match o {
                    Output::Send { conn, text } => {
                        if let Some(outlet) = s.conns.get(&conn) {
                            match outlet.queue(OpCode::Text, text.as_bytes()) {
                                Queued::First => w.touched.push(outlet.clone()),
                                Queued::Listed => {}
                                Queued::Cut => slow.push(conn),
                            }
                        }
                    }
                    Output::Close { conn, code, reason } => {
                        if let Some(outlet) = s.conns.remove(&conn) {
                            if outlet.queue_close(code, reason) == Queued::First {
                                w.touched.push(outlet);
                            }
                        }
                    }
                    Output::Webhook { body } => w.hooks.push(body),
                    Output::CallPeers { caller, callee } => {
                        // The hub names each party's address (from the connect, which a
                        // cluster's log carries): every node grants it on its own TURN.
                        if self.grants.get().is_some() {
                            if let Some(ip) = callee.ip {
                                w.grants.push((caller.user.clone(), ip));
                            }
                            if let Some(ip) = caller.ip {
                                w.grants.push((callee.user, ip));
                            }
                        }
                    }
                }
            }
            if slow.is_empty() {
                break;
            }
            for conn in slow {
                // The outlet was cut and told its task, which ends the socket (and
                // counts and logs the cut). Detached now, so that the hub sends it
                // nothing more; the session keeps the frames for the resume. With
                // several nodes every replica detaches it when the log says so.
                if s.conns.remove(&conn).is_some() {
                    match &self.cluster {
                        None => s.hub.handle_disconnect(conn, Instant::now()),
                        Some(link) => {
                            let _ = link.append(Input::Disconnect { c: conn.into() });
                        }
                    }
                }
            }
        }
        let next = s.hub.poll_timeout();
        w.wake_timer |= next.is_some_and(|d| s.armed.is_none_or(|a| d < a));
    }

    /// Apply entries of the cluster's log to this node's replica, in order, and write
    /// what they produced for this node's sockets. Back: a checkpoint this node appended,
    /// with the replica's snapshot, for the caller to store; and every webhook the
    /// entries made, each with the id of its cause (`cluster::hooks`), which every
    /// replica writes to the cluster's hook stream and the leader alone posts.
    pub(crate) fn apply(
        &self,
        entries: Vec<(StreamId, Entry)>,
        me: NodeId,
    ) -> (Option<cluster::Checkpoint>, Vec<(StreamId, serde_json::Value)>) {
        let link = self.cluster.as_ref().expect("only a cluster node applies a log");
        let mut w = Writes::default();
        let mut stored = None;
        let mut hooks = Vec::new();
        {
            let mut guard = self.lock();
            let s = &mut *guard;
            for (id, entry) in entries {
                let at = match &entry.input {
                    Input::Tick { at } => *at,
                    _ => 0,
                };
                let clock = s.clock.as_mut().expect("a cluster replica has a clock");
                let now = clock.advance(id.ms.max(at));
                let checkpoint = entry.input == Input::Checkpoint;
                match entry.input {
                    Input::Connect { c, ip } => s.hub.handle_connect_from(c.into(), ip, now),
                    Input::Text { c, t, v } => {
                        s.hub
                            .handle_text_verified(c.into(), &t, now, v.map(cluster::Verified::into_result))
                    }
                    Input::Disconnect { c } => s.hub.handle_disconnect(c.into(), now),
                    Input::Tick { .. } => s.hub.handle_timeout(now),
                    Input::NodeGone { gone } => {
                        let conns: Vec<ConnId> = s
                            .hub
                            .conn_ids()
                            .into_iter()
                            .filter(|c| NodeId::of(*c) == gone)
                            .collect();
                        tracing::info!(node = %gone, sockets = conns.len(), "node gone: its sockets are closed, its sessions wait for resumes");
                        for c in conns {
                            s.hub.handle_disconnect(c, now);
                        }
                    }
                    Input::Joined => {}
                    // What is due fires first (the snapshot has no output pending).
                    Input::Checkpoint => s.hub.handle_timeout(now),
                }
                self.route(s, &mut w);
                for (k, body) in w.hooks.drain(..).enumerate() {
                    hooks.push((cluster::hooks::hook_id(id, k), body));
                }
                s.since_checkpoint += 1;
                if checkpoint {
                    s.since_checkpoint = 0;
                    s.checkpoint_asked = None;
                    s.hub.reseed(StdRng::from_seed(cluster::replica_seed(&link.seed, id)));
                    if entry.n == me {
                        let at_ms = s.clock.as_ref().map_or(id.ms, |c| c.last_ms());
                        match s.hub.to_snapshot() {
                            Ok(state) => {
                                stored = Some(cluster::Checkpoint {
                                    snapshot: cluster::Snapshot { id, at_ms, state },
                                    previous: s.last_checkpoint,
                                })
                            }
                            Err(e) => tracing::error!(error = %e, "checkpoint: no snapshot"),
                        }
                    }
                    s.last_checkpoint = Some(id);
                }
            }
            ask_checkpoint(s, link);
            let next = s.hub.poll_timeout();
            w.wake_timer |= next.is_some_and(|d| s.armed.is_none_or(|a| d < a));
        }
        self.flush(w);
        (stored, hooks)
    }

    /// With several nodes: post a webhook the cluster's hook stream holds (the leader's
    /// hook task calls it).
    pub(crate) fn post_hook(&self, body: serde_json::Value) -> Option<crate::webhook::Posted> {
        match &self.webhook {
            Some(wh) => Some(wh.post(body)),
            None => {
                tracing::debug!(%body, "no --webhook-url: pending call not pushed");
                None
            }
        }
    }

    /// The webhook, if any.
    pub(crate) fn webhook(&self) -> Option<&crate::webhook::Webhook> {
        self.webhook.as_ref()
    }

    /// Whether webhooks go anywhere.
    pub(crate) fn has_webhook(&self) -> bool {
        self.webhook.is_some()
    }

    /// The nodes (other than `me`) the replica has sockets of.
    pub(crate) fn nodes_with_sockets(&self, me: NodeId) -> Vec<NodeId> {
        let mut v: Vec<NodeId> = self
            .lock()
            .hub
            .conn_ids()
            .into_iter()
            .map(NodeId::of)
            .filter(|n| *n != me)
            .collect();
        v.dedup();
        v
    }

    /// Write the sockets `w` touched, wake the timer task if it must, post the webhooks.
    fn flush(&self, w: Writes) {
        for outlet in w.touched {
            outlet.push();
        }
        if let Some(g) = self.grants.get() {
            let now = Instant::now();
            for (user, ip) in w.grants {
                g.grant(user.as_str(), ip, now);
            }
        }
        if w.wake_timer {
            self.timer.notify_one();
        }
        for body in w.hooks {
            match &self.webhook {
                Some(wh) => {
                    wh.post(body);
                }
                None => tracing::debug!(%body, "no --webhook-url: pending call not pushed"),
            }
        }
    }

    /// The `GET /v1/ws` handler: the WebSocket opening handshake, then the socket's
    /// task ([`crate::websocket`]) with the hub as its endpoint.
    pub async fn upgrade(State(sig): State<Signaling>, req: Request) -> Response {
        websocket::upgrade(sig, req)
    }
}

impl Endpoint for Signaling {
    type Batch = Writes;

    fn limits(&self) -> Limits {
        Limits {
            // Frames up to 4x the protocol limit reach the hub, which answers
            // `too_large`; beyond that the socket is closed with 1009.
            max_message: MAX_FRAME * 4,
            queue_limit: self.queue_limit,
        }
    }

    fn connect(&self, outlet: &Arc<Outlet>) -> ConnId {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        match &self.cluster {
            None => {
                let conn = ConnId(n);
                self.with_hub(|hub, conns| {
                    conns.insert(conn, outlet.clone());
                    hub.handle_connect_from(conn, outlet.peer_ip(), Instant::now());
                });
                conn
            }
            Some(link) => {
                let conn = link.node.conn(n);
                self.lock().conns.insert(conn, outlet.clone());
                self.append_or_fail(
                    link,
                    conn,
                    Input::Connect {
                        c: conn.into(),
                        ip: outlet.peer_ip(),
                    },
                );
                conn
            }
        }
    }

    fn text(&self, conn: ConnId, _: &Arc<Outlet>, text: &str, w: &mut Writes) {
        match &self.cluster {
            None => self.with_hub_into(w, |hub, _| hub.handle_text(conn, text, Instant::now())),
            Some(link) => self.append_or_fail(
                link,
                conn,
                Input::Text {
                    c: conn.into(),
                    t: text.to_owned(),
                    v: None,
                },
            ),
        }
    }

    fn first_text(&self, conn: ConnId, outlet: &Arc<Outlet>, text: &str, w: &mut Writes) {
        // The token is checked here, on the socket's task: the hub's lock (and, with
        // several nodes, every replica) takes the result.
        let verified = hello_token(text).map(|t| self.tokens.verify(&t, unix_now()));
        match &self.cluster {
            None => self.with_hub_into(w, |hub, _| {
                hub.handle_text_verified(conn, text, Instant::now(), verified)
            }),
            Some(link) if link.draining() => {
                // Sessions go elsewhere, resumes included: this node is about to exit.
                let refusal = firstcall_signal::hub::error_value(
                    firstcall_signal::protocol::ErrorCode::Draining,
                    "server draining for a restart: connect to another node",
                    None,
                );
                if outlet.queue(OpCode::Text, refusal.to_string().as_bytes()) == Queued::First {
                    w.touched.push(outlet.clone());
                }
                outlet.close(Some((close::SERVICE_RESTART, "server draining: reconnect")));
            }
            Some(link) => self.append_or_fail(
                link,
                conn,
                Input::Text {
                    c: conn.into(),
                    t: text.to_owned(),
                    v: verified.map(Into::into),
                },
            ),
        }
    }

    fn gate(&self, first: &str) -> Option<crate::websocket::Gate> {
        let jwks = self.jwks.as_ref()?;
        #[derive(serde::Deserialize)]
        struct Hello<'a> {
            #[serde(borrow)]
            token: std::borrow::Cow<'a, str>,
        }
        // Anything unusual goes to the hub as it is, which names the fault.
        let hello: Hello<'_> = serde_json::from_str(first).ok()?;
        let kid = jsonwebtoken::decode_header(hello.token.as_bytes())
            .ok()?
            .kid
            .unwrap_or_default();
        if jwks.key(&kid).is_some() {
            return None;
        }
        Some(Box::pin(jwks.clone().refresh_for(kid)))
    }

    fn flush(&self, w: Writes) {
        Signaling::flush(self, w)
    }

    fn disconnect(&self, conn: ConnId) {
        match &self.cluster {
            None => self.with_hub(|hub, conns| {
                conns.remove(&conn);
                hub.handle_disconnect(conn, Instant::now());
            }),
            Some(link) => {
                // Told to the others unless it was closed on their word (a `Close` from
                // the hub, or a drain, which told them already).
                if self.lock().conns.remove(&conn).is_some() {
                    let _ = link.append(Input::Disconnect { c: conn.into() });
                }
            }
        }
    }

    fn metrics(&self) -> &SignalMetrics {
        &self.metrics
    }
}

/// Fire the hub's timers: sleep until its next deadline (at most a second, to keep its
/// wall clock anchored), or until a call on the hub set an earlier one. With several
/// nodes, see [`cluster_ticks`].
async fn timer_loop(sig: Signaling) {
    if let Some(link) = sig.cluster.clone() {
        return cluster_ticks(sig, link).await;
    }
    let mut last_anchor = Instant::now();
    loop {
        let deadline = {
            let mut s = sig.lock();
            let cap = Instant::now() + Duration::from_secs(1);
            let d = s.hub.poll_timeout().map_or(cap, |d| d.min(cap));
            s.armed = Some(d);
            d
        };
        tokio::select! {
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)) => {
                let now = Instant::now();
                let anchor = now.duration_since(last_anchor) > Duration::from_secs(1);
                if anchor {
                    last_anchor = now;
                }
                sig.with_hub(|hub, _| {
                    if anchor {
                        hub.set_unix_time(now, unix_now());
                    }
                    hub.handle_timeout(now);
                });
            }
            _ = sig.timer.notified() => {}
        }
    }
}

/// The leader asks for a checkpoint every `checkpoint_every` entries (again after as
/// many more if its request was lost): after applying entries, and from the tick loop
/// (a node that became leader after the last entry asks without waiting for another).
fn ask_checkpoint(s: &mut Shared, link: &Link) {
    let due = link.checkpoint_every;
    let ask = s.since_checkpoint >= due && s.checkpoint_asked.is_none_or(|at| s.since_checkpoint >= at + due);
    if ask && link.is_leader() && link.append(Input::Checkpoint) {
        s.checkpoint_asked = Some(s.since_checkpoint);
    }
}

/// Unix milliseconds now.
fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// With several nodes, timers fire where the log says: the leader appends a `Tick` when
/// the replica's next deadline is due by its clock, and every replica (its own
/// included) fires the timers due at that entry. A tick appended and not yet applied
/// is appended again after [`TICK_RETRY`], in case it was lost.
async fn cluster_ticks(sig: Signaling, link: Arc<Link>) {
    let mut sent: Option<(u64, Instant)> = None;
    loop {
        let due = {
            let mut s = sig.lock();
            ask_checkpoint(&mut s, &link);
            let due = s.hub.poll_timeout();
            s.armed = due;
            due.and_then(|d| s.clock.as_ref().map(|c| c.ms_of(d)))
        };
        let now = unix_ms();
        let wait = match due {
            Some(d) if d > now => Duration::from_millis(d - now),
            Some(d) => {
                let fresh = sent.is_none_or(|(at, when)| at != d || when.elapsed() >= TICK_RETRY);
                if link.is_leader() && fresh && link.append(cluster::Input::Tick { at: d }) {
                    sent = Some((d, Instant::now()));
                }
                TICK_RETRY
            }
            None => TICK_RETRY,
        };
        // Woken early when an applied entry sets an earlier deadline, or the tick sent
        // is applied (the deadline moves on).
        let _ = tokio::time::timeout(wait.min(TICK_RETRY), sig.timer.notified()).await;
    }
}

/// How long the leader waits for a tick it appended before it appends it again, and
/// the longest the tick loop sleeps (a node that becomes leader starts ticking within it).
const TICK_RETRY: Duration = Duration::from_millis(250);
