// firstcall browser SDK: protocol v1 (docs/protocol.md) and WebRTC calls that connect
// on the first attempt.
//
// What it does so that no app has to rediscover it:
// - connects at once and keeps connecting (exponential backoff with jitter), resumes its
//   session, keeps every frame until acknowledged and resends it; anything sent before
//   the socket is up is queued, never dropped;
// - tears the socket down and resumes when the network changes or heartbeats stop;
// - holds ICE servers from the welcome before the first call, and swaps in fresh ones;
//   keeps one peer connection gathering (TURN allocations included) before each call so
//   the call does not wait for them (`prewarm: false` turns this off), including a call
//   placed before the welcome, whose pool gathers while its camera opens;
// - trickles each candidate the moment it is found, buffers remote candidates until the
//   remote description is set, and sends end-of-candidates;
// - restarts ICE within the same call on `failed` once neither side can still bring a
//   candidate (Chromium reports `failed` early, e.g. when a TURN server rightly refuses a
//   permission to a private host candidate), or on `disconnected` beyond a grace period,
//   one restart at a time; a call that cannot connect in 45 s hangs up with `ice_failed`;
// - reports `call.connected` with the selected pair's types and the time it took;
// - keeps a timeline of everything that happened, per call, including every STUN/TURN
//   server that could not be reached or refused (`candidate error`).

export type Media = "audio" | "video";
export type ClientState = "connecting" | "connected" | "reconnecting" | "closed";
export type CallState = "new" | "ringing" | "pending" | "connecting" | "connected" | "ended";
export type EndReason =
  | "hangup" | "cancelled" | "rejected" | "busy" | "timeout" | "unreachable"
  | "answered_elsewhere" | "glare" | "failed" | "ice_failed" | "local";

export interface TimelineEntry {
  /** ms since the call (or client) started */
  t: number;
  event: string;
  detail?: Record<string, unknown>;
}

/** What the SDK needs from its environment; tests inject fakes. */
export interface Environment {
  WebSocket: { new (url: string): WebSocketLike };
  setTimeout: (fn: () => void, ms: number) => unknown;
  clearTimeout: (handle: unknown) => void;
  now: () => number;
  random: () => number;
  RTCPeerConnection?: typeof RTCPeerConnection;
  getUserMedia?: (c: MediaStreamConstraints) => Promise<MediaStream>;
  fetch?: typeof fetch;
  /** Subscribe to network changes (online/offline); returns an unsubscribe function. */
  onNetworkChange?: (fn: (online: boolean) => void) => () => void;
}

export interface WebSocketLike {
  readyState: number;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code?: number; reason?: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

export interface ConnectOptions {
  /** JWT, or `dev:<user>` against a server in dev mode. */
  token: string;
  /** Stable per installation; generated and kept in localStorage when absent. */
  device?: string;
  /** Extra RTCPeerConnection settings (e.g. `{iceTransportPolicy: "relay"}`). */
  rtcConfig?: RTCConfiguration;
  /** Keep only the ICE server URLs this accepts (e.g. only `?transport=tcp` behind a UDP-blocking firewall). */
  iceUrlFilter?: (url: string) => boolean;
  /** Give up on a call that has not connected after this long (default 45 s). */
  connectTimeoutMs?: number;
  /** How long ICE may stay `disconnected` before it is restarted (default 3 s). */
  iceRestartGraceMs?: number;
  /** Reject the first connect() after this long without a welcome (default 15 s). */
  firstConnectTimeoutMs?: number;
  /**
   * Keep one peer connection ready with its candidates (TURN allocations included)
   * gathered before any call, so that a call does not wait for them (default true).
   */
  prewarm?: boolean;
  env?: Partial<Environment>;
}

type Frame = Record<string, any> & { type: string; seq?: number };
type Listener = (...args: any[]) => void;

class Emitter {
  private listeners = new Map<string, Set<Listener>>();
  on(event: string, fn: Listener): this {
    if (!this.listeners.has(event)) this.listeners.set(event, new Set());
    this.listeners.get(event)!.add(fn);
    return this;
  }
  off(event: string, fn: Listener): this {
    this.listeners.get(event)?.delete(fn);
    return this;
  }
  protected emit(event: string, ...args: unknown[]): void {
    for (const fn of [...(this.listeners.get(event) ?? [])]) {
      try {
        fn(...args);
      } catch (e) {
        console.error(`firstcall: "${event}" listener threw`, e);
      }
    }
  }
}

function defaultEnv(): Environment {
  const g = globalThis as any;
  return {
    WebSocket: g.WebSocket,
    setTimeout: (fn, ms) => g.setTimeout(fn, ms),
    clearTimeout: (h) => g.clearTimeout(h),
    now: () => Date.now(),
    random: () => Math.random(),
    RTCPeerConnection: g.RTCPeerConnection,
    getUserMedia: g.navigator?.mediaDevices ? (c) => g.navigator.mediaDevices.getUserMedia(c) : undefined,
    fetch: g.fetch?.bind(g),
    onNetworkChange: g.addEventListener
      ? (fn) => {
          const on = () => fn(true);
          const off = () => fn(false);
          g.addEventListener("online", on);
          g.addEventListener("offline", off);
          return () => {
            g.removeEventListener("online", on);
            g.removeEventListener("offline", off);
          };
        }
      : undefined,
  };
}

function deviceId(): string {
  const g = globalThis as any;
  try {
    const stored = g.localStorage?.getItem("firstcall.device");
    if (stored) return stored;
    const id = `web-${Math.random().toString(36).slice(2, 10)}${Date.now().toString(36)}`;
    g.localStorage?.setItem("firstcall.device", id);
    return id;
  } catch {
    return `web-${Math.random().toString(36).slice(2, 12)}`;
  }
}

function uuid(): string {
  const c = (globalThis as any).crypto;
  if (c?.randomUUID) return c.randomUUID();
  return "xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx".replace(/[xy]/g, (ch) => {
    const r = (Math.random() * 16) | 0;
    return (ch === "x" ? r : (r & 0x3) | 0x8).toString(16);
  });
}

/** The close codes after which reconnecting cannot help. */
const FATAL_CLOSE = new Set([4003]);

/**
 * The reliable session: numbered frames kept until acknowledged, acks, heartbeats,
 * reconnect with backoff and resume. Transport only; knows nothing of calls.
 */
export class Session extends Emitter {
  state: ClientState = "connecting";
  sessionId: string | null = null;
  welcome: Frame | null = null;
  /** Frames sent (or queued) and not yet acknowledged, in order. */
  readonly unacked: { seq: number; frame: Frame }[] = [];
  private ws: WebSocketLike | null = null;
  private lastIn = 0;
  private outSeq = 0;
  private attempt = 0;
  private reconnectTimer: unknown = null;
  private watchdog: unknown = null;
  private ackTimer: unknown = null;
  private heartbeatMs = 15000;
  private closed = false;
  private unsubscribeNetwork: (() => void) | null = null;

  constructor(
    private readonly url: string,
    private readonly token: string,
    private readonly device: string,
    private readonly env: Environment,
  ) {
    super();
    this.unsubscribeNetwork =
      env.onNetworkChange?.((online) => {
        this.emit("log", "network", { online });
        // A changed network invalidates the socket's path: resume on a new one now.
        if (online) this.restart("network changed");
      }) ?? null;
  }

  /** Queue a frame; it is sent now if the socket is up, else on (re)connect. Never dropped. */
  send(frame: Frame): number {
    const seq = ++this.outSeq;
    const f = { ...frame, seq };
    this.unacked.push({ seq, frame: f });
    if (this.ws && this.state === "connected") {
      if (this.ackTimer) {
        // Our pending ack rides on this frame instead of a frame of its own.
        this.env.clearTimeout(this.ackTimer);
        this.ackTimer = null;
        this.raw(JSON.stringify({ ...f, ack: this.lastIn }));
      } else {
        this.raw(JSON.stringify(f));
      }
    } else this.emit("log", "queued", { type: frame.type, seq });
    return seq;
  }

  open(): void {
    if (this.closed) return;
    this.env.clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
    let ws: WebSocketLike;
    try {
      ws = new this.env.WebSocket(this.url);
    } catch (e) {
      this.scheduleReconnect(String(e));
      return;
    }
    this.ws = ws;
    ws.onopen = () => {
      const hello: Frame = { type: "hello", token: this.token, device: this.device };
      if (this.sessionId) hello.resume = { session: this.sessionId, last_seq: this.lastIn };
      ws.send(JSON.stringify(hello));
      this.armWatchdog();
    };
    ws.onmessage = (ev) => {
      if (ws !== this.ws) return;
      this.armWatchdog();
      let f: Frame;
      try {
        f = JSON.parse(String(ev.data));
      } catch {
        this.emit("log", "bad-frame", { data: String(ev.data).slice(0, 100) });
        return;
      }
      this.onFrame(ws, f);
    };
    ws.onclose = (ev) => {
      if (ws !== this.ws) return;
      this.ws = null;
      this.env.clearTimeout(this.watchdog);
      const code = ev?.code;
      this.emit("log", "socket-closed", { code, reason: ev?.reason });
      if (code !== undefined && FATAL_CLOSE.has(code)) {
        this.close();
        this.emit("fatal", { code, reason: ev?.reason });
        return;
      }
      this.scheduleReconnect(`closed ${code ?? ""}`);
    };
    ws.onerror = () => this.emit("log", "socket-error", {});
  }

  /** Drop the socket and resume on a fresh one right away. */
  restart(why: string): void {
    if (this.closed) return;
    this.emit("log", "restart", { why });
    const ws = this.ws;
    this.ws = null;
    try {
      ws?.close();
    } catch {
      /* already closing */
    }
    this.attempt = 0;
    this.setState("reconnecting");
    this.open();
  }

  close(): void {
    this.closed = true;
    this.env.clearTimeout(this.reconnectTimer);
    this.env.clearTimeout(this.watchdog);
    this.env.clearTimeout(this.ackTimer);
    this.unsubscribeNetwork?.();
    const ws = this.ws;
    this.ws = null;
    try {
      ws?.close(1000, "bye");
    } catch {
      /* ignore */
    }
    this.setState("closed");
  }

  private raw(text: string): void {
    try {
      this.ws?.send(text);
    } catch {
      // The frame stays in `unacked` and goes out again after the resume.
      this.restart("send failed");
    }
  }

  private setState(s: ClientState): void {
    if (this.state === s) return;
    this.state = s;
    this.emit("state", s);
  }

  private scheduleReconnect(why: string): void {
    if (this.closed || this.reconnectTimer) return;
    this.setState("reconnecting");
    // First retry at once, then exponential backoff (250 ms .. 10 s) with full jitter,
    // so a server restart is not met by every client in the same millisecond.
    const base = this.attempt === 0 ? 0 : Math.min(10000, 250 * 2 ** (this.attempt - 1));
    const delay = Math.round(base * (0.5 + this.env.random() / 2));
    this.attempt++;
    this.emit("log", "reconnect-scheduled", { why, delay, attempt: this.attempt });
    this.reconnectTimer = this.env.setTimeout(() => {
      this.reconnectTimer = null;
      this.open();
    }, delay);
  }

  private armWatchdog(): void {
    this.env.clearTimeout(this.watchdog);
    // Two missed heartbeats: the socket is dead even if the OS has not noticed.
    this.watchdog = this.env.setTimeout(() => this.restart("heartbeat lost"), this.heartbeatMs * 2 + 1000);
  }

  private onFrame(ws: WebSocketLike, f: Frame): void {
    if (typeof f.ack === "number" && f.type !== "ack") this.release(f.ack);
    switch (f.type) {
      case "welcome":
        return this.onWelcome(ws, f);
      case "ack":
        this.release(Number(f.seq));
        return;
      case "ping":
        ws.send('{"type":"pong"}');
        return;
      case "pong":
        return;
    }
    if (typeof f.seq !== "number") {
      // Unsequenced: only handshake errors.
      this.emit("frame", f);
      return;
    }
    if (f.seq <= this.lastIn) return this.scheduleAck(ws); // replayed duplicate
    if (f.seq > this.lastIn + 1) {
      // Cannot happen with a correct server; resuming asks for exactly what is missing.
      this.emit("log", "gap", { expected: this.lastIn + 1, got: f.seq });
      this.restart("sequence gap");
      return;
    }
    this.lastIn = f.seq;
    this.scheduleAck(ws);
    this.emit("frame", f);
  }

  /** The server has processed our frames up to `n`: stop keeping them. */
  private release(n: number): void {
    while (this.unacked.length && this.unacked[0].seq <= n) this.unacked.shift();
  }

  private scheduleAck(ws: WebSocketLike): void {
    if (this.ackTimer) return;
    this.ackTimer = this.env.setTimeout(() => {
      this.ackTimer = null;
      if (this.ws === ws) ws.send(JSON.stringify({ type: "ack", seq: this.lastIn }));
    }, 50);
  }

  private onWelcome(ws: WebSocketLike, f: Frame): void {
    this.heartbeatMs = Number(f.heartbeat_ms) || this.heartbeatMs;
    if (f.resumed) {
      const done = Number(f.last_seq);
      while (this.unacked.length && this.unacked[0].seq <= done) this.unacked.shift();
    } else {
      // New session: our unprocessed frames are renumbered from 1 and resent. Every
      // call frame is idempotent on the server, so a frame it did see is harmless.
      this.lastIn = 0;
      this.outSeq = 0;
      for (const u of this.unacked) {
        u.seq = ++this.outSeq;
        u.frame = { ...u.frame, seq: u.seq };
      }
    }
    this.sessionId = f.session;
    this.welcome = f;
    this.attempt = 0;
    this.setState("connected");
    this.emit("welcome", f);
    for (const u of this.unacked) ws.send(JSON.stringify(u.frame));
  }
}

/** A signaling client with calls. */
export class Client extends Emitter {
  readonly session: Session;
  readonly user: string;
  iceServers: RTCIceServer[] = [];
  readonly calls = new Map<string, Call>();
  readonly timeline: TimelineEntry[] = [];
  readonly env: Environment;
  readonly options: ConnectOptions;
  private readonly started: number;
  private readonly httpBase: string;

  constructor(url: string, options: ConnectOptions) {
    super();
    this.options = options;
    this.env = { ...defaultEnv(), ...(options.env ?? {}) } as Environment;
    this.started = this.env.now();
    this.user = "";
    this.httpBase = url.replace(/^ws/, "http").replace(/\/v1\/ws.*$/, "");
    this.session = new Session(url, options.token, options.device ?? deviceId(), this.env);
    this.session.on("state", (s: ClientState) => {
      this.log("client", `socket ${s}`);
      this.emit("state", s);
    });
    this.session.on("log", (event: string, detail: Record<string, unknown>) => this.log("session", event, detail));
    this.session.on("welcome", (w: Frame) => this.onWelcome(w));
    this.session.on("frame", (f: Frame) => this.onFrame(f));
    this.session.on("fatal", (e: unknown) => this.emit("fatal", e));
  }

  get state(): ClientState {
    return this.session.state;
  }

  /** Start a call. Returns at once; watch the call's events. */
  call(user: string, opts: { video?: boolean; id?: string } = {}): Call {
    const c = new Call(this, opts.id ?? uuid(), user, "outgoing", opts.video === false ? "audio" : "video");
    this.calls.set(c.id, c);
    void c.start();
    return c;
  }

  /**
   * Resolves once ICE servers are known (first welcome), or after `maxMs` so a call is
   * never stuck: gathering before then would miss relay candidates, which is exactly
   * how cold-start calls used to fail.
   */
  whenIceReady(maxMs = 5000): Promise<boolean> {
    if (this.iceServers.length) return Promise.resolve(true);
    return new Promise((resolve) => {
      const done = (ok: boolean) => {
        this.env.clearTimeout(timer);
        this.off("ice-servers", onIce);
        resolve(ok);
      };
      const onIce = (s: RTCIceServer[]) => s.length && done(true);
      const timer = this.env.setTimeout(() => done(false), maxMs);
      this.on("ice-servers", onIce);
    });
  }

  /** Users with a socket connected now (`GET /v1/online`). */
  async online(): Promise<string[]> {
    const f = this.env.fetch;
    if (!f) return [];
    const r = await f(`${this.httpBase}/v1/online`, { headers: { Authorization: `Bearer ${this.options.token}` } });
    if (!r.ok) throw new Error(`online: HTTP ${r.status}`);
    return (await r.json()).users as string[];
  }

  close(): void {
    for (const c of this.calls.values()) c.hangup();
    this.warm?.pc.close();
    this.warm = null;
    this.session.close();
  }

  private warm: { pc: RTCPeerConnection; key: string } | null = null;

  /** @internal True while any call has not ended. */
  inCall(): boolean {
    return [...this.calls.values()].some((c) => c.state !== "ended");
  }

  /** No call, or one waiting for its peer connection (a pool is for that call or the next). */
  private wantsPool(): boolean {
    return !this.inCall() || [...this.calls.values()].some((c) => c.awaitingPeer);
  }

  /** @internal The RTCConfiguration every call's peer connection gets. */
  rtcConfiguration(): RTCConfiguration {
    const keep = this.options.iceUrlFilter;
    const iceServers = keep
      ? this.iceServers
          .map((s) => ({ ...s, urls: ([] as string[]).concat(s.urls).filter(keep) }))
          .filter((s) => s.urls.length)
      : this.iceServers;
    return { ...(this.options.rtcConfig ?? {}), iceServers };
  }

  /**
   * @internal Gather candidates before the next call: a TURN allocation costs two round
   * trips (401 challenge, then Allocate), which at 100 ms RTT was most of the gap between
   * a call's first checks and its relay candidates. Rebuilt when the ICE servers change.
   */
  prewarm(): void {
    if (this.options.prewarm === false || this.state === "closed" || !this.env.RTCPeerConnection || !this.iceServers.length) return;
    const config = this.rtcConfiguration();
    const key = JSON.stringify(config);
    if (this.warm?.key === key) return;
    this.warm?.pc.close();
    this.warm = null;
    try {
      this.warm = { pc: new this.env.RTCPeerConnection({ ...config, iceCandidatePoolSize: 1 }), key };
      this.log("client", "peer connection pre-warmed", { ice_servers: config.iceServers?.length ?? 0 });
    } catch (e) {
      this.log("client", "pre-warm failed", { error: String(e) });
    }
  }

  /** @internal The pre-warmed peer connection, when it was built for `config`. */
  takeWarmPeer(config: RTCConfiguration): RTCPeerConnection | null {
    const w = this.warm;
    this.warm = null;
    if (w && w.key === JSON.stringify(config) && w.pc.signalingState !== "closed") return w.pc;
    w?.pc.close();
    return null;
  }

  /** @internal */
  send(frame: Frame): number {
    return this.session.send(frame);
  }

  /** @internal */
  log(source: string, event: string, detail?: Record<string, unknown>): void {
    const e: TimelineEntry = { t: this.env.now() - this.started, event: `${source}: ${event}`, detail };
    this.timeline.push(e);
    this.emit("timeline", e);
  }

  private onWelcome(w: Frame): void {
    (this as { user: string }).user = w.user;
    this.iceServers = w.ice_servers ?? [];
    this.log("client", w.resumed ? "session resumed" : "session started", {
      session: w.session,
      ice_servers: this.iceServers.length,
    });
    this.emit("ice-servers", this.iceServers);
    // A call placed before the welcome (a cold start) takes this pool once its camera is
    // open, so the pool gathers (TURN allocations included) while the camera starts: on
    // one host a host pair connects within ~50 ms, after which WebRTC stops gathering and
    // drops TURN allocations still under way, so that head start decides whether the
    // first call has relay candidates at all (there in 32 of 32 runs under load, against
    // 10 of 20 when the call built its own). A call that already has its peer connection
    // (a resume mid-call) needs no pool.
    if (this.wantsPool()) this.prewarm();
    if (!w.resumed) {
      // Calls the server no longer has are over; those it still has carry on.
      const live = new Set((w.calls ?? []).map((c: Frame) => c.call));
      for (const c of [...this.calls.values()]) if (!live.has(c.id) && c.state !== "new") c.end("failed", "session lost");
    }
    this.emit("welcome", w);
  }

  private onFrame(f: Frame): void {
    if (f.type === "ice_servers") {
      this.iceServers = f.ice_servers ?? [];
      this.log("client", "ice servers refreshed", { ttl: f.ice_ttl });
      this.emit("ice-servers", this.iceServers);
      // As on the welcome: a call still waiting for its peer connection takes the new pool.
      if (this.wantsPool()) this.prewarm();
      return;
    }
    if (f.type === "error") {
      this.log("client", `server error ${f.code}`, { message: f.message, ref: f.ref });
      this.emit("server-error", f);
      return;
    }
    const id = f.call as string | undefined;
    if (!id) return;
    if (f.type === "call.incoming") {
      if (this.calls.has(id)) return;
      const c = new Call(this, id, f.from, "incoming", f.media);
      c.offer = f.sdp;
      c.fromDevice = f.from_device;
      this.calls.set(id, c);
      c.setState("ringing");
      c.mark("incoming", { from: f.from, device: f.from_device });
      this.emit("incoming", c);
      return;
    }
    this.calls.get(id)?.onFrame(f);
  }
}

/** One call. Events: `state`, `localstream`, `remotestream`, `timeline`, `ended`, `connected`. */
export class Call extends Emitter {
  state: CallState = "new";
  endReason: EndReason | null = null;
  pc: RTCPeerConnection | null = null;
  localStream: MediaStream | null = null;
  remoteStream: MediaStream | null = null;
  readonly timeline: TimelineEntry[] = [];
  /** Candidate counts by type, gathered locally and received from the peer. */
  readonly candidates = { local: {} as Record<string, number>, remote: {} as Record<string, number> };
  connectMs: number | null = null;
  /** Time from the call's start to ICE connected (before DTLS), the protocol's `call.connected` moment. */
  iceConnectedMs: number | null = null;
  selectedPair: { local: string; remote: string; protocol: string } | null = null;
  /** @internal */ offer: string | null = null;
  /** @internal */ fromDevice: string | null = null;
  private remoteCandidates: RTCIceCandidateInit[] = [];
  private remoteSet = false;
  private readonly t0: number;
  private connectTimer: unknown = null;
  private disconnectTimer: unknown = null;
  private failedTimer: unknown = null;
  /** Restarts since ICE last connected: three that do not help end the call. */
  private restarts = 0;
  /** Number of the latest restart; its offer carries it (`sdp.restart`) and the callee's
   * answer echoes it, so an answer to an older, rolled-back restart is told apart. */
  private restartGen = 0;
  /** The remote side sent end-of-candidates for the current ICE generation. */
  private remoteGatheringDone = false;
  /** Our ICE-restart offer is out and its answer not yet applied. */
  private restartInFlight = false;
  /** Our ICE-restart offer is out and its answer has not arrived: an end-of-candidates
   * received meanwhile is the old generation's (signals arrive in order, and the remote's
   * new candidates follow its answer). */
  private restartAnswerPending = false;
  private restartAnswerTimer: unknown = null;

  constructor(
    readonly client: Client,
    readonly id: string,
    readonly peer: string,
    readonly direction: "outgoing" | "incoming",
    readonly media: Media,
  ) {
    super();
    this.t0 = client.env.now();
  }

  /** Answer an incoming call. */
  async accept(): Promise<void> {
    if (this.direction !== "incoming" || this.state !== "ringing") return;
    this.setState("connecting");
    this.armConnectTimeout();
    try {
      await this.client.whenIceReady();
      await this.setupPeer();
      await this.pc!.setRemoteDescription({ type: "offer", sdp: this.offer ?? "" });
      await this.remoteDescriptionSet();
      const answer = await this.pc!.createAnswer();
      await this.pc!.setLocalDescription(answer);
      this.client.send({ type: "call.accept", call: this.id, sdp: this.pc!.localDescription!.sdp });
      this.mark("accept sent");
    } catch (e) {
      this.mark("accept failed", { error: String(e) });
      this.hangup("media_failed");
    }
  }

  /** Decline an incoming call. */
  reject(): void {
    if (this.state === "ended") return;
    this.client.send({ type: "call.reject", call: this.id });
    this.end("rejected", "local reject");
  }

  /** End the call (cancel, reject or hang up, as fits its state). */
  hangup(reason: "user" | "ice_failed" | "media_failed" = "user"): void {
    if (this.state === "ended") return;
    if (this.direction === "outgoing" && (this.state === "ringing" || this.state === "pending" || this.state === "new")) {
      this.client.send({ type: "call.cancel", call: this.id });
      this.end("cancelled", "local cancel");
    } else if (this.direction === "incoming" && this.state === "ringing") {
      this.reject();
    } else {
      this.client.send({ type: "call.hangup", call: this.id, reason });
      this.end(reason === "ice_failed" ? "ice_failed" : "hangup", `local hangup (${reason})`);
    }
  }

  /** @internal Live, and its peer connection not built yet. */
  get awaitingPeer(): boolean {
    return !this.pc && this.state !== "ended";
  }

  /** @internal */
  async start(): Promise<void> {
    this.mark("calling", { to: this.peer, media: this.media, ice_servers: this.client.iceServers.length });
    this.armConnectTimeout();
    try {
      if (!(await this.client.whenIceReady())) this.mark("no ICE servers yet: calling without TURN");
      else if (!this.client.iceServers.length) this.mark("no ICE servers");
      await this.setupPeer();
      const offer = await this.pc!.createOffer();
      await this.pc!.setLocalDescription(offer);
      // The offer rides in the invite; candidates follow as they are found.
      this.client.send({ type: "call.invite", call: this.id, to: this.peer, media: this.media, sdp: this.pc!.localDescription!.sdp });
      this.setState("ringing");
      this.mark("invite sent");
    } catch (e) {
      this.mark("setup failed", { error: String(e) });
      this.end("local", String(e));
    }
  }

  /** @internal */
  setState(s: CallState): void {
    if (this.state === s || this.state === "ended") return;
    this.state = s;
    this.emit("state", s);
  }

  /** @internal */
  mark(event: string, detail?: Record<string, unknown>): void {
    const e: TimelineEntry = { t: this.client.env.now() - this.t0, event, detail };
    this.timeline.push(e);
    this.emit("timeline", e);
    this.client.log(`call ${this.id.slice(0, 8)}`, event, detail);
  }

  /** @internal */
  onFrame(f: Frame): void {
    switch (f.type) {
      case "call.ringing":
        this.mark("ringing", { device: f.device });
        if (this.state === "pending") this.setState("ringing");
        return;
      case "call.pending":
        this.mark("callee offline: waiting (push sent)");
        this.setState("pending");
        return;
      case "call.accepted":
        this.mark("accepted", { device: f.device });
        this.setState("connecting");
        void this.pc
          ?.setRemoteDescription({ type: "answer", sdp: f.sdp })
          .then(() => this.remoteDescriptionSet())
          .catch((e) => {
            this.mark("bad answer", { error: String(e) });
            this.hangup("media_failed");
          });
        return;
      case "call.signal":
        return void this.onSignal(f.data);
      case "call.ended":
        return this.end(f.reason, f.detail ? `remote: ${f.detail}` : "remote");
    }
  }

  /** @internal */
  end(reason: EndReason, why: string): void {
    if (this.state === "ended") return;
    this.endReason = reason;
    this.mark("ended", { reason, why });
    this.client.env.clearTimeout(this.connectTimer);
    this.client.env.clearTimeout(this.disconnectTimer);
    this.client.env.clearTimeout(this.failedTimer);
    this.client.env.clearTimeout(this.restartAnswerTimer);
    try {
      this.pc?.close();
    } catch {
      /* ignore */
    }
    this.localStream?.getTracks().forEach((t) => t.stop());
    this.state = "ended";
    this.emit("state", "ended");
    this.emit("ended", reason);
    // Ready for the next call once no call is in progress.
    if (!this.client.inCall()) this.client.prewarm();
  }

  private armConnectTimeout(): void {
    const ms = this.client.options.connectTimeoutMs ?? 45000;
    this.connectTimer = this.client.env.setTimeout(() => {
      if (this.state !== "connected" && this.state !== "ended") {
        this.mark("no connection in time", { ms });
        this.hangup("ice_failed");
      }
    }, ms);
  }

  private async setupPeer(): Promise<void> {
    const env = this.client.env;
    if (!env.RTCPeerConnection || !env.getUserMedia) throw new Error("WebRTC is not available here");
    this.localStream = await env.getUserMedia({ audio: true, video: this.media === "video" });
    this.emit("localstream", this.localStream);
    const config = this.client.rtcConfiguration();
    const warm = this.client.takeWarmPeer(config);
    const pc = warm ?? new env.RTCPeerConnection(config);
    this.mark(warm ? "using pre-warmed peer connection" : "peer connection created");
    this.pc = pc;
    for (const t of this.localStream.getTracks()) pc.addTrack(t, this.localStream);
    pc.onicecandidate = (ev) => {
      if (ev.candidate && ev.candidate.candidate) {
        const type = ev.candidate.type ?? candidateType(ev.candidate.candidate);
        this.candidates.local[type] = (this.candidates.local[type] ?? 0) + 1;
        // Trickle: each candidate goes out the moment it is found (queued if offline).
        this.client.send({ type: "call.signal", call: this.id, data: { candidate: ev.candidate.toJSON() } });
        this.mark("candidate gathered and sent", { type, protocol: ev.candidate.protocol });
      } else if (!ev.candidate) {
        this.client.send({ type: "call.signal", call: this.id, data: { end_of_candidates: true } });
        this.mark("gathering complete", { ...this.candidates.local });
        this.recheckFailed("local gathering complete");
      }
    };
    // A TURN or STUN server that cannot be reached or refuses us shows here, and only here:
    // without it a call that gathered no relay candidates would not say why.
    pc.onicecandidateerror = (ev: Event) => {
      const e = ev as Event & { url?: string; errorCode?: number; errorText?: string; address?: string | null };
      this.mark("candidate error", { url: e.url, code: e.errorCode, text: e.errorText, address: e.address });
    };
    pc.ontrack = (ev) => {
      this.remoteStream = ev.streams[0] ?? new MediaStream([ev.track]);
      this.emit("remotestream", this.remoteStream);
    };
    pc.oniceconnectionstatechange = () => this.onIceState(pc.iceConnectionState);
    pc.onconnectionstatechange = () => {
      this.mark(`connection ${pc.connectionState}`);
      if (pc.connectionState === "connected") void this.onConnected();
      if (pc.connectionState === "failed") this.onFailed("connection failed");
    };
  }

  private onIceState(s: RTCIceConnectionState): void {
    if ((s === "connected" || s === "completed") && this.iceConnectedMs === null) {
      this.iceConnectedMs = this.client.env.now() - this.t0;
      this.mark(`ice ${s}`, { ms: this.iceConnectedMs });
    } else this.mark(`ice ${s}`);
    const env = this.client.env;
    if (s === "failed") this.onFailed("ice failed");
    else if (s === "disconnected") this.armDisconnectTimer();
    else if (s === "connected" || s === "completed") {
      env.clearTimeout(this.disconnectTimer);
      env.clearTimeout(this.failedTimer);
      this.failedTimer = null;
      // A restart that got here helped: a long call may need a few, far apart.
      this.restarts = 0;
    }
  }

  /**
   * ICE (or the connection) reports `failed`. Chromium says so whenever every pair it has
   * *so far* failed, even while candidates are still coming: a TURN server refusing a
   * permission to a private host candidate (403, as it should) fails that pair at once,
   * and a relay-only caller whose first remote candidate is such a host sees `failed`
   * within milliseconds of checking. Restarting then throws away the gathering under way
   * and races the trickle (restart offers crossing answers). So a restart waits until
   * both sides have gathered everything, or until the grace period ends still failed;
   * and there is never more than one restart in flight.
   */
  private onFailed(why: string): void {
    const pc = this.pc;
    if (!pc || this.state === "ended" || this.direction !== "outgoing") return;
    const decision = restartDecision({
      inFlight: this.restartInFlight,
      localGatheringDone: pc.iceGatheringState === "complete",
      remoteGatheringDone: this.remoteGatheringDone,
    });
    if (decision === "restart") return this.restartIce(why);
    if (decision === "after-answer") return this.mark("ice restart deferred", { why, until: "restart answer" });
    if (this.failedTimer) return;
    this.mark("ice failed while gathering", { why, local: pc.iceGatheringState, remote: this.remoteGatheringDone ? "complete" : "gathering" });
    const env = this.client.env;
    this.failedTimer = env.setTimeout(() => {
      this.failedTimer = null;
      if (this.stillFailed()) this.restartIce(`${why}, still failed after the grace period`);
    }, this.grace);
  }

  /** Restart if ICE is still `disconnected` when the grace period ends (or, if a restart
   * is in flight then, once more after another grace period). */
  private armDisconnectTimer(): void {
    const env = this.client.env;
    env.clearTimeout(this.disconnectTimer);
    this.disconnectTimer = env.setTimeout(() => {
      if (this.pc?.iceConnectionState !== "disconnected" || this.state === "ended") return;
      if (this.restartInFlight) this.armDisconnectTimer();
      else this.restartIce("disconnected beyond grace");
    }, this.grace);
  }

  /** How long a failed or disconnected ICE is given before a restart. */
  private get grace(): number {
    return this.client.options.iceRestartGraceMs ?? 3000;
  }

  private stillFailed(): boolean {
    const pc = this.pc;
    return !!pc && (pc.connectionState === "failed" || pc.iceConnectionState === "failed");
  }

  /** Something that can end a wait for a restart happened: decide again. */
  private recheckFailed(what: string): void {
    if (this.stillFailed()) this.onFailed(`failed at ${what}`);
    else if (this.pc?.iceConnectionState === "disconnected") this.armDisconnectTimer();
  }

  /** Restart `gen` is over, answered or not: the next failure may restart again. Nothing
   * to do if a later restart has started since. */
  private restartDone(gen: number, what: string): void {
    if (gen !== this.restartGen || this.state === "ended") return;
    this.restartInFlight = false;
    this.restartAnswerPending = false;
    this.client.env.clearTimeout(this.restartAnswerTimer);
    this.recheckFailed(what);
  }

  private restartIce(why: string): void {
    // The caller drives restarts, so both sides never offer at once.
    if (!this.pc || this.state === "ended" || this.direction !== "outgoing" || this.restartInFlight) return;
    const env = this.client.env;
    env.clearTimeout(this.failedTimer);
    this.failedTimer = null;
    if (this.restarts >= 3) {
      // Still failing after three restarts: end the call and say why, rather than keep
      // a call that shows connected with nothing flowing.
      this.mark("ice restarts exhausted", { why });
      this.hangup("ice_failed");
      return;
    }
    this.restarts++;
    const gen = ++this.restartGen;
    this.restartInFlight = true;
    this.restartAnswerPending = true;
    // The remote's end-of-candidates so far was for the generation being replaced.
    this.remoteGatheringDone = false;
    this.mark("ice restart", { why, attempt: this.restarts });
    const pc = this.pc;
    // An answer that never comes (the callee could not apply the offer, or the frame was
    // lost with a session the server replaced) must not hold every later restart back.
    const grace = this.grace;
    env.clearTimeout(this.restartAnswerTimer);
    this.restartAnswerTimer = env.setTimeout(() => {
      // An answer that has arrived and is being applied is not rolled back under it.
      if (gen !== this.restartGen || !this.restartAnswerPending || this.state === "ended") return;
      this.mark("ice restart unanswered", { ms: 2 * grace });
      void pc
        .setLocalDescription({ type: "rollback" })
        .catch((e) => this.mark("rollback failed", { error: String(e) }))
        .then(() => this.restartDone(gen, "unanswered restart"));
    }, 2 * grace);
    void (async () => {
      try {
        const offer = await pc.createOffer({ iceRestart: true });
        await pc.setLocalDescription(offer);
        if ((this.state as CallState) === "ended") return;
        this.client.send({ type: "call.signal", call: this.id, data: { sdp: { type: "offer", sdp: pc.localDescription!.sdp, restart: gen } } });
      } catch (e) {
        this.mark("ice restart failed", { error: String(e) });
        this.restartDone(gen, "failed restart");
      }
    })();
  }

  private async onSignal(data: any): Promise<void> {
    if (!data) return;
    if (data.candidate) {
      const type = candidateType(data.candidate.candidate ?? "");
      this.candidates.remote[type] = (this.candidates.remote[type] ?? 0) + 1;
      if (!this.remoteSet || !this.pc) {
        // Until the remote description is set, candidates wait here rather than fail.
        this.remoteCandidates.push(data.candidate);
        this.mark("remote candidate buffered", { type });
        return;
      }
      this.mark("remote candidate", { type });
      await this.pc.addIceCandidate(data.candidate).catch((e) => this.mark("bad remote candidate", { error: String(e) }));
    } else if (data.end_of_candidates) {
      this.mark("remote gathering complete", { ...this.candidates.remote, ...(this.restartAnswerPending ? { generation: "previous" } : {}) });
      if (this.restartAnswerPending) return;
      this.remoteGatheringDone = true;
      this.recheckFailed("remote gathering complete");
    } else if (data.sdp && this.pc) {
      const pc = this.pc;
      const desc = { type: data.sdp.type, sdp: data.sdp.sdp } as RTCSessionDescriptionInit;
      // `restart` numbers a restart offer and is echoed in its answer (an SDK without it
      // sends none, and its answers are taken as before).
      const tag: unknown = data.sdp.restart;
      const gen = this.restartGen;
      if (desc.type === "answer" && typeof tag === "number" && tag !== gen) {
        this.mark("answer to an earlier restart ignored", { restart: tag, current: gen });
        return;
      }
      // Set before any await: what follows this answer is the new generation's.
      if (desc.type === "answer") this.restartAnswerPending = false;
      try {
        await pc.setRemoteDescription(desc);
        if (desc.type === "answer" && this.restartInFlight) {
          this.mark("ice restart answered");
          this.restartDone(gen, "restart answer");
        }
        if (desc.type === "offer") {
          this.remoteGatheringDone = false;
          const answer = await pc.createAnswer();
          await pc.setLocalDescription(answer);
          const echo = typeof tag === "number" ? { restart: tag } : {};
          this.client.send({ type: "call.signal", call: this.id, data: { sdp: { type: "answer", sdp: pc.localDescription!.sdp, ...echo } } });
          this.mark("renegotiation answered");
        }
      } catch (e) {
        this.mark("renegotiation failed", { error: String(e) });
        // A restart whose answer cannot be applied is over: the next failure may restart.
        if (desc.type === "answer" && this.restartInFlight) this.restartDone(gen, "unusable restart answer");
      }
    }
  }

  private async remoteDescriptionSet(): Promise<void> {
    this.remoteSet = true;
    const pending = this.remoteCandidates.splice(0);
    if (pending.length) this.mark("buffered remote candidates applied", { count: pending.length });
    for (const c of pending) await this.pc?.addIceCandidate(c).catch((e) => this.mark("bad remote candidate", { error: String(e) }));
  }

  private connecting = false;

  private async onConnected(): Promise<void> {
    if (this.state === "connected" || this.state === "ended" || !this.pc || this.connecting) return;
    this.connecting = true;
    this.connectMs = this.client.env.now() - this.t0;
    this.client.env.clearTimeout(this.connectTimer);
    // The pair is known before anyone sees `connected`, so listeners can read it.
    const pair = await selectedPair(this.pc);
    // The call may have ended while the stats were read.
    if ((this.state as CallState) === "ended") return;
    this.selectedPair = pair;
    this.setState("connected");
    this.mark("connected", { ms: this.connectMs, ...pair });
    this.client.send({ type: "call.connected", call: this.id, local: pair.local, remote: pair.remote, protocol: pair.protocol, ms: this.connectMs });
    this.emit("connected", { ms: this.connectMs, ...pair });
  }
}

/**
 * @internal What to do when ICE reports `failed` (see `Call.onFailed`): restart now only
 * when no restart is in flight and neither side can still bring a candidate; otherwise
 * wait for the restart's answer, or for gathering to end (bounded by the grace period).
 */
export function restartDecision(s: { inFlight: boolean; localGatheringDone: boolean; remoteGatheringDone: boolean }): "restart" | "after-answer" | "wait" {
  if (s.inFlight) return "after-answer";
  return s.localGatheringDone && s.remoteGatheringDone ? "restart" : "wait";
}

function candidateType(line: string): string {
  const m = / typ (\w+)/.exec(line);
  return m ? m[1] : "unknown";
}

async function selectedPair(pc: RTCPeerConnection): Promise<{ local: string; remote: string; protocol: string }> {
  const stats: any = await pc.getStats();
  let pair: any;
  stats.forEach((s: any) => {
    if (s.type === "transport" && s.selectedCandidatePairId) pair = stats.get(s.selectedCandidatePairId);
  });
  if (!pair) stats.forEach((s: any) => {
    if (s.type === "candidate-pair" && s.nominated && s.state === "succeeded") pair = s;
  });
  const local: any = pair ? stats.get(pair.localCandidateId) : undefined;
  const remote: any = pair ? stats.get(pair.remoteCandidateId) : undefined;
  return {
    local: local?.candidateType ?? "unknown",
    remote: remote?.candidateType ?? "unknown",
    protocol: local?.candidateType === "relay" ? local?.relayProtocol ?? local?.protocol ?? "udp" : local?.protocol ?? "udp",
  };
}

/**
 * Connect to a firstcall server. Resolves once the first welcome arrives (the client
 * then holds ICE servers); keeps reconnecting on its own afterwards.
 *
 * ```ts
 * const client = await connect("wss://example.org/v1/ws", { token });
 * client.on("incoming", (call) => call.accept());
 * const call = client.call("bob", { video: true });
 * ```
 */
export function connect(url: string, options: ConnectOptions): Promise<Client> {
  const client = new Client(url, options);
  return new Promise((resolve, reject) => {
    const timer = client.env.setTimeout(() => reject(new Error("firstcall: no welcome in time")), options.firstConnectTimeoutMs ?? 15000);
    client.on("welcome", () => {
      client.env.clearTimeout(timer);
      resolve(client);
    });
    client.on("fatal", (e: any) => {
      client.env.clearTimeout(timer);
      reject(new Error(`firstcall: refused (close ${e?.code})`));
    });
    client.session.open();
  });
}

/**
 * A client whose calls can be placed before the socket is up (cold start): frames are
 * queued and go out on connect. `connect()` waits for the welcome; this does not.
 */
export function createClient(url: string, options: ConnectOptions): Client {
  const client = new Client(url, options);
  client.session.open();
  return client;
}
