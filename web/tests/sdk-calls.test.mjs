// Real-browser calls through the SDK: each scenario must connect on the first attempt
// (no ICE restart, one invite) with decoded remote video, or end with the right reason.
import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { NetNs, requireRoot } from "./lib/netns.mjs";
import { launchIn } from "./lib/browser.mjs";
import { startFirstcall } from "./lib/servers.mjs";
import { openClient, connectedWithMedia, endedReason, incoming, metric } from "./lib/sdk.mjs";

const isRoot = process.getuid && process.getuid() === 0;

describe("SDK calls in Chromium", { skip: !isRoot && !process.env.CI && "not root" }, () => {
  let ns, server, browser, closeBrowser, certDir;
  before(async () => {
    ns = new NetNs();
    certDir = mkdtempSync(join(tmpdir(), "firstcall-cert-"));
    execFileSync("openssl", ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
      "-keyout", join(certDir, "key.pem"), "-out", join(certDir, "cert.pem"), "-days", "2",
      "-subj", "/CN=203.0.113.1", "-addext", "subjectAltName=IP:203.0.113.1"], { stdio: "ignore" });
    server = await startFirstcall(ns, [
      "--ring-timeout", "4s",
      "--tls-cert", join(certDir, "cert.pem"), "--tls-key", join(certDir, "key.pem"),
      "--turn-tls-listen", "203.0.113.1:5349",
    ]);
    ({ browser, close: closeBrowser } = await launchIn(ns, { trustCerts: [join(certDir, "cert.pem")] }));
  });
  after(async () => {
    await closeBrowser?.();
    server?.stop();
    ns?.close();
    if (certDir) rmSync(certDir, { recursive: true, force: true });
  });

  async function pair(caller, callee, { callerOpts = {}, calleeOpts = {} } = {}) {
    const b = await openClient(browser, server.origin, callee, { options: calleeOpts, autoAccept: true });
    const a = await openClient(browser, server.origin, caller, { options: callerOpts });
    return { a, b };
  }

  async function assertFirstAttempt(a, b, label) {
    await a.page.evaluate(() => window.call);
    const [sa, sb] = await Promise.all([connectedWithMedia(a.page, "window.call"), connectedWithMedia(b.page, "window.calls[0]")]);
    for (const s of [sa, sb]) assert.equal(s.restarts, 0, `${label}: connected without an ICE restart`);
    return { sa, sb };
  }

  test("two pages, direct", async (t) => {
    const { a, b } = await pair("d-alice", "d-bob");
    await a.page.evaluate(() => (window.call = window.client.call("d-bob", { video: true })));
    const { sa } = await assertFirstAttempt(a, b, "direct");
    assert.equal(sa.pair.local, "host");
    t.diagnostic(`direct: ${JSON.stringify(sa)}`);
    await a.close();
    await b.close();
  });

  for (const [transport, filter, expectProto] of [
    ["udp", (u) => u.startsWith("turn:") && u.endsWith("transport=udp"), "udp"],
    ["tcp", (u) => u.startsWith("turn:") && u.endsWith("transport=tcp"), "tcp"],
    ["tls", (u) => u.startsWith("turns:"), "tls"],
  ]) {
    test(`relay only over ${transport}`, async (t) => {
      const opts = { rtcConfig: { iceTransportPolicy: "relay" }, iceUrlFilter: filter };
      const { a, b } = await pair(`r${transport}-alice`, `r${transport}-bob`, { callerOpts: opts, calleeOpts: opts });
      const urls = await a.page.evaluate(() => window.client.iceServers[0].urls);
      if (transport === "tls") assert.ok(urls.some((u) => u.startsWith("turns:203.0.113.1:5349")), JSON.stringify(urls));
      await a.page.evaluate((callee) => (window.call = window.client.call(callee)), `r${transport}-bob`);
      const { sa, sb } = await assertFirstAttempt(a, b, `relay ${transport}`);
      for (const s of [sa, sb]) {
        assert.equal(s.pair.local, "relay");
        assert.equal(s.pair.protocol, expectProto);
        assert.deepEqual(Object.keys(s.gathered), ["relay"]);
      }
      t.diagnostic(`relay ${transport}: ${JSON.stringify(sa)}`);
      await a.close();
      await b.close();
    });
  }

  // The founding bug's "TURN credentials fetched too late": a call placed before the
  // socket is even up must still get its ICE servers before its peer connection exists.
  // They come from the welcome or, sooner, from the prefetch the client starts beside the
  // socket (`prefetchIceServers`, on for a page of the server's own origin): whichever
  // comes first, it must come before the peer connection.
  // Relay candidates are not counted here: on one host the host pair is strongly connected
  // within ~50 ms, and WebRTC then stops gathering (GATHER_ONCE) and discards TURN ports
  // still allocating (BasicPortAllocatorSession::OnConfigStop). The relay-only variant
  // below proves the credentials work on that very first peer connection.
  async function coldStart(user, callee, options) {
    const ctx = await browser.newContext();
    const page = await ctx.newPage();
    await page.goto(`${server.origin}/healthz`);
    await page.evaluate(async ({ user, callee, options }) => {
      const sdk = await import("/sdk/firstcall.js");
      window.client = sdk.createClient(`ws://${location.host}/v1/ws`, { token: `dev:${user}`, ...options });
      window.call = window.client.call(callee); // before any welcome
    }, { user, callee, options });
    const s = await connectedWithMedia(page, "window.call");
    const story = () => page.evaluate(() => window.client.timeline.map((e) => `${e.t} ${e.event} ${JSON.stringify(e.detail ?? {})}`).join("\n"));
    assert.equal(s.restarts, 0, `connected without an ICE restart:\n${s.restarts ? await story() : ""}`);
    const { order, urls } = await page.evaluate(() => ({
      // The client's timeline holds the call's events too, in the order they happened.
      order: window.client.timeline.map((e) => e.event).filter((e) => /ice servers prefetched|session started|peer connection created|using pre-warmed/.test(e)),
      urls: window.call.pc.getConfiguration().iceServers.flatMap((x) => [].concat(x.urls)),
    }));
    const iceFirst = ["client: ice servers prefetched", "client: session started"].includes(order[0]);
    assert.ok(order.length >= 2 && iceFirst, `ICE servers arrived before the peer connection was built: ${order}`);
    assert.ok(urls.some((u) => u.startsWith("turn:")) && urls.some((u) => u.startsWith("turns:")), `TURN in the first peer connection: ${urls}`);
    return { s, page, ctx };
  }

  test("cold start: the caller calls in the same tick the client is created", async (t) => {
    const b = await openClient(browser, server.origin, "c-bob", { autoAccept: true });
    const { s, ctx } = await coldStart("c-alice", "c-bob", {});
    t.diagnostic(`cold start: ${JSON.stringify(s)}`);
    await ctx.close();
    await b.close();
  });

  test("cold start, relay only: the very first peer connection relays", async (t) => {
    const b = await openClient(browser, server.origin, "cr-bob", { autoAccept: true });
    const { s, page, ctx } = await coldStart("cr-alice", "cr-bob", { rtcConfig: { iceTransportPolicy: "relay" } });
    const gathered = await page.evaluate(() => window.call.candidates.local);
    assert.equal(s.pair.local, "relay");
    assert.ok(gathered.relay > 0 && !gathered.host, `relay candidates only: ${JSON.stringify(gathered)}`);
    t.diagnostic(`cold start, relay only: ${JSON.stringify(s)}`);
    await ctx.close();
    await b.close();
  });

  test("the direct path breaks mid-call: the call carries on over the relay", async (t) => {
    // Ephemeral ports below the relay range (see the rules below).
    execFileSync("ip", ["netns", "exec", ns.name, "sysctl", "-qw", "net.ipv4.ip_local_port_range=32768 49999"]);
    const { a, b } = await pair("pb-alice", "pb-bob");
    await a.page.evaluate(() => {
      window.call = window.client.call("pb-bob", { video: true });
      window.recovery = [];
      window.call.on("reconnecting", (e) => window.recovery.push(["reconnecting", e.cause]));
      window.call.on("reconnected", (e) => window.recovery.push(["reconnected", e.cause]));
    });
    await assertFirstAttempt(a, b, "before the break");
    // Drop every packet between the two pages' own ports, UDP and TCP (ICE-TCP host pairs
    // too); what stays is each page's traffic with the server: TURN (3478, 5349), the
    // relay ports and signaling (8080).
    const keep = { udp: "3478,50000:50199", tcp: "3478,5349,8080" };
    // The pages' own sockets are the kernel's ephemeral ports, whose default range
    // (32768-60999) holds the relay ports above: a host candidate bound there would be
    // kept too, and the direct path would not break. CI failed once with 809 frames
    // still on host/host 40 s after the rules; its log does not give the ports, so this
    // is the likely cause, not a confirmed one. The range is set before the pages gather.
    const rules = Object.entries(keep).map(([proto, ports]) =>
      ["-p", proto, "-m", "multiport", "!", "--dports", ports, "-m", "multiport", "!", "--sports", ports, "-j", "DROP"]);
    for (const r of rules) execFileSync("ip", ["netns", "exec", ns.name, "iptables", "-I", "INPUT", ...r]);
    const t0 = Date.now();
    try {
      const r = await a.page.evaluate(async () => {
        const stats = async () => {
          const st = await window.call.pc.getStats();
          let frames = 0, pair;
          st.forEach((s) => {
            if (s.type === "inbound-rtp" && s.kind === "video") frames = s.framesDecoded || 0;
            if (s.type === "transport" && s.selectedCandidatePairId) pair = st.get(s.selectedCandidatePairId);
          });
          const type = (id) => st.get(id)?.candidateType;
          return { frames, local: pair && type(pair.localCandidateId), remote: pair && type(pair.remoteCandidateId) };
        };
        const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
        const deadline = Date.now() + 40000;
        let s = await stats();
        while (s.local !== "relay" && s.remote !== "relay") {
          if (Date.now() > deadline || window.call.state === "ended") throw new Error(`no relay pair: ${JSON.stringify(s)}\n${window.call.timeline.map((e) => e.event).join("\n")}`);
          await sleep(200);
          s = await stats();
        }
        const onRelay = s.frames;
        // Video keeps decoding over the relay (15 frames: half a second at 30 fps).
        while ((s = await stats()).frames < onRelay + 15) {
          if (Date.now() > deadline) throw new Error(`relay pair but no video: ${JSON.stringify(s)}`);
          await sleep(200);
        }
        // The app was told: reconnecting at the restart, reconnected once ICE was back.
        while (window.recovery.at(-1)?.[0] !== "reconnected") {
          if (Date.now() > deadline) throw new Error(`no reconnected event: ${JSON.stringify(window.recovery)}`);
          await sleep(100);
        }
        return { ...s, state: window.call.state, restarts: window.call.timeline.filter((e) => e.event === "ice restart").length, recovery: window.recovery };
      });
      assert.equal(r.state, "connected");
      // Told when the path broke and when it was back (ICE may flap meanwhile: pairs alternate).
      assert.ok(r.recovery.length >= 2 && r.recovery.length % 2 === 0, JSON.stringify(r.recovery));
      r.recovery.forEach(([e, cause], i) => assert.deepEqual([e, cause], [i % 2 ? "reconnected" : "reconnecting", "ice"], JSON.stringify(r.recovery)));
      t.diagnostic(`path break: on the relay after ${Date.now() - t0} ms: ${JSON.stringify(r)}`);
    } finally {
      for (const r of rules) execFileSync("ip", ["netns", "exec", ns.name, "iptables", "-D", "INPUT", ...r]);
    }
    // Ended, not left to the session TTL: later tests call other users on this server.
    await a.page.evaluate(() => window.call.hangup());
    await a.close();
    await b.close();
  });

  test("callee offline at invite time, online 5 s later", async (t) => {
    const a = await openClient(browser, server.origin, "o-alice");
    // The ring timeout is 4 s on this server: re-invite would be a second attempt, so
    // this scenario runs on its own server with the default 45 s.
    const ns2 = new NetNs("203.0.113.1/24");
    const s2 = await startFirstcall(ns2);
    const { browser: br2, close: close2 } = await launchIn(ns2);
    try {
      const a2 = await openClient(br2, s2.origin, "o-alice");
      await a2.page.evaluate(() => {
        window.call = window.client.call("o-bob");
        window.states = [];
        window.call.on("state", (s) => window.states.push(s));
      });
      await a2.page.waitForFunction(() => window.states.includes("pending"));
      const t0 = Date.now();
      await new Promise((r) => setTimeout(r, 5000));
      const b2 = await openClient(br2, s2.origin, "o-bob", { autoAccept: true });
      const sa = await connectedWithMedia(a2.page, "window.call");
      await connectedWithMedia(b2.page, "window.calls[0]");
      // The server counts the call when its call.connected frame is processed, which a
      // /metrics read right after the pages saw media can overtake (it did once, under load).
      const sample = 'firstcall_signal_first_attempt_total{result="success"}';
      const until = Date.now() + 5000;
      while ((await metric(a2.page, sample)) !== 1 && Date.now() < until) await new Promise((r) => setTimeout(r, 100));
      assert.equal(await metric(a2.page, sample), 1);
      t.diagnostic(`offline callee: connected ${Date.now() - t0} ms after the pending wait began; ${JSON.stringify(sa)}`);
      await a2.close();
      await b2.close();
    } finally {
      await close2();
      s2.stop();
      ns2.close();
      await a.close();
    }
  });

  test("callee's WebSocket killed after the offer, before its candidates are out", async (t) => {
    const b = await openClient(browser, server.origin, "k-bob");
    const a = await openClient(browser, server.origin, "k-alice");
    await a.page.evaluate(() => (window.call = window.client.call("k-bob")));
    await incoming(b.page);
    // The socket dies exactly when the callee's first candidate is handed to it: that
    // frame goes into a closing socket and is lost on the wire (the seed app's bug).
    // The SDK still holds it unacknowledged and resends it after the resume.
    const queued = await b.page.evaluate(async () => {
      window.recovery = [];
      window.calls[0].on("reconnecting", (e) => window.recovery.push(["reconnecting", e.cause]));
      window.calls[0].on("reconnected", (e) => window.recovery.push(["reconnected", e.cause]));
      const send = WebSocket.prototype.send;
      window.killed = null;
      WebSocket.prototype.send = function (data) {
        if (!window.killed && typeof data === "string" && data.includes('"candidate":{')) {
          window.killed = JSON.parse(data).seq;
          this.close();
        }
        return send.call(this, data);
      };
      await window.calls[0].accept();
      return window.killed;
    });
    const sa = await connectedWithMedia(a.page, "window.call");
    await connectedWithMedia(b.page, "window.calls[0]");
    // Media may connect before the callee's socket is back (its candidates can be found
    // as peer-reflexive without the lost frame): wait for the resume itself, bounded.
    const resumed = await b.page
      .waitForFunction(() => window.client.timeline.some((e) => e.event === "client: session resumed"), null, { timeout: 15000 })
      .then(() => true, () => false);
    assert.ok(resumed, `the callee resumed its session: ${await b.page.evaluate(() => window.client.timeline.map((e) => e.event).filter((e) => /session|socket|restart|reconnect/.test(e)).join(" | "))}`);
    assert.deepEqual(await b.page.evaluate(() => window.recovery), [["reconnecting", "signaling"], ["reconnected", "signaling"]], "the callee's call said so");
    const killedSeq = await b.page.evaluate(() => window.killed);
    assert.ok(killedSeq > 0, "the socket was killed under a candidate frame");
    const remote = await a.page.evaluate(() => window.call.candidates.remote);
    assert.ok(Object.values(remote).reduce((x, y) => x + y, 0) > 0, `callee candidates reached the caller: ${JSON.stringify(remote)}`);
    t.diagnostic(`socket killed under frame seq ${killedSeq}; caller got ${JSON.stringify(remote)}; ${JSON.stringify(sa)}`);
    await a.close();
    await b.close();
  });

  test("two callee pages: one answers, the other stops ringing", async () => {
    const b1 = await openClient(browser, server.origin, "m-bob");
    const b2 = await openClient(browser, server.origin, "m-bob");
    const a = await openClient(browser, server.origin, "m-alice");
    await a.page.evaluate(() => (window.call = window.client.call("m-bob")));
    await incoming(b1.page);
    await incoming(b2.page);
    await b2.page.evaluate(() => window.calls[0].accept());
    assert.equal(await endedReason(b1.page, "window.calls[0]"), "answered_elsewhere");
    await connectedWithMedia(a.page, "window.call");
    await connectedWithMedia(b2.page, "window.calls[0]");
    for (const p of [a, b1, b2]) await p.close();
  });

  test("hang-up, reject, cancel and timeout reach the other side with the right reason", async () => {
    const b = await openClient(browser, server.origin, "e-bob");
    const a = await openClient(browser, server.origin, "e-alice");
    // Hang-up after connecting.
    await a.page.evaluate(() => (window.call = window.client.call("e-bob")));
    await incoming(b.page, 1);
    await b.page.evaluate(() => window.calls[0].accept());
    await connectedWithMedia(a.page, "window.call");
    await b.page.evaluate(() => window.calls[0].hangup());
    assert.equal(await endedReason(a.page, "window.call"), "hangup");
    // Reject.
    await a.page.evaluate(() => (window.call = window.client.call("e-bob")));
    await incoming(b.page, 2);
    await b.page.evaluate(() => window.calls[1].reject());
    assert.equal(await endedReason(a.page, "window.call"), "rejected");
    // Cancel.
    await a.page.evaluate(() => (window.call = window.client.call("e-bob")));
    await incoming(b.page, 3);
    await a.page.evaluate(() => window.call.hangup());
    assert.equal(await endedReason(b.page, "window.calls[2]"), "cancelled");
    // Timeout (this server rings for 4 s).
    await a.page.evaluate(() => (window.call = window.client.call("e-bob")));
    await incoming(b.page, 4);
    assert.equal(await endedReason(a.page, "window.call", 10000), "timeout");
    assert.equal(await endedReason(b.page, "window.calls[3]", 10000), "timeout");
    await a.close();
    await b.close();
  });
});
