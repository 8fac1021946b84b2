// The media-stall watcher (sdk/src/stall.ts): a pure function of packet counts and time.
import { test } from "node:test";
import assert from "node:assert/strict";
import { initialStall, stallStep, packetsReceived } from "../sdk/dist/stall.js";

/** Feed [packets, expecting, now] samples; returns the times a stall was reported and a probe asked for. */
function run(samples, limit = 1000) {
  let s = initialStall();
  const stalls = [];
  const probes = [];
  for (const [packets, expecting, now] of samples) {
    const r = stallStep(s, packets, expecting, now, limit);
    s = r.state;
    if (r.stalled) stalls.push(now);
    if (r.probe) probes.push(now);
  }
  return { stalls, probes, state: s };
}

test("media that stops for the limit while expected is one stall, reported once, with one probe at half the limit", () => {
  const samples = [[10, true, 0], [60, true, 1000], [60, true, 1499], [60, true, 1500], [60, true, 1999], [60, true, 2000], [60, true, 2250], [60, true, 9000]];
  const r = run(samples);
  assert.deepEqual(r.stalls, [2000]);
  assert.deepEqual(r.probes, [1500]);
  // Samples too sparse to see the half: the probe comes with the stall.
  assert.deepEqual(run([[10, true, 0], [10, true, 3000]]).probes, [3000]);
});

test("once media flows again, a later stop is a new stall", () => {
  const samples = [[10, true, 0], [10, true, 1000], [20, true, 1250], [20, true, 2250]];
  assert.deepEqual(run(samples).stalls, [1000, 2250]);
  assert.deepEqual(run(samples).probes, [1000, 2250]);
});

test("no stall before any media arrived, nor while the other side sends nothing (all muted), nor when off", () => {
  assert.deepEqual(run([[0, true, 0], [0, true, 5000]]).stalls, [], "never flowed");
  assert.deepEqual(run([[10, true, 0], [10, false, 500], [10, false, 5000], [10, true, 5500]]).stalls, [], "muted: the wait restarts on unmute");
  assert.deepEqual(run([[10, true, 0], [10, false, 500], [10, true, 5500], [10, true, 6500]]).stalls, [6500]);
  assert.deepEqual(run([[10, true, 0], [10, true, 5000]], 0).stalls, [], "limit 0: off");
  assert.deepEqual(run([[10, true, 0], [10, true, 5000]], 0).probes, []);
});

test("packets are summed over every inbound RTP stream of a stats report", () => {
  const stats = new Map([
    ["a", { type: "inbound-rtp", kind: "audio", packetsReceived: 5 }],
    ["v", { type: "inbound-rtp", kind: "video", packetsReceived: 7 }],
    ["o", { type: "outbound-rtp", kind: "audio", packetsSent: 100 }],
  ]);
  assert.equal(packetsReceived(stats), 12);
});
