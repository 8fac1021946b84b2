// The restart and renegotiation rules (sdk/src/negotiation.ts) as a pure function of
// (state, event, now) -> (state, actions): no browser, no clock, no peer connection.
import { test } from "node:test";
import assert from "node:assert/strict";
import { negotiate, initialNegotiation } from "../sdk/dist/firstcall.js";

const pcv = (o = {}) => ({ ice: "checking", conn: "connecting", gathering: "gathering", signaling: "stable", makingOffer: false, ...o });

/** Run events in order from `role`'s initial state; returns the state and every action. */
function run(role, events, grace = 1000) {
  let state = initialNegotiation(role, grace);
  const log = [];
  for (const [event, now] of events) {
    const r = negotiate(state, event, now);
    state = r.state;
    log.push(...r.actions);
  }
  return { state, actions: log, kinds: log.map((a) => (a.type === "mark" ? `mark:${a.event}` : a.type)) };
}

const failed = (o) => ({ type: "conn", pc: pcv({ conn: "failed", ...o }) });

test("the callee never restarts ICE; the caller does once both sides have gathered", () => {
  const done = pcv({ conn: "failed", gathering: "complete" });
  const callee = run("callee", [[{ type: "remote-end-of-candidates", pc: done }, 0], [failed({ gathering: "complete" }), 10]]);
  assert.deepEqual(callee.actions, []);
  const caller = run("caller", [[{ type: "remote-end-of-candidates", pc: pcv({ gathering: "complete" }) }, 0], [failed({ gathering: "complete" }), 10]]);
  assert.deepEqual(caller.kinds, ["mark:ice restart", "arm", "restart"]);
  assert.deepEqual(caller.actions.find((a) => a.type === "arm"), { type: "arm", timer: "answer", at: 10 + 2000 });
  assert.equal(caller.state.restartGen, 1);
  assert.equal(caller.state.restartInFlight, true);
});

test("a failure while gathering arms the grace timer once; it restarts only if still failed when it fires", () => {
  const r = run("caller", [[failed(), 100], [failed(), 200]]);
  assert.deepEqual(r.kinds, ["mark:ice failed while gathering", "arm"], "the second failure does not re-arm");
  assert.equal(r.state.timers.failed, 1100);
  // Fired while ICE recovered: nothing.
  const recovered = negotiate(r.state, { type: "timer", timer: "failed", pc: pcv({ conn: "connected", ice: "connected" }) }, 1100);
  assert.deepEqual(recovered.actions, []);
  // Fired still failed: restart, with the reason carried through.
  const still = negotiate(r.state, { type: "timer", timer: "failed", pc: pcv({ conn: "failed" }) }, 1100);
  const mark = still.actions.find((a) => a.type === "mark");
  assert.equal(mark.detail.why, "connection failed, still failed after the grace period");
  assert.ok(still.actions.some((a) => a.type === "restart" && a.gen === 1));
});

test("a timer that was disarmed is ignored when its callback still runs", () => {
  const armed = run("caller", [[failed(), 0]]).state;
  const connected = negotiate(armed, { type: "ice", pc: pcv({ ice: "connected", conn: "connected" }) }, 10);
  assert.deepEqual(connected.actions, [{ type: "disarm", timer: "failed" }]);
  assert.deepEqual(negotiate(connected.state, { type: "timer", timer: "failed", pc: pcv({ conn: "failed" }) }, 1000).actions, []);
});

test("negotiate never modifies the state it is given", () => {
  const s = initialNegotiation("caller", 1000);
  const before = JSON.stringify(s);
  negotiate(s, { type: "remote-end-of-candidates", pc: pcv() }, 0);
  negotiate(s, failed({ gathering: "complete" }), 0);
  assert.equal(JSON.stringify(s), before);
});

test("a restart due during a renegotiation waits for stable, then goes", () => {
  const busy = pcv({ conn: "failed", gathering: "complete", signaling: "have-remote-offer" });
  const r = run("caller", [[{ type: "remote-end-of-candidates", pc: pcv({ gathering: "complete" }) }, 0], [{ type: "conn", pc: busy }, 5]]);
  assert.deepEqual(r.kinds, ["mark:ice restart deferred"]);
  assert.equal(r.actions[0].detail.until, "renegotiation");
  assert.equal(r.state.restartBlocked, true);
  const making = negotiate(r.state, { type: "stable", pc: pcv({ conn: "failed", gathering: "complete", makingOffer: true }) }, 6);
  assert.ok(!making.actions.some((a) => a.type === "restart"), "our own offer is being made: still not");
  const stable = negotiate(r.state, { type: "stable", pc: pcv({ conn: "failed", gathering: "complete" }) }, 6);
  assert.ok(stable.actions.some((a) => a.type === "restart"));
  assert.equal(stable.state.restartBlocked, false);
});

test("crossing offers: the caller (impolite) ignores the callee's, the callee (polite) rolls back and answers", () => {
  const crossing = pcv({ signaling: "have-local-offer" });
  const caller = run("caller", [[{ type: "remote-offer", iceRestart: false, pc: crossing }, 0]]);
  assert.deepEqual(caller.kinds, ["mark:remote offer ignored (offers crossed)"]);
  const makingCaller = run("caller", [[{ type: "remote-offer", iceRestart: false, pc: pcv({ makingOffer: true }) }, 0]]);
  assert.deepEqual(makingCaller.kinds, ["mark:remote offer ignored (offers crossed)"], "an offer being made counts as crossing");
  const callee = run("callee", [[{ type: "remote-offer", iceRestart: true, pc: crossing }, 0]]);
  assert.deepEqual(callee.kinds, ["mark:offers crossed: own offer rolled back", "answer-offer"]);
  assert.equal(callee.actions.at(-1).collision, true);
  // No crossing: both answer.
  for (const role of ["caller", "callee"]) {
    assert.deepEqual(run(role, [[{ type: "remote-offer", iceRestart: false, pc: pcv() }, 0]]).actions, [{ type: "answer-offer", collision: false }]);
  }
});

test("only an offer with new ICE credentials resets the remote end-of-candidates", () => {
  const gathered = run("caller", [[{ type: "remote-end-of-candidates", pc: pcv() }, 0]]).state;
  assert.equal(gathered.remoteGatheringDone, true);
  assert.equal(negotiate(gathered, { type: "remote-offer", iceRestart: false, pc: pcv() }, 1).state.remoteGatheringDone, true, "a screen share keeps the ICE generation");
  assert.equal(negotiate(gathered, { type: "remote-offer", iceRestart: true, pc: pcv() }, 1).state.remoteGatheringDone, false);
});

test("either side offers when renegotiation is needed and it is stable; never over a restart or another offer", () => {
  for (const role of ["caller", "callee"]) {
    assert.deepEqual(run(role, [[{ type: "negotiation-needed", pc: pcv() }, 0]]).actions, [{ type: "offer" }]);
    assert.deepEqual(run(role, [[{ type: "negotiation-needed", pc: pcv({ signaling: "have-local-offer" }) }, 0]]).actions, []);
    assert.deepEqual(run(role, [[{ type: "negotiation-needed", pc: pcv({ makingOffer: true }) }, 0]]).actions, []);
  }
  const restarting = run("caller", [[{ type: "remote-end-of-candidates", pc: pcv({ gathering: "complete" }) }, 0], [failed({ gathering: "complete" }), 1]]).state;
  assert.deepEqual(negotiate(restarting, { type: "negotiation-needed", pc: pcv() }, 2).actions, []);
  const ended = run("callee", [[{ type: "ended" }, 0], [{ type: "negotiation-needed", pc: pcv() }, 1]]);
  assert.deepEqual(ended.actions, []);
});

test("reconnecting once when a connected path breaks, whatever follows; reconnected when ICE is back", () => {
  const g = pcv({ gathering: "complete" });
  const r = run("caller", [
    [{ type: "ice", pc: pcv({ ice: "connected", conn: "connected", gathering: "complete" }) }, 0],
    [{ type: "remote-end-of-candidates", pc: g }, 0],
    [{ type: "ice", pc: pcv({ ice: "disconnected", conn: "connected", gathering: "complete" }) }, 5],
    [failed({ gathering: "complete" }), 10],
    [{ type: "answer-applied", gen: 1, ok: true, pc: pcv({ conn: "failed", gathering: "complete" }) }, 20],
    [{ type: "remote-end-of-candidates", pc: pcv({ conn: "failed", gathering: "complete" }) }, 30],
    [{ type: "ice", pc: pcv({ ice: "connected", conn: "connected", gathering: "complete" }) }, 40],
  ]);
  assert.equal(r.kinds.filter((k) => k === "reconnecting").length, 1, r.kinds.join(","));
  assert.equal(r.actions.find((a) => a.type === "reconnecting").why, "ice disconnected");
  assert.equal(r.kinds.filter((k) => k === "restart").length, 2);
  assert.equal(r.kinds.at(-1), "reconnected");
  assert.equal(r.state.restarts, 0);
  // The callee, which never restarts, is told too; a blip that heals needs no restart.
  const callee = run("callee", [
    [{ type: "ice", pc: pcv({ ice: "connected" }) }, 0],
    [{ type: "ice", pc: pcv({ ice: "disconnected" }) }, 5],
    [{ type: "ice", pc: pcv({ ice: "connected" }) }, 900],
  ]);
  assert.deepEqual(callee.kinds.filter((k) => k.startsWith("reconn")), ["reconnecting", "reconnected"]);
  // Before ICE ever connected, a failure or restart is still connecting: nothing said.
  const early = run("caller", [[{ type: "remote-end-of-candidates", pc: g }, 0], [failed({ gathering: "complete" }), 1]]);
  assert.ok(early.kinds.includes("restart"));
  assert.ok(!early.kinds.includes("reconnecting"));
});

test("an answer to an earlier restart is ignored; the current one's is applied", () => {
  const s = run("caller", [[{ type: "remote-end-of-candidates", pc: pcv({ gathering: "complete" }) }, 0], [failed({ gathering: "complete" }), 1]]).state;
  const old = negotiate({ ...s, restartGen: 2 }, { type: "remote-answer", restart: 1, pc: pcv() }, 2);
  assert.deepEqual(old.actions.map((a) => a.type), ["mark"]);
  assert.equal(old.state.restartAnswerPending, true);
  const cur = negotiate(s, { type: "remote-answer", restart: 1, pc: pcv() }, 2);
  assert.deepEqual(cur.actions, [{ type: "apply-answer", gen: 1 }]);
  assert.equal(cur.state.restartAnswerPending, false);
});

test("the answer timer rolls back only an unanswered restart; three failed restarts hang up", () => {
  const s = run("caller", [[{ type: "remote-end-of-candidates", pc: pcv({ gathering: "complete" }) }, 0], [failed({ gathering: "complete" }), 0]]).state;
  const due = negotiate(s, { type: "timer", timer: "answer", pc: pcv({ conn: "failed", signaling: "have-local-offer" }) }, 2000);
  assert.deepEqual(due.actions.map((a) => a.type), ["mark", "rollback"]);
  const answered = negotiate(s, { type: "remote-answer", pc: pcv() }, 1999).state;
  assert.deepEqual(negotiate(answered, { type: "timer", timer: "answer", pc: pcv() }, 2000).actions, [], "an answer being applied is not rolled back");
  const st = { ...s, restarts: 3, restartInFlight: false, restartAnswerPending: false, remoteGatheringDone: true };
  const r = negotiate(st, failed({ gathering: "complete" }), 5000);
  assert.ok(r.actions.some((a) => a.type === "hangup" && a.reason === "ice_failed"));
  assert.ok(!r.actions.some((a) => a.type === "restart"));
});

test("media stalled on a connected call: the caller restarts at once, the callee asks it to", () => {
  const up = { type: "ice", pc: pcv({ ice: "connected", conn: "connected" }) };
  const stalled = { type: "media-stalled", pc: pcv({ ice: "connected", conn: "connected" }) };
  const caller = run("caller", [[up, 0], [stalled, 5000]]);
  assert.deepEqual(caller.kinds, ["reconnecting", "mark:ice restart", "arm", "restart"]);
  assert.equal(caller.state.stalled, false, "the restart is out");
  const callee = run("callee", [[up, 0], [stalled, 5000]]);
  assert.deepEqual(callee.kinds, ["reconnecting", "mark:media stalled: restart requested", "request-restart"]);
  // The caller takes the callee's request as its own stall.
  const asked = run("caller", [[up, 0], [{ type: "remote-restart-request", pc: pcv({ ice: "connected" }) }, 5000]]);
  assert.deepEqual(asked.kinds.filter((k) => k === "restart"), ["restart"]);
  // Not before the call ever connected, and never from the callee's side.
  assert.deepEqual(run("caller", [[stalled, 5]]).actions, []);
  assert.deepEqual(run("callee", [[up, 0], [{ type: "remote-restart-request", pc: pcv({ ice: "connected" }) }, 5]]).actions, []);
});

test("a stall during a renegotiation restarts once stable; media back while ICE stayed connected is `reconnected`", () => {
  const up = { type: "ice", pc: pcv({ ice: "connected", conn: "connected" }) };
  const r = run("caller", [
    [up, 0],
    [{ type: "media-stalled", pc: pcv({ ice: "connected", signaling: "have-local-offer" }) }, 5000],
    [{ type: "stable", pc: pcv({ ice: "connected" }) }, 5100],
  ]);
  assert.deepEqual(r.kinds, ["reconnecting", "mark:ice restart deferred", "mark:ice restart", "arm", "restart"]);
  const back = run("caller", [
    [up, 0],
    [{ type: "media-stalled", pc: pcv({ ice: "connected" }) }, 5000],
    [{ type: "media-resumed", pc: pcv({ ice: "connected" }) }, 5400],
  ]);
  assert.equal(back.kinds.at(-1), "reconnected");
  assert.equal(back.state.recovering, false);
  // A second stall while the first restart is out does not start another.
  const twice = run("caller", [
    [up, 0],
    [{ type: "media-stalled", pc: pcv({ ice: "connected" }) }, 5000],
    [{ type: "media-stalled", pc: pcv({ ice: "connected" }) }, 6000],
  ]);
  assert.equal(twice.kinds.filter((k) => k === "restart").length, 1);
});
