// Issue 19 in Chromium: a signaling-only firstcall (`--no-turn`) hands out an existing
// coturn (`--ice-server`, same TURN REST secret), and a relay-only call goes through that
// coturn; the app's own rtcConfig.iceServers are kept beside the server's; the call's
// `meta` reaches the callee. Everything runs inside a throwaway network namespace
// (203.0.113.1, documentation range).
import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import { NetNs } from "./lib/netns.mjs";
import { launchIn } from "./lib/browser.mjs";
import { startFirstcall, startCoturn } from "./lib/servers.mjs";
import { openClient, connectedWithMedia } from "./lib/sdk.mjs";

const isRoot = process.getuid && process.getuid() === 0;
const SECRET = "shared-with-coturn";
// Not 3478: that port is the embedded server's elsewhere in these tests.
const COTURN_PORT = 3491;
const COTURN_RELAYS = [51000, 51099];

describe("SDK relay-only call through an external coturn (--no-turn --ice-server)", { skip: !isRoot && !process.env.CI && "not root" }, () => {
  let ns, coturn, server, browser, closeBrowser;
  before(async () => {
    ns = new NetNs();
    coturn = await startCoturn(ns, { port: COTURN_PORT, secret: SECRET, relay: COTURN_RELAYS.join("-") });
    server = await startFirstcall(ns, [
      "--no-turn",
      "--turn-secret", SECRET,
      "--ice-server", `turn:${ns.addr}:${COTURN_PORT}?transport=udp`,
      "--ice-server", `turn:${ns.addr}:${COTURN_PORT}?transport=tcp`,
    ]);
    ({ browser, close: closeBrowser } = await launchIn(ns));
  });
  after(async () => {
    await closeBrowser?.();
    server?.stop();
    coturn?.stop();
    ns?.close();
  });

  for (const transport of ["udp", "tcp"]) {
    test(`relay only over coturn ${transport}, app's own ICE servers kept, meta delivered`, async (t) => {
      const own = { urls: `stun:${ns.addr}:${COTURN_PORT}` };
      const opts = {
        rtcConfig: { iceTransportPolicy: "relay", iceServers: [own] },
        iceUrlFilter: new Function("u", `return !u.startsWith("turn:") || u.endsWith("transport=${transport}")`),
      };
      const b = await openClient(browser, server.origin, `cot${transport}-bob`, { options: opts, autoAccept: true });
      const a = await openClient(browser, server.origin, `cot${transport}-alice`, { options: opts });
      try {
        const meta = { subject: `coturn ${transport}`, ticket: 19, who: { name: "Zoë" } };
        await a.page.evaluate(({ callee, meta }) => (window.call = window.client.call(callee, { meta })), { callee: `cot${transport}-bob`, meta });
        const [sa, sb] = await Promise.all([connectedWithMedia(a.page, "window.call"), connectedWithMedia(b.page, "window.calls[0]")]);
        for (const s of [sa, sb]) {
          assert.equal(s.restarts, 0, "first attempt");
          assert.equal(s.pair.local, "relay");
          assert.equal(s.pair.protocol, transport);
          assert.deepEqual(Object.keys(s.gathered), ["relay"]);
        }
        // The relay is coturn's: the selected local candidate came from its URI and lies in
        // its relay range (this firstcall runs no TURN server at all).
        const relayOf = (page, expr) => page.evaluate(async (expr) => {
          const pc = eval(expr).pc;
          const stats = await pc.getStats();
          let pair = null;
          stats.forEach((s) => {
            if (s.type === "transport" && s.selectedCandidatePairId) pair = stats.get(s.selectedCandidatePairId);
          });
          const local = stats.get(pair.localCandidateId);
          return {
            url: local.url, address: local.address, port: local.port, relayProtocol: local.relayProtocol,
            servers: pc.getConfiguration().iceServers.flatMap((x) => [].concat(x.urls)),
          };
        }, expr);
        const [ra, rb] = [await relayOf(a.page, "window.call"), await relayOf(b.page, "window.calls[0]")];
        for (const r of [ra, rb]) {
          assert.equal(r.url, `turn:${ns.addr}:${COTURN_PORT}?transport=${transport}`, JSON.stringify(r));
          assert.equal(r.address, ns.addr);
          assert.ok(r.port >= COTURN_RELAYS[0] && r.port <= COTURN_RELAYS[1], `relay port ${r.port} in coturn's range`);
          // The app's own server stays, beside the server's.
          assert.deepEqual(r.servers, [own.urls, `turn:${ns.addr}:${COTURN_PORT}?transport=${transport}`]);
        }
        // meta: on the caller's call and, from call.incoming, on the callee's.
        assert.deepEqual(await a.page.evaluate(() => window.call.meta), meta);
        assert.deepEqual(await b.page.evaluate(() => window.calls[0].meta), meta);
        t.diagnostic(`coturn ${transport}: ${JSON.stringify(sa)} relay ${JSON.stringify(ra)}`);
        await a.page.evaluate(() => window.call.hangup());
      } finally {
        await a.close();
        await b.close();
      }
    });
  }
});
