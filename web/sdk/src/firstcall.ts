// firstcall browser SDK: protocol v1 (docs/protocol.md) and WebRTC calls that connect
// on the first attempt.
//
// What it does so that no app has to rediscover it:
// - connects at once and keeps connecting (exponential backoff with jitter), resumes its
//   session, keeps every frame until acknowledged and resends it; anything sent before
//   the socket is up is queued, never dropped;
// - tears the socket down and resumes when the network changes or heartbeats stop;
// - holds ICE servers from the welcome before the first call, and swaps in fresh ones;
//   keeps one peer connection gathering (TURN allocations included) before each call so
//   the call does not wait for them (`prewarm: false` turns this off), including a call
//   placed before the welcome, whose pool gathers while its camera opens;
// - trickles each candidate the moment it is found, buffers remote candidates until the
//   remote description is set, and sends end-of-candidates;
// - restarts ICE within the same call on `failed` once neither side can still bring a
//   candidate (Chromium reports `failed` early, e.g. when a TURN server rightly refuses a
//   permission to a private host candidate), or on `disconnected` beyond a grace period,
//   one restart at a time; a call that cannot connect in 45 s hangs up with `ice_failed`;
// - reports `call.connected` with the selected pair's types and the time it took;
// - keeps a timeline of everything that happened, per call, including every STUN/TURN
//   server that could not be reached or refused (`candidate error`).
//
// The modules: protocol.ts (frames as discriminated unions), session.ts (the reliable
// session), client.ts (ICE servers, pre-warming, calls), call.ts (one call's peer
// connection and media), negotiation.ts (the restart and renegotiation rules as a pure
// function), quality.ts (quality reports from stats), stats.ts, emitter.ts (typed
// events), env.ts.

export * from "./protocol.js";
export type { Environment, WebSocketLike, TimelineEntry } from "./env.js";
export { Emitter, type EventMap } from "./emitter.js";
export { Session, FirstcallError, type FirstcallErrorCode, type ServerUrl, type SessionEvents, type TokenSource } from "./session.js";
export { Client, connect, createClient, type ConnectOptions, type ClientEvents } from "./client.js";
export { Call, type CallOptions, type CallEvents, type MediaOptions, type DeviceInfo } from "./call.js";
export {
  negotiate,
  initialNegotiation,
  restartDecision,
  type NegotiationState,
  type NegotiationEvent,
  type NegotiationAction,
  type PcView,
  type Role,
  type TimerName,
} from "./negotiation.js";
export type { SelectedPair } from "./stats.js";
export { quality, qualityLevel, readSample, type QualityReport, type QualitySample, type QualityLevel, type CallSummary } from "./quality.js";
