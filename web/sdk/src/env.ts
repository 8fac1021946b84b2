// What the SDK needs from its environment (tests inject fakes), and its defaults.

/** What the SDK needs from its environment; tests inject fakes. */
export interface Environment {
  WebSocket: { new (url: string): WebSocketLike };
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
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code?: number; reason?: string }) => void) | null;
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

export function defaultEnv(): Environment {
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  const g = globalThis as any;
  const md = g.navigator?.mediaDevices;
  return {
    WebSocket: g.WebSocket,
    setTimeout: (fn, ms) => g.setTimeout(fn, ms),
    clearTimeout: (h) => g.clearTimeout(h),
    now: () => Date.now(),
    random: () => Math.random(),
    RTCPeerConnection: g.RTCPeerConnection,
    getUserMedia: md ? (c) => md.getUserMedia(c) : undefined,
    getDisplayMedia: md?.getDisplayMedia ? (c) => md.getDisplayMedia(c) : undefined,
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

export function deviceId(): string {
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
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

export function uuid(): string {
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  const c = (globalThis as any).crypto;
  if (c?.randomUUID) return c.randomUUID();
  return "xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx".replace(/[xy]/g, (ch) => {
    const r = (Math.random() * 16) | 0;
    return (ch === "x" ? r : (r & 0x3) | 0x8).toString(16);
  });
}
