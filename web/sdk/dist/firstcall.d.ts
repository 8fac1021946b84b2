export type Media = "audio" | "video";
export type ClientState = "connecting" | "connected" | "reconnecting" | "closed";
export type CallState = "new" | "ringing" | "pending" | "connecting" | "connected" | "ended";
export type EndReason = "hangup" | "cancelled" | "rejected" | "busy" | "timeout" | "unreachable" | "answered_elsewhere" | "glare" | "failed" | "ice_failed" | "local";
export interface TimelineEntry {
    /** ms since the call (or client) started */
    t: number;
    event: string;
    detail?: Record<string, unknown>;
}
/** What the SDK needs from its environment; tests inject fakes. */
export interface Environment {
    WebSocket: {
        new (url: string): WebSocketLike;
    };
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
    onmessage: ((ev: {
        data: unknown;
    }) => void) | null;
    onclose: ((ev: {
        code?: number;
        reason?: string;
    }) => void) | null;
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
type Frame = Record<string, any> & {
    type: string;
    seq?: number;
};
type Listener = (...args: any[]) => void;
declare class Emitter {
    private listeners;
    on(event: string, fn: Listener): this;
    off(event: string, fn: Listener): this;
    protected emit(event: string, ...args: unknown[]): void;
}
/**
 * The reliable session: numbered frames kept until acknowledged, acks, heartbeats,
 * reconnect with backoff and resume. Transport only; knows nothing of calls.
 */
export declare class Session extends Emitter {
    private readonly url;
    private readonly token;
    private readonly device;
    private readonly env;
    state: ClientState;
    sessionId: string | null;
    welcome: Frame | null;
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
    private closed;
    private unsubscribeNetwork;
    constructor(url: string, token: string, device: string, env: Environment);
    /** Queue a frame; it is sent now if the socket is up, else on (re)connect. Never dropped. */
    send(frame: Frame): number;
    open(): void;
    /** Drop the socket and resume on a fresh one right away. */
    restart(why: string): void;
    close(): void;
    private raw;
    private setState;
    private scheduleReconnect;
    private armWatchdog;
    private onFrame;
    /** The server has processed our frames up to `n`: stop keeping them. */
    private release;
    private scheduleAck;
    private onWelcome;
}
/** A signaling client with calls. */
export declare class Client extends Emitter {
    readonly session: Session;
    readonly user: string;
    iceServers: RTCIceServer[];
    readonly calls: Map<string, Call>;
    readonly timeline: TimelineEntry[];
    readonly env: Environment;
    readonly options: ConnectOptions;
    private readonly started;
    private readonly httpBase;
    constructor(url: string, options: ConnectOptions);
    get state(): ClientState;
    /** Start a call. Returns at once; watch the call's events. */
    call(user: string, opts?: {
        video?: boolean;
        id?: string;
    }): Call;
    /**
     * Resolves once ICE servers are known (first welcome), or after `maxMs` so a call is
     * never stuck: gathering before then would miss relay candidates, which is exactly
     * how cold-start calls used to fail.
     */
    whenIceReady(maxMs?: number): Promise<boolean>;
    /** Users with a socket connected now (`GET /v1/online`). */
    online(): Promise<string[]>;
    close(): void;
    private warm;
    /** @internal True while any call has not ended. */
    inCall(): boolean;
    /** No call, or one waiting for its peer connection (a pool is for that call or the next). */
    private wantsPool;
    /** @internal The RTCConfiguration every call's peer connection gets. */
    rtcConfiguration(): RTCConfiguration;
    /**
     * @internal Gather candidates before the next call: a TURN allocation costs two round
     * trips (401 challenge, then Allocate), which at 100 ms RTT was most of the gap between
     * a call's first checks and its relay candidates. Rebuilt when the ICE servers change.
     */
    prewarm(): void;
    /** @internal The pre-warmed peer connection, when it was built for `config`. */
    takeWarmPeer(config: RTCConfiguration): RTCPeerConnection | null;
    /** @internal */
    send(frame: Frame): number;
    /** @internal */
    log(source: string, event: string, detail?: Record<string, unknown>): void;
    private onWelcome;
    private onFrame;
}
/** One call. Events: `state`, `localstream`, `remotestream`, `timeline`, `ended`, `connected`. */
export declare class Call extends Emitter {
    readonly client: Client;
    readonly id: string;
    readonly peer: string;
    readonly direction: "outgoing" | "incoming";
    readonly media: Media;
    state: CallState;
    endReason: EndReason | null;
    pc: RTCPeerConnection | null;
    localStream: MediaStream | null;
    remoteStream: MediaStream | null;
    readonly timeline: TimelineEntry[];
    /** Candidate counts by type, gathered locally and received from the peer. */
    readonly candidates: {
        local: Record<string, number>;
        remote: Record<string, number>;
    };
    connectMs: number | null;
    /** Time from the call's start to ICE connected (before DTLS), the protocol's `call.connected` moment. */
    iceConnectedMs: number | null;
    selectedPair: {
        local: string;
        remote: string;
        protocol: string;
    } | null;
    /** @internal */ offer: string | null;
    /** @internal */ fromDevice: string | null;
    private remoteCandidates;
    private remoteSet;
    private readonly t0;
    private connectTimer;
    private disconnectTimer;
    private failedTimer;
    /** Restarts since ICE last connected: three that do not help end the call. */
    private restarts;
    /** Number of the latest restart; its offer carries it (`sdp.restart`) and the callee's
     * answer echoes it, so an answer to an older, rolled-back restart is told apart. */
    private restartGen;
    /** The remote side sent end-of-candidates for the current ICE generation. */
    private remoteGatheringDone;
    /** Our ICE-restart offer is out and its answer not yet applied. */
    private restartInFlight;
    /** Our ICE-restart offer is out and its answer has not arrived: an end-of-candidates
     * received meanwhile is the old generation's (signals arrive in order, and the remote's
     * new candidates follow its answer). */
    private restartAnswerPending;
    private restartAnswerTimer;
    constructor(client: Client, id: string, peer: string, direction: "outgoing" | "incoming", media: Media);
    /** Answer an incoming call. */
    accept(): Promise<void>;
    /** Decline an incoming call. */
    reject(): void;
    /** End the call (cancel, reject or hang up, as fits its state). */
    hangup(reason?: "user" | "ice_failed" | "media_failed"): void;
    /** @internal Live, and its peer connection not built yet. */
    get awaitingPeer(): boolean;
    /** @internal */
    start(): Promise<void>;
    /** @internal */
    setState(s: CallState): void;
    /** @internal */
    mark(event: string, detail?: Record<string, unknown>): void;
    /** @internal */
    onFrame(f: Frame): void;
    /** @internal */
    end(reason: EndReason, why: string): void;
    private armConnectTimeout;
    private setupPeer;
    private onIceState;
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
    private onFailed;
    /** Restart if ICE is still `disconnected` when the grace period ends (or, if a restart
     * is in flight then, once more after another grace period). */
    private armDisconnectTimer;
    /** How long a failed or disconnected ICE is given before a restart. */
    private get grace();
    private stillFailed;
    /** Something that can end a wait for a restart happened: decide again. */
    private recheckFailed;
    /** Restart `gen` is over, answered or not: the next failure may restart again. Nothing
     * to do if a later restart has started since. */
    private restartDone;
    private restartIce;
    private onSignal;
    private remoteDescriptionSet;
    private connecting;
    private onConnected;
}
/**
 * @internal What to do when ICE reports `failed` (see `Call.onFailed`): restart now only
 * when no restart is in flight and neither side can still bring a candidate; otherwise
 * wait for the restart's answer, or for gathering to end (bounded by the grace period).
 */
export declare function restartDecision(s: {
    inFlight: boolean;
    localGatheringDone: boolean;
    remoteGatheringDone: boolean;
}): "restart" | "after-answer" | "wait";
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
export declare function connect(url: string, options: ConnectOptions): Promise<Client>;
/**
 * A client whose calls can be placed before the socket is up (cold start): frames are
 * queued and go out on connect. `connect()` waits for the welcome; this does not.
 */
export declare function createClient(url: string, options: ConnectOptions): Client;
export {};
