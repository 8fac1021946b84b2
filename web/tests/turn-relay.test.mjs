// A real browser relays through the embedded TURN server: two Chromium pages,
// iceTransportPolicy "relay", credentials from firstcall's HTTP API, over UDP and TCP.
import { test } from "node:test";
import assert from "node:assert/strict";
import { NetNs, requireRoot } from "./lib/netns.mjs";
import { launchIn } from "./lib/browser.mjs";
import { startFirstcall } from "./lib/servers.mjs";
import { fetchIceServers, preparePeer, connect, waitConnectedWithMedia } from "./lib/call.mjs";

for (const transport of ["udp", "tcp"]) {
  test(`relay-only call through firstcall TURN over ${transport}`, { timeout: 90000 }, async (t) => {
    if (!requireRoot(t)) return;
    const ns = new NetNs();
    t.after(() => ns.close());
    const server = await startFirstcall(ns);
    t.after(() => server.stop());
    const { browser, close } = await launchIn(ns);
    t.after(close);

    const [a, b] = [await browser.newPage(), await browser.newPage()];
    for (const p of [a, b]) await p.goto(`${server.origin}/healthz`);
    const iceA = await fetchIceServers(a, "alice", transport);
    const iceB = await fetchIceServers(b, "bob", transport);
    assert.equal(iceA[0].urls.length, 1, `one ${transport} TURN URI offered: ${JSON.stringify(iceA)}`);
    assert.match(iceA[0].urls[0], new RegExp(`^turn:203\\.0\\.113\\.1:3478\\?transport=${transport}$`));
    await preparePeer(a, iceA);
    await preparePeer(b, iceB);
    await connect(a, b);
    const [sa, sb] = await Promise.all([waitConnectedWithMedia(a), waitConnectedWithMedia(b)]).catch((e) => {
      throw new Error(`${e.message}\nserver log:\n${server.log()}`);
    });
    for (const s of [sa, sb]) {
      assert.equal(s.local, "relay", JSON.stringify(s));
      assert.equal(s.remote, "relay", JSON.stringify(s));
      assert.equal(s.relayProtocol, transport, JSON.stringify(s));
      assert.ok(s.framesDecoded > 0);
      assert.ok(s.gathered.length > 0 && s.gathered.every((c) => c === "relay"), JSON.stringify(s.gathered));
    }
    t.diagnostic(`caller ${JSON.stringify(sa)} callee ${JSON.stringify(sb)}`);
    if (process.env.FIRSTCALL_XDP && transport === "udp") {
      // Run with the XDP fast path attached (scripts/test): both pages' relays are this
      // server's, so their channels are joined in the kernel.
      const joined = await a.evaluate(async () => {
        const text = await (await fetch("/metrics")).text();
        const line = text.split("\n").find((l) => l.startsWith('firstcall_turn_xdp_packets_total{path="relay_to_relay"}'));
        return Number(line?.split(" ")[1] ?? -1);
      });
      assert.ok(joined > 0, `media joined in the kernel: ${joined}`);
      t.diagnostic(`relay_to_relay in the kernel: ${joined}`);
    }
  });
}
