// A server restart mid-call (issue 18): the two pages' media flows peer to peer, so the
// call must outlive the server. The server is killed (SIGKILL: no drain) and started
// again on the same address; both SDKs re-register the call (`call.restore`), media never
// stops, and a hang-up after the restart still ends the call on both sides.
import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import { NetNs } from "./lib/netns.mjs";
import { launchIn } from "./lib/browser.mjs";
import { startFirstcall } from "./lib/servers.mjs";
import { openClient, connectedWithMedia, endedReason } from "./lib/sdk.mjs";

const isRoot = process.getuid && process.getuid() === 0;

/** Video frames the page's call has decoded so far. */
const decoded = (page, expr) =>
  page.evaluate(async (expr) => {
    let frames = 0;
    (await eval(expr).pc.getStats()).forEach((s) => {
      if (s.type === "inbound-rtp" && s.kind === "video") frames = s.framesDecoded || 0;
    });
    return frames;
  }, expr);

/** Wait until the call at `expr` was told the server has it again with the other side back. */
const restored = (page, expr, timeoutMs = 30000) =>
  page.evaluate(
    async ({ expr, timeoutMs }) => {
      const deadline = Date.now() + timeoutMs;
      const back = () => eval(expr).timeline.some((e) => e.event === "restored" && e.detail?.peer_back);
      while (!back()) {
        const c = eval(expr);
        if (c.state === "ended") throw new Error(`call ended: ${c.endReason}\n${c.timeline.map((e) => e.event).join("\n")}`);
        if (Date.now() > deadline) throw new Error(`not restored\n${c.timeline.map((e) => e.event).join("\n")}`);
        await new Promise((r) => setTimeout(r, 50));
      }
      return { state: c().state, events: eval(expr).timeline.map((e) => e.event).filter((e) => /restor|ended|reconnect/.test(e)) };
      function c() {
        return eval(expr);
      }
    },
    { expr, timeoutMs },
  );

describe("a call outlives a server restart", { skip: !isRoot && !process.env.CI && "not root" }, () => {
  let ns, server, browser, closeBrowser;
  before(async () => {
    ns = new NetNs();
    server = await startFirstcall(ns);
    ({ browser, close: closeBrowser } = await launchIn(ns));
  });
  after(async () => {
    await closeBrowser?.();
    server?.stop();
    ns?.close();
  });

  test("killed and restarted mid-call: media carries on, the call is restored, a hang-up ends it on both sides", async (t) => {
    const b = await openClient(browser, server.origin, "rs-bob", { autoAccept: true });
    const a = await openClient(browser, server.origin, "rs-alice");
    await a.page.evaluate(() => (window.call = window.client.call("rs-bob", { video: true })));
    await Promise.all([connectedWithMedia(a.page, "window.call"), connectedWithMedia(b.page, "window.calls[0]")]);

    // Killed, and gone: the new server binds the same ports.
    await server.stopAndWait();
    const framesAtKill = await decoded(b.page, "window.calls[0]");
    server = await startFirstcall(ns);
    const t0 = Date.now();
    const [ra, rb] = await Promise.all([restored(a.page, "window.call"), restored(b.page, "window.calls[0]")]);
    t.diagnostic(`restored ${Date.now() - t0} ms after the new server was up: alice ${JSON.stringify(ra)}, bob ${JSON.stringify(rb)}`);
    for (const r of [ra, rb]) assert.equal(r.state, "connected");
    // Media never needed the server: Bob kept decoding Alice's video through the restart.
    const framesNow = await decoded(b.page, "window.calls[0]");
    assert.ok(framesNow > framesAtKill, `video decoded after the restart: ${framesAtKill} -> ${framesNow}`);

    await a.page.evaluate(() => window.call.hangup());
    assert.equal(await endedReason(b.page, "window.calls[0]"), "hangup");
    assert.equal(await endedReason(a.page, "window.call"), "hangup");
    await a.close();
    await b.close();
  });
});
