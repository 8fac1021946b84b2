// The demo page, clicked through as a person would: two people sign in, one calls,
// the other answers, both see video and the timeline, one hangs up. Screenshot saved.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { NetNs, requireRoot } from "./lib/netns.mjs";
import { launchIn } from "./lib/browser.mjs";
import { startFirstcall } from "./lib/servers.mjs";

const shots = new URL("../test-results/", import.meta.url).pathname;

test("demo page: sign in, call, answer, see video and timeline, hang up", { timeout: 90000 }, async (t) => {
  if (!requireRoot(t)) return;
  mkdirSync(shots, { recursive: true });
  const ns = new NetNs();
  t.after(() => ns.close());
  const server = await startFirstcall(ns);
  t.after(() => server.stop());
  const { browser, close } = await launchIn(ns);
  t.after(close);
  const ctxA = await browser.newContext({ viewport: { width: 1400, height: 860 } });
  const ctxB = await browser.newContext({ viewport: { width: 1400, height: 860 } });
  const [alice, bob] = [await ctxA.newPage(), await ctxB.newPage()];

  for (const [page, name] of [[alice, "alice"], [bob, "bob"]]) {
    await page.goto(server.origin + "/");
    await page.fill("#name", name);
    await page.click("#signin-button");
    await page.waitForSelector("#app:not(.hidden)", { timeout: 10000 });
    await page.waitForFunction(() => document.getElementById("status").dataset.state === "connected");
  }
  // Alice sees Bob online and calls him.
  await alice.waitForSelector('#people li[data-user="bob"] button[data-media="video"]', { timeout: 10000 });
  await alice.click('#people li[data-user="bob"] button[data-media="video"]');
  // Bob's phone rings; he answers.
  await bob.waitForSelector("#incoming:not(.hidden)", { timeout: 10000 });
  assert.equal(await bob.textContent("#incoming-from"), "alice");
  await bob.click("#accept");
  for (const page of [alice, bob]) {
    await page.waitForFunction(() => document.body.dataset.callState === "connected", null, { timeout: 30000 });
    // Media flows: the remote video has frames.
    await page.waitForFunction(() => {
      const v = document.getElementById("remote");
      return v.videoWidth > 0 && v.getVideoPlaybackQuality().totalVideoFrames > 0;
    }, null, { timeout: 15000 });
    const ttc = await page.textContent("#ttc");
    assert.match(ttc, /^\d+\.\d\d s$/);
    assert.notEqual(await page.textContent("#pair"), "–");
    const events = await page.$$eval("#events li", (lis) => lis.map((l) => l.textContent));
    assert.ok(events.some((e) => e.includes("candidate gathered and sent")), events.join("\n"));
    assert.ok(events.some((e) => e.includes("connected")), events.join("\n"));
  }
  await alice.screenshot({ path: shots + "demo-call.png" });
  await bob.screenshot({ path: shots + "demo-call-bob.png" });
  t.diagnostic(`alice connected in ${await alice.textContent("#ttc")} over ${await alice.textContent("#pair")}`);
  // Bob hangs up: Alice is told, with the reason.
  await bob.click("#hangup");
  await alice.waitForFunction(() => document.getElementById("call-state").textContent === "ended (hangup)", null, { timeout: 10000 });
  await ctxA.close();
  await ctxB.close();
});
