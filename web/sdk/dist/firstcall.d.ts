export * from "./protocol.js";
export type { Environment, WebSocketLike, TimelineEntry } from "./env.js";
export { Emitter, type EventMap } from "./emitter.js";
export { Session, FirstcallError, type FirstcallErrorCode, type ServerUrl, type SessionEvents, type TokenSource } from "./session.js";
export { Client, connect, createClient, type ConnectOptions, type ClientEvents } from "./client.js";
export { Call, type CallOptions, type CallEvents, type MediaOptions, type DeviceInfo } from "./call.js";
export { negotiate, initialNegotiation, restartDecision, type NegotiationState, type NegotiationEvent, type NegotiationAction, type PcView, type Role, type TimerName, } from "./negotiation.js";
export type { SelectedPair } from "./stats.js";
export { quality, qualityLevel, readSample, type QualityReport, type QualitySample, type QualityLevel, type CallSummary } from "./quality.js";
