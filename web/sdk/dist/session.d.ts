import { Emitter } from "./emitter.js";
import type { Environment } from "./env.js";
import type { ClientState, ClientFrame, ServerFrame, Welcome } from "./protocol.js";
/** A frame as it travels: its fields, its seq, and perhaps a piggybacked ack. */
type Frame = Record<string, any> & {
    type: string;
    seq?: number;
};
export interface SessionEvents {
    state: (s: ClientState) => void;
    log: (event: string, detail: Record<string, unknown>) => void;
    welcome: (w: Welcome) => void;
    /** A sequenced frame, processed once and in order (or an unsequenced handshake error). */
    frame: (f: ServerFrame) => void;
    fatal: (e: {
        code: number;
        reason?: string;
        error: FirstcallError;
    }) => void;
}
/**
 * The bearer token: a string, or a function returning a fresh one (from the app's own
 * backend), called before every connect and reconnect.
 */
export type TokenSource = string | (() => string | Promise<string>);
/**
 * The stable codes of a `FirstcallError`: match on these, not on messages (which may
 * change).
 * - `unauthorized`: the token was refused, a fresh one from the token function too
 *   (`fatal`, and a rejected `connect()`).
 * - `refused`: the server closed with another code that reconnecting cannot help.
 * - `token_source`: the token function failed (reserved: today such a failure is retried
 *   with the reconnect backoff, not reported).
 * - `no_welcome`: `connect()` saw no welcome within `firstConnectTimeoutMs`.
 * - `webrtc_unavailable`: no RTCPeerConnection here (the call ends as `local`).
 * - `media`: a camera, microphone or screen could not be opened or has no track
 *   (`shareScreen()`, `setDevice()`; a call that cannot open its media ends as
 *   `media_failed`). `cause` holds the browser's own error, when there was one.
 * - `invalid_state`: the call cannot do that now (`shareScreen()` before it connected,
 *   `setDevice()` without media, either after it ended).
 * - `http`: an HTTP request of the SDK failed (`online()`); `status` holds the status.
 * - `bad_options`: the options cannot work (an empty list of server URLs).
 */
export type FirstcallErrorCode = "unauthorized" | "refused" | "token_source" | "no_welcome" | "webrtc_unavailable" | "media" | "invalid_state" | "http" | "bad_options";
/**
 * Where the SDK connects: one URL (a load balancer that reads `/readyz`), or the nodes of a
 * cluster, tried in turn: the next one when a node drains (1012), cannot reach its store
 * (1013), or does not answer.
 */
export type ServerUrl = string | readonly string[];
/** Every error the SDK throws, rejects with or reports, with a stable `code`. */
export declare class FirstcallError extends Error {
    /** What went wrong, stable across versions (see `FirstcallErrorCode`). */
    readonly code: FirstcallErrorCode;
    /** The WebSocket close code, when the server closed (`unauthorized`, `refused`). */
    readonly closeCode?: number;
    /** The HTTP status (`http`), when a response came. */
    readonly status?: number;
    /** The underlying error (e.g. the browser's DOMException), when there was one. */
    readonly cause?: unknown;
    constructor(
    /** What went wrong, stable across versions (see `FirstcallErrorCode`). */
    code: FirstcallErrorCode, message: string, details?: {
        closeCode?: number;
        status?: number;
        cause?: unknown;
    });
}
/** The reliable session (see the top of this file). */
export declare class Session extends Emitter<SessionEvents> {
    private readonly token;
    private readonly device;
    private readonly env;
    state: ClientState;
    sessionId: string | null;
    welcome: Welcome | null;
    /** Frames sent (or queued) and not yet acknowledged, in order. */
    readonly unacked: {
        seq: number;
        frame: Frame;
    }[];
    private ws;
    private lastIn;
    private outSeq;
    private attempt;
    private reconnectTimer;
    private watchdog;
    private ackTimer;
    private heartbeatMs;
    private probeTimer;
    private closed;
    private unsubscribeNetwork;
    /** A refused token was followed by a fresh one, not yet welcomed. */
    private retriedToken;
    /** Counts opens, so that a token fetched for an earlier one is not used. */
    private opening;
    /** The nodes to connect to, in turn; `node` is the one in use. */
    private readonly urls;
    private node;
    /** The socket in use got its welcome (a close before it counts against the node). */
    private welcomed;
    /**
     * Every frame kept is written right behind this socket's hello, which starts a new
     * session, and any sent before its welcome at once (a cold start): the server takes
     * them in order once the hello is through, so none is sent again at the welcome
     * (nothing is acknowledged before it, so the kept frames are exactly those written).
     */
    private pipelining;
    constructor(url: ServerUrl, token: TokenSource, device: string, env: Environment);
    /** Queue a frame; it is sent now if the socket is up, else on (re)connect. Never dropped. */
    send(frame: ClientFrame): number;
    open(): void;
    /** The app's token function threw: try again with backoff (its backend may be down). */
    private tokenFailed;
    private openWith;
    /** Drop the socket and resume on a fresh one right away. */
    restart(why: string): void;
    close(): void;
    private raw;
    private setState;
    private scheduleReconnect;
    /**
     * Check that the socket still carries frames: a `ping`, and if nothing at all arrives
     * within `timeoutMs`, resume on a fresh socket at once. For when something suggests the
     * path broke (a call's media stalled: the host's address may have changed, and a socket
     * bound to the old one can send but never hear back), instead of waiting two missed
     * heartbeats (31 s).
     */
    probe(timeoutMs: number): void;
    private armWatchdog;
    private onFrame;
    /** The server has processed our frames up to `n`: stop keeping them. */
    private release;
    private scheduleAck;
    private onWelcome;
}
export {};
