// Helpers to drive the SDK inside pages served by firstcall (the SDK is at /sdk/firstcall.js).
import { gotoRetrying } from "./browser.mjs";

/** Open a page as `user` with a client; incoming calls are collected in window.calls. */
export async function openClient(browser, origin, user, { mode = "connect", options = {}, autoAccept = false, urls = null } = {}) {
  const ctx = await browser.newContext();
  const page = await ctx.newPage();
  await gotoRetrying(page, `${origin}/healthz`);
  await page.evaluate(
    async ({ user, mode, options, autoAccept, urls }) => {
      const sdk = await import("/sdk/firstcall.js");
      const url = urls ?? `ws://${location.host}/v1/ws`;
      const opts = { token: `dev:${user}`, device: `${user}-${Math.random().toString(36).slice(2, 8)}`, ...options };
      if (options.iceUrlFilter) opts.iceUrlFilter = new Function("u", `return (${options.iceUrlFilter})(u)`);
      window.sdk = sdk;
      window.calls = [];
      window.client = mode === "create" ? sdk.createClient(url, opts) : await sdk.connect(url, opts);
      window.client.on("incoming", (c) => {
        window.calls.push(c);
        if (autoAccept) c.accept();
      });
    },
    { user, mode, options: { ...options, iceUrlFilter: options.iceUrlFilter?.toString() }, autoAccept, urls },
  );
  return { ctx, page, close: () => ctx.close() };
}

/** Wait until `expr` (evaluated in the page, returning a Call) is connected with decoded video. */
export async function connectedWithMedia(page, expr, timeoutMs = 30000) {
  return page.evaluate(
    async ({ expr, timeoutMs }) => {
      const deadline = Date.now() + timeoutMs;
      const call = () => eval(expr);
      while (!call() || call().state !== "connected") {
        const c = call();
        if (c?.state === "ended") throw new Error(`call ended: ${c.endReason}\n${c.timeline.map((e) => e.event).join("\n")}`);
        if (Date.now() > deadline) throw new Error(`not connected (state ${c?.state})\n${c?.timeline.map((e) => e.event).join("\n")}`);
        await new Promise((r) => setTimeout(r, 50));
      }
      for (;;) {
        let frames = 0;
        (await call().pc.getStats()).forEach((s) => {
          if (s.type === "inbound-rtp" && s.kind === "video") frames = s.framesDecoded || 0;
        });
        if (frames > 0) {
          const c = call();
          return {
            pair: c.selectedPair,
            ms: c.connectMs,
            frames,
            restarts: c.timeline.filter((e) => e.event === "ice restart").length,
            gathered: c.candidates.local,
          };
        }
        if (Date.now() > deadline) throw new Error("connected but no video frames decoded");
        await new Promise((r) => setTimeout(r, 100));
      }
    },
    { expr, timeoutMs },
  );
}

/** Wait until the call at `expr` has ended; returns its end reason. */
export async function endedReason(page, expr, timeoutMs = 15000) {
  return page.evaluate(
    async ({ expr, timeoutMs }) => {
      const deadline = Date.now() + timeoutMs;
      while (!eval(expr) || eval(expr).state !== "ended") {
        if (Date.now() > deadline) throw new Error(`call did not end (state ${eval(expr)?.state})`);
        await new Promise((r) => setTimeout(r, 50));
      }
      return eval(expr).endReason;
    },
    { expr, timeoutMs },
  );
}

/** Wait until the page has `n` incoming calls. */
export async function incoming(page, n = 1, timeoutMs = 15000) {
  await page.waitForFunction((n) => window.calls.length >= n, n, { timeout: timeoutMs });
}

export async function metric(page, sample) {
  return page.evaluate(async (sample) => {
    const text = await (await fetch("/metrics")).text();
    const line = text.split("\n").find((l) => l.startsWith(sample + " "));
    return line ? Number(line.split(" ")[1]) : 0;
  }, sample);
}
