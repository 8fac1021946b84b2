// Call setup, for the record: two Chromium pages on one host (inside a network namespace
// of our own, so Chromium sees only a documentation-range address), the caller calls the
// callee N times; each call must connect with decoded video, then is hung up and the
// next begins. Prints one JSON line: {"result": {...}}. The networked figures (NATs,
// RTT, loss) belong to netsim/run.
//
//   node bench/callsetup.mjs [--calls N]
import { NetNs } from "../web/tests/lib/netns.mjs";
import { launchIn } from "../web/tests/lib/browser.mjs";
import { startFirstcall } from "../web/tests/lib/servers.mjs";
import { openClient, connectedWithMedia, endedReason } from "../web/tests/lib/sdk.mjs";

const arg = (name, dflt) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : dflt;
};
const calls = Number(arg("calls", "10"));

const pct = (xs, p) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.min(s.length - 1, Math.ceil(p * s.length) - 1)] : null;
};

const ns = new NetNs("203.0.113.1/24");
let server, closeBrowser;
try {
  server = await startFirstcall(ns);
  const launched = await launchIn(ns);
  closeBrowser = launched.close;
  const b = await openClient(launched.browser, server.origin, "bench-bob", { autoAccept: true });
  const a = await openClient(launched.browser, server.origin, "bench-alice");
  const runs = [];
  for (let i = 0; i < calls; i++) {
    await a.page.evaluate(() => (window.call = window.client.call("bench-bob", { video: true })));
    const s = await connectedWithMedia(a.page, "window.call");
    const callee = await connectedWithMedia(b.page, `window.calls[${i}]`);
    runs.push({ caller_ms: s.ms, callee_ms: callee.ms, pair: s.pair, restarts: s.restarts });
    await a.page.evaluate(() => window.call.hangup());
    const reason = await endedReason(b.page, `window.calls[${i}]`);
    if (reason !== "hangup") throw new Error(`call ${i}: callee saw ${reason}, not hangup`);
  }
  const ms = runs.map((r) => r.caller_ms);
  const result = {
    calls,
    connected_first_attempt: runs.filter((r) => r.restarts === 0).length,
    first_call_ms: ms[0],
    p50_ms: pct(ms, 0.5),
    p95_ms: pct(ms, 0.95),
    max_ms: Math.max(...ms),
    pairs: [...new Set(runs.map((r) => `${r.pair.local}/${r.pair.remote}/${r.pair.protocol}`))],
    runs,
  };
  console.log(JSON.stringify({ result }));
  await a.close();
  await b.close();
} finally {
  await closeBrowser?.();
  server?.stop();
  ns.close();
}
