// The SDK's session logic (queue, acks, resume, backoff, heartbeats) with a fake
// WebSocket and a fake clock: every timer fires only when the test advances time.
import { test } from "node:test";
import assert from "node:assert/strict";
import { Session } from "../sdk/dist/firstcall.js";

class FakeClock {
  constructor() {
    this.t = 0;
    this.timers = new Map();
    this.next = 1;
  }
  setTimeout = (fn, ms) => {
    const id = this.next++;
    this.timers.set(id, { at: this.t + ms, fn });
    return id;
  };
  clearTimeout = (id) => this.timers.delete(id);
  advance(ms) {
    const end = this.t + ms;
    for (;;) {
      const due = [...this.timers.entries()].filter(([, v]) => v.at <= end).sort((a, b) => a[1].at - b[1].at)[0];
      if (!due) break;
      this.timers.delete(due[0]);
      this.t = due[1].at;
      due[1].fn();
    }
    this.t = end;
  }
}

function world({ random = 0.5, token = "dev:alice", url = "ws://x/v1/ws" } = {}) {
  const clock = new FakeClock();
  const sockets = [];
  class FakeWS {
    constructor(url) {
      this.url = url;
      this.readyState = 0;
      this.sent = [];
      this.onopen = this.onmessage = this.onclose = this.onerror = null;
      sockets.push(this);
    }
    send(d) {
      if (this.readyState !== 1) throw new Error("not open");
      this.sent.push(JSON.parse(d));
    }
    close() {
      this.readyState = 3;
    }
    // test helpers
    open() {
      this.readyState = 1;
      this.onopen?.({});
    }
    deliver(f) {
      this.onmessage?.({ data: JSON.stringify(f) });
    }
    drop(code) {
      this.readyState = 3;
      this.onclose?.({ code });
    }
  }
  let network = null;
  const env = {
    WebSocket: FakeWS,
    setTimeout: clock.setTimeout,
    clearTimeout: clock.clearTimeout,
    now: () => clock.t,
    random: () => random,
    onNetworkChange: (fn) => ((network = fn), () => {}),
  };
  const s = new Session(url, token, "dev1", env);
  const welcome = (ws, extra = {}) =>
    ws.deliver({ type: "welcome", session: "S1", user: "alice", device: "dev1", resumed: false, last_seq: 0, heartbeat_ms: 1000, ice_servers: [], ...extra });
  return { s, clock, sockets, welcome, network: (on) => network(on) };
}

const types = (ws) => ws.sent.map((f) => f.type);

test("a new session's frames queued before the socket is up go out right behind the hello, once", () => {
  const { s, sockets, welcome } = world();
  s.send({ type: "call.invite", call: "c" });
  s.send({ type: "call.signal", call: "c", data: { end_of_candidates: true } });
  s.open();
  const ws = sockets[0];
  assert.deepEqual(ws.sent, [], "nothing before open");
  ws.open();
  // A cold start: the server takes them once the hello is through, a round trip before
  // the welcome would have let them go.
  assert.deepEqual(types(ws), ["hello", "call.invite", "call.signal"]);
  assert.deepEqual(ws.sent.slice(1).map((f) => f.seq), [1, 2]);
  // Sent while the welcome is on its way: at once, next in order.
  s.send({ type: "call.signal", call: "c", data: { candidate: { candidate: "x" } } });
  assert.deepEqual(ws.sent.slice(1).map((f) => f.seq), [1, 2, 3]);
  assert.equal(s.state, "connecting");
  welcome(ws);
  assert.deepEqual(types(ws), ["hello", "call.invite", "call.signal", "call.signal"], "the welcome sends none of them again");
  assert.equal(s.state, "connected");
  assert.equal(s.unacked.length, 3, "kept until acknowledged");
  s.send({ type: "call.hangup", call: "c" });
  assert.deepEqual(ws.sent.slice(1).map((f) => f.seq), [1, 2, 3, 4]);
});

test("frames behind a hello whose socket closed before the welcome go out again, behind the next hello", () => {
  const { s, sockets, welcome, clock } = world();
  s.send({ type: "call.invite", call: "c" });
  s.open();
  sockets[0].open();
  sockets[0].drop(1006);
  clock.advance(0);
  sockets[1].open();
  assert.deepEqual(types(sockets[1]), ["hello", "call.invite"]);
  assert.equal(sockets[1].sent[0].resume, undefined, "still no session to resume");
  welcome(sockets[1]);
  assert.deepEqual(types(sockets[1]), ["hello", "call.invite"]);
});

test("a resume does not send behind its hello: the welcome says which frames the server lacks", () => {
  const { s, sockets, welcome, clock } = world();
  s.open();
  sockets[0].open();
  welcome(sockets[0]);
  sockets[0].drop(1006);
  s.send({ type: "call.invite", call: "c" });
  clock.advance(0);
  sockets[1].open();
  assert.deepEqual(types(sockets[1]), ["hello"]);
  s.send({ type: "call.accept", call: "d" });
  assert.deepEqual(types(sockets[1]), ["hello"], "queued until the welcome");
  welcome(sockets[1], { resumed: true, last_seq: 0 });
  assert.deepEqual(sockets[1].sent.slice(1).map((f) => [f.type, f.seq]), [["call.invite", 1], ["call.accept", 2]]);
});

test("at a welcome, the frames kept go out before any a welcome listener sends (no seq gap)", () => {
  const { s, sockets, welcome, clock } = world();
  s.open();
  sockets[0].open();
  welcome(sockets[0]);
  s.send({ type: "call.signal", call: "c", data: { end_of_candidates: true } });
  sockets[0].drop(1006);
  clock.advance(0);
  // As the client does for a connected call the server lost (call.restore).
  s.on("welcome", (w) => {
    if (!w.resumed) s.send({ type: "call.restore", call: "c" });
  });
  sockets[1].open();
  welcome(sockets[1], { session: "S2", resumed: false });
  assert.deepEqual(sockets[1].sent.slice(1).map((f) => [f.type, f.seq]), [["call.signal", 1], ["call.restore", 2]]);
});

test("acks release frames; unacknowledged frames are kept", () => {
  const { s, sockets, welcome } = world();
  s.open();
  sockets[0].open();
  welcome(sockets[0]);
  for (let i = 0; i < 3; i++) s.send({ type: "call.signal", call: "c", data: { end_of_candidates: true } });
  assert.equal(s.unacked.length, 3);
  sockets[0].deliver({ type: "ack", seq: 2 });
  assert.deepEqual(s.unacked.map((u) => u.seq), [3]);
});

test("a dropped socket resumes with last_seq and resends exactly what the server did not process", () => {
  const { s, sockets, welcome, clock } = world();
  s.open();
  sockets[0].open();
  welcome(sockets[0]);
  sockets[0].deliver({ type: "call.incoming", call: "c", seq: 1 });
  sockets[0].deliver({ type: "call.signal", call: "c", seq: 2 });
  for (let i = 0; i < 3; i++) s.send({ type: "call.signal", call: "c", data: { end_of_candidates: true } });
  sockets[0].drop(1006);
  clock.advance(0); // first retry is immediate
  assert.equal(sockets.length, 2);
  sockets[1].open();
  assert.deepEqual(sockets[1].sent[0].resume, { session: "S1", last_seq: 2 });
  // The server had processed our seq 1 only.
  welcome(sockets[1], { resumed: true, last_seq: 1 });
  assert.deepEqual(sockets[1].sent.slice(1).map((f) => f.seq), [2, 3]);
});

test("resumed:false renumbers from 1 and resends everything unacknowledged", () => {
  const { s, sockets, welcome, clock } = world();
  s.open();
  sockets[0].open();
  welcome(sockets[0]);
  s.send({ type: "call.invite", call: "c" });
  s.send({ type: "call.accept", call: "d" });
  sockets[0].deliver({ type: "ack", seq: 1 });
  sockets[0].drop(1006);
  clock.advance(0);
  sockets[1].open();
  welcome(sockets[1], { session: "S2", resumed: false });
  assert.deepEqual(sockets[1].sent.slice(1).map((f) => [f.type, f.seq]), [["call.accept", 1]]);
  assert.equal(s.sessionId, "S2");
});

test("inbound frames are processed once, in order, and acked in a coalesced ack", () => {
  const { s, sockets, welcome, clock } = world();
  const got = [];
  s.on("frame", (f) => got.push(f.seq));
  s.open();
  sockets[0].open();
  welcome(sockets[0]);
  for (const seq of [1, 2, 2, 1, 3]) sockets[0].deliver({ type: "call.signal", call: "c", seq });
  assert.deepEqual(got, [1, 2, 3]);
  assert.deepEqual(types(sockets[0]).filter((t) => t === "ack"), [], "ack is coalesced, not immediate");
  clock.advance(60);
  const acks = sockets[0].sent.filter((f) => f.type === "ack");
  assert.deepEqual(acks, [{ type: "ack", seq: 3 }]);
});

test("reconnects back off exponentially with jitter", () => {
  const { s, sockets, clock } = world({ random: 1 });
  s.open();
  const gaps = [];
  let last = 0;
  for (let i = 0; i < 7; i++) {
    sockets[sockets.length - 1].drop(1006);
    const before = sockets.length;
    let waited = 0;
    while (sockets.length === before && waited < 20000) {
      clock.advance(10);
      waited += 10;
    }
    gaps.push(clock.t - last);
    last = clock.t;
  }
  // random()=1 → delay = base: 0, 250, 500, 1000, 2000, 4000, 8000 (rounded up to the 10 ms steps).
  assert.deepEqual(gaps, [10, 250, 500, 1000, 2000, 4000, 8000]);
  const { s: s2, sockets: sk2, clock: c2 } = world({ random: 0 });
  s2.open();
  sk2[0].drop(1006);
  c2.advance(0);
  sk2[1].drop(1006);
  c2.advance(124);
  assert.equal(sk2.length, 2, "jitter never shortens below half the base");
  c2.advance(1);
  assert.equal(sk2.length, 3);
});

test("two missed heartbeats tear the socket down and resume on a new one", () => {
  const { s, sockets, welcome, clock } = world();
  s.open();
  sockets[0].open();
  welcome(sockets[0]); // heartbeat_ms 1000 → watchdog 3000 ms
  clock.advance(2500);
  sockets[0].deliver({ type: "ping" });
  assert.deepEqual(sockets[0].sent.at(-1), { type: "pong" });
  clock.advance(2999);
  assert.equal(sockets.length, 1, "a ping re-arms the watchdog");
  clock.advance(1);
  assert.equal(sockets.length, 2, "silence for two heartbeats → new socket");
  assert.equal(sockets[0].readyState, 3);
});

test("a network change resumes on a new socket at once", () => {
  const { s, sockets, welcome, network } = world();
  s.open();
  sockets[0].open();
  welcome(sockets[0]);
  network(true);
  assert.equal(sockets.length, 2);
  sockets[1].open();
  assert.equal(sockets[1].sent[0].resume.session, "S1");
});

test("a probe: a ping, and a socket that hears nothing back within the timeout is replaced at once", () => {
  const { s, sockets, welcome, clock } = world();
  s.open();
  sockets[0].open();
  welcome(sockets[0]);
  s.probe(1000);
  assert.deepEqual(sockets[0].sent.at(-1), { type: "ping" });
  s.probe(1000); // one probe at a time
  assert.equal(sockets[0].sent.filter((f) => f.type === "ping").length, 1);
  clock.advance(500);
  sockets[0].deliver({ type: "pong" });
  clock.advance(1000);
  assert.equal(sockets.length, 1, "answered: the socket stays");
  // A socket that can send but never hears back (its host's address changed).
  s.probe(1000);
  clock.advance(999);
  assert.equal(sockets.length, 1);
  clock.advance(1);
  assert.equal(sockets.length, 2, "unanswered: a new socket, without waiting for two heartbeats");
  sockets[1].open();
  assert.equal(sockets[1].sent[0].resume.session, "S1");
});

test("close code 4003 (unauthorized) is fatal: no reconnect loop", () => {
  const { s, sockets, clock } = world();
  let fatal = null;
  s.on("fatal", (e) => (fatal = e));
  s.open();
  sockets[0].open();
  sockets[0].drop(4003);
  clock.advance(60000);
  assert.equal(sockets.length, 1);
  assert.equal(fatal.code, 4003);
  assert.equal(s.state, "closed");
});

/** Let promise callbacks (a token function's) run. */
const settleTokens = () => new Promise((r) => setImmediate(r));

test("a token function is asked before every connect, and the resume carries the fresh token", async () => {
  let n = 0;
  const { s, sockets, welcome, clock } = world({ token: async () => `jwt-${++n}` });
  s.open();
  await settleTokens();
  sockets[0].open();
  assert.equal(sockets[0].sent[0].token, "jwt-1");
  welcome(sockets[0]);
  sockets[0].drop(1006);
  clock.advance(0);
  await settleTokens();
  sockets[1].open();
  assert.deepEqual([sockets[1].sent[0].token, sockets[1].sent[0].resume.session], ["jwt-2", "S1"]);
});

test("a refused token is asked for once more; refused again, the session gives up with a typed error", async () => {
  let n = 0;
  const { s, sockets, welcome, clock } = world({ token: () => `jwt-${++n}` });
  let fatal = null;
  s.on("fatal", (e) => (fatal = e));
  s.open();
  await settleTokens();
  sockets[0].open();
  welcome(sockets[0]);
  // Away past the token's expiry: the resume is refused, a fresh token is fetched at once.
  sockets[0].drop(1006);
  clock.advance(0);
  await settleTokens();
  sockets[1].open();
  sockets[1].drop(4003);
  clock.advance(0);
  await settleTokens();
  assert.equal(sockets.length, 3, "one more try");
  sockets[2].open();
  assert.equal(sockets[2].sent[0].token, "jwt-3");
  welcome(sockets[2], { resumed: true });
  assert.equal(fatal, null);
  // Each welcome allows one fresh-token retry again; two refusals in a row end it.
  sockets[2].drop(4003);
  clock.advance(0);
  await settleTokens();
  sockets[3].open();
  sockets[3].drop(4003);
  clock.advance(60000);
  await settleTokens();
  assert.equal(sockets.length, 4, "no reconnect loop");
  assert.equal(fatal.code, 4003);
  assert.equal(fatal.error.name, "FirstcallError");
  assert.equal(fatal.error.code, "unauthorized");
  assert.equal(s.state, "closed");
});

test("a token function that fails is retried with backoff, not given up", async () => {
  let fail = true;
  const { s, sockets, welcome, clock } = world({ token: async () => {
    if (fail) throw new Error("auth backend down");
    return "jwt";
  } });
  s.open();
  await settleTokens();
  assert.equal(sockets.length, 0);
  assert.equal(s.state, "reconnecting");
  fail = false;
  clock.advance(0);
  await settleTokens();
  assert.equal(sockets.length, 1);
  sockets[0].open();
  welcome(sockets[0]);
  assert.equal(s.state, "connected");
});

test("close code 1012 (server draining) reconnects at once", () => {
  const { s, sockets, welcome, clock } = world();
  s.open();
  sockets[0].open();
  welcome(sockets[0]);
  sockets[0].drop(1012);
  clock.advance(0);
  assert.equal(sockets.length, 2, "reconnected without waiting");
  sockets[1].open();
  assert.equal(sockets[1].sent[0].resume.session, "S1");
});

test("with several nodes, a drain (1012), an unreachable store (1013) or a node that never answers moves the resume to the next; a blip stays", () => {
  const { s, sockets, welcome, clock } = world({ url: ["ws://n1/v1/ws", "ws://n2/v1/ws", "ws://n3/v1/ws"] });
  s.open();
  sockets[0].open();
  welcome(sockets[0]);
  assert.equal(sockets[0].url, "ws://n1/v1/ws");
  // A blip after the welcome: the same node (its session is there, as everywhere).
  sockets[0].drop(1006);
  clock.advance(0);
  assert.equal(sockets[1].url, "ws://n1/v1/ws");
  // The node is gone: no welcome on the new socket, so the next node.
  sockets[1].drop(1006);
  clock.advance(10000);
  assert.equal(sockets[2].url, "ws://n2/v1/ws");
  sockets[2].open();
  assert.equal(sockets[2].sent[0].resume.session, "S1", "a resume, on another node");
  welcome(sockets[2], { resumed: true });
  // That node drains, then the next cannot reach its store: n3, then round to n1.
  sockets[2].drop(1012);
  clock.advance(0);
  assert.equal(sockets[3].url, "ws://n3/v1/ws");
  sockets[3].open();
  welcome(sockets[3], { resumed: true });
  sockets[3].drop(1013);
  clock.advance(10000);
  assert.equal(sockets[4].url, "ws://n1/v1/ws");
});

test("a send that throws keeps the frame and resumes", () => {
  const { s, sockets, welcome, clock } = world();
  s.open();
  sockets[0].open();
  welcome(sockets[0]);
  sockets[0].readyState = 2; // closing: send throws
  s.send({ type: "call.invite", call: "c" });
  assert.equal(s.unacked.length, 1);
  clock.advance(0);
  sockets.at(-1).open();
  welcome(sockets.at(-1), { resumed: true, last_seq: 0 });
  assert.deepEqual(types(sockets.at(-1)), ["hello", "call.invite"]);
});

// Pre-warming: the Client keeps one peer connection gathering (TURN allocations included)
// before any call, so the first call does not wait two round trips per TURN server.
import { createClient, restartDecision } from "../sdk/dist/firstcall.js";

function clientWorld(options = {}) {
  const w = world();
  const pcs = [];
  class FakePC {
    constructor(config) {
      this.config = config;
      this.signalingState = "stable";
      pcs.push(this);
    }
    close() {
      this.signalingState = "closed";
    }
  }
  const env = { ...w.s.env, WebSocket: w.s.env.WebSocket, RTCPeerConnection: FakePC };
  const sockets = [];
  class WS extends env.WebSocket {
    constructor(url) {
      super(url);
      sockets.push(this);
    }
  }
  const c = createClient("ws://x/v1/ws", { token: "dev:alice", device: "dev1", env: { ...env, WebSocket: WS }, ...options });
  return { c, pcs, sockets, clock: w.clock };
}

const turn = (cred) => [{ urls: ["turn:192.0.2.1:3478?transport=udp"], username: "1:alice", credential: cred }];
const welcomeFrame = (extra) => ({ type: "welcome", session: "S1", user: "alice", device: "dev1", resumed: false, last_seq: 0, heartbeat_ms: 1000, ...extra });

test("a welcome with ICE servers pre-warms one peer connection; unchanged servers reuse it", () => {
  const { c, pcs, sockets } = clientWorld();
  assert.equal(pcs.length, 0, "nothing before ICE servers are known");
  sockets[0].open();
  sockets[0].deliver(welcomeFrame({ ice_servers: turn("p1") }));
  assert.equal(pcs.length, 1);
  assert.equal(pcs[0].config.iceCandidatePoolSize, 1);
  assert.deepEqual(pcs[0].config.iceServers, turn("p1"));
  // A resume with the same servers keeps the warm one.
  sockets[0].deliver(welcomeFrame({ resumed: true, ice_servers: turn("p1") }));
  assert.equal(pcs.length, 1);
  // The call takes it when its configuration matches; then there is none left.
  assert.equal(c.takeWarmPeer(c.rtcConfiguration()), pcs[0]);
  assert.equal(c.takeWarmPeer(c.rtcConfiguration()), null);
});

test("refreshed ICE servers replace the warm peer connection; close() releases it", () => {
  const { c, pcs, sockets } = clientWorld();
  sockets[0].open();
  sockets[0].deliver(welcomeFrame({ ice_servers: turn("p1") }));
  sockets[0].deliver({ type: "ice_servers", seq: 1, ice_servers: turn("p2"), ice_ttl: 3600 });
  assert.equal(pcs.length, 2);
  assert.equal(pcs[0].signalingState, "closed", "stale credentials would fail their TURN refreshes");
  assert.deepEqual(pcs[1].config.iceServers, turn("p2"));
  // A warm connection built for other settings is never handed to a call.
  assert.equal(c.takeWarmPeer({ iceServers: turn("p1") }), null);
  assert.equal(pcs[1].signalingState, "closed");
  c.prewarm();
  assert.equal(pcs.length, 3);
  c.close();
  assert.equal(pcs[2].signalingState, "closed");
});

test("a call placed before the welcome gets the pool built at the welcome", () => {
  // It takes the pool once its camera is open: the pool gathers meanwhile, which on a
  // fast path decides whether relay candidates make it into the first call at all.
  const { c, pcs, sockets } = clientWorld();
  const call = c.call("bob");
  assert.equal(call.awaitingPeer, true);
  sockets[0].open();
  sockets[0].deliver(welcomeFrame({ ice_servers: turn("p1") }));
  assert.equal(pcs.filter((p) => p.config.iceCandidatePoolSize === 1).length, 1, "one pool while the call waits for its peer connection");
  assert.equal(c.takeWarmPeer(c.rtcConfiguration()), pcs[0]);
});

test("prewarm: false never builds a peer connection ahead of a call", () => {
  const { pcs, sockets } = clientWorld({ prewarm: false });
  sockets[0].open();
  sockets[0].deliver(welcomeFrame({ ice_servers: turn("p1") }));
  assert.equal(pcs.length, 0);
});

// Chromium reports ICE `failed` as soon as every pair it has so far failed, while
// candidates may still be coming (a TURN server's 403 to a private host candidate fails
// that pair at once). A restart then would discard the gathering and race the trickle.
test("ICE failure restarts only once neither side can bring a candidate, one restart at a time", () => {
  const d = (inFlight, localGatheringDone, remoteGatheringDone) => restartDecision({ inFlight, localGatheringDone, remoteGatheringDone });
  assert.equal(d(false, true, true), "restart", "everything gathered and still failed: restart now");
  assert.equal(d(false, false, true), "wait", "local candidates still coming");
  assert.equal(d(false, true, false), "wait", "remote candidates still coming");
  assert.equal(d(false, false, false), "wait");
  for (const [l, r] of [[true, true], [false, false], [true, false]]) {
    assert.equal(d(true, l, r), "after-answer", "never a second restart while one awaits its answer");
  }
});

// The caller's ICE restarts, driven through a Call with a fake peer connection whose ICE
// states the test sets, and a fake clock.
class RtcPC {
  constructor(config) {
    this.config = config;
    this.signalingState = "stable";
    this.iceGatheringState = "new";
    this.iceConnectionState = "new";
    this.connectionState = "new";
    this.localDescription = null;
    this.log = [];
  }
  addTrack() {}
  async createOffer(o) {
    this.log.push(o?.iceRestart ? "restart offer" : "offer");
    return { type: "offer", sdp: "v=0 offer" };
  }
  async createAnswer() {
    this.log.push("answer");
    return { type: "answer", sdp: "v=0 answer" };
  }
  async setLocalDescription(d) {
    this.log.push(`local ${d.type}`);
    if (d.type === "rollback") {
      if (this.signalingState !== "have-local-offer") throw new Error("nothing to roll back");
      this.signalingState = "stable";
      return;
    }
    this.localDescription = d;
    this.signalingState = d.type === "offer" ? "have-local-offer" : "stable";
  }
  async setRemoteDescription(d) {
    if (d.type === "answer" && this.signalingState !== "have-local-offer") throw new Error("answer in state " + this.signalingState);
    this.log.push(`remote ${d.type}`);
    this.signalingState = d.type === "offer" ? "have-remote-offer" : "stable";
  }
  async addIceCandidate() {}
  async getStats() {
    return new Map();
  }
  close() {
    this.signalingState = "closed";
  }
  // test helpers
  ice(s) {
    this.iceConnectionState = s;
    this.oniceconnectionstatechange?.();
  }
  conn(s) {
    this.connectionState = s;
    this.onconnectionstatechange?.();
  }
  gathered() {
    this.iceGatheringState = "complete";
    this.onicecandidate?.({ candidate: null });
  }
}

const settle = async () => {
  for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r));
};

async function callingWorld() {
  const w = world();
  const pcs = [];
  const sockets = [];
  class WS extends w.s.env.WebSocket {
    constructor(url) {
      super(url);
      sockets.push(this);
    }
  }
  class PC extends RtcPC {
    constructor(config) {
      super(config);
      pcs.push(this);
    }
  }
  const env = { ...w.s.env, WebSocket: WS, RTCPeerConnection: PC, getUserMedia: async () => ({ getTracks: () => [] }) };
  const c = createClient("ws://x/v1/ws", { token: "dev:alice", device: "dev1", env, prewarm: false, iceRestartGraceMs: 1000 });
  const ws = sockets[0];
  ws.open();
  // Heartbeats far apart: the fake clock runs seconds on with no server frames.
  ws.deliver(welcomeFrame({ ice_servers: turn("p1"), heartbeat_ms: 600000 }));
  const call = c.call("bob");
  await settle();
  let seq = 0;
  const from = (f) => ws.deliver({ ...f, call: call.id, seq: ++seq });
  from({ type: "call.accepted", device: "b1", sdp: "v=0 answer" });
  await settle();
  const pc = pcs.at(-1);
  const offers = () => ws.sent.filter((f) => f.type === "call.signal" && f.data.sdp?.type === "offer").length;
  const signal = async (data) => {
    from({ type: "call.signal", from: "bob", from_device: "b1", data });
    await settle();
  };
  const events = () => call.timeline.map((e) => e.event);
  // Delivered but not yet processed past its first await.
  const arrive = (data) => from({ type: "call.signal", from: "bob", from_device: "b1", data });
  // Both sides have gathered everything: a failure from here on restarts at once.
  const bothGathered = async () => {
    pc.gathered();
    await signal({ end_of_candidates: true });
  };
  return { c, call, pc, ws, clock: w.clock, offers, signal, arrive, events, bothGathered };
}

test("ICE failure while the callee is still gathering waits; it restarts once both sides are done", async () => {
  const { pc, offers, signal, events } = await callingWorld();
  assert.equal(pc.signalingState, "stable", "the answer was applied");
  pc.ice("checking");
  pc.conn("failed");
  pc.ice("failed");
  await settle();
  assert.equal(offers(), 0, "no restart while candidates may still come");
  assert.ok(events().includes("ice failed while gathering"));
  pc.gathered();
  await settle();
  assert.equal(offers(), 0, "the callee has not finished");
  await signal({ end_of_candidates: true });
  assert.equal(offers(), 1, "both sides done and still failed: restart");
  assert.deepEqual(pc.log.slice(-2), ["restart offer", "local offer"]);
});

test("the grace period ends a wait for gathering that never finishes", async () => {
  const { pc, clock, offers } = await callingWorld();
  pc.conn("failed");
  clock.advance(999);
  await settle();
  assert.equal(offers(), 0);
  clock.advance(1);
  await settle();
  assert.equal(offers(), 1);
});

test("one restart at a time; the old generation's end-of-candidates does not count; an unanswered restart is rolled back", async () => {
  const { pc, clock, offers, signal, events, bothGathered } = await callingWorld();
  await bothGathered();
  pc.conn("failed");
  await settle();
  assert.equal(offers(), 1);
  pc.conn("failed"); // again, while the restart waits for its answer
  pc.ice("failed");
  await settle();
  assert.equal(offers(), 1, "never a second restart in flight");
  assert.ok(events().includes("ice restart deferred"));
  // Sent by the callee before it saw the restart offer: not the new generation's.
  await signal({ end_of_candidates: true });
  assert.equal(offers(), 1);
  // No answer within twice the grace period: rolled back, and the failure decided again.
  clock.advance(2000);
  await settle();
  assert.ok(events().includes("ice restart unanswered"));
  assert.ok(pc.log.includes("local rollback"));
  assert.equal(pc.signalingState, "stable");
  assert.equal(offers(), 1, "the new generation's gathering is still unknown: wait");
  clock.advance(1000);
  await settle();
  assert.equal(offers(), 2, "still failed after the grace period: the next restart goes");
});

test("an answered restart ends the wait; three restarts that all fail end the call with ice_failed", async () => {
  const { call, pc, ws, offers, signal, bothGathered } = await callingWorld();
  await bothGathered();
  for (let n = 1; n <= 3; n++) {
    pc.conn("failed");
    await settle();
    assert.equal(offers(), n);
    await signal({ sdp: { type: "answer", sdp: "v=0 answer" } });
    assert.equal(pc.signalingState, "stable", `restart ${n} answered`);
    await signal({ end_of_candidates: true });
  }
  pc.conn("failed");
  await settle();
  assert.equal(offers(), 3, "no fourth restart");
  assert.equal(call.state, "ended");
  assert.deepEqual(ws.sent.filter((f) => f.type === "call.hangup").map((f) => f.reason), ["ice_failed"]);
});

test("an answer that arrives as the unanswered-restart timer comes due is applied, not rolled back", async () => {
  const { pc, clock, offers, signal, arrive, events, bothGathered } = await callingWorld();
  await bothGathered();
  pc.conn("failed");
  await settle();
  assert.equal(offers(), 1);
  clock.advance(1999);
  arrive({ sdp: { type: "answer", sdp: "v=0 answer", restart: 1 } });
  clock.advance(1);
  await settle();
  assert.ok(!events().includes("ice restart unanswered"), events().join(", "));
  assert.ok(!pc.log.includes("local rollback"));
  assert.ok(events().includes("ice restart answered"));
  assert.equal(pc.signalingState, "stable");
});

test("restarts that each bring ICE back do not add up to a hang-up", async () => {
  const { call, pc, offers, signal, bothGathered } = await callingWorld();
  await bothGathered();
  for (let n = 1; n <= 5; n++) {
    pc.conn("failed");
    await settle();
    assert.equal(offers(), n, `restart ${n}`);
    await signal({ sdp: { type: "answer", sdp: "v=0 answer", restart: n } });
    await signal({ end_of_candidates: true });
    pc.ice("connected");
    pc.conn("connected");
    await settle();
  }
  assert.equal(call.state, "connected");
});

test("a late answer to a rolled-back restart is told apart from the current restart's", async () => {
  const { pc, clock, offers, signal, events, ws, bothGathered } = await callingWorld();
  await bothGathered();
  pc.conn("failed");
  await settle();
  clock.advance(2000); // unanswered: rolled back
  await settle();
  clock.advance(1000); // still failed after the grace period: restart 2
  await settle();
  assert.equal(offers(), 2);
  assert.deepEqual(ws.sent.filter((f) => f.data?.sdp?.type === "offer").map((f) => f.data.sdp.restart), [1, 2]);
  await signal({ sdp: { type: "answer", sdp: "v=0 answer", restart: 1 } });
  assert.ok(events().includes("answer to an earlier restart ignored"));
  assert.equal(pc.signalingState, "have-local-offer", "restart 2 still waits for its own answer");
  await signal({ sdp: { type: "answer", sdp: "v=0 answer", restart: 2 } });
  assert.equal(pc.signalingState, "stable");
  assert.ok(events().includes("ice restart answered"));
});

// Renegotiation and media notices through a Call (the caller: impolite), with the fake
// peer connection: what goes on the wire.
const sdpSent = (ws) => ws.sent.filter((f) => f.type === "call.signal" && f.data.sdp).map((f) => f.data.sdp);

test("the caller answers the callee's renegotiation offer when stable, and ignores one that crosses its own", async () => {
  const { pc, ws, offers, signal, events, bothGathered } = await callingWorld();
  await signal({ sdp: { type: "offer", sdp: "v=0 screen" } });
  assert.deepEqual(sdpSent(ws).map((d) => d.type), ["answer"], "answered");
  assert.equal(sdpSent(ws)[0].restart, undefined, "no restart number on a renegotiation answer");
  assert.equal(pc.signalingState, "stable");
  // A restart of the caller's is out when the callee's next offer arrives: it is ignored
  // (the callee, polite, rolls back and answers the restart instead).
  await bothGathered();
  pc.conn("failed");
  await settle();
  assert.equal(offers(), 1);
  await signal({ sdp: { type: "offer", sdp: "v=0 screen again" } });
  assert.ok(events().includes("remote offer ignored (offers crossed)"));
  assert.deepEqual(sdpSent(ws).map((d) => d.type), ["answer", "offer"], "no answer to the crossing offer");
  assert.equal(pc.signalingState, "have-local-offer", "the restart offer stands");
});

test("mute sends a media notice; a notice received is the call's remoteMedia and a remotemedia event", async () => {
  const { call, ws, signal } = await callingWorld();
  await call.mute("audio");
  await call.mute("audio"); // twice: one notice
  await call.mute("video");
  const notices = ws.sent.filter((f) => f.type === "call.signal" && f.data.media).map((f) => f.data.media);
  assert.deepEqual(notices, [{ audio: false, video: true, screen: false }, { audio: false, video: false, screen: false }]);
  const got = [];
  call.on("remotemedia", (m) => got.push(m));
  await signal({ media: { audio: true, video: false, screen: true } });
  assert.deepEqual(got, [{ audio: true, video: false, screen: true }]);
  assert.deepEqual(call.remoteMedia, { audio: true, video: false, screen: true });
});

// Issue 19: the server's ICE servers join the app's own, never replace them.
test("rtcConfig.iceServers are kept and merged with the server's; iceUrlFilter applies to both", () => {
  const own = [{ urls: "stun:stun.app.example:3478" }, { urls: ["turn:turn.app.example:3478"], username: "u", credential: "p" }];
  const { c, pcs, sockets } = clientWorld({ rtcConfig: { iceServers: own, iceTransportPolicy: "relay" } });
  sockets[0].open();
  sockets[0].deliver(welcomeFrame({ ice_servers: turn("p1") }));
  const config = c.rtcConfiguration();
  assert.deepEqual(config.iceServers, [...own, ...turn("p1")]);
  assert.equal(config.iceTransportPolicy, "relay", "the app's other settings stay");
  assert.deepEqual(pcs[0].config.iceServers, [...own, ...turn("p1")], "the pool gathers from both");
  // A refresh replaces the server's part only.
  sockets[0].deliver({ type: "ice_servers", seq: 1, ice_servers: turn("p2"), ice_ttl: 3600 });
  assert.deepEqual(c.rtcConfiguration().iceServers, [...own, ...turn("p2")]);
  const f = clientWorld({ rtcConfig: { iceServers: own }, iceUrlFilter: (u) => u.startsWith("turn:") });
  f.sockets[0].open();
  f.sockets[0].deliver(welcomeFrame({ ice_servers: turn("p1") }));
  assert.deepEqual(f.c.rtcConfiguration().iceServers, [{ ...own[1], urls: ["turn:turn.app.example:3478"] }, ...turn("p1")]);
});

test("a server that hands out no ICE servers: the app's own are used, and calls do not wait for any", async () => {
  const own = [{ urls: "stun:stun.app.example:3478" }];
  const { c, pcs, sockets } = clientWorld({ rtcConfig: { iceServers: own } });
  sockets[0].open();
  sockets[0].deliver(welcomeFrame({ ice_servers: [] }));
  assert.equal(await c.whenIceReady(60000), true, "known at the welcome, not after the timeout");
  assert.deepEqual(pcs[0].config.iceServers, own, "the pool is built from the app's servers");
});

test("call meta: sent in the invite, a call.incoming's meta is the incoming call's; bad meta is refused at once", async () => {
  const w = world();
  const pcs = [];
  const sockets = [];
  class WS extends w.s.env.WebSocket {
    constructor(url) {
      super(url);
      sockets.push(this);
    }
  }
  class PC extends RtcPC {
    constructor(config) {
      super(config);
      pcs.push(this);
    }
  }
  const env = { ...w.s.env, WebSocket: WS, RTCPeerConnection: PC, getUserMedia: async () => ({ getTracks: () => [] }) };
  const c = createClient("ws://x/v1/ws", { token: "dev:alice", device: "dev1", env, prewarm: false });
  const ws = sockets[0];
  ws.open();
  ws.deliver(welcomeFrame({ ice_servers: turn("p1"), heartbeat_ms: 600000 }));
  const meta = { subject: "Standup", ticket: 42, tags: ["a", "b"], who: { name: "Zoë" } };
  const call = c.call("bob", { meta });
  meta.subject = "changed after the call was placed";
  await settle();
  const invite = ws.sent.find((f) => f.type === "call.invite");
  assert.deepEqual(invite.meta, { subject: "Standup", ticket: 42, tags: ["a", "b"], who: { name: "Zoë" } });
  assert.deepEqual(call.meta, invite.meta, "the caller's call has it too");
  // Without meta, no key at all.
  c.call("carol");
  await settle();
  assert.equal("meta" in ws.sent.filter((f) => f.type === "call.invite")[1], false);
  // The callee side.
  const incoming = [];
  c.on("incoming", (x) => incoming.push(x));
  ws.deliver({ type: "call.incoming", seq: 1, call: "in1", from: "dave", from_device: "d1", media: "video", sdp: "v=0 offer", meta: { room: "7" } });
  ws.deliver({ type: "call.incoming", seq: 2, call: "in2", from: "erin", from_device: "e1", media: "audio", sdp: "v=0 offer" });
  assert.deepEqual(incoming.map((x) => x.meta), [{ room: "7" }, null]);
  // Not an object, or over 4 KiB as JSON (UTF-8 bytes): a clear error, and no call.
  const calls = c.calls.size;
  assert.throws(() => c.call("bob", { meta: "text" }), /meta must be a plain object/);
  assert.throws(() => c.call("bob", { meta: [1, 2] }), /meta must be a plain object/);
  assert.throws(() => c.call("bob", { meta: { k: "é".repeat(2045) } }), /4098 bytes as JSON, at most 4096/);
  c.call("bob", { meta: { k: "x".repeat(4088) } }); // exactly 4096
  assert.equal(c.calls.size, calls + 1);
});

// Every error the SDK throws or rejects with is a FirstcallError with a stable code.
import { connect, FirstcallError } from "../sdk/dist/firstcall.js";

test("connect() without a welcome in time rejects with FirstcallError no_welcome", async () => {
  const w = world();
  const p = connect("ws://x/v1/ws", { token: "dev:alice", device: "dev1", env: w.s.env, firstConnectTimeoutMs: 5000 });
  let error = null;
  p.catch((e) => (error = e));
  w.clock.advance(4999);
  await settle();
  assert.equal(error, null);
  w.clock.advance(1);
  await settle();
  assert.ok(error instanceof FirstcallError);
  assert.equal(error.code, "no_welcome");
  assert.equal(error.message, "firstcall: no welcome in time");
});

test("a call that cannot open its media ends media_failed; without WebRTC, local", async () => {
  const denied = Object.assign(new Error("Permission denied"), { name: "NotAllowedError" });
  const cases = [
    [{ getUserMedia: async () => Promise.reject(denied) }, "media_failed", "FirstcallError: NotAllowedError: Permission denied"],
    [{ getUserMedia: undefined }, "media_failed", "FirstcallError: getUserMedia is not available here"],
    [{ RTCPeerConnection: undefined }, "local", "FirstcallError: WebRTC is not available here"],
  ];
  for (const [envPatch, reason, why] of cases) {
    const w = world();
    const env = { ...w.s.env, RTCPeerConnection: RtcPC, getUserMedia: async () => ({ getTracks: () => [] }), ...envPatch };
    const c = createClient("ws://x/v1/ws", { token: "dev:alice", device: "dev1", env, prewarm: false });
    w.sockets[0].open();
    w.welcome(w.sockets[0], { ice_servers: turn("p1") });
    const call = c.call("bob");
    await settle();
    assert.equal(call.endReason, reason);
    assert.equal(call.timeline.find((e) => e.event === "setup failed").detail.error, why);
  }
});

test("shareScreen and setDevice reject with FirstcallError codes invalid_state and media", async () => {
  // An answered call may share its screen (it is negotiated); one still ringing may not.
  const early = await callingWorld();
  const w = world();
  const c = createClient("ws://x/v1/ws", { token: "dev:alice", device: "dev1", env: { ...w.s.env, RTCPeerConnection: RtcPC, getUserMedia: async () => ({ getTracks: () => [] }) }, prewarm: false });
  w.sockets[0].open();
  w.welcome(w.sockets[0], { ice_servers: turn("p1") });
  const ringing = c.call("bob");
  await settle();
  await assert.rejects(ringing.shareScreen(), (e) => e instanceof FirstcallError && e.code === "invalid_state");

  const denied = Object.assign(new Error("Permission denied"), { name: "NotAllowedError" });
  early.c.env.getDisplayMedia = async () => Promise.reject(denied);
  await assert.rejects(early.call.shareScreen(), (e) => {
    assert.ok(e instanceof FirstcallError);
    assert.equal(e.code, "media");
    assert.equal(e.message, "NotAllowedError: Permission denied");
    assert.equal(e.cause, denied);
    return true;
  });
  early.c.env.getDisplayMedia = undefined;
  await assert.rejects(early.call.shareScreen(), { name: "FirstcallError", code: "media", message: "firstcall: screen capture is not available here" });
  await assert.rejects(early.call.shareScreen({ stream: { getVideoTracks: () => [] } }), { code: "media", message: "firstcall: the screen stream has no video track" });
  early.c.env.getUserMedia = async () => ({ getTracks: () => [] });
  await assert.rejects(early.call.setDevice({ audio: "mic2" }), { code: "media", message: "firstcall: no audio track from device mic2" });
  early.call.hangup();
  await assert.rejects(early.call.setDevice({ audio: "mic2" }), { code: "invalid_state", message: "firstcall: setDevice needs a call with media" });
  await assert.rejects(early.call.shareScreen(), { code: "invalid_state" });
});

test("online() failures reject with FirstcallError http", async () => {
  const w = world();
  const responses = [async () => ({ ok: false, status: 503 }), async () => Promise.reject(new TypeError("fetch failed"))];
  const env = { ...w.s.env, fetch: (...args) => responses.shift()(...args) };
  const c = createClient("ws://x/v1/ws", { token: "dev:alice", device: "dev1", env, prewarm: false });
  await assert.rejects(c.online(), { name: "FirstcallError", code: "http", status: 503, message: "online: HTTP 503" });
  await assert.rejects(c.online(), (e) => e instanceof FirstcallError && e.code === "http" && e.cause instanceof TypeError && e.message === "online: TypeError: fetch failed");
});

test("online() with a token function sends a fresh token, not the function", async () => {
  const w = world();
  const seen = [];
  const env = { ...w.s.env, fetch: async (_url, init) => (seen.push(init.headers.Authorization), { ok: true, status: 200, json: async () => ({ users: ["bob"] }) }) };
  let n = 0;
  const c = createClient("ws://x/v1/ws", { token: async () => `jwt-${++n}`, device: "dev1", env, prewarm: false });
  assert.deepEqual(await c.online(), ["bob"]);
  assert.match(seen[0], /^Bearer jwt-\d+$/);
});

test("updateDevice sends device.update with only what it was given", () => {
  const { c, sockets } = clientWorld({ prewarm: false });
  c.updateDevice({ push: { provider: "webpush", token: "sub" }, state: "background" });
  c.updateDevice({ state: "foreground" });
  c.updateDevice({ push: null });
  sockets[0].open();
  sockets[0].deliver(welcomeFrame({}));
  const sent = sockets[0].sent.filter((f) => f.type === "device.update").map(({ seq, ...f }) => f);
  assert.deepEqual(sent, [
    { type: "device.update", push: { provider: "webpush", token: "sub" }, state: "background" },
    { type: "device.update", state: "foreground" },
    { type: "device.update", push: null },
  ]);
});

// A cold start: TURN credentials fetched over HTTP beside the socket's connect.
function prefetchWorld(fetchImpl, options = {}) {
  const w = world();
  const pcs = [];
  class PC extends RtcPC {
    constructor(config) {
      super(config);
      pcs.push(this);
    }
  }
  const sockets = [];
  class WS extends w.s.env.WebSocket {
    constructor(url) {
      super(url);
      sockets.push(this);
    }
  }
  const asked = [];
  const fetch = async (url, init) => {
    asked.push({ url, auth: init?.headers?.Authorization });
    return fetchImpl(url);
  };
  const env = { ...w.s.env, WebSocket: WS, RTCPeerConnection: PC, getUserMedia: async () => ({ getTracks: () => [] }), fetch };
  const c = createClient("ws://x:8080/v1/ws", { token: "dev:alice", device: "dev1", env, prefetchIceServers: true, ...options });
  return { c, pcs, sockets, asked, clock: w.clock };
}
const credential = (uris) => ({ ok: true, status: 200, json: async () => ({ username: "1700000000:alice", password: "pw", ttl: 86400, uris }) });
const URIS = ["stun:192.0.2.1:3478", "turn:192.0.2.1:3478?transport=udp", "turn:192.0.2.1:3478?transport=tcp"];

test("prefetched TURN credentials: a cold-start call builds its peer connection and its invite goes out behind the hello", async () => {
  const { c, pcs, sockets, asked } = prefetchWorld(async () => credential(URIS));
  const call = c.call("bob", { id: "c1" });
  await settle();
  assert.deepEqual(asked, [{ url: "http://x:8080/v1/turn-credentials", auth: "Bearer dev:alice" }]);
  assert.deepEqual(c.iceServers, [{ urls: URIS, username: "1700000000:alice", credential: "pw" }]);
  assert.equal(pcs.length, 1, "one peer connection: the pool, taken by the call");
  assert.equal(call.pc, pcs[0]);
  assert.deepEqual(pcs[0].config.iceServers, c.iceServers);
  // The socket opens after the credentials came: the invite rides behind the hello.
  sockets[0].open();
  assert.deepEqual(types(sockets[0]), ["hello", "call.invite"]);
  // The welcome's servers are the same URLs with a credential minted a moment later:
  // the call keeps its peer connection, and no second pool is built for it.
  const welcomeServers = [
    { urls: URIS.slice(1), username: "1700000001:alice", credential: "pw2" },
    { urls: URIS.slice(0, 1) },
  ];
  sockets[0].deliver(welcomeFrame({ ice_servers: welcomeServers }));
  assert.deepEqual(c.iceServers[0].username, "1700000000:alice");
  assert.deepEqual(types(sockets[0]), ["hello", "call.invite"], "not sent again");
  assert.equal(pcs.filter((p) => p.signalingState === "closed").length, 0);
  assert.equal(pcs.length, 1, "no second pool");
  // A later refresh replaces them as before.
  sockets[0].deliver({ type: "ice_servers", seq: 1, ice_servers: welcomeServers, ice_ttl: 3600 });
  assert.deepEqual(c.iceServers, welcomeServers);
});

test("a prefetch that fails (or answers nonsense) leaves the ICE servers to the welcome", async () => {
  for (const answer of [
    async () => ({ ok: false, status: 404, json: async () => ({}) }),
    async () => ({ ok: true, status: 200, json: async () => ({ uris: "turn:x" }) }),
    async () => Promise.reject(new TypeError("Failed to fetch")),
  ]) {
    const { c, pcs, sockets } = prefetchWorld(answer);
    await settle();
    assert.equal(pcs.length, 0);
    assert.equal(c.timeline.some((e) => e.event.includes("prefetch failed")), true);
    sockets[0].open();
    sockets[0].deliver(welcomeFrame({ ice_servers: turn("p1") }));
    assert.deepEqual(c.iceServers, turn("p1"));
    assert.equal(pcs.length, 1);
  }
});

test("a welcome that comes before the prefetch wins; other URLs in the welcome replace the prefetched ones", async () => {
  let release;
  const slow = new Promise((r) => (release = r));
  const first = prefetchWorld(() => slow);
  first.sockets[0].open();
  first.sockets[0].deliver(welcomeFrame({ ice_servers: turn("p1") }));
  release(credential(URIS));
  await settle();
  assert.deepEqual(first.c.iceServers, turn("p1"), "the late prefetch changes nothing");
  assert.equal(first.pcs.length, 1);

  const second = prefetchWorld(async () => credential(URIS));
  await settle();
  assert.equal(second.pcs.length, 1);
  second.sockets[0].open();
  second.sockets[0].deliver(welcomeFrame({ ice_servers: turn("p1") }));
  assert.deepEqual(second.c.iceServers, turn("p1"));
  assert.equal(second.pcs[0].signalingState, "closed", "the pool built for other servers is replaced");
  assert.equal(second.pcs.length, 2);
});

test("no prefetch by default outside a page of the server's origin", async () => {
  const { pcs, asked } = prefetchWorld(async () => credential(URIS), { prefetchIceServers: undefined });
  await settle();
  assert.deepEqual(asked, []);
  assert.equal(pcs.length, 0);
});

test("a call whose invite the server has not processed is not ended by a new session's welcome", async () => {
  // Placed while the socket was down after a server restart: the invite goes out after
  // the welcome, which cannot list the call yet.
  const { c, sockets, pcs, clock } = prefetchWorld(async () => credential(URIS));
  await settle();
  sockets[0].open();
  sockets[0].deliver(welcomeFrame({ ice_servers: turn("p1") }));
  sockets[0].drop(1006);
  const call = c.call("bob", { id: "c2" });
  await settle();
  clock.advance(0);
  assert.equal(call.state, "ringing");
  sockets[1].open();
  sockets[1].deliver(welcomeFrame({ session: "S2", resumed: false, ice_servers: turn("p1"), calls: [] }));
  assert.equal(call.state, "ringing", "still placing the call");
  assert.deepEqual(types(sockets[1]), ["hello", "call.invite"]);
  assert.equal(pcs.filter((p) => p === call.pc && p.signalingState === "closed").length, 0);
});

test("at a resume's welcome, a state listener's frame goes after the frames kept (no seq gap)", () => {
  const { s, sockets, welcome, clock } = world();
  s.open();
  sockets[0].open();
  welcome(sockets[0]);
  s.send({ type: "call.signal", call: "c", data: { end_of_candidates: true } });
  s.send({ type: "call.signal", call: "c", data: { end_of_candidates: true } });
  sockets[0].drop(1006);
  clock.advance(0);
  // As an app might: tell the server the app is in front each time it is back.
  s.on("state", (st) => {
    if (st === "connected") s.send({ type: "device.update", state: "foreground" });
  });
  sockets[1].open();
  welcome(sockets[1], { resumed: true, last_seq: 0 });
  assert.deepEqual(sockets[1].sent.slice(1).map((f) => [f.type, f.seq]), [["call.signal", 1], ["call.signal", 2], ["device.update", 3]]);
});

test("a write that fails while the welcome's frames are resent moves them to one new socket, and that welcome is not taken", () => {
  const { s, sockets, welcome, clock } = world();
  s.open();
  sockets[0].open();
  welcome(sockets[0]);
  for (let i = 0; i < 4; i++) s.send({ type: "call.signal", call: "c", data: { end_of_candidates: true } });
  sockets[0].drop(1006);
  clock.advance(0);
  sockets[1].open();
  let welcomes = 0;
  s.on("welcome", () => welcomes++);
  // The socket dies under the first resent frame.
  const send = sockets[1].send.bind(sockets[1]);
  let n = 0;
  sockets[1].send = (d) => {
    if (++n === 2) {
      sockets[1].readyState = 3;
      throw new Error("gone");
    }
    return send(d);
  };
  welcome(sockets[1], { resumed: true, last_seq: 0 });
  assert.equal(sockets.length, 3, "one new socket, not one per frame");
  assert.equal(welcomes, 0, "the welcome of a socket already replaced is not announced");
  assert.notEqual(s.state, "connected");
  sockets[2].open();
  welcome(sockets[2], { resumed: true, last_seq: 0 });
  assert.deepEqual(sockets[2].sent.slice(1).map((f) => f.seq), [1, 2, 3, 4]);
  assert.equal(welcomes, 1);
});

test("a prefetched credential is not kept when the welcome comes late in its lifetime", async () => {
  const { c, sockets, pcs, clock } = prefetchWorld(async () => ({ ...credential(URIS), json: async () => ({ username: "1:alice", password: "pw", ttl: 60, uris: URIS }) }));
  await settle();
  assert.equal(pcs.length, 1);
  clock.advance(7000); // past a tenth of 60 s
  sockets[0].open();
  const fresh = [{ urls: URIS, username: "2:alice", credential: "pw2" }];
  sockets[0].deliver(welcomeFrame({ ice_servers: fresh }));
  assert.deepEqual(c.iceServers, fresh);
  assert.equal(pcs[0].signalingState, "closed");
  assert.equal(pcs.length, 2);
});
