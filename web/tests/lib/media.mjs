// In-page helpers for media assertions: what a call's peer connection decodes, read
// from getStats, and bounded waits on it (polling a real counter, never a fixed sleep).

/** Install `window.rx(call)` and the wait helpers in `page`. */
export async function installMediaProbes(page) {
  await page.evaluate(() => {
    const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
    /** Inbound counters: audio packets, and decoded frames and width per remote video track. */
    window.rx = async (call) => {
      const out = { audioPackets: 0, video: {} };
      (await call.pc.getStats()).forEach((s) => {
        if (s.type !== "inbound-rtp") return;
        if (s.kind === "audio") out.audioPackets += s.packetsReceived || 0;
        if (s.kind === "video") out.video[s.trackIdentifier] = { frames: s.framesDecoded || 0, width: s.frameWidth || 0 };
      });
      return out;
    };
    /** Resolve once `read()` (a number) has grown by `by`, within `timeoutMs`. */
    window.untilGrows = async (read, by, timeoutMs, what) => {
      const start = await read();
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const v = await read();
        if (v >= start + by) return { from: start, to: v };
        if (Date.now() > deadline) throw new Error(`${what}: ${start} -> ${v} in ${timeoutMs} ms, wanted +${by}`);
        await sleep(100);
      }
    };
    /** Resolve once `read()` has not changed for `flatMs`, within `timeoutMs`; returns how long it took to settle. */
    window.untilFlat = async (read, flatMs, timeoutMs, what) => {
      const t0 = Date.now();
      const deadline = t0 + timeoutMs;
      let prev = await read();
      let since = Date.now();
      for (;;) {
        await sleep(100);
        const v = await read();
        if (v !== prev) {
          prev = v;
          since = Date.now();
        } else if (Date.now() - since >= flatMs) return { value: v, settledMs: since - t0 };
        if (Date.now() > deadline) throw new Error(`${what}: still changing after ${timeoutMs} ms (now ${v})`);
      }
    };
  });
}
