// The demo page, clicked through as a person would: two people sign in, one calls,
// the other answers, both see video, the timeline and the call's quality; one mutes,
// turns the camera off, switches microphone and shares the screen, and the other sees
// it; one hangs up. Any console error or warning, failed request or page error fails
// the test. Screenshots saved.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { NetNs, requireRoot } from "./lib/netns.mjs";
import { launchIn } from "./lib/browser.mjs";
import { startFirstcall } from "./lib/servers.mjs";
import { signIn, videoCall } from "./lib/demo.mjs";

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
  const problems = [];
  for (const [page, who] of [[alice, "alice"], [bob, "bob"]]) {
    page.on("console", (m) => ["error", "warning"].includes(m.type()) && problems.push(`${who} console ${m.type()}: ${m.text()}`));
    page.on("pageerror", (e) => problems.push(`${who} page error: ${e.message}`));
    page.on("response", (r) => r.status() >= 400 && problems.push(`${who} HTTP ${r.status()} ${r.url()}`));
    page.on("requestfailed", (r) => problems.push(`${who} request failed: ${r.url()} ${r.failure()?.errorText}`));
  }

  for (const [page, name] of [[alice, "alice"], [bob, "bob"]]) {
    await page.goto(server.origin + "/");
    // The name check runs (its pattern compiles): a name with a space is refused.
    await page.fill("#name", "not valid");
    assert.equal(await page.$eval("#name", (i) => i.validity.patternMismatch), true);
    await signIn(page, name);
  }
  // Alice sees Bob online and calls him; Bob's phone rings and he answers.
  await videoCall(alice, bob, "alice", "bob");
  for (const page of [alice, bob]) {
    const ttc = await page.textContent("#ttc");
    assert.match(ttc, /^\d+\.\d\d s$/);
    assert.notEqual(await page.textContent("#pair"), "–");
    const events = await page.$$eval("#events li", (lis) => lis.map((l) => l.textContent));
    assert.ok(events.some((e) => e.includes("candidate gathered and sent")), events.join("\n"));
    assert.ok(events.some((e) => e.includes("connected")), events.join("\n"));
  }
  // The quality indicator fills in (a report every 2 s).
  for (const page of [alice, bob]) {
    await page.waitForFunction(() => ["good", "fair", "poor"].includes(document.getElementById("quality").dataset.level), null, { timeout: 15000 });
  }
  // Alice mutes and turns her camera off: Bob's page says so.
  await alice.click("#mute-audio");
  await alice.click("#mute-video");
  await bob.waitForFunction(() => {
    const m = document.getElementById("remote-media");
    return !m.classList.contains("hidden") && m.dataset.audio === "false" && m.dataset.video === "false";
  }, null, { timeout: 10000 });
  assert.match(await bob.textContent("#remote-media"), /muted, camera off/);
  assert.equal(await alice.textContent("#mute-audio"), "Unmute");
  await alice.click("#mute-audio");
  await alice.click("#mute-video");
  await bob.waitForFunction(() => document.getElementById("remote-media").dataset.audio === "true" && document.getElementById("remote-media").dataset.video === "true", null, { timeout: 10000 });
  // Another microphone from the picker.
  const mic = await alice.$$eval("#mic-select option", (os) => os.map((o) => o.value).find((v, i, all) => v !== document.getElementById("mic-select").value && i === all.length - 1));
  assert.ok(mic, "the microphone picker lists more than one");
  await alice.selectOption("#mic-select", mic);
  await alice.waitForFunction(() => [...document.querySelectorAll("#events li")].some((l) => l.textContent.includes("device switched")), null, { timeout: 10000 });
  // Bob shares his screen: Alice sees it.
  await bob.click("#share-screen");
  await alice.waitForFunction(() => {
    const v = document.getElementById("remote-screen");
    // The fake screen is as wide as Bob's window (1400), the fake camera 640.
    return !v.classList.contains("hidden") && v.videoWidth === 1400 && v.getVideoPlaybackQuality().totalVideoFrames > 0;
  }, null, { timeout: 15000 }).catch(async (e) => {
    const v = await alice.evaluate(() => { const v = document.getElementById("remote-screen"); return { hidden: v.classList.contains("hidden"), w: v.videoWidth, src: !!v.srcObject, paused: v.paused, frames: v.getVideoPlaybackQuality().totalVideoFrames }; });
    const events = await bob.$$eval("#events li", (lis) => lis.map((l) => l.textContent).slice(-8));
    throw new Error(`${e.message}: remote screen ${JSON.stringify(v)}; bob: ${events.join(" | ")}; problems ${problems.join(" | ")}`);
  });
  assert.equal(await bob.textContent("#share-screen"), "Stop sharing");
  await alice.screenshot({ path: shots + "demo-call.png" });
  await bob.screenshot({ path: shots + "demo-call-bob.png" });
  t.diagnostic(`alice connected in ${await alice.textContent("#ttc")} over ${await alice.textContent("#pair")}`);
  // Bob hangs up: Alice is told, with the reason.
  await bob.click("#hangup");
  await alice.waitForFunction(() => document.getElementById("call-state").textContent === "ended (hangup)", null, { timeout: 10000 });
  assert.deepEqual(problems, [], "no console error or warning, failed request or page error");
  await ctxA.close();
  await ctxB.close();
});
