import { Emitter } from "./emitter.js";
import { type Environment, type TimelineEntry } from "./env.js";
import { FirstcallError, Session, type ServerUrl, type TokenSource } from "./session.js";
import { Call, type CallOptions } from "./call.js";
import { type AppState, type ClientState, type PushTarget, type ServerFrame, type Welcome } from "./protocol.js";
export interface ConnectOptions {
    /**
     * JWT, or `dev:<user>` against a server in dev mode; or a function returning a fresh
     * one, called before every connect and reconnect (so that a resume after the token
     * expired is not refused). A token refused (close 4003) is asked for once more before
     * the client gives up with `fatal` (`FirstcallError` code `unauthorized`).
     */
    token: TokenSource;
    /** Stable per installation; generated and kept in localStorage when absent. */
    device?: string;
    /**
     * Extra RTCPeerConnection settings (e.g. `{iceTransportPolicy: "relay"}`). Its
     * `iceServers` are kept and used together with the server's (welcome `ice_servers`).
     */
    rtcConfig?: RTCConfiguration;
    /** Keep only the ICE server URLs this accepts (e.g. only `?transport=tcp` behind a UDP-blocking firewall); applies to the server's and `rtcConfig.iceServers` alike. */
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
    /**
     * Fetch TURN credentials over HTTP (`GET /v1/turn-credentials`) while the socket opens,
     * so that a call placed at start-up (a cold start) builds its peer connection, gathers
     * and sends its invite without waiting for the welcome (docs/protocol.md, "Frames
     * behind the hello"). Default: on when the page's origin is the server's (across
     * origins the request, which carries the token, would need CORS, which the server does
     * not answer); the welcome brings them otherwise, as before. A token function is asked
     * once more for it.
     */
    prefetchIceServers?: boolean;
    /**
     * A connected call whose media stops for this long while the other side says it sends
     * some restarts ICE at once (the callee asks the caller to), rather than wait for ICE to
     * notice (default 800 ms; 0: never). At half of it the signaling socket is checked.
     */
    mediaStallMs?: number;
    /** How often a connected call emits `quality` (default 2000 ms; 0: never). */
    qualityIntervalMs?: number;
    env?: Partial<Environment>;
}
export interface ClientEvents {
    state: (s: ClientState) => void;
    welcome: (w: Welcome) => void;
    /** An incoming call, ringing: `call.accept()` or `call.reject()`. */
    incoming: (call: Call) => void;
    "ice-servers": (servers: RTCIceServer[]) => void;
    /** The server refused one of our frames. */
    "server-error": (f: Extract<ServerFrame, {
        type: "error";
    }>) => void;
    /** The server refused us for good (bad token): no reconnecting. */
    fatal: (e: {
        code: number;
        reason?: string;
        error: FirstcallError;
    }) => void;
    timeline: (e: TimelineEntry) => void;
}
/** A signaling client with calls. */
export declare class Client extends Emitter<ClientEvents> {
    readonly session: Session;
    readonly user: string;
    iceServers: RTCIceServer[];
    readonly calls: Map<string, Call>;
    readonly timeline: TimelineEntry[];
    readonly env: Environment;
    readonly options: ConnectOptions;
    private readonly started;
    private readonly httpBase;
    constructor(url: ServerUrl, options: ConnectOptions);
    get state(): ClientState;
    /**
     * Start a call. Returns at once; watch the call's events. `opts.stream` hands the SDK
     * the app's own camera and microphone; `opts.audio` / `opts.video` are getUserMedia
     * constraints (device ids); a camera or microphone that cannot be opened ends the call
     * as `media_failed`.
     */
    call(user: string, opts?: CallOptions): Call;
    /**
     * Resolves once ICE servers are known (the prefetch or the first welcome), or after `maxMs` so a call is
     * never stuck: gathering before then would miss relay candidates, which is exactly
     * how cold-start calls used to fail.
     */
    whenIceReady(maxMs?: number): Promise<boolean>;
    /**
     * Tell the server how to reach this device when the app sleeps (`push`; `null`
     * removes it) and whether the app is in front (`state`): a device that is offline,
     * backgrounded or silent gets a `call.ring` webhook event for each call, and hears how
     * it ended (docs/protocol.md, "Devices that sleep"). Kept by the server across
     * sessions; queued like any frame if the socket is down.
     */
    updateDevice(update: {
        push?: PushTarget | null;
        state?: AppState;
    }): void;
    /** `GET path` on the server with the token (a token function is asked for a fresh one, as before every connect). */
    private authorizedGet;
    /** Users with a socket connected now (`GET /v1/online`); a failure rejects with a `FirstcallError` (`http`). */
    online(): Promise<string[]>;
    close(): void;
    private warm;
    /** A welcome (or the prefetch) came: `iceServers` is what the server hands out (maybe nothing). */
    private iceKnown;
    /** `iceServers` are the prefetched credential, not yet met by a welcome: when it came and how long it lives (ms). */
    private prefetched;
    /**
     * `GET /v1/turn-credentials` with the token, once, beside the socket's connect: its
     * answer makes the ICE servers known unless a welcome already did. A failure (no such
     * route, a refused token, no network) only means waiting for the welcome.
     */
    private prefetchIce;
    /** No call, or one waiting for its peer connection (a pool is for that call or the next). */
    private wantsPool;
    private onWelcome;
    private onFrame;
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
export declare function connect(url: ServerUrl, options: ConnectOptions): Promise<Client>;
/**
 * A client whose calls can be placed before the socket is up (cold start): frames are
 * queued and go out on connect. `connect()` waits for the welcome; this does not.
 */
export declare function createClient(url: ServerUrl, options: ConnectOptions): Client;
