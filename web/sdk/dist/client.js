// The client: a session, ICE servers, the pre-warmed peer connection, and its calls.
import { Emitter } from "./emitter.js";
import { defaultEnv, deviceId, uuid } from "./env.js";
import { FirstcallError, Session } from "./session.js";
import { Call } from "./call.js";
import { MAX_META_BYTES } from "./protocol.js";
/** A signaling client with calls. */
export class Client extends Emitter {
    constructor(url, options) {
        super();
        this.iceServers = [];
        this.calls = new Map();
        this.timeline = [];
        this.warm = null;
        /** A welcome (or the prefetch) came: `iceServers` is what the server hands out (maybe nothing). */
        this.iceKnown = false;
        /** `iceServers` are the prefetched credential, not yet met by a welcome: when it came and how long it lives (ms). */
        this.prefetched = null;
        this.options = options;
        this.env = { ...defaultEnv(), ...(options.env ?? {}) };
        this.started = this.env.now();
        this.user = "";
        this.httpBase = (typeof url === "string" ? url : url[0] ?? "").replace(/^ws/, "http").replace(/\/v1\/ws.*$/, "");
        this.session = new Session(url, options.token, options.device ?? deviceId(), this.env);
        this.session.on("state", (s) => {
            this.log("client", `socket ${s}`);
            // Each live call says it is reconnecting; the welcome says when it is back.
            if (s === "reconnecting")
                for (const c of this.calls.values())
                    c.onSessionState("reconnecting", "signaling socket lost");
            this.emit("state", s);
        });
        this.session.on("log", (event, detail) => this.log("session", event, detail));
        this.session.on("welcome", (w) => this.onWelcome(w));
        this.session.on("frame", (f) => this.onFrame(f));
        this.session.on("fatal", (e) => this.emit("fatal", e));
        if (options.prefetchIceServers ?? sameOrigin(this.httpBase))
            this.prefetchIce();
    }
    get state() {
        return this.session.state;
    }
    /**
     * Start a call. Returns at once; watch the call's events. `opts.stream` hands the SDK
     * the app's own camera and microphone; `opts.audio` / `opts.video` are getUserMedia
     * constraints (device ids); a camera or microphone that cannot be opened ends the call
     * as `media_failed`.
     */
    call(user, opts = {}) {
        const meta = checkMeta(opts.meta);
        const audioOnly = opts.video === false || (opts.stream !== undefined && !opts.stream.getVideoTracks().length);
        const c = new Call(this, opts.id ?? uuid(), user, "outgoing", audioOnly ? "audio" : "video", opts);
        c.meta = meta;
        this.calls.set(c.id, c);
        void c.start();
        return c;
    }
    /**
     * Resolves once ICE servers are known (the prefetch or the first welcome), or after `maxMs` so a call is
     * never stuck: gathering before then would miss relay candidates, which is exactly
     * how cold-start calls used to fail.
     */
    whenIceReady(maxMs = 5000) {
        // Known once a welcome came, even when the server hands out none (a signaling-only
        // server whose app brings its own in `rtcConfig.iceServers`).
        if (this.iceKnown)
            return Promise.resolve(true);
        return new Promise((resolve) => {
            const done = (ok) => {
                this.env.clearTimeout(timer);
                this.off("ice-servers", onIce);
                resolve(ok);
            };
            const onIce = () => done(true);
            const timer = this.env.setTimeout(() => done(false), maxMs);
            this.on("ice-servers", onIce);
        });
    }
    /**
     * Tell the server how to reach this device when the app sleeps (`push`; `null`
     * removes it) and whether the app is in front (`state`): a device that is offline,
     * backgrounded or silent gets a `call.ring` webhook event for each call, and hears how
     * it ended (docs/protocol.md, "Devices that sleep"). Kept by the server across
     * sessions; queued like any frame if the socket is down.
     */
    updateDevice(update) {
        const frame = { type: "device.update" };
        if (update.push !== undefined)
            frame.push = update.push;
        if (update.state !== undefined)
            frame.state = update.state;
        this.send(frame);
    }
    /** `GET path` on the server with the token (a token function is asked for a fresh one, as before every connect). */
    async authorizedGet(f, path) {
        const t = this.options.token;
        const token = typeof t === "function" ? await t() : t;
        return f(`${this.httpBase}${path}`, { headers: { Authorization: `Bearer ${token}` } });
    }
    /** Users with a socket connected now (`GET /v1/online`); a failure rejects with a `FirstcallError` (`http`). */
    async online() {
        const f = this.env.fetch;
        if (!f)
            return [];
        let r;
        try {
            r = await this.authorizedGet(f, "/v1/online");
        }
        catch (e) {
            throw new FirstcallError("http", `online: ${String(e)}`, { cause: e });
        }
        if (!r.ok)
            throw new FirstcallError("http", `online: HTTP ${r.status}`, { status: r.status });
        try {
            return (await r.json()).users;
        }
        catch (e) {
            throw new FirstcallError("http", `online: ${String(e)}`, { status: r.status, cause: e });
        }
    }
    close() {
        for (const c of this.calls.values())
            c.hangup();
        this.warm?.pc.close();
        this.warm = null;
        this.session.close();
    }
    /**
     * `GET /v1/turn-credentials` with the token, once, beside the socket's connect: its
     * answer makes the ICE servers known unless a welcome already did. A failure (no such
     * route, a refused token, no network) only means waiting for the welcome.
     */
    prefetchIce() {
        const f = this.env.fetch;
        if (!f)
            return;
        const started = this.env.now();
        void (async () => {
            try {
                const r = await this.authorizedGet(f, "/v1/turn-credentials");
                if (!r.ok)
                    throw new Error(`HTTP ${r.status}`);
                const body = (await r.json());
                const uris = body.uris;
                if (!Array.isArray(uris) || !uris.every((u) => typeof u === "string") || typeof body.username !== "string" || typeof body.password !== "string")
                    throw new Error("not a TURN REST credential");
                if (this.iceKnown || this.state === "closed")
                    return;
                this.iceServers = uris.length ? [{ urls: uris, username: body.username, credential: body.password }] : [];
                this.iceKnown = true;
                this.prefetched = { at: this.env.now(), ttlMs: Number(body.ttl) * 1000 || 0 };
                this.log("client", "ice servers prefetched", { ms: this.env.now() - started, urls: uris.length });
                this.emit("ice-servers", this.iceServers);
                if (this.wantsPool())
                    this.prewarm();
            }
            catch (e) {
                this.log("client", "ice server prefetch failed: the welcome brings them", { error: String(e) });
            }
        })();
    }
    /** @internal True while any call has not ended. */
    inCall() {
        return [...this.calls.values()].some((c) => c.state !== "ended");
    }
    /** No call, or one waiting for its peer connection (a pool is for that call or the next). */
    wantsPool() {
        return !this.inCall() || [...this.calls.values()].some((c) => c.awaitingPeer);
    }
    /**
     * @internal The RTCConfiguration every call's peer connection gets: the app's
     * `rtcConfig` with its own `iceServers` followed by the server's (never replaced by
     * them), each filtered by `iceUrlFilter`.
     */
    rtcConfiguration() {
        const keep = this.options.iceUrlFilter;
        const own = this.options.rtcConfig?.iceServers ?? [];
        const all = [...own, ...this.iceServers];
        const iceServers = keep
            ? all
                .map((s) => ({ ...s, urls: [].concat(s.urls).filter(keep) }))
                .filter((s) => s.urls.length)
            : all;
        return { ...(this.options.rtcConfig ?? {}), iceServers };
    }
    /**
     * @internal Gather candidates before the next call: a TURN allocation costs two round
     * trips (401 challenge, then Allocate), which at 100 ms RTT was most of the gap between
     * a call's first checks and its relay candidates. Rebuilt when the ICE servers change.
     */
    prewarm() {
        if (this.options.prewarm === false || this.state === "closed" || !this.env.RTCPeerConnection)
            return;
        const config = this.rtcConfiguration();
        if (!config.iceServers?.length)
            return;
        const key = JSON.stringify(config);
        if (this.warm?.key === key)
            return;
        this.warm?.pc.close();
        this.warm = null;
        try {
            this.warm = { pc: new this.env.RTCPeerConnection({ ...config, iceCandidatePoolSize: 1 }), key };
            this.log("client", "peer connection pre-warmed", { ice_servers: config.iceServers?.length ?? 0 });
        }
        catch (e) {
            this.log("client", "pre-warm failed", { error: String(e) });
        }
    }
    /** @internal The pre-warmed peer connection, when it was built for `config`. */
    takeWarmPeer(config) {
        const w = this.warm;
        this.warm = null;
        if (w && w.key === JSON.stringify(config) && w.pc.signalingState !== "closed")
            return w.pc;
        w?.pc.close();
        return null;
    }
    /** @internal A call's media stopped: check the signaling socket (a pong within 500 ms). */
    probeSignaling() {
        this.session.probe(500);
    }
    /** @internal */
    send(frame) {
        return this.session.send(frame);
    }
    /** @internal */
    log(source, event, detail) {
        const e = { t: this.env.now() - this.started, event: `${source}: ${event}`, detail };
        this.timeline.push(e);
        this.emit("timeline", e);
    }
    onWelcome(w) {
        this.user = w.user;
        const servers = w.ice_servers ?? [];
        const p = this.prefetched;
        this.prefetched = null;
        if (p && this.env.now() - p.at < p.ttlMs / 10 && sameUrls(servers, this.iceServers)) {
            // The same servers, their credential minted for the same user moments apart with
            // the same lifetime: the pool built from the prefetched one (or the call holding
            // it) keeps it. Not when the welcome came late (a blocked WebSocket, backoff): the
            // server's refresh comes at 80 % of the lifetime counted from the welcome, so an
            // older credential could expire first. Later welcomes and refreshes replace it.
            this.log("client", "welcome's ice servers match the prefetched ones");
        }
        else {
            this.iceServers = servers;
        }
        this.iceKnown = true;
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
        if (this.wantsPool())
            this.prewarm();
        if (!w.resumed) {
            // Calls the server still has carry on. One it lost (a restart, or a node that
            // went away) is re-registered if its media flows, which needs no server (the
            // other side does the same: docs/protocol.md, "Calls that outlive the server");
            // any other is over.
            const live = new Map((w.calls ?? []).map((c) => [c.call, c]));
            for (const c of [...this.calls.values()]) {
                if (c.state === "new")
                    continue;
                // Its invite is not processed yet (behind this session's hello, or sent again
                // now): the server learns of the call from it, so it cannot be in the list.
                if (this.session.unacked.some((u) => u.frame.type === "call.invite" && u.frame.call === c.id))
                    continue;
                const known = live.get(c.id);
                if (known && known.state !== "restoring")
                    continue;
                if (!c.restore())
                    c.end("failed", "session lost");
            }
        }
        for (const c of this.calls.values())
            c.onSessionState("connected", w.resumed ? "session resumed" : "new session");
        this.emit("welcome", w);
    }
    onFrame(f) {
        if (f.type === "ice_servers") {
            this.iceServers = f.ice_servers ?? [];
            this.log("client", "ice servers refreshed", { ttl: f.ice_ttl });
            this.emit("ice-servers", this.iceServers);
            // As on the welcome: a call still waiting for its peer connection takes the new pool.
            if (this.wantsPool())
                this.prewarm();
            return;
        }
        if (f.type === "error") {
            this.log("client", `server error ${f.code}`, { message: f.message, ref: f.ref });
            this.emit("server-error", f);
            // A refused `call.restore`: that call cannot be kept.
            for (const c of this.calls.values())
                if (c.restoreSeq !== null && c.restoreSeq === f.ref)
                    c.end("failed", `restore refused: ${f.message}`);
            return;
        }
        const id = f.call;
        if (!id)
            return;
        if (f.type === "call.incoming") {
            if (this.calls.has(id))
                return;
            const c = new Call(this, id, f.from, "incoming", f.media);
            c.offer = f.sdp;
            c.meta = f.meta ?? null;
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
/** Every URL of `a` is in `b` and the other way round (order and grouping aside). */
function sameUrls(a, b) {
    const urls = (l) => [...new Set(l.flatMap((s) => [].concat(s.urls)))].sort().join(" ");
    return urls(a) === urls(b);
}
/** Whether this page was loaded from `httpBase` (a fetch there needs no CORS). */
function sameOrigin(httpBase) {
    // eslint-disable-next-line @typescript-eslint/no-explicit-any
    const origin = globalThis.location?.origin;
    if (typeof origin !== "string")
        return false;
    try {
        return new URL(httpBase).origin === origin;
    }
    catch {
        return false;
    }
}
/** `meta` as the server takes it: a plain JSON object of at most 4 KiB, else a clear error. */
function checkMeta(meta) {
    if (meta === undefined || meta === null)
        return null;
    if (typeof meta !== "object" || Array.isArray(meta))
        throw new TypeError("firstcall: call meta must be a plain object");
    const text = JSON.stringify(meta);
    const bytes = new TextEncoder().encode(text).length;
    if (bytes > MAX_META_BYTES)
        throw new RangeError(`firstcall: call meta is ${bytes} bytes as JSON, at most ${MAX_META_BYTES}`);
    // A copy, as it goes on the wire: later changes to the app's object do not leak in.
    return JSON.parse(text);
}
/**
 * Connect to a firstcall server. Resolves once the first welcome arrives (the client
 * then holds ICE servers); keeps reconnecting on its own afterwards. Rejects with a
 * `FirstcallError`: `no_welcome` after `firstConnectTimeoutMs`, or `unauthorized` /
 * `refused` when the server refuses us for good.
 *
 * ```ts
 * const client = await connect("wss://example.org/v1/ws", { token });
 * client.on("incoming", (call) => call.accept());
 * const call = client.call("bob", { video: true });
 * ```
 */
export function connect(url, options) {
    const client = new Client(url, options);
    return new Promise((resolve, reject) => {
        const timer = client.env.setTimeout(() => reject(new FirstcallError("no_welcome", "firstcall: no welcome in time")), options.firstConnectTimeoutMs ?? 15000);
        client.on("welcome", () => {
            client.env.clearTimeout(timer);
            resolve(client);
        });
        client.on("fatal", (e) => {
            client.env.clearTimeout(timer);
            reject(e.error);
        });
        client.session.open();
    });
}
/**
 * A client whose calls can be placed before the socket is up (cold start): frames are
 * queued and go out on connect. `connect()` waits for the welcome; this does not.
 */
export function createClient(url, options) {
    const client = new Client(url, options);
    client.session.open();
    return client;
}
