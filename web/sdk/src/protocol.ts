// Protocol v1 frames (docs/protocol.md) as discriminated unions on `type`.

export type Media = "audio" | "video";
export type ClientState = "connecting" | "connected" | "reconnecting" | "closed";
export type CallState = "new" | "ringing" | "pending" | "connecting" | "connected" | "ended";
/** Why a client hangs up (`call.hangup` `reason`). */
export type HangupReason = "user" | "ice_failed" | "media_failed";
/** The server's `call.ended` reasons, plus the SDK's own: `ice_failed` (this side gave up
 * on ICE), `media_failed` (a side could not open its camera or microphone) and `local`
 * (the call could not even be placed). */
export type EndReason =
  | "hangup" | "cancelled" | "rejected" | "busy" | "timeout" | "unreachable"
  | "answered_elsewhere" | "glare" | "failed" | "ice_failed" | "media_failed" | "local";

export interface IceServer {
  urls: string | string[];
  username?: string;
  credential?: string;
}

/** What each side sends (`data.media`) when its microphone, camera or screen share changes. */
export interface MediaState {
  /** The microphone is sending (not muted). */
  audio: boolean;
  /** The camera is sending (not off). */
  video: boolean;
  /** A screen share is being sent. */
  screen: boolean;
}

/** `data` of `call.signal`: exactly one of these. */
export type SignalData =
  | { candidate: RTCIceCandidateInit }
  | { end_of_candidates: true }
  | { sdp: { type: "offer" | "answer" | "pranswer" | "rollback"; sdp: string; restart?: number } }
  | { media: MediaState }
  /** The callee's media stalled: it asks the caller, who alone restarts ICE, to restart. */
  | { restart_request: true };

/** The app's own data about a call (`call.invite` `meta`): a JSON object, opaque to the
 * server, at most 4 KiB serialized. */
export type CallMeta = Record<string, unknown>;

/** Most bytes of a call's `meta`, serialized as JSON. */
export const MAX_META_BYTES = 4096;

export interface CallSnapshot {
  call: string;
  role: "caller" | "callee";
  peer: string;
  media: Media;
  /** The invite's `meta`, when it had one. */
  meta?: CallMeta;
  /** `restoring`: the call was re-registered after a server restart by one side
   * (`call.restore`) and waits for the other. */
  state: "ringing" | "accepted" | "connected" | "restoring";
  this_device: boolean;
}

export interface Welcome {
  type: "welcome";
  session: string;
  user: string;
  device: string;
  resumed: boolean;
  last_seq: number;
  ice_servers?: IceServer[];
  ice_ttl?: number;
  calls?: CallSnapshot[];
  heartbeat_ms?: number;
}

/** Frames that carry no seq. */
export type ControlFrame =
  | Welcome
  | { type: "ack"; seq: number }
  | { type: "ping" }
  | { type: "pong" };

/** Sequenced server frames, as the session hands them on. */
export type ServerFrame = { seq?: number; ack?: number } & (
  | { type: "ice_servers"; ice_servers: IceServer[]; ice_ttl: number }
  | { type: "error"; code: string; message: string; ref?: number }
  | { type: "call.incoming"; call: string; from: string; from_device: string; media: Media; sdp: string; meta?: CallMeta }
  | { type: "call.ringing"; call: string; device: string }
  | { type: "call.pending"; call: string }
  | { type: "call.accepted"; call: string; device: string; sdp: string }
  | { type: "call.signal"; call: string; from: string; from_device: string; data: SignalData }
  | { type: "call.ended"; call: string; reason: EndReason; detail?: HangupReason }
  | { type: "call.restored"; call: string; peer_back: boolean }
);

/** Frames a client sends after its hello. */
export type ClientFrame =
  | { type: "call.invite"; call: string; to: string; media: Media; sdp: string; meta?: CallMeta }
  | { type: "call.accept"; call: string; sdp: string }
  | { type: "call.reject"; call: string }
  | { type: "call.cancel"; call: string }
  | { type: "call.hangup"; call: string; reason: HangupReason }
  | { type: "call.signal"; call: string; data: SignalData }
  | { type: "call.connected"; call: string; local: string; remote: string; protocol: string; ms: number }
  | { type: "call.restore"; call: string; role: "caller" | "callee"; peer: string; peer_device: string; media: Media }
  | { type: "call.report"; call: string; duration_ms: number; rtt_ms: number | null; loss: number | null; restarts: number }
  | { type: "device.update"; push?: PushTarget | null; state?: AppState };

/** Who delivers a device's pushes, and its token there (opaque to the server). */
export interface PushTarget {
  provider: "apns-voip" | "fcm" | "webpush" | "custom";
  token: string;
}

/** Whether the app is in front: a backgrounded device's rings are pushed too. */
export type AppState = "foreground" | "background";

export interface Hello {
  type: "hello";
  token: string;
  device: string;
  resume?: { session: string; last_seq: number };
}
