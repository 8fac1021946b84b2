// The reliable session: numbered frames kept until acknowledged, acks, heartbeats,
// reconnect with backoff and resume. Transport only; knows nothing of calls.
import { Emitter } from "./emitter.js";
/** The close codes after which reconnecting cannot help. */
const FATAL_CLOSE = new Set([4003]);
/** Close code of a refused token. */
const UNAUTHORIZED = 4003;
/** The node drains for a restart (RFC 6455 "Service Restart"): reconnect at once, elsewhere. */
const SERVICE_RESTART = 1012;
/** The node cannot pass frames on (its cluster store is unreachable): try again later. */
const TRY_AGAIN_LATER = 1013;
/** Every error the SDK throws, rejects with or reports, with a stable `code`. */
export class FirstcallError extends Error {
    constructor(
    /** What went wrong, stable across versions (see `FirstcallErrorCode`). */
    code, message, details = {}) {
        super(message);
        this.code = code;
        this.name = "FirstcallError";
        if (details.closeCode !== undefined)
            this.closeCode = details.closeCode;
        if (details.status !== undefined)
            this.status = details.status;
        if (details.cause !== undefined)
            this.cause = details.cause;
    }
}
/** The reliable session (see the top of this file). */
export class Session extends Emitter {
    constructor(url, token, device, env) {
        super();
        this.token = token;
        this.device = device;
        this.env = env;
        this.state = "connecting";
        this.sessionId = null;
        this.welcome = null;
        /** Frames sent (or queued) and not yet acknowledged, in order. */
        this.unacked = [];
        this.ws = null;
        this.lastIn = 0;
        this.outSeq = 0;
        this.attempt = 0;
        this.reconnectTimer = null;
        this.watchdog = null;
        this.ackTimer = null;
        this.heartbeatMs = 15000;
        this.probeTimer = null;
        this.closed = false;
        this.unsubscribeNetwork = null;
        /** A refused token was followed by a fresh one, not yet welcomed. */
        this.retriedToken = false;
        /** Counts opens, so that a token fetched for an earlier one is not used. */
        this.opening = 0;
        this.node = 0;
        /** The socket in use got its welcome (a close before it counts against the node). */
        this.welcomed = false;
        /**
         * Every frame kept is written right behind this socket's hello, which starts a new
         * session, and any sent before its welcome at once (a cold start): the server takes
         * them in order once the hello is through, so none is sent again at the welcome
         * (nothing is acknowledged before it, so the kept frames are exactly those written).
         */
        this.pipelining = false;
        this.urls = typeof url === "string" ? [url] : [...url];
        if (this.urls.length === 0)
            throw new FirstcallError("bad_options", "firstcall: no server URL");
        this.unsubscribeNetwork =
            env.onNetworkChange?.((online) => {
                this.emit("log", "network", { online });
                // A changed network invalidates the socket's path: resume on a new one now.
                if (online)
                    this.restart("network changed");
            }) ?? null;
    }
    /** Queue a frame; it is sent now if the socket is up, else on (re)connect. Never dropped. */
    send(frame) {
        const seq = ++this.outSeq;
        const f = { ...frame, seq };
        this.unacked.push({ seq, frame: f });
        if (this.ws && this.pipelining) {
            this.raw(JSON.stringify(f));
        }
        else if (this.ws && this.state === "connected") {
            if (this.ackTimer) {
                // Our pending ack rides on this frame instead of a frame of its own.
                this.env.clearTimeout(this.ackTimer);
                this.ackTimer = null;
                this.raw(JSON.stringify({ ...f, ack: this.lastIn }));
            }
            else {
                this.raw(JSON.stringify(f));
            }
        }
        else
            this.emit("log", "queued", { type: frame.type, seq });
        return seq;
    }
    open() {
        if (this.closed)
            return;
        this.env.clearTimeout(this.reconnectTimer);
        this.reconnectTimer = null;
        if (typeof this.token === "string")
            return this.openWith(this.token);
        // A fresh token for every connect: a resume after the first one has expired must
        // not be refused for it.
        const opening = ++this.opening;
        let fresh;
        try {
            fresh = this.token();
        }
        catch (e) {
            return this.tokenFailed(e);
        }
        Promise.resolve(fresh).then((t) => {
            if (opening === this.opening && !this.closed)
                this.openWith(t);
        }, (e) => {
            if (opening === this.opening)
                this.tokenFailed(e);
        });
    }
    /** The app's token function threw: try again with backoff (its backend may be down). */
    tokenFailed(e) {
        this.emit("log", "token-source-failed", { error: String(e) });
        this.scheduleReconnect("token function failed");
    }
    openWith(token) {
        if (this.closed)
            return;
        let ws;
        try {
            ws = new this.env.WebSocket(this.urls[this.node]);
        }
        catch (e) {
            this.scheduleReconnect(String(e));
            return;
        }
        this.ws = ws;
        this.welcomed = false;
        this.pipelining = false;
        ws.onopen = () => {
            if (ws !== this.ws)
                return;
            const hello = { type: "hello", token, device: this.device };
            if (this.sessionId)
                hello.resume = { session: this.sessionId, last_seq: this.lastIn };
            try {
                ws.send(JSON.stringify(hello));
                if (!this.sessionId) {
                    // A new session numbers our frames from 1, as they already are (nothing was
                    // ever acknowledged): they go out now, behind the hello, one round trip
                    // before the welcome would have let them (docs/protocol.md, "Frames behind
                    // the hello"). A resume waits for the welcome: it says which to send again.
                    for (const u of this.unacked)
                        ws.send(JSON.stringify(u.frame));
                    this.pipelining = true;
                    if (this.unacked.length)
                        this.emit("log", "pipelined", { frames: this.unacked.length });
                }
            }
            catch {
                // The frames stay in `unacked`; the close that follows resumes.
                this.pipelining = false;
            }
            this.armWatchdog();
        };
        ws.onmessage = (ev) => {
            if (ws !== this.ws)
                return;
            this.armWatchdog();
            let f;
            try {
                f = JSON.parse(String(ev.data));
            }
            catch {
                this.emit("log", "bad-frame", { data: String(ev.data).slice(0, 100) });
                return;
            }
            this.onFrame(ws, f);
        };
        ws.onclose = (ev) => {
            if (ws !== this.ws)
                return;
            this.ws = null;
            this.pipelining = false;
            this.env.clearTimeout(this.watchdog);
            const code = ev?.code;
            this.emit("log", "socket-closed", { code, reason: ev?.reason });
            // Another node next, when there are several: this one is going away (1012: it
            // drains; 1013: it cannot reach its store) or never welcomed us (down, or
            // refusing). A session lives on every node of a cluster, so the resume works there.
            if (this.urls.length > 1 && (code === SERVICE_RESTART || code === TRY_AGAIN_LATER || !this.welcomed)) {
                this.node = (this.node + 1) % this.urls.length;
                this.emit("log", "next-node", { url: this.urls[this.node], code });
            }
            if (code === UNAUTHORIZED && typeof this.token === "function" && !this.retriedToken) {
                // The token expired (or was revoked) while we were away: ask the app once more.
                this.retriedToken = true;
                this.emit("log", "token-refused-retrying", { reason: ev?.reason });
                this.attempt = 0;
                this.scheduleReconnect("token refused: fetching a fresh one");
                return;
            }
            if (code !== undefined && FATAL_CLOSE.has(code)) {
                this.close();
                const error = code === UNAUTHORIZED
                    ? new FirstcallError("unauthorized", `token refused (close ${code}${ev?.reason ? `: ${ev.reason}` : ""})`, { closeCode: code })
                    : new FirstcallError("refused", `refused (close ${code})`, { closeCode: code });
                this.emit("fatal", { code, reason: ev?.reason, error });
                return;
            }
            this.scheduleReconnect(`closed ${code ?? ""}`);
        };
        ws.onerror = () => this.emit("log", "socket-error", {});
    }
    /** Drop the socket and resume on a fresh one right away. */
    restart(why) {
        if (this.closed)
            return;
        this.emit("log", "restart", { why });
        const ws = this.ws;
        this.ws = null;
        try {
            ws?.close();
        }
        catch {
            /* already closing */
        }
        this.attempt = 0;
        this.setState("reconnecting");
        this.open();
    }
    close() {
        this.closed = true;
        this.env.clearTimeout(this.reconnectTimer);
        this.env.clearTimeout(this.watchdog);
        this.env.clearTimeout(this.ackTimer);
        this.unsubscribeNetwork?.();
        const ws = this.ws;
        this.ws = null;
        try {
            ws?.close(1000, "bye");
        }
        catch {
            /* ignore */
        }
        this.setState("closed");
    }
    raw(text) {
        try {
            this.ws?.send(text);
        }
        catch {
            // The frame stays in `unacked` and goes out again after the resume.
            this.restart("send failed");
        }
    }
    setState(s) {
        if (this.state === s)
            return;
        this.state = s;
        this.emit("state", s);
    }
    scheduleReconnect(why) {
        if (this.closed || this.reconnectTimer)
            return;
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
    /**
     * Check that the socket still carries frames: a `ping`, and if nothing at all arrives
     * within `timeoutMs`, resume on a fresh socket at once. For when something suggests the
     * path broke (a call's media stalled: the host's address may have changed, and a socket
     * bound to the old one can send but never hear back), instead of waiting two missed
     * heartbeats (31 s).
     */
    probe(timeoutMs) {
        const ws = this.ws;
        if (this.closed || !ws || !this.welcomed || this.probeTimer !== null)
            return;
        this.emit("log", "probe", { timeoutMs });
        try {
            ws.send('{"type":"ping"}');
        }
        catch {
            /* the timer below decides */
        }
        this.probeTimer = this.env.setTimeout(() => {
            this.probeTimer = null;
            if (ws === this.ws)
                this.restart("probe unanswered");
        }, timeoutMs);
    }
    armWatchdog() {
        // Any frame answers a probe.
        if (this.probeTimer !== null) {
            this.env.clearTimeout(this.probeTimer);
            this.probeTimer = null;
        }
        this.env.clearTimeout(this.watchdog);
        // Two missed heartbeats: the socket is dead even if the OS has not noticed.
        this.watchdog = this.env.setTimeout(() => this.restart("heartbeat lost"), this.heartbeatMs * 2 + 1000);
    }
    onFrame(ws, f) {
        if (typeof f.ack === "number" && f.type !== "ack")
            this.release(f.ack);
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
        if (f.seq <= this.lastIn)
            return this.scheduleAck(ws); // replayed duplicate
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
    release(n) {
        while (this.unacked.length && this.unacked[0].seq <= n)
            this.unacked.shift();
    }
    scheduleAck(ws) {
        if (this.ackTimer)
            return;
        this.ackTimer = this.env.setTimeout(() => {
            this.ackTimer = null;
            if (this.ws === ws)
                ws.send(JSON.stringify({ type: "ack", seq: this.lastIn }));
        }, 50);
    }
    onWelcome(ws, f) {
        this.welcomed = true;
        this.emit("log", "welcome", { resumed: !!f.resumed, session: f.session, node: this.urls.length > 1 ? this.urls[this.node] : undefined });
        this.heartbeatMs = Number(f.heartbeat_ms) || this.heartbeatMs;
        if (f.resumed) {
            const done = Number(f.last_seq);
            while (this.unacked.length && this.unacked[0].seq <= done)
                this.unacked.shift();
        }
        else {
            // New session: our unprocessed frames are renumbered from 1 and resent. Every
            // call frame is idempotent on the server, so a frame it did see is harmless.
            this.lastIn = 0;
            this.outSeq = 0;
            for (const u of this.unacked) {
                u.seq = ++this.outSeq;
                u.frame = { ...u.frame, seq: u.seq };
            }
        }
        // Written behind this socket's hello (numbered as above: a new session's frames
        // start at 1), they are on their way, in order, ahead of anything sent from now on.
        const resend = this.pipelining ? [] : [...this.unacked];
        this.pipelining = false;
        this.sessionId = f.session;
        this.welcome = f;
        this.attempt = 0;
        this.retriedToken = false;
        // Before any listener runs (of `state` or of the welcome): a frame one of them sends
        // (a call.restore, a device.update) takes the next seq and must follow these, or the
        // server sees a gap. A write that fails replaces the socket: the rest, and this
        // welcome, are for the next one.
        for (const u of resend) {
            if (this.ws !== ws)
                return;
            this.raw(JSON.stringify(u.frame));
        }
        if (this.ws !== ws)
            return;
        this.setState("connected");
        this.emit("welcome", f);
    }
}
