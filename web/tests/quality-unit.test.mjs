// Quality reports (sdk/src/quality.ts): a pure function of two stats samples.
import { test } from "node:test";
import assert from "node:assert/strict";
import { quality, qualityLevel, readSample } from "../sdk/dist/firstcall.js";

/** A getStats()-shaped report: a Map of stats by id. */
const report = (entries) => new Map(entries.map((e) => [e.id, e]));

function statsAt({ sent, recv, aRecv, aLost, outSent, remLost, rttTotal, rttCount, jitter = 0.004 }) {
  return report([
    { id: "T", type: "transport", bytesSent: sent, bytesReceived: recv, selectedCandidatePairId: "P" },
    { id: "P", type: "candidate-pair", totalRoundTripTime: rttTotal, responsesReceived: rttCount, currentRoundTripTime: 0.9 },
    { id: "IA", type: "inbound-rtp", kind: "audio", packetsReceived: aRecv, packetsLost: aLost, jitter },
    { id: "IV", type: "inbound-rtp", kind: "video", packetsReceived: 99999, packetsLost: 0, jitter: 0.002 },
    { id: "OA", type: "outbound-rtp", kind: "audio", packetsSent: outSent },
    { id: "RA", type: "remote-inbound-rtp", kind: "audio", packetsLost: remLost, localId: "OA" },
  ]);
}

test("a report over an interval: round trip from the pair's new measurements, audio loss both ways, bitrates", () => {
  const a = readSample(statsAt({ sent: 0, recv: 0, aRecv: 100, aLost: 0, outSent: 100, remLost: 0, rttTotal: 1.0, rttCount: 20 }), 1000);
  const b = readSample(statsAt({ sent: 250000, recv: 500000, aRecv: 195, aLost: 5, outSent: 200, remLost: 5, rttTotal: 1.5, rttCount: 30, jitter: 0.0123 }), 3000);
  const q = quality(a, b);
  assert.equal(q.rttMs, 50, "0.5 s over 10 new responses");
  // 5 of 100 inbound lost, 5 of 100 outbound lost (95 of them received).
  assert.equal(q.loss, 0.05);
  assert.equal(q.inKbps, 2000);
  assert.equal(q.outKbps, 1000);
  assert.equal(q.jitterMs, 12.3, "the worst stream's jitter");
  assert.equal(q.level, "fair");
  assert.equal(q.intervalMs, 2000);
});

test("RTCP round trips, when the interval has any, come before the pair's STUN checks", () => {
  const s = (at, total, n) => readSample(report([
    { id: "T", type: "transport", bytesSent: 0, bytesReceived: 0, selectedCandidatePairId: "P" },
    { id: "P", type: "candidate-pair", totalRoundTripTime: at, responsesReceived: at, currentRoundTripTime: 0.2 },
    { id: "RV", type: "remote-inbound-rtp", kind: "video", totalRoundTripTime: total, roundTripTimeMeasurements: n },
  ]), at);
  assert.equal(quality(s(0, 1, 20), s(2000, 1.44, 28)).rttMs, 55, "0.44 s over 8 RTCP measurements");
  assert.equal(quality(s(0, 1, 20), s(2000, 1, 20)).rttMs, 1000, "none: the pair's (2000 s over 2000 responses)");
});

test("no new round-trip measurement: the browser's current one; no audio: no loss figure", () => {
  const s = (at) => readSample(report([
    { id: "T", type: "transport", bytesSent: at, bytesReceived: at, selectedCandidatePairId: "P" },
    { id: "P", type: "candidate-pair", totalRoundTripTime: 1, responsesReceived: 5, currentRoundTripTime: 0.12 },
  ]), at);
  const q = quality(s(0), s(1000));
  assert.equal(q.rttMs, 120);
  assert.equal(q.loss, null);
  assert.equal(q.level, "good");
});

test("a lost count that goes down (a late packet) never makes negative loss", () => {
  const a = readSample(statsAt({ sent: 0, recv: 0, aRecv: 100, aLost: 10, outSent: 100, remLost: 0, rttTotal: 0, rttCount: 0 }), 0);
  const b = readSample(statsAt({ sent: 0, recv: 0, aRecv: 201, aLost: 9, outSent: 200, remLost: 0, rttTotal: 0, rttCount: 0 }), 2000);
  assert.equal(quality(a, b).loss, 0);
});

test("levels: good, fair, poor by loss and round trip", () => {
  assert.equal(qualityLevel(0.01, 100), "good");
  assert.equal(qualityLevel(0.03, 100), "fair");
  assert.equal(qualityLevel(0.01, 300), "fair");
  assert.equal(qualityLevel(0.08, 50), "poor");
  assert.equal(qualityLevel(0, 700), "poor");
  assert.equal(qualityLevel(null, null), "good");
});
