// Quality events over an emulated path (issue 20 point 5): two Chromium hosts in their
// own sites of a small internet (netsim/lib/topo.mjs), one behind a link with 25 ms one
// way and 5 % loss each way (firstcall-linkem, the netsim link emulator), so the pages'
// path has a 50 ms round trip and 5 % loss. The reports must say so.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, openSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { Lab } from "../../netsim/lib/topo.mjs";
import { requireRoot } from "./lib/netns.mjs";
import { launchIn } from "./lib/browser.mjs";
import { firstcallBin } from "./lib/servers.mjs";
import { openClient, connectedWithMedia, incoming } from "./lib/sdk.mjs";

const ORIGIN = "http://203.0.113.1:443";

test("quality under 50 ms round trip and 5 % loss: loss 3-8 %, round trip within 20 %", { timeout: 120000 }, async (t) => {
  if (!requireRoot(t)) return;
  const bin = firstcallBin();
  const linkem = join(dirname(bin), "firstcall-linkem");
  if (!existsSync(linkem)) throw new Error(`no ${linkem}: cargo build -p firstcall-netsim (or the workspace)`);
  const lab = new Lab(linkem);
  t.after(() => lab.close());
  const hostA = lab.addSite("none", { delayMs: 25, loss: 0.05 }).hosts[0];
  const hostB = lab.addSite("none").hosts[0];
  const dir = mkdtempSync(join(tmpdir(), "firstcall-quality-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const logFile = join(dir, "server.log");
  const out = openSync(logFile, "a");
  const server = spawn("ip", ["netns", "exec", lab.srv, bin, "serve", "--dev", "--http-listen", "203.0.113.1:443", "--turn-listen", "203.0.113.1:3478",
    "--relay-ports", "50000-50199", "--realm", "quality", "--data-dir", join(dir, "data")], { stdio: ["ignore", out, out] });
  t.after(() => server.kill("SIGKILL"));
  const deadline = Date.now() + 15000;
  for (;;) {
    try {
      lab.exec(lab.srv, process.execPath, "-e", `fetch("${ORIGIN}/healthz").then(r=>process.exit(r.ok?0:1),()=>process.exit(1))`);
      break;
    } catch {
      if (server.exitCode !== null || Date.now() > deadline) throw new Error(`firstcall not healthy:\n${readFileSync(logFile, "utf8").slice(-2000)}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  const extraArgs = [`--unsafely-treat-insecure-origin-as-secure=${ORIGIN}`];
  const A = await launchIn({ name: hostA.ns }, { extraArgs });
  t.after(A.close);
  const B = await launchIn({ name: hostB.ns }, { extraArgs });
  t.after(B.close);
  // 20 s intervals: about 2000 audio packets per report (both directions). With 10 s
  // reports (binomial standard deviation 0.7 %) the readings spread wider than that: 3.8,
  // 4.7, 5.1, 5.9 % in isolated runs, and one fresh-clone CI run read 2.8 %, outside the
  // 3-8 % asked for. Twice the packets halve the variance.
  const options = { qualityIntervalMs: 20000 };
  const b = await openClient(B.browser, ORIGIN, "q-bob", { options, autoAccept: true });
  const a = await openClient(A.browser, ORIGIN, "q-alice", { options });
  for (const p of [a.page, b.page]) await p.evaluate(() => (window.reports = []));
  await a.page.evaluate(() => {
    window.call = window.client.call("q-bob");
    window.call.on("quality", (q) => window.reports.push(q));
  });
  await incoming(b.page);
  await b.page.evaluate(() => window.calls[0].on("quality", (q) => window.reports.push(q)));
  await Promise.all([connectedWithMedia(a.page, "window.call"), connectedWithMedia(b.page, "window.calls[0]")]);
  // The second report of each side: the first interval holds the call's start.
  const second = (p) => p.waitForFunction(() => window.reports.length >= 2 && window.reports[1], null, { timeout: 70000 }).then((h) => h.jsonValue());
  const [qa, qb] = await Promise.all([second(a.page), second(b.page)]);
  for (const [who, q] of [["caller", qa], ["callee", qb]]) {
    assert.ok(q.loss >= 0.03 && q.loss <= 0.08, `${who}: loss ${q.loss} for 5 % emulated: ${JSON.stringify(q)}`);
    assert.ok(q.rttMs >= 40 && q.rttMs <= 60, `${who}: round trip ${q.rttMs} ms for 50 ms emulated: ${JSON.stringify(q)}`);
    assert.ok(q.inKbps > 0 && q.outKbps > 0);
    assert.equal(q.level, "fair", "5 % loss is fair, not good");
  }
  // The summary at the end.
  await a.page.evaluate(() => window.call.hangup());
  const summary = await a.page.evaluate(() => window.call.summary);
  assert.ok(summary.durationMs >= 39000, JSON.stringify(summary)); // two 20 s intervals
  assert.ok(summary.bytesSent > 0 && summary.bytesReceived > 0);
  assert.equal(summary.restarts, 0);
  assert.equal(summary.pair.local, "host");
  // Both sides report the ended call; the server's histograms hold both: a round trip
  // within 100 ms, a loss above 1 % and within 10 %.
  const metrics = () =>
    a.page.evaluate(async () => {
      const text = await (await fetch("/metrics")).text();
      const get = (s) => Number(text.split("\n").find((l) => l.startsWith(s + " "))?.split(" ")[1] ?? 0);
      return {
        reports: get("firstcall_call_rtt_seconds_count"),
        rttUnder100ms: get('firstcall_call_rtt_seconds_bucket{le="0.1"}'),
        lossUnder1pct: get('firstcall_call_audio_loss_ratio_bucket{le="0.01"}'),
        lossUnder10pct: get('firstcall_call_audio_loss_ratio_bucket{le="0.1"}'),
      };
    });
  let m = await metrics();
  for (let i = 0; i < 100 && m.reports < 2; i++) {
    await new Promise((r) => setTimeout(r, 100));
    m = await metrics();
  }
  assert.deepEqual(m, { reports: 2, rttUnder100ms: 2, lossUnder1pct: 0, lossUnder10pct: 2 }, JSON.stringify(m));
  t.diagnostic(`caller ${JSON.stringify(qa)}; callee ${JSON.stringify(qb)}; summary ${JSON.stringify(summary)}; server histograms ${JSON.stringify(m)}`);
});
