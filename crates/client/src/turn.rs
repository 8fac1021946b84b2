//! A TURN client (RFC 8656) over UDP, TCP or TLS.
//!
//! [`Credentials`] and the request/response logic ([`Session`], sans-IO: it builds
//! requests and reads responses, never touching a socket) are separate from the
//! transport ([`Transport`]), so `doctor` and the benchmarks can drive many clients.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use firstcall_stun::{
    tcp_frame_len, Attribute, ChannelData, ChannelNumber, Class, IntegrityKind, Message, MessageBuilder, Method,
    PacketKind, TransactionId,
};
use firstcall_turn::auth::{long_term_key, LongTermKey};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// How to authenticate.
#[derive(Clone, Debug)]
pub struct Credentials {
    /// USERNAME.
    pub username: String,
    /// Password (a REST password or a static one).
    pub password: String,
}

/// Why a TURN operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TurnError {
    /// No response in time.
    #[error("no response within {0:?}")]
    Timeout(Duration),
    /// The server answered with an error code.
    #[error("error {code} {reason}")]
    Code {
        /// The code.
        code: u16,
        /// Its reason phrase.
        reason: String,
    },
    /// A socket or TLS failure.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The server sent something that is not valid for this exchange.
    #[error("protocol: {0}")]
    Protocol(String),
}

impl TurnError {
    /// The STUN error code, if the server sent one.
    pub fn code(&self) -> Option<u16> {
        match self {
            TurnError::Code { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// What a successful Allocate granted.
#[derive(Clone, Copy, Debug)]
pub struct Allocation {
    /// XOR-RELAYED-ADDRESS.
    pub relayed: SocketAddr,
    /// XOR-MAPPED-ADDRESS.
    pub mapped: Option<SocketAddr>,
    /// LIFETIME granted, seconds.
    pub lifetime: u32,
}

/// Something a peer sent us through the relay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Relayed {
    /// A Data indication.
    Data {
        /// Peer.
        peer: SocketAddr,
        /// Payload.
        data: Vec<u8>,
    },
    /// ChannelData.
    Channel {
        /// Channel.
        channel: u16,
        /// Payload.
        data: Vec<u8>,
    },
}

/// Which transport a client uses to reach the server.
#[derive(Clone)]
pub enum Kind {
    /// UDP.
    Udp,
    /// TCP.
    Tcp,
    /// TLS, verifying the certificate for `server_name` against `roots`.
    Tls {
        /// Name to verify.
        server_name: String,
        /// Trust anchors.
        roots: Arc<rustls::RootCertStore>,
    },
}

/// The long-term-credential state of a client: realm, nonce, key (sans-IO).
pub struct Session {
    creds: Credentials,
    realm: Option<String>,
    nonce: Option<String>,
    key: Option<LongTermKey>,
    tid: u64,
}

/// How a response was classified.
pub enum Outcome<'a> {
    /// Success: the message.
    Success(Message<'a>),
    /// A 401/438 challenge: realm and nonce were taken; send again.
    Retry,
    /// An error response.
    Error(u16, String),
}

impl Session {
    /// A session with credentials (no realm/nonce yet).
    pub fn new(creds: Credentials) -> Self {
        Session {
            creds,
            realm: None,
            nonce: None,
            key: None,
            tid: 0,
        }
    }

    /// The realm the server announced.
    pub fn realm(&self) -> Option<&str> {
        self.realm.as_deref()
    }

    /// Whether the server has challenged us (we hold a nonce).
    pub fn has_nonce(&self) -> bool {
        self.nonce.is_some()
    }

    /// Build a request; authenticated once a realm and nonce are known.
    pub fn request(&mut self, method: Method, attrs: &[Attribute<'_>]) -> (TransactionId, Vec<u8>) {
        self.tid += 1;
        let mut t = [0u8; 12];
        t[4..].copy_from_slice(&self.tid.to_be_bytes());
        rand_fill(&mut t[..4]);
        let tid = TransactionId(t);
        let mut b = MessageBuilder::new(Class::Request, method, tid);
        for a in attrs {
            b.add(a);
        }
        if let (Some(realm), Some(nonce), Some(key)) = (&self.realm, &self.nonce, &self.key) {
            b.add(&Attribute::Username(&self.creds.username))
                .add(&Attribute::Realm(realm))
                .add(&Attribute::Nonce(nonce))
                .add_integrity(IntegrityKind::Sha1, key.as_ref());
        }
        b.add_fingerprint();
        (tid, b.finish())
    }

    /// Classify a response to one of our requests.
    pub fn response<'a>(&mut self, msg: Message<'a>) -> Outcome<'a> {
        match msg.class() {
            Class::Success => {
                if msg.has_integrity() && !self.key.is_some_and(|k| msg.verify_integrity(k.as_ref())) {
                    return Outcome::Error(0, "response integrity does not verify".into());
                }
                Outcome::Success(msg)
            }
            Class::Error => {
                let (code, reason) = msg
                    .error_code()
                    .map_or((0, String::new()), |e| (e.code, e.reason.to_owned()));
                let challenged = (code == 401 && self.nonce.is_none()) || code == 438;
                if challenged {
                    if let (Some(realm), Some(nonce)) = (msg.realm(), msg.nonce()) {
                        self.key = Some(long_term_key(&self.creds.username, realm, &self.creds.password));
                        self.realm = Some(realm.to_owned());
                        self.nonce = Some(nonce.to_owned());
                        return Outcome::Retry;
                    }
                }
                Outcome::Error(code, reason)
            }
            _ => Outcome::Error(0, "not a response".into()),
        }
    }
}

fn rand_fill(b: &mut [u8]) {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(7, |d| d.subsec_nanos());
    for (i, x) in b.iter_mut().enumerate() {
        *x = (n >> ((i % 4) * 8)) as u8 ^ (i as u8).wrapping_mul(151);
    }
}

type BoxStream = Box<dyn AsyncStream>;
/// A TCP or TLS stream.
pub trait AsyncStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> AsyncStream for T {}

/// The transport to the server.
pub enum Transport {
    /// A connected UDP socket.
    Udp(UdpSocket),
    /// A framed stream (TCP or TLS) with its read buffer.
    Stream(BoxStream, Vec<u8>),
}

impl Transport {
    /// Connect to `server` over `kind`.
    pub async fn connect(server: SocketAddr, kind: &Kind) -> Result<Transport, TurnError> {
        Ok(match kind {
            Kind::Udp => {
                let bind: SocketAddr = if server.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }
                    .parse()
                    .expect("literal");
                let s = UdpSocket::bind(bind).await?;
                s.connect(server).await?;
                Transport::Udp(s)
            }
            Kind::Tcp => {
                let s = TcpStream::connect(server).await?;
                s.set_nodelay(true)?;
                Transport::Stream(Box::new(s), Vec::new())
            }
            Kind::Tls { server_name, roots } => {
                let cfg =
                    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                        .with_safe_default_protocol_versions()
                        .map_err(|e| TurnError::Protocol(e.to_string()))?
                        .with_root_certificates(roots.clone())
                        .with_no_client_auth();
                let name = rustls::pki_types::ServerName::try_from(server_name.clone())
                    .map_err(|e| TurnError::Protocol(format!("bad server name: {e}")))?;
                let tcp = TcpStream::connect(server).await?;
                let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
                    .connect(name, tcp)
                    .await?;
                Transport::Stream(Box::new(tls), Vec::new())
            }
        })
    }

    /// Send one STUN message or ChannelData frame.
    pub async fn send(&mut self, frame: &[u8]) -> Result<(), TurnError> {
        match self {
            Transport::Udp(s) => {
                s.send(frame).await?;
            }
            Transport::Stream(s, _) => {
                s.write_all(frame).await?;
                // ChannelData over a stream is padded to 4 bytes (RFC 8656 §12.5).
                let pad = frame.len().next_multiple_of(4) - frame.len();
                if pad > 0 && firstcall_stun::classify(frame) == PacketKind::ChannelData {
                    s.write_all(&[0u8; 3][..pad]).await?;
                }
                s.flush().await?;
            }
        }
        Ok(())
    }

    /// Receive one frame (waits at most `timeout`).
    pub async fn recv(&mut self, timeout: Duration) -> Result<Vec<u8>, TurnError> {
        let deadline = tokio::time::Instant::now() + timeout;
        match self {
            Transport::Udp(s) => {
                let mut buf = vec![0u8; 65536];
                let n = tokio::time::timeout_at(deadline, s.recv(&mut buf))
                    .await
                    .map_err(|_| TurnError::Timeout(timeout))??;
                buf.truncate(n);
                Ok(buf)
            }
            Transport::Stream(s, buf) => loop {
                match tcp_frame_len(buf) {
                    Ok(Some(n)) => {
                        let frame = buf[..n].to_vec();
                        buf.drain(..n);
                        return Ok(frame);
                    }
                    Ok(None) => {}
                    Err(e) => return Err(TurnError::Protocol(e.to_string())),
                }
                let mut chunk = [0u8; 8192];
                let n = tokio::time::timeout_at(deadline, s.read(&mut chunk))
                    .await
                    .map_err(|_| TurnError::Timeout(timeout))??;
                if n == 0 {
                    return Err(TurnError::Io(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "server closed the connection",
                    )));
                }
                buf.extend_from_slice(&chunk[..n]);
            },
        }
    }
}

/// A TURN client: one transport, one session.
pub struct Client {
    /// The transport.
    pub transport: Transport,
    /// Credentials and challenge state.
    pub session: Session,
    is_udp: bool,
    /// Relayed data received while waiting for a response.
    pub pending: Vec<Relayed>,
    /// Per-attempt response timeout (UDP retransmits within it).
    pub timeout: Duration,
}

impl Client {
    /// Connect.
    pub async fn connect(server: SocketAddr, kind: &Kind, creds: Credentials) -> Result<Client, TurnError> {
        let transport = Transport::connect(server, kind).await?;
        Ok(Client {
            is_udp: matches!(kind, Kind::Udp),
            transport,
            session: Session::new(creds),
            pending: vec![],
            timeout: Duration::from_secs(3),
        })
    }

    /// One request/response, handling one challenge; returns the raw success response.
    pub async fn transact(
        &mut self,
        method: Method,
        attrs: &[Attribute<'_>],
    ) -> Result<(Vec<u8>, Duration), TurnError> {
        for _ in 0..3 {
            let (tid, req) = self.session.request(method, attrs);
            let started = Instant::now();
            let raw = self.exchange(tid, &req).await?;
            let msg = Message::decode(&raw).map_err(|e| TurnError::Protocol(e.to_string()))?;
            match self.session.response(msg) {
                Outcome::Success(_) => return Ok((raw, started.elapsed())),
                Outcome::Retry => continue,
                Outcome::Error(code, reason) => return Err(TurnError::Code { code, reason }),
            }
        }
        Err(TurnError::Protocol("server kept challenging".into()))
    }

    /// Send `req` and wait for the response with `tid` (UDP: retransmitting, RFC 8489 §6.2.1).
    async fn exchange(&mut self, tid: TransactionId, req: &[u8]) -> Result<Vec<u8>, TurnError> {
        let deadline = Instant::now() + self.timeout;
        let mut rto = Duration::from_millis(250);
        self.transport.send(req).await?;
        let mut next_retx = Instant::now() + rto;
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(TurnError::Timeout(self.timeout));
            }
            let wait = if self.is_udp {
                next_retx.min(deadline) - now
            } else {
                deadline - now
            };
            match self.transport.recv(wait).await {
                Ok(frame) => {
                    if let Some(r) = relayed(&frame) {
                        self.pending.push(r);
                        continue;
                    }
                    if Message::decode(&frame).is_ok_and(|m| m.transaction_id() == tid) {
                        return Ok(frame);
                    }
                }
                Err(TurnError::Timeout(_)) if self.is_udp => {
                    rto *= 2;
                    next_retx = Instant::now() + rto;
                    self.transport.send(req).await?;
                }
                Err(TurnError::Timeout(_)) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Binding: the reflexive address and the round-trip time.
    pub async fn binding(&mut self) -> Result<(SocketAddr, Duration), TurnError> {
        let (raw, rtt) = self.transact(Method::BINDING, &[]).await?;
        let m = Message::decode(&raw).map_err(|e| TurnError::Protocol(e.to_string()))?;
        let mapped = m
            .find(|a| match a {
                Attribute::XorMappedAddress(x) | Attribute::MappedAddress(x) => Some(*x),
                _ => None,
            })
            .ok_or_else(|| TurnError::Protocol("binding response without a mapped address".into()))?;
        Ok((mapped, rtt))
    }

    /// Allocate a UDP relay.
    pub async fn allocate(&mut self, lifetime: Option<u32>) -> Result<Allocation, TurnError> {
        let mut attrs = vec![Attribute::RequestedTransport(17)];
        if let Some(l) = lifetime {
            attrs.push(Attribute::Lifetime(l));
        }
        let (raw, _) = self.transact(Method::ALLOCATE, &attrs).await?;
        let m = Message::decode(&raw).map_err(|e| TurnError::Protocol(e.to_string()))?;
        let relayed = m
            .find(|a| {
                if let Attribute::XorRelayedAddress(r) = a {
                    Some(*r)
                } else {
                    None
                }
            })
            .ok_or_else(|| TurnError::Protocol("no XOR-RELAYED-ADDRESS".into()))?;
        let mapped = m.find(|a| {
            if let Attribute::XorMappedAddress(r) = a {
                Some(*r)
            } else {
                None
            }
        });
        Ok(Allocation {
            relayed,
            mapped,
            lifetime: m.lifetime().unwrap_or(0),
        })
    }

    /// Refresh; returns the lifetime granted.
    pub async fn refresh(&mut self, lifetime: u32) -> Result<u32, TurnError> {
        let (raw, _) = self.transact(Method::REFRESH, &[Attribute::Lifetime(lifetime)]).await?;
        Ok(Message::decode(&raw).ok().and_then(|m| m.lifetime()).unwrap_or(0))
    }

    /// CreatePermission for one peer.
    pub async fn permit(&mut self, peer: SocketAddr) -> Result<(), TurnError> {
        self.transact(Method::CREATE_PERMISSION, &[Attribute::XorPeerAddress(peer)])
            .await
            .map(|_| ())
    }

    /// ChannelBind.
    pub async fn bind_channel(&mut self, channel: u16, peer: SocketAddr) -> Result<(), TurnError> {
        self.transact(
            Method::CHANNEL_BIND,
            &[Attribute::ChannelNumber(channel), Attribute::XorPeerAddress(peer)],
        )
        .await
        .map(|_| ())
    }

    /// A Send indication.
    pub async fn send_indication(&mut self, peer: SocketAddr, data: &[u8]) -> Result<(), TurnError> {
        let mut t = [0u8; 12];
        rand_fill(&mut t);
        let mut b = MessageBuilder::new(Class::Indication, Method::SEND, TransactionId(t));
        b.add(&Attribute::XorPeerAddress(peer)).add(&Attribute::Data(data));
        self.transport.send(&b.finish()).await
    }

    /// A ChannelData message.
    pub async fn send_channel(&mut self, channel: u16, data: &[u8]) -> Result<(), TurnError> {
        let ch = ChannelNumber::new(channel).ok_or_else(|| TurnError::Protocol(format!("bad channel {channel:#x}")))?;
        let mut buf = vec![0u8; data.len() + 8];
        let n = ChannelData::encode_into(ch, data, false, &mut buf)
            .ok_or_else(|| TurnError::Protocol("too large".into()))?;
        self.transport.send(&buf[..n]).await
    }

    /// The next relayed datagram (Data indication or ChannelData).
    pub async fn recv_relayed(&mut self, timeout: Duration) -> Result<Relayed, TurnError> {
        if !self.pending.is_empty() {
            return Ok(self.pending.remove(0));
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(TurnError::Timeout(timeout));
            }
            let frame = self.transport.recv(left).await?;
            if let Some(r) = relayed(&frame) {
                return Ok(r);
            }
        }
    }
}

fn relayed(frame: &[u8]) -> Option<Relayed> {
    match firstcall_stun::classify(frame) {
        PacketKind::ChannelData => {
            let cd = ChannelData::decode(frame).ok()?;
            Some(Relayed::Channel {
                channel: cd.channel.get(),
                data: cd.data.to_vec(),
            })
        }
        PacketKind::Stun => {
            let m = Message::decode(frame).ok()?;
            if m.class() == Class::Indication && m.method() == Method::DATA {
                Some(Relayed::Data {
                    peer: m.peer_addresses().next()?,
                    data: m.data()?.to_vec(),
                })
            } else {
                None
            }
        }
        PacketKind::Other => None,
    }
}
