// The demo page (web/demo), driven as a person would: shared by the tests that click
// through it.
import assert from "node:assert/strict";

/** Sign `name` in on the demo page `page` shows, and wait for its session. */
export async function signIn(page, name) {
  await page.fill("#name", name);
  await page.click("#signin-button");
  await page.waitForSelector("#app:not(.hidden)", { timeout: 10000 });
  await page.waitForFunction(() => document.getElementById("status").dataset.state === "connected", null, { timeout: 15000 });
}

/**
 * `caller` sees `calleeName` online and calls with video; `callee` rings (from
 * `callerName`) and answers; both pages then show the call connected and remote video
 * with frames.
 */
export async function videoCall(caller, callee, callerName, calleeName) {
  const button = `#people li[data-user="${calleeName}"] button[data-media="video"]`;
  await caller.waitForSelector(button, { timeout: 10000 });
  await caller.click(button);
  await callee.waitForSelector("#incoming:not(.hidden)", { timeout: 10000 });
  assert.equal(await callee.textContent("#incoming-from"), callerName);
  await callee.click("#accept");
  for (const page of [caller, callee]) {
    await page.waitForFunction(() => document.body.dataset.callState === "connected", null, { timeout: 30000 });
    // Media flows: the remote video has frames.
    await page.waitForFunction(() => {
      const v = document.getElementById("remote");
      return v.videoWidth > 0 && v.getVideoPlaybackQuality().totalVideoFrames > 0;
    }, null, { timeout: 15000 });
  }
}
