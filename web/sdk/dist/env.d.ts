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
    getDisplayMedia?: (c: DisplayMediaStreamOptions) => Promise<MediaStream>;
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
export interface TimelineEntry {
    /** ms since the call (or client) started */
    t: number;
    event: string;
    detail?: Record<string, unknown>;
}
export declare function defaultEnv(): Environment;
export declare function deviceId(): string;
export declare function uuid(): string;
