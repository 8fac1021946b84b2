// What the SDK needs from its environment (tests inject fakes), and its defaults.
export function defaultEnv() {
    // eslint-disable-next-line @typescript-eslint/no-explicit-any
    const g = globalThis;
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
export function deviceId() {
    // eslint-disable-next-line @typescript-eslint/no-explicit-any
    const g = globalThis;
    try {
        const stored = g.localStorage?.getItem("firstcall.device");
        if (stored)
            return stored;
        const id = `web-${Math.random().toString(36).slice(2, 10)}${Date.now().toString(36)}`;
        g.localStorage?.setItem("firstcall.device", id);
        return id;
    }
    catch {
        return `web-${Math.random().toString(36).slice(2, 12)}`;
    }
}
export function uuid() {
    // eslint-disable-next-line @typescript-eslint/no-explicit-any
    const c = globalThis.crypto;
    if (c?.randomUUID)
        return c.randomUUID();
    return "xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx".replace(/[xy]/g, (ch) => {
        const r = (Math.random() * 16) | 0;
        return (ch === "x" ? r : (r & 0x3) | 0x8).toString(16);
    });
}
