// Two nodes on one Redis (issue 18): two Chromium pages, each on its own node, call each
// other; the node of one page is killed (SIGKILL) mid-call. The page's SDK resumes on
// the other node (its session lives on every node), media never stops (it is peer to
// peer), and a hang-up afterwards still ends the call on both sides.
import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import { NetNs } from "./lib/netns.mjs";
import { launchIn } from "./lib/browser.mjs";
import { startFirstcall, startRedis } from "./lib/servers.mjs";
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

/** Wait until the page's client is connected again after `since` (its session resumed). */
const resumedAfter = (page, since, timeoutMs = 30000) =>
  page.evaluate(
    async ({ since, timeoutMs }) => {
      const deadline = Date.now() + timeoutMs;
      const back = () => window.client.timeline.some((e) => e.t > since && e.event === "session: welcome" && e.detail?.resumed);
      while (!back()) {
        if (Date.now() > deadline) throw new Error(`no resume\n${window.client.timeline.slice(-30).map((e) => `${e.t} ${e.event} ${JSON.stringify(e.detail ?? {})}`).join("\n")}`);
        await new Promise((r) => setTimeout(r, 50));
      }
      return window.client.timeline.filter((e) => e.t > since && /next-node|welcome|socket-closed/.test(e.event)).map((e) => `${e.event} ${JSON.stringify(e.detail ?? {})}`);
    },
    { since, timeoutMs },
  );

describe("a call across two nodes outlives one node", { skip: !isRoot && !process.env.CI && "not root" }, () => {
  let ns, redis, nodes, browser, closeBrowser;
  before(async () => {
    ns = new NetNs();
    redis = await startRedis(ns);
    const args = ["--redis-url", redis.url, "--turn-secret", "cluster-web-secret"];
    nodes = [await startFirstcall(ns, args, { node: 0 }), await startFirstcall(ns, args, { node: 1 })];
    ({ browser, close: closeBrowser } = await launchIn(ns));
  });
  after(async () => {
    await closeBrowser?.();
    for (const n of nodes ?? []) n.stop();
    redis?.stop();
    ns?.close();
  });

  test("the callee's node is killed mid-call: it resumes on the other, media carries on, a hang-up ends both sides", async (t) => {
    const urls = nodes.map((n) => n.ws);
    // Bob on node 1 (first in his list), Alice on node 0.
    const b = await openClient(browser, nodes[1].origin, "cl-bob", { autoAccept: true, urls: [urls[1], urls[0]] });
    const a = await openClient(browser, nodes[0].origin, "cl-alice", { urls });
    await a.page.evaluate(() => (window.call = window.client.call("cl-bob", { video: true })));
    await Promise.all([connectedWithMedia(a.page, "window.call"), connectedWithMedia(b.page, "window.calls[0]")]);

    const since = await b.page.evaluate(() => window.client.timeline.at(-1)?.t ?? 0);
    const framesAtKill = await decoded(b.page, "window.calls[0]");
    await nodes[1].stopAndWait();
    const t0 = Date.now();
    const moves = await resumedAfter(b.page, since);
    t.diagnostic(`bob resumed on the other node ${Date.now() - t0} ms after his node died: ${moves.join(" | ")}`);
    assert.ok(moves.some((m) => m.startsWith("session: next-node")), `moved to the other node: ${moves.join(" | ")}`);
    // The call is still the same live call, and media never needed the dead node.
    assert.equal(await b.page.evaluate(() => window.calls[0].state), "connected");
    const framesNow = await decoded(b.page, "window.calls[0]");
    assert.ok(framesNow > framesAtKill, `video decoded after the node died: ${framesAtKill} -> ${framesNow}`);

    await a.page.evaluate(() => window.call.hangup());
    assert.equal(await endedReason(b.page, "window.calls[0]"), "hangup");
    assert.equal(await endedReason(a.page, "window.call"), "hangup");
    await a.close();
    await b.close();
  });
});
