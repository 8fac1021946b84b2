//! The TURN server state machine (RFC 8656 over RFC 8489).
//!
//! # Driving contract
//!
//! [`Server`] owns no socket, clock or thread. The driver:
//! 1. feeds every packet from a client into [`Server::handle_client_input`] and
//!    every packet arriving on a relay socket into [`Server::handle_peer_traffic`];
//!    both return the hot-path forward (if any) directly, so ChannelData and Send
//!    relaying never allocate;
//! 2. drains [`Server::poll_transmit`] (responses and Data indications to send to
//!    clients) and [`Server::poll_command`] (relay sockets to bind or close) after
//!    every call;
//! 3. binds each requested relay socket and reports the outcome with
//!    [`Server::handle_relay_bound`]: the Allocate response is only sent once its
//!    socket really exists;
//! 4. calls [`Server::handle_timeout`] when [`Server::poll_timeout`] is due, and
//!    [`Server::handle_client_closed`] when a TCP/TLS connection ends;
//! 5. passes `now` (a monotonic [`Instant`]) into every call, and keeps the wall
//!    clock anchored with [`Server::set_unix_time`] (REST credentials and nonces
//!    carry Unix timestamps).
//!
//! Randomness (nonce key, relay port choice) comes from the injected `R`.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use firstcall_stun::{
    attr, Attribute, ChannelData, ChannelNumber, Class, DecodeError, ErrorCode, Family, IntegrityKind, Message,
    MessageBuilder, Method, PacketKind, TransactionId,
};
use rand::{Rng, RngCore};

use crate::auth::{parse_rest_username, Authenticator, LongTermKey, NonceCheck, NonceKey, Nonces};
use crate::filter::PeerFilter;
use crate::grants::{GrantRefused, Grants, PeerGrant};
use crate::metrics::{Direction, TurnMetrics};
use crate::ratelimit::{Checked, ErrorLimiter, Rate, TokenBucket, Verdict};

/// How a client reached us.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transport {
    /// Plain UDP.
    Udp,
    /// Plain TCP (RFC 8656 §3.1: framed stream).
    Tcp,
    /// TLS over TCP (`turns:`).
    Tls,
}

impl Transport {
    /// Stream transports pad ChannelData to 4 bytes (RFC 8656 §12.5).
    pub fn is_stream(self) -> bool {
        !matches!(self, Transport::Udp)
    }
    /// Label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }
}

/// A client's side of the 5-tuple: its address and the transport it used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientAddr {
    /// Source address of the client's packets.
    pub addr: SocketAddr,
    /// Transport.
    pub transport: Transport,
}

/// A peer's transport address (the far side of a relay).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PeerAddr(pub SocketAddr);

/// The port of a relay socket; identifies an allocation on this core.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelayPort(pub u16);

/// Static settings of one core.
#[derive(Clone, Debug)]
pub struct Config {
    /// Address relay sockets bind to.
    pub relay_ip: IpAddr,
    /// Address put in XOR-RELAYED-ADDRESS (the public address behind a 1:1 NAT).
    pub advertised_ip: IpAddr,
    /// The ports this core may give out.
    pub relay_ports: RangeInclusive<u16>,
    /// Lifetime when the client asks for none or for less (RFC 8656: 10 minutes).
    pub default_lifetime: Duration,
    /// Upper bound on an allocation's lifetime (RFC 8656 suggests 1 hour).
    pub max_lifetime: Duration,
    /// Permission lifetime (RFC 8656 §9: 300 s, not configurable by the client).
    pub permission_lifetime: Duration,
    /// Channel binding lifetime (RFC 8656 §12: 10 minutes).
    pub channel_lifetime: Duration,
    /// After a nonce is this old it is stale (438).
    pub nonce_lifetime: Duration,
    /// SOFTWARE attribute in responses.
    pub software: &'static str,
    /// Relayed payload bytes per second per allocation, in each direction (coturn's
    /// `max-bps`); 0 is no limit. Excess datagrams are dropped and counted.
    pub max_bps: u64,
    /// Most peer grants this core holds ([`Server::handle_peer_grant`]).
    pub max_peer_grants: usize,
}

impl Config {
    /// RFC 8656 defaults for the given relay address and ports.
    pub fn new(relay_ip: IpAddr, relay_ports: RangeInclusive<u16>) -> Self {
        Config {
            relay_ip,
            advertised_ip: relay_ip,
            relay_ports,
            default_lifetime: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(3600),
            permission_lifetime: Duration::from_secs(300),
            channel_lifetime: Duration::from_secs(600),
            nonce_lifetime: Duration::from_secs(3600),
            software: concat!("firstcall ", env!("CARGO_PKG_VERSION")),
            max_bps: 0,
            max_peer_grants: 65_536,
        }
    }
}

/// Allocation quotas, port reservations and rate limits, shared by every core of one server.
///
/// Reservations are shared because the RTCP allocation that redeems a token
/// comes from another client port, which SO_REUSEPORT may hand to another core;
/// the error limit because one source address's packets may meet any core.
#[derive(Debug)]
pub struct Quotas {
    per_user: usize,
    total: usize,
    state: Mutex<(usize, HashMap<String, UserSlot>)>,
    reservations: Mutex<HashMap<[u8; 8], (RelayPort, Instant)>>,
    errors: ErrorLimiter,
    user_bps: Rate,
}

/// One user's allocation count and bandwidth buckets.
#[derive(Debug, Default)]
struct UserSlot {
    allocations: usize,
    bandwidth: Option<Arc<UserBandwidth>>,
}

/// A user's relayed bytes per second over all their allocations, one bucket per
/// [`Direction`]; shared by those allocations, on whichever core they live.
#[derive(Debug)]
pub struct UserBandwidth {
    rate: Rate,
    buckets: Mutex<[TokenBucket; 2]>,
}

impl UserBandwidth {
    fn take(&self, dir: Direction, bytes: u64, now: Instant) -> bool {
        let mut b = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        b[dir as usize].take(self.rate, bytes, now)
    }
}

/// The token-bucket rate for `bytes_per_sec` (0: none): a second's worth may come at
/// once, and never less than one largest datagram.
pub fn bandwidth_rate(bytes_per_sec: u64) -> Rate {
    Rate {
        per_sec: bytes_per_sec,
        burst: bytes_per_sec.max(65_536),
    }
}

/// Which quota refused an allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaExceeded {
    /// The user holds `per_user` allocations already.
    PerUser,
    /// The server holds `total` allocations already.
    Total,
}

impl Quotas {
    /// At most `per_user` allocations per user and `total` in all.
    pub fn new(per_user: usize, total: usize) -> Self {
        Quotas {
            per_user,
            total,
            state: Mutex::new((0, HashMap::new())),
            reservations: Mutex::new(HashMap::new()),
            errors: ErrorLimiter::disabled(),
            user_bps: Rate::UNLIMITED,
        }
    }

    /// Limit each user's relayed payload to `bytes_per_sec` in each direction, over all
    /// their allocations (0: no limit). Excess datagrams are dropped and counted.
    pub fn with_user_bandwidth(mut self, bytes_per_sec: u64) -> Self {
        self.user_bps = bandwidth_rate(bytes_per_sec);
        self
    }

    /// The bandwidth buckets of a user holding an allocation (None when unlimited).
    fn user_bandwidth(&self, user: &str) -> Option<Arc<UserBandwidth>> {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.1.get(user).and_then(|u| u.bandwidth.clone())
    }

    /// Limit error responses to `rate` per source address (IPv6: per /64), tracking at
    /// most `table` addresses. Past it an address gets no error responses, and its
    /// requests that need authentication are not examined, until its bucket refills.
    pub fn with_error_limit(mut self, rate: Rate, table: usize) -> Self {
        self.errors = ErrorLimiter::new(rate, table);
        self
    }
    fn reserve(&self, token: [u8; 8], port: RelayPort, until: Instant) {
        self.reservations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(token, (port, until));
    }
    /// The port held for `token`, once; None when unknown or lapsed.
    fn redeem(&self, token: &[u8; 8], now: Instant) -> Option<RelayPort> {
        let mut r = self.reservations.lock().unwrap_or_else(|e| e.into_inner());
        r.retain(|_, (_, until)| *until > now);
        r.remove(token).map(|(p, _)| p)
    }
    fn reserved_ports(&self, now: Instant) -> Vec<u16> {
        let r = self.reservations.lock().unwrap_or_else(|e| e.into_inner());
        r.values().filter(|(_, until)| *until > now).map(|(p, _)| p.0).collect()
    }
    fn try_acquire(&self, user: &str, now: Instant) -> Result<(), QuotaExceeded> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.0 >= self.total {
            return Err(QuotaExceeded::Total);
        }
        let rate = self.user_bps;
        let slot = s.1.entry(user.to_owned()).or_default();
        if slot.allocations >= self.per_user {
            return Err(QuotaExceeded::PerUser);
        }
        slot.allocations += 1;
        if rate.is_limited() && slot.bandwidth.is_none() {
            slot.bandwidth = Some(Arc::new(UserBandwidth {
                rate,
                buckets: Mutex::new([TokenBucket::full(rate, now); 2]),
            }));
        }
        s.0 += 1;
        Ok(())
    }
    fn release(&self, user: &str) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = s.1.get_mut(user) {
            slot.allocations -= 1;
            if slot.allocations == 0 {
                s.1.remove(user);
            }
            s.0 = s.0.saturating_sub(1);
        }
    }
    /// Allocations held now, in all.
    pub fn in_use(&self) -> usize {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).0
    }
}

/// A packet for a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Where to send it.
    pub dst: ClientAddr,
    /// The encoded STUN message.
    pub payload: Vec<u8>,
}

/// A socket operation for the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Bind a UDP socket on `ip:port`, then call [`Server::handle_relay_bound`].
    BindRelay {
        /// Address to bind.
        ip: IpAddr,
        /// Port to bind.
        port: RelayPort,
    },
    /// Close the relay socket on `port`: its allocation is gone.
    ReleaseRelay {
        /// The port.
        port: RelayPort,
    },
}

/// Client data to send out of a relay socket, borrowed from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ToPeer<'a> {
    /// The relay socket to send from.
    pub relay: RelayPort,
    /// Destination.
    pub peer: PeerAddr,
    /// Payload.
    pub data: &'a [u8],
}

/// Peer data to wrap in ChannelData for a client: the driver writes
/// [`ChannelData::header`] before the payload (and pads it on stream transports).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ToClient {
    /// The client.
    pub client: ClientAddr,
    /// The channel bound to the peer.
    pub channel: ChannelNumber,
}

/// The TURN server core. See the module docs for the driving contract.
pub struct Server<R> {
    config: Config,
    rng: R,
    auth: Authenticator,
    nonces: Nonces,
    filter: PeerFilter,
    quotas: Arc<Quotas>,
    metrics: Arc<TurnMetrics>,
    /// Boxed: the table keeps spare buckets, which then cost a pointer each, not a record.
    allocations: HashMap<ClientAddr, Box<Allocation>>,
    by_port: HashMap<RelayPort, ClientAddr>,
    pending: HashMap<RelayPort, Pending>,
    expiries: BTreeSet<(Instant, ClientAddr)>,
    next_sweep: Option<Instant>,
    transmits: VecDeque<Transmit>,
    commands: VecDeque<Command>,
    /// Off unless the driver has a fast path ([`Server::enable_fast_path`]).
    fast_path: bool,
    /// UDP clients whose fast-path entries may have changed since the driver last asked,
    /// oldest first: a deleted allocation's removal must reach the maps before a later
    /// allocation on the same relay port installs its entries.
    fast_dirty: VecDeque<ClientAddr>,
    /// Peers the signaling side vouched for (see [`crate::grants`]).
    grants: Grants,
    unix_anchor: (Instant, u64),
    /// The `now` of the input being handled (for the error limit deep in the handlers).
    now: Instant,
}

/// One live allocation. An allocation has a handful of permissions and channels (one
/// per remote candidate), so they live in short vectors searched in order: smaller
/// than hash maps, and as fast at these sizes. The caps keep the search short.
struct Allocation {
    port: RelayPort,
    relayed: SocketAddr,
    username: Box<str>,
    expires: Instant,
    allocate_tid: TransactionId,
    allocate_response: Box<[u8]>,
    permissions: Vec<(IpAddr, Instant)>,
    /// Bound channels, including expired ones still in their cool-down.
    channels: Vec<Channel>,
    /// Bandwidth buckets by [`Direction`] (unused without `max_bps`).
    bandwidth: [TokenBucket; 2],
    /// The user's buckets, shared with their other allocations.
    user_bandwidth: Option<Arc<UserBandwidth>>,
}

struct Channel {
    number: ChannelNumber,
    peer: SocketAddr,
    expires: Instant,
}

/// Most permissions one allocation holds; more get 508 (Insufficient Capacity).
pub const MAX_PERMISSIONS: usize = 128;
/// Most channels (bound or cooling down) one allocation holds; more get 508.
pub const MAX_CHANNELS: usize = 128;

impl Allocation {
    /// Charge `bytes` of relayed payload to this allocation and its user; the reason to
    /// drop the datagram when either has spent its rate.
    #[inline]
    fn charge(&mut self, rate: Rate, dir: Direction, bytes: usize, now: Instant) -> Result<(), &'static str> {
        let bytes = bytes as u64;
        if !self.bandwidth[dir as usize].take(rate, bytes, now) {
            return Err("bandwidth_allocation");
        }
        if let Some(u) = &self.user_bandwidth {
            if !u.take(dir, bytes, now) {
                // Not relayed: the allocation's own budget is not spent on it.
                self.bandwidth[dir as usize].refund(rate, bytes);
                return Err("bandwidth_user");
            }
        }
        Ok(())
    }

    fn permitted(&self, ip: IpAddr, now: Instant) -> bool {
        self.permissions.iter().any(|(p, exp)| *p == ip && *exp > now)
    }

    /// How many permissions would exist after installing `ips` (expired ones not counted).
    fn permissions_after(&self, ips: &[IpAddr], now: Instant) -> usize {
        let live = self.permissions.iter().filter(|(_, e)| *e > now).count();
        let mut new: Vec<IpAddr> = Vec::new();
        for ip in ips {
            if !self.permitted(*ip, now) && !new.contains(ip) {
                new.push(*ip);
                if live + new.len() > MAX_PERMISSIONS {
                    // Over the cap already: a request with thousands of peers stops here.
                    break;
                }
            }
        }
        live + new.len()
    }

    fn permit(&mut self, ip: IpAddr, expires: Instant, now: Instant) {
        match self.permissions.iter_mut().find(|(p, _)| *p == ip) {
            Some(slot) => slot.1 = expires,
            None => {
                self.permissions.retain(|(_, e)| *e > now);
                push_small(&mut self.permissions, (ip, expires));
            }
        }
    }

    fn channel(&self, number: ChannelNumber) -> Option<&Channel> {
        self.channels.iter().find(|c| c.number == number)
    }

    fn channel_to(&self, peer: SocketAddr) -> Option<&Channel> {
        self.channels.iter().find(|c| c.peer == peer)
    }
}

/// Push onto a vector that is usually tiny: grow 1, 2, 4… instead of starting at 4.
fn push_small<T>(v: &mut Vec<T>, item: T) {
    if v.len() == v.capacity() {
        v.reserve_exact(v.len().max(1));
    }
    v.push(item);
}

struct Pending {
    client: ClientAddr,
    request: Authed,
    tid: TransactionId,
    lifetime: Duration,
    attempts: u8,
    port_choice: PortChoice,
}

/// What an Allocate asked of its port (RFC 8656 §7.2 EVEN-PORT / RESERVATION-TOKEN).
#[derive(Clone, Copy, PartialEq, Eq)]
enum PortChoice {
    Any,
    Even,
    /// Even, and hold the next port for a second allocation.
    EvenReserveNext,
    /// The port held for a RESERVATION-TOKEN: no retry elsewhere.
    Reserved,
}

/// What a successfully authenticated request carries forward.
#[derive(Clone)]
struct Authed {
    username: String,
    key: LongTermKey,
    kind: IntegrityKind,
    fingerprint: bool,
}

/// How many ports an Allocate may try before giving up with 508.
const BIND_ATTEMPTS: u8 = 8;
/// How often expired permissions and channels are swept (they are also checked on use).
const SWEEP_INTERVAL: Duration = Duration::from_secs(30);
/// After a channel expires, its number and peer stay reserved this long (RFC 8656 §12).
const CHANNEL_COOLDOWN: Duration = Duration::from_secs(300);
/// How long a reserved port waits for its token (RFC 8656 §7.2: 30 seconds).
const RESERVATION_LIFETIME: Duration = Duration::from_secs(30);
/// UDP protocol number for REQUESTED-TRANSPORT.
const UDP: u8 = 17;

impl<R: RngCore> Server<R> {
    /// Replace the credentials (a configuration reload's new TURN secrets). Allocations
    /// stay; their next authenticated request is checked against the new secrets, so a
    /// rotation lists the new secret first and keeps the old one until the credentials
    /// it minted have expired.
    pub fn set_authenticator(&mut self, auth: Authenticator) {
        self.auth = auth;
    }

    /// A core with its own nonce key drawn from `rng`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: Config,
        auth: Authenticator,
        filter: PeerFilter,
        quotas: Arc<Quotas>,
        metrics: Arc<TurnMetrics>,
        mut rng: R,
        now: Instant,
        unix_now: u64,
    ) -> Self {
        let mut key = [0u8; 32];
        rng.fill_bytes(&mut key);
        let nonces = Nonces::new(NonceKey::from_bytes(key), config.nonce_lifetime);
        Server {
            config,
            rng,
            auth,
            nonces,
            filter,
            quotas,
            metrics,
            allocations: HashMap::new(),
            by_port: HashMap::new(),
            pending: HashMap::new(),
            expiries: BTreeSet::new(),
            next_sweep: None,
            transmits: VecDeque::new(),
            commands: VecDeque::new(),
            fast_path: false,
            fast_dirty: VecDeque::new(),
            grants: Grants::default(),
            unix_anchor: (now, unix_now),
            now,
        }
    }

    /// Re-anchor the wall clock: `unix_secs` is the Unix time at `now`.
    pub fn set_unix_time(&mut self, now: Instant, unix_secs: u64) {
        self.unix_anchor = (now, unix_secs);
    }

    /// This core's counters.
    pub fn metrics(&self) -> &Arc<TurnMetrics> {
        &self.metrics
    }

    /// Number of live allocations on this core.
    pub fn allocation_count(&self) -> usize {
        self.allocations.len()
    }

    /// A packet from a client. Returns data to relay to a peer, if that is what it was.
    pub fn handle_client_input<'a>(
        &mut self,
        packet: &'a [u8],
        client: ClientAddr,
        now: Instant,
    ) -> Option<ToPeer<'a>> {
        match firstcall_stun::classify(packet) {
            PacketKind::ChannelData => self.handle_channel_data(packet, client, now),
            PacketKind::Stun => match Message::decode(packet) {
                Ok(msg) => {
                    self.now = now;
                    let out = self.handle_message(&msg, client, now);
                    // These requests bind channels, install or refresh permissions, refresh
                    // or delete the allocation: the fast path asks again.
                    if msg.class() == Class::Request
                        && matches!(
                            msg.method(),
                            Method::ALLOCATE | Method::REFRESH | Method::CREATE_PERMISSION | Method::CHANNEL_BIND
                        )
                    {
                        self.fast_path_dirty(client);
                    }
                    out
                }
                Err(e) => {
                    self.now = now;
                    self.handle_malformed(e, client);
                    None
                }
            },
            PacketKind::Other => {
                self.metrics.dropped("not_stun_or_channel_data");
                tracing::trace!(client = %client.addr, "dropped packet that is neither STUN nor ChannelData");
                None
            }
        }
    }

    /// A packet that arrived on relay socket `relay` from `peer`.
    ///
    /// Returns where to send it as ChannelData; when the peer has no channel the
    /// core queues a Data indication instead and returns `None`.
    pub fn handle_peer_traffic(
        &mut self,
        data: &[u8],
        peer: PeerAddr,
        relay: RelayPort,
        now: Instant,
    ) -> Option<ToClient> {
        let Some(client) = self.by_port.get(&relay).copied() else {
            self.metrics.dropped("no_allocation_for_relay");
            return None;
        };
        let alloc = self.allocations.get_mut(&client)?;
        if alloc.expires <= now {
            self.metrics.dropped("allocation_expired");
            return None;
        }
        let peer_ip = crate::filter::normalise(peer.0.ip());
        if self.filter.is_own_ip(peer_ip) {
            // Permissions are per IP: on our own address only a live relay is a peer,
            // not whatever else listens there.
            if let Err(r) = self.filter.check(peer.0) {
                self.metrics.peer_refused(r.as_str());
                return None;
            }
        }
        if !alloc.permitted(peer_ip, now) {
            // A peer the signaling side vouched for gets the permission its client is
            // about to ask for, under the same rules (filter, cap, lifetime).
            let user = parse_rest_username(&alloc.username).map_or(&*alloc.username, |r| r.user);
            if self.grants.allows(user, peer_ip, now)
                && self.filter.check(peer.0).is_ok()
                && alloc.permissions_after(&[peer_ip], now) <= MAX_PERMISSIONS
            {
                alloc.permit(peer_ip, now + self.config.permission_lifetime, now);
                self.metrics.peer_grant("applied");
                tracing::debug!(relay = relay.0, peer = %peer.0, "permission installed from a peer grant");
            } else {
                // RFC 8656 §10.3: without a permission the packet is silently discarded (we count it).
                self.metrics.dropped("no_permission");
                tracing::trace!(relay = relay.0, peer = %peer.0, "dropped peer data without permission");
                return None;
            }
        }
        if let Err(why) = alloc.charge(
            bandwidth_rate(self.config.max_bps),
            Direction::ToClient,
            data.len(),
            now,
        ) {
            self.metrics.dropped(why);
            return None;
        }
        self.metrics.relayed(Direction::ToClient, data.len());
        if let Some(ch) = alloc.channel_to(peer.0).filter(|c| c.expires > now) {
            return Some(ToClient {
                client,
                channel: ch.number,
            });
        }
        // RFC 8656 §11.2: no channel, so a Data indication.
        let mut b = MessageBuilder::new(Class::Indication, Method::DATA, self.random_tid());
        b.add(&Attribute::XorPeerAddress(peer.0)).add(&Attribute::Data(data));
        self.transmits.push_back(Transmit {
            dst: client,
            payload: b.finish(),
        });
        None
    }

    /// The driver bound (or failed to bind) the relay socket asked for by [`Command::BindRelay`].
    pub fn handle_relay_bound(&mut self, port: RelayPort, ok: bool, now: Instant) {
        self.now = now;
        let Some(mut p) = self.pending.remove(&port) else {
            return;
        };
        if !ok {
            p.attempts += 1;
            tracing::debug!(port = port.0, attempts = p.attempts, "relay port bind failed");
            if p.attempts < BIND_ATTEMPTS && p.port_choice != PortChoice::Reserved {
                if let Some(next) = self.pick_port(p.port_choice, now) {
                    self.commands.push_back(Command::BindRelay {
                        ip: self.config.relay_ip,
                        port: next,
                    });
                    self.pending.insert(next, p);
                    return;
                }
            }
            self.quotas.release(quota_user(&p.request.username));
            self.error_response(
                p.client,
                p.tid,
                Method::ALLOCATE,
                ErrorCode::INSUFFICIENT_CAPACITY,
                Some(&p.request),
                &[],
            );
            return;
        }
        let relayed = SocketAddr::new(self.config.advertised_ip, port.0);
        let expires = now + p.lifetime;
        let mut attrs = vec![
            Attribute::XorRelayedAddress(relayed),
            Attribute::Lifetime(p.lifetime.as_secs() as u32),
            Attribute::XorMappedAddress(p.client.addr),
        ];
        if p.port_choice == PortChoice::EvenReserveNext {
            let mut token = [0u8; 8];
            self.rng.fill_bytes(&mut token);
            self.quotas
                .reserve(token, RelayPort(port.0 + 1), now + RESERVATION_LIFETIME);
            attrs.push(Attribute::ReservationToken(token));
        }
        let response = self.success(p.tid, Method::ALLOCATE, &p.request, &attrs);
        self.transmits.push_back(Transmit {
            dst: p.client,
            payload: response.clone(),
        });
        tracing::info!(
            client = %p.client.addr, transport = p.client.transport.as_str(), user = %p.request.username,
            relayed = %relayed, lifetime_s = p.lifetime.as_secs(), "allocation created"
        );
        self.metrics
            .allocations_created
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.metrics
            .allocations_active
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.by_port.insert(port, p.client);
        self.filter.live_relays().insert(port.0);
        let user_bandwidth = self.quotas.user_bandwidth(quota_user(&p.request.username));
        self.expiries.insert((expires, p.client));
        self.next_sweep.get_or_insert(now + SWEEP_INTERVAL);
        self.allocations.insert(
            p.client,
            Box::new(Allocation {
                port,
                relayed,
                username: p.request.username.into_boxed_str(),
                expires,
                allocate_tid: p.tid,
                allocate_response: response.into_boxed_slice(),
                permissions: Vec::new(),
                channels: Vec::new(),
                bandwidth: [TokenBucket::full(bandwidth_rate(self.config.max_bps), now); 2],
                user_bandwidth,
            }),
        );
    }

    /// The signaling side vouches for `grant.ip` as a peer of `grant.user`'s allocations
    /// until `grant.until`: the first datagram from that address to one of them installs
    /// a permission, as the user's own CreatePermission would (see [`crate::grants`]).
    /// Counted in `peer_grants{outcome}`: `stored`, `full`, `expired`.
    pub fn handle_peer_grant(&mut self, mut grant: PeerGrant, now: Instant) -> Result<(), GrantRefused> {
        // Compared with peers' addresses as normalised (a dual-stack listener sees IPv4
        // clients as ::ffff:a.b.c.d).
        grant.ip = crate::filter::normalise(grant.ip);
        let r = self.grants.insert(grant, self.config.max_peer_grants, now);
        self.metrics.peer_grant(match r {
            Ok(()) => "stored",
            Err(GrantRefused::Full) => "full",
            Err(GrantRefused::Expired) => "expired",
        });
        r
    }

    /// The driver has a kernel fast path: from now on [`Server::poll_fast_path`] says
    /// what it may relay (see [`crate::fastpath`]).
    pub fn enable_fast_path(&mut self) {
        self.fast_path = true;
    }

    fn fast_path_dirty(&mut self, client: ClientAddr) {
        if self.fast_path && client.transport == Transport::Udp && self.fast_dirty.back() != Some(&client) {
            self.fast_dirty.push_back(client);
        }
    }

    /// The next client whose fast-path entries changed, with all of them as of `now`.
    pub fn poll_fast_path(&mut self, now: Instant) -> Option<crate::fastpath::FastPathSet> {
        let client = self.fast_dirty.pop_front()?;
        let mut entries = Vec::new();
        let unlimited = self.config.max_bps == 0;
        if let Some(a) = self.allocations.get(&client).filter(|a| a.expires > now) {
            if unlimited && a.user_bandwidth.is_none() {
                for c in &a.channels {
                    let ip = crate::filter::normalise(c.peer.ip());
                    let permit = a.permissions.iter().find(|(p, _)| *p == ip).map(|(_, e)| *e);
                    let Some(permit) = permit else { continue };
                    let expires = c.expires.min(permit).min(a.expires);
                    if expires > now {
                        entries.push(crate::fastpath::FastEntry {
                            channel: c.number.get(),
                            relay: a.port,
                            peer: c.peer,
                            expires,
                        });
                    }
                }
            }
        }
        Some(crate::fastpath::FastPathSet {
            client: client.addr,
            entries,
        })
    }

    /// A TCP/TLS client connection closed: its allocation goes with it (RFC 8656 §3.1).
    pub fn handle_client_closed(&mut self, client: ClientAddr) {
        self.pending.retain(|_, p| p.client != client);
        self.delete_allocation(client, "connection_closed");
    }

    /// Expire what is due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(at, client)) = self.expiries.first() {
            if at > now {
                break;
            }
            self.expiries.pop_first();
            if self.allocations.get(&client).is_some_and(|a| a.expires == at) {
                self.delete_allocation(client, "expired");
            }
        }
        if self.next_sweep.is_some_and(|t| t <= now) {
            self.grants.sweep(now);
            for a in self.allocations.values_mut() {
                a.permissions.retain(|(_, exp)| *exp > now);
                a.channels.retain(|c| c.expires + CHANNEL_COOLDOWN > now);
            }
            self.next_sweep = (!self.allocations.is_empty()).then_some(now + SWEEP_INTERVAL);
        }
    }

    /// When [`Server::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let first = self.expiries.first().map(|(t, _)| *t);
        match (first, self.next_sweep) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Next packet for a client.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// Next socket operation for the driver.
    pub fn poll_command(&mut self) -> Option<Command> {
        self.commands.pop_front()
    }

    fn unix_now(&self, now: Instant) -> u64 {
        let (at, unix) = self.unix_anchor;
        if now >= at {
            unix + (now - at).as_secs()
        } else {
            unix.saturating_sub((at - now).as_secs())
        }
    }

    fn random_tid(&mut self) -> TransactionId {
        let mut t = [0u8; 12];
        self.rng.fill_bytes(&mut t);
        TransactionId(t)
    }

    fn handle_channel_data<'a>(&mut self, packet: &'a [u8], client: ClientAddr, now: Instant) -> Option<ToPeer<'a>> {
        let cd = match ChannelData::decode(packet) {
            Ok(cd) => cd,
            Err(e) => {
                self.metrics.dropped("malformed_channel_data");
                tracing::debug!(client = %client.addr, error = %e, "dropped malformed ChannelData");
                return None;
            }
        };
        let Some(alloc) = self.allocations.get_mut(&client) else {
            self.metrics.dropped("no_allocation");
            return None;
        };
        let Some(peer) = alloc.channel(cd.channel).filter(|c| c.expires > now).map(|c| c.peer) else {
            self.metrics.dropped("unbound_channel");
            tracing::trace!(client = %client.addr, channel = ?cd.channel, "dropped ChannelData on unbound channel");
            return None;
        };
        let peer_ip = crate::filter::normalise(peer.ip());
        if !alloc.permitted(peer_ip, now) {
            self.metrics.dropped("no_permission");
            return None;
        }
        if self.filter.is_own_ip(peer_ip) {
            // A channel to one of our relays outlives that relay's allocation.
            if let Err(r) = self.filter.check(peer) {
                self.metrics.peer_refused(r.as_str());
                return None;
            }
        }
        if let Err(why) = alloc.charge(
            bandwidth_rate(self.config.max_bps),
            Direction::ToPeer,
            cd.data.len(),
            now,
        ) {
            self.metrics.dropped(why);
            return None;
        }
        self.metrics.relayed(Direction::ToPeer, cd.data.len());
        Some(ToPeer {
            relay: alloc.port,
            peer: PeerAddr(peer),
            data: cd.data,
        })
    }

    fn handle_malformed(&mut self, e: DecodeError, client: ClientAddr) {
        self.metrics.dropped(e.as_str());
        tracing::debug!(client = %client.addr, error = %e, "malformed STUN message");
        // A readable request header earns a 400 (RFC 8489 §6.3.1); a bad FINGERPRINT
        // means it may not be STUN at all, so it is dropped (RFC 8489 §7.3).
        if let DecodeError::BadAttribute { header, .. } = e {
            if header.class == Class::Request {
                self.error_response(
                    client,
                    header.transaction_id,
                    header.method,
                    ErrorCode::BAD_REQUEST,
                    None,
                    &[],
                );
            }
        }
    }

    fn handle_message<'a>(&mut self, msg: &Message<'a>, client: ClientAddr, now: Instant) -> Option<ToPeer<'a>> {
        if msg.class() == Class::Success || msg.class() == Class::Error {
            self.metrics.dropped("unexpected_response");
            return None;
        }
        if !msg.unknown_required().is_empty() {
            // RFC 8489 §7.3.1: 420 listing them for requests; indications are discarded.
            if msg.class() == Class::Request {
                let value = attr::unknown_attributes_value(msg.unknown_required());
                self.error_response(
                    client,
                    msg.transaction_id(),
                    msg.method(),
                    ErrorCode::UNKNOWN_ATTRIBUTE,
                    None,
                    &[Attribute::UnknownAttributes(&value)],
                );
            } else {
                self.metrics.dropped("unknown_attribute");
            }
            return None;
        }
        if msg.class() == Class::Indication {
            return match msg.method() {
                Method::SEND => self.handle_send(msg, client, now),
                Method::BINDING => None, // keepalive
                _ => {
                    self.metrics.dropped("unknown_indication");
                    None
                }
            };
        }
        self.metrics.request(msg.method().name());
        match msg.method() {
            Method::BINDING => self.handle_binding(msg, client),
            Method::ALLOCATE => self.handle_allocate(msg, client, now),
            Method::REFRESH => self.handle_refresh(msg, client, now),
            Method::CREATE_PERMISSION => self.handle_create_permission(msg, client, now),
            Method::CHANNEL_BIND => self.handle_channel_bind(msg, client, now),
            m => {
                // RFC 8489 §6.3.1.1: unknown method in a request gets 400.
                tracing::debug!(client = %client.addr, method = ?m, "unknown method");
                self.error_response(client, msg.transaction_id(), m, ErrorCode::BAD_REQUEST, None, &[]);
            }
        }
        None
    }

    fn handle_binding(&mut self, msg: &Message<'_>, client: ClientAddr) {
        let mut b = MessageBuilder::new(Class::Success, Method::BINDING, msg.transaction_id());
        b.add(&Attribute::XorMappedAddress(client.addr));
        // Old RFC 3489 clients only read MAPPED-ADDRESS.
        b.add(&Attribute::MappedAddress(client.addr));
        b.add(&Attribute::Software(self.config.software));
        if msg.has_fingerprint() {
            b.add_fingerprint();
        }
        self.transmits.push_back(Transmit {
            dst: client,
            payload: b.finish(),
        });
    }

    /// RFC 8656 §5 / RFC 8489 §9.2.4: long-term credential check. On failure the
    /// error response is already queued.
    fn authenticate(&mut self, msg: &Message<'_>, client: ClientAddr, now: Instant) -> Option<Authed> {
        // An address that spent its error budget is not even examined (so a password
        // guesser gets no more guesses than the limit, right or wrong, and no HMAC is
        // computed for it) until its bucket refills.
        let budget = self.quotas.errors.has_budget(client.addr.ip(), now);
        if !self.count_limit(budget, client) {
            return None;
        }
        let unix = self.unix_now(now);
        let challenge = |this: &mut Self, code: ErrorCode<'static>, reason: &'static str| {
            this.metrics.auth_failure(reason);
            tracing::debug!(client = %client.addr, method = ?msg.method(), reason, "authentication failed");
            let nonce = this.nonces.issue(client.addr, unix);
            let realm = this.auth.realm().to_owned();
            this.error_response(
                client,
                msg.transaction_id(),
                msg.method(),
                code,
                None,
                &[Attribute::Realm(&realm), Attribute::Nonce(&nonce)],
            );
        };
        if !msg.has_integrity() {
            // The usual first round trip: not a failure worth a metric label of its own.
            challenge(self, ErrorCode::UNAUTHORIZED, "missing_credentials");
            return None;
        }
        let (Some(username), Some(_realm), Some(nonce)) = (msg.username(), msg.realm(), msg.nonce()) else {
            self.metrics.auth_failure("malformed");
            self.error_response(
                client,
                msg.transaction_id(),
                msg.method(),
                ErrorCode::BAD_REQUEST,
                None,
                &[],
            );
            return None;
        };
        match self.nonces.check(nonce, client.addr, unix) {
            NonceCheck::Valid => {}
            NonceCheck::Stale => {
                challenge(self, ErrorCode::STALE_NONCE, "stale_nonce");
                return None;
            }
            NonceCheck::Invalid => {
                challenge(self, ErrorCode::UNAUTHORIZED, "bad_nonce");
                return None;
            }
        }
        let keys = match self.auth.keys_for(username, unix) {
            Ok(k) => k,
            Err(e) => {
                challenge(self, ErrorCode::UNAUTHORIZED, e.as_str());
                return None;
            }
        };
        let Some(key) = keys.into_iter().find(|k| msg.verify_integrity(k.as_ref())) else {
            challenge(self, ErrorCode::UNAUTHORIZED, "bad_integrity");
            return None;
        };
        Some(Authed {
            username: username.to_owned(),
            key,
            kind: msg.integrity_kind().unwrap_or(IntegrityKind::Sha1),
            fingerprint: msg.has_fingerprint(),
        })
    }

    /// For requests on an existing allocation: it must exist (437) and be used with
    /// the credentials that created it (441, RFC 8656 §5).
    fn authenticate_for_allocation(&mut self, msg: &Message<'_>, client: ClientAddr, now: Instant) -> Option<Authed> {
        let authed = self.authenticate(msg, client, now)?;
        let err = match self.allocations.get(&client) {
            None => ErrorCode::ALLOCATION_MISMATCH,
            Some(a) if a.expires <= now => ErrorCode::ALLOCATION_MISMATCH,
            Some(a) if *a.username != *authed.username => ErrorCode::WRONG_CREDENTIALS,
            Some(_) => return Some(authed),
        };
        self.error_response(client, msg.transaction_id(), msg.method(), err, Some(&authed), &[]);
        None
    }

    fn handle_allocate(&mut self, msg: &Message<'_>, client: ClientAddr, now: Instant) {
        let tid = msg.transaction_id();
        if self.pending.values().any(|p| p.client == client && p.tid == tid) {
            return; // retransmission while the relay socket is being bound
        }
        if msg.requested_transport().is_none() && !msg.has_integrity() {
            // RFC 8656 §7.1: a client MUST include REQUESTED-TRANSPORT. §7.2 would check
            // credentials first and challenge (401, ~140 B) a bare 20-byte request: a
            // reflection no conforming client needs, so such a request gets no answer.
            // With credentials it is authenticated and gets its 400 below.
            self.metrics.dropped("allocate_without_transport");
            tracing::debug!(client = %client.addr, "unauthenticated Allocate without REQUESTED-TRANSPORT dropped");
            return;
        }
        let Some(authed) = self.authenticate(msg, client, now) else {
            return;
        };
        let err = |this: &mut Self, code: ErrorCode<'static>| {
            tracing::debug!(client = %client.addr, code = code.code, reason = %code.reason, "Allocate refused");
            this.error_response(client, tid, Method::ALLOCATE, code, Some(&authed), &[]);
        };
        if let Some(a) = self.allocations.get(&client) {
            // RFC 8656 §7.2 step 2: a retransmitted Allocate gets the original response.
            if a.allocate_tid == tid {
                let payload = a.allocate_response.to_vec();
                self.transmits.push_back(Transmit { dst: client, payload });
            } else {
                err(self, ErrorCode::ALLOCATION_MISMATCH);
            }
            return;
        }
        if self.pending.values().any(|p| p.client == client) {
            err(self, ErrorCode::ALLOCATION_MISMATCH);
            return;
        }
        match msg.requested_transport() {
            None => return err(self, ErrorCode::BAD_REQUEST),
            Some(UDP) => {}
            Some(_) => return err(self, ErrorCode::UNSUPPORTED_TRANSPORT),
        }
        let mut choice = PortChoice::Any;
        let mut token = None;
        for a in msg.attributes() {
            match a {
                // We cannot set DF per datagram portably: RFC 8656 §7.2 says answer 420.
                Attribute::DontFragment => {
                    let value = attr::unknown_attributes_value(&[attr::DONT_FRAGMENT]);
                    self.error_response(
                        client,
                        tid,
                        Method::ALLOCATE,
                        ErrorCode::UNKNOWN_ATTRIBUTE,
                        Some(&authed),
                        &[Attribute::UnknownAttributes(&value)],
                    );
                    return;
                }
                Attribute::ReservationToken(t) => token = Some(*t),
                Attribute::EvenPort(reserve) => {
                    choice = if *reserve {
                        PortChoice::EvenReserveNext
                    } else {
                        PortChoice::Even
                    }
                }
                Attribute::RequestedAddressFamily(f) if *f != Family::of(self.config.relay_ip) => {
                    return err(self, ErrorCode::ADDRESS_FAMILY_NOT_SUPPORTED);
                }
                _ => {}
            }
        }
        if token.is_some() && choice != PortChoice::Any {
            // RFC 8656 §7.2: EVEN-PORT and RESERVATION-TOKEN together is a 400.
            return err(self, ErrorCode::BAD_REQUEST);
        }
        let reserved = match token {
            // Unknown or lapsed token: the port is no longer held.
            Some(t) => match self.quotas.redeem(&t, now) {
                Some(port) => Some(port),
                None => return err(self, ErrorCode::INSUFFICIENT_CAPACITY),
            },
            None => None,
        };
        if reserved.is_some() {
            choice = PortChoice::Reserved;
        }
        let user = quota_user(&authed.username).to_owned();
        if let Err(q) = self.quotas.try_acquire(&user, now) {
            tracing::info!(client = %client.addr, %user, quota = ?q, "allocation quota reached");
            self.metrics.dropped(match q {
                QuotaExceeded::PerUser => "quota_per_user",
                QuotaExceeded::Total => "quota_total",
            });
            return err(self, ErrorCode::ALLOCATION_QUOTA_REACHED);
        }
        let Some(port) = reserved.or_else(|| self.pick_port(choice, now)) else {
            self.quotas.release(&user);
            return err(self, ErrorCode::INSUFFICIENT_CAPACITY);
        };
        let lifetime = self.clamp_lifetime(msg.lifetime());
        self.commands.push_back(Command::BindRelay {
            ip: self.config.relay_ip,
            port,
        });
        self.pending.insert(
            port,
            Pending {
                client,
                request: authed,
                tid,
                lifetime,
                attempts: 0,
                port_choice: choice,
            },
        );
    }

    fn clamp_lifetime(&self, requested: Option<u32>) -> Duration {
        let req = Duration::from_secs(u64::from(requested.unwrap_or(0)));
        req.clamp(self.config.default_lifetime, self.config.max_lifetime)
    }

    fn handle_refresh(&mut self, msg: &Message<'_>, client: ClientAddr, now: Instant) {
        let Some(authed) = self.authenticate_for_allocation(msg, client, now) else {
            return;
        };
        let tid = msg.transaction_id();
        if msg
            .find(|a| match a {
                Attribute::RequestedAddressFamily(f) => Some(*f),
                _ => None,
            })
            .is_some_and(|f| f != Family::of(self.config.relay_ip))
        {
            self.error_response(
                client,
                tid,
                Method::REFRESH,
                ErrorCode::PEER_ADDRESS_FAMILY_MISMATCH,
                Some(&authed),
                &[],
            );
            return;
        }
        let requested = msg.lifetime();
        let lifetime = if requested == Some(0) {
            // RFC 8656 §7.3: a zero lifetime deletes the allocation.
            self.delete_allocation(client, "refreshed_to_zero");
            Duration::ZERO
        } else {
            let lifetime = self.clamp_lifetime(requested);
            if let Some(a) = self.allocations.get_mut(&client) {
                self.expiries.remove(&(a.expires, client));
                a.expires = now + lifetime;
                self.expiries.insert((a.expires, client));
            }
            lifetime
        };
        let payload = self.success(
            tid,
            Method::REFRESH,
            &authed,
            &[Attribute::Lifetime(lifetime.as_secs() as u32)],
        );
        self.transmits.push_back(Transmit { dst: client, payload });
    }

    /// Check a peer against the filter; on refusal queue 403 and count it.
    fn check_peer(&mut self, peer: SocketAddr, msg: &Message<'_>, client: ClientAddr, authed: &Authed) -> bool {
        if let Err(r) = self.filter.check(peer) {
            self.metrics.peer_refused(r.as_str());
            tracing::info!(client = %client.addr, %peer, reason = r.as_str(), "peer refused by filter");
            self.error_response(
                client,
                msg.transaction_id(),
                msg.method(),
                ErrorCode::FORBIDDEN,
                Some(authed),
                &[],
            );
            return false;
        }
        if Family::of(peer.ip()) != Family::of(self.config.relay_ip)
            && Family::of(crate::filter::normalise(peer.ip())) != Family::of(self.config.relay_ip)
        {
            self.error_response(
                client,
                msg.transaction_id(),
                msg.method(),
                ErrorCode::PEER_ADDRESS_FAMILY_MISMATCH,
                Some(authed),
                &[],
            );
            return false;
        }
        true
    }

    fn handle_create_permission(&mut self, msg: &Message<'_>, client: ClientAddr, now: Instant) {
        let Some(authed) = self.authenticate_for_allocation(msg, client, now) else {
            return;
        };
        let peers: Vec<SocketAddr> = msg.peer_addresses().collect();
        if peers.is_empty() {
            self.error_response(
                client,
                msg.transaction_id(),
                msg.method(),
                ErrorCode::BAD_REQUEST,
                Some(&authed),
                &[],
            );
            return;
        }
        // All or nothing (RFC 8656 §9.2): check every peer before installing any.
        for p in &peers {
            if !self.check_peer(*p, msg, client, &authed) {
                return;
            }
        }
        let ips: Vec<IpAddr> = peers.iter().map(|p| crate::filter::normalise(p.ip())).collect();
        if self
            .allocations
            .get(&client)
            .is_some_and(|a| a.permissions_after(&ips, now) > MAX_PERMISSIONS)
        {
            tracing::debug!(client = %client.addr, "CreatePermission refused: permission cap reached");
            self.metrics.dropped("permission_cap");
            self.error_response(
                client,
                msg.transaction_id(),
                msg.method(),
                ErrorCode::INSUFFICIENT_CAPACITY,
                Some(&authed),
                &[],
            );
            return;
        }
        let expires = now + self.config.permission_lifetime;
        if let Some(a) = self.allocations.get_mut(&client) {
            for ip in ips {
                a.permit(ip, expires, now);
            }
        }
        tracing::debug!(client = %client.addr, peers = ?peers, "permissions installed");
        let payload = self.success(msg.transaction_id(), msg.method(), &authed, &[]);
        self.transmits.push_back(Transmit { dst: client, payload });
    }

    fn handle_channel_bind(&mut self, msg: &Message<'_>, client: ClientAddr, now: Instant) {
        let Some(authed) = self.authenticate_for_allocation(msg, client, now) else {
            return;
        };
        let tid = msg.transaction_id();
        let bad = |this: &mut Self, why: &'static str| {
            tracing::debug!(client = %client.addr, why, "ChannelBind refused with 400");
            this.error_response(
                client,
                tid,
                Method::CHANNEL_BIND,
                ErrorCode::BAD_REQUEST,
                Some(&authed),
                &[],
            )
        };
        // RFC 8656 §11.2: exactly one peer and a channel number in range, else 400.
        let peers: Vec<SocketAddr> = msg.peer_addresses().collect();
        let (Some(channel), [peer]) = (msg.channel_number().and_then(ChannelNumber::new), peers.as_slice()) else {
            return bad(self, "needs one XOR-PEER-ADDRESS and a channel in 0x4000..=0x7FFF");
        };
        let peer = *peer;
        if !self.check_peer(peer, msg, client, &authed) {
            return;
        }
        let Some(a) = self.allocations.get_mut(&client) else {
            return;
        };
        // A channel (even expired, within its cool-down) stays tied to its peer, and a
        // peer to its channel (RFC 8656 §12).
        let channel_taken = a.channel(channel).is_some_and(|c| c.peer != peer);
        let peer_taken = a.channel_to(peer).is_some_and(|c| c.number != channel);
        if channel_taken {
            return bad(self, "channel bound to another peer");
        }
        if peer_taken {
            return bad(self, "peer bound to another channel");
        }
        let ip = crate::filter::normalise(peer.ip());
        let renewal = a.channel(channel).is_some();
        if (!renewal && a.channels.len() >= MAX_CHANNELS) || a.permissions_after(&[ip], now) > MAX_PERMISSIONS {
            tracing::debug!(client = %client.addr, "ChannelBind refused: channel or permission cap reached");
            self.metrics.dropped("channel_cap");
            return self.error_response(
                client,
                tid,
                Method::CHANNEL_BIND,
                ErrorCode::INSUFFICIENT_CAPACITY,
                Some(&authed),
                &[],
            );
        }
        let expires = now + self.config.channel_lifetime;
        match a.channels.iter_mut().find(|c| c.number == channel) {
            Some(c) => c.expires = expires,
            None => push_small(
                &mut a.channels,
                Channel {
                    number: channel,
                    peer,
                    expires,
                },
            ),
        }
        a.permit(ip, now + self.config.permission_lifetime, now);
        tracing::debug!(client = %client.addr, %peer, ?channel, "channel bound");
        let payload = self.success(tid, Method::CHANNEL_BIND, &authed, &[]);
        self.transmits.push_back(Transmit { dst: client, payload });
    }

    fn handle_send<'a>(&mut self, msg: &Message<'a>, client: ClientAddr, now: Instant) -> Option<ToPeer<'a>> {
        let (Some(peer), Some(data)) = (msg.peer_addresses().next(), msg.data()) else {
            self.metrics.dropped("send_missing_attributes");
            return None;
        };
        let Some(alloc) = self.allocations.get_mut(&client).filter(|a| a.expires > now) else {
            self.metrics.dropped("no_allocation");
            return None;
        };
        if !alloc.permitted(crate::filter::normalise(peer.ip()), now) {
            self.metrics.dropped("no_permission");
            return None;
        }
        // Permissions are per IP, but the filter also looks at ports (our own address is
        // reachable only on live relay ports), so check every datagram's full address.
        if let Err(r) = self.filter.check(peer) {
            self.metrics.peer_refused(r.as_str());
            return None;
        }
        if let Err(why) = alloc.charge(bandwidth_rate(self.config.max_bps), Direction::ToPeer, data.len(), now) {
            self.metrics.dropped(why);
            return None;
        }
        self.metrics.relayed(Direction::ToPeer, data.len());
        Some(ToPeer {
            relay: alloc.port,
            peer: PeerAddr(peer),
            data,
        })
    }

    fn delete_allocation(&mut self, client: ClientAddr, reason: &'static str) {
        let Some(a) = self.allocations.remove(&client) else {
            return;
        };
        self.fast_path_dirty(client);
        self.expiries.remove(&(a.expires, client));
        self.by_port.remove(&a.port);
        self.filter.live_relays().remove(a.port.0);
        self.quotas.release(quota_user(&a.username));
        self.commands.push_back(Command::ReleaseRelay { port: a.port });
        self.metrics.allocation_deleted(reason);
        tracing::info!(client = %client.addr, relayed = %a.relayed, user = %a.username, reason, "allocation deleted");
        if self.allocations.is_empty() {
            self.next_sweep = None;
        }
    }

    fn pick_port(&mut self, choice: PortChoice, now: Instant) -> Option<RelayPort> {
        let (lo, hi) = (*self.config.relay_ports.start(), *self.config.relay_ports.end());
        let span = u32::from(hi) - u32::from(lo) + 1;
        let reserved = self.quotas.reserved_ports(now);
        let unused = |p: u16, s: &Self| {
            !s.by_port.contains_key(&RelayPort(p)) && !s.pending.contains_key(&RelayPort(p)) && !reserved.contains(&p)
        };
        let free = |p: u16, s: &Self| match choice {
            PortChoice::Any | PortChoice::Reserved => unused(p, s),
            PortChoice::Even => p.is_multiple_of(2) && unused(p, s),
            PortChoice::EvenReserveNext => p.is_multiple_of(2) && p < hi && unused(p, s) && unused(p + 1, s),
        };
        // Random probes first (unpredictable ports), then a linear scan so a nearly
        // full range still finds its last free port.
        for _ in 0..16 {
            let p = (u32::from(lo) + self.rng.gen_range(0..span)) as u16;
            if free(p, self) {
                return Some(RelayPort(p));
            }
        }
        let start = self.rng.gen_range(0..span);
        (0..span)
            .map(|i| (u32::from(lo) + (start + i) % span) as u16)
            .find(|p| free(*p, self))
            .map(RelayPort)
    }

    fn success(&self, tid: TransactionId, method: Method, authed: &Authed, attrs: &[Attribute<'_>]) -> Vec<u8> {
        let mut b = MessageBuilder::new(Class::Success, method, tid);
        for a in attrs {
            b.add(a);
        }
        b.add(&Attribute::Software(self.config.software));
        b.add_integrity(authed.kind, authed.key.as_ref());
        if authed.fingerprint {
            b.add_fingerprint();
        }
        b.finish()
    }

    /// Count what the error limiter found; false when the address is limited.
    fn count_limit(&self, c: Checked, client: ClientAddr) -> bool {
        if c.table_full {
            self.metrics.dropped("error_rate_table_full");
        }
        if c.verdict == Verdict::Limited {
            self.metrics.dropped("error_rate_limited");
            tracing::trace!(client = %client.addr, "error response budget spent: not answered");
            return false;
        }
        true
    }

    /// Queue an error response. Integrity is added when the request authenticated
    /// (never on 401/438, RFC 8489 §9.2.4).
    fn error_response(
        &mut self,
        client: ClientAddr,
        tid: TransactionId,
        method: Method,
        code: ErrorCode<'static>,
        authed: Option<&Authed>,
        attrs: &[Attribute<'_>],
    ) {
        let checked = self.quotas.errors.allow(client.addr.ip(), self.now);
        if !self.count_limit(checked, client) {
            return;
        }
        self.metrics.error_response(code.code);
        let mut b = MessageBuilder::new(Class::Error, method, tid);
        b.add(&Attribute::ErrorCode(code));
        for a in attrs {
            b.add(a);
        }
        b.add(&Attribute::Software(self.config.software));
        if let Some(au) = authed {
            b.add_integrity(au.kind, au.key.as_ref());
            if au.fingerprint {
                b.add_fingerprint();
            }
        }
        self.transmits.push_back(Transmit {
            dst: client,
            payload: b.finish(),
        });
    }
}

/// The user a REST username belongs to (`1700000000:alice` → `alice`), for quotas.
fn quota_user(username: &str) -> &str {
    parse_rest_username(username).map_or(username, |r| r.user)
}
