import { Emitter } from "./emitter.js";
import type { TimelineEntry } from "./env.js";
import type { Client } from "./client.js";
import type { CallMeta, CallState, EndReason, HangupReason, Media, MediaState } from "./protocol.js";
import { type SelectedPair } from "./stats.js";
import { type CallSummary, type QualityReport } from "./quality.js";
/** Where a call's camera and microphone come from. */
export interface MediaOptions {
    /**
     * The app's own stream (e.g. its preview), used as it is: the SDK opens no camera and
     * leaves the stream's tracks running when the call ends. A stream without a video
     * track makes an audio call.
     */
    stream?: MediaStream;
    /** Microphone constraints for getUserMedia, e.g. `{deviceId: {exact: id}}` (default: any). */
    audio?: MediaTrackConstraints;
    /** false: an audio-only call (default: video); or camera constraints for getUserMedia. */
    video?: boolean | MediaTrackConstraints;
}
export interface CallOptions extends MediaOptions {
    /** The call id (default: a new UUID). */
    id?: string;
    /**
     * The app's own data about the call (a subject, a room, a ticket id…): a JSON object
     * of at most 4 KiB serialized, handed to the callee's devices with the call
     * (`call.meta` there), kept in the server's call snapshots and sent in the
     * `call.pending` webhook. The server does not read it.
     */
    meta?: CallMeta;
}
/** What a call says when a device changes under it. */
export interface DeviceInfo {
    kind: Media;
    deviceId: string;
    label: string;
}
export interface CallEvents {
    state: (s: CallState) => void;
    /** Our camera and microphone, once open. */
    localstream: (s: MediaStream) => void;
    /** The other side's camera and microphone. */
    remotestream: (s: MediaStream) => void;
    /** Media flows: the selected pair and the time it took. */
    connected: (info: {
        ms: number;
    } & SelectedPair) => void;
    /**
     * The call is recovering: its media path broke after it had connected (ICE
     * disconnected or failed; the caller restarts ICE if it does not come back: `cause:
     * "ice"`), or the signaling socket dropped and the session is being resumed (`cause:
     * "signaling"`). Show "reconnecting…" until `reconnected` with the same cause.
     */
    reconnecting: (info: {
        cause: "ice" | "signaling";
        why: string;
    }) => void;
    /** The media path is back after a restart, or the session resumed. */
    reconnected: (info: {
        cause: "ice" | "signaling";
    }) => void;
    /** The other side muted or unmuted its microphone, turned its camera off or on, or
     * started or stopped a screen share. */
    remotemedia: (s: MediaState) => void;
    /** The other side's screen share (null when it stopped). */
    remotescreen: (s: MediaStream | null) => void;
    /** Our own screen share stopped (by `stopScreen()` or the browser's own stop button). */
    screenended: () => void;
    /** Every `qualityIntervalMs` (2 s) once connected: round trip, jitter, loss, bitrates, level. */
    quality: (q: QualityReport) => void;
    /** When the call ends: duration, pair, bytes, restarts (also in `call.summary`). */
    summary: (s: CallSummary) => void;
    /** We now send from this device (after `setDevice`, or a fallback after `devicelost`). */
    device: (d: DeviceInfo) => void;
    /** A device we sent from went away (unplugged); `fallback` is the device now used instead, or null if none could be opened. */
    devicelost: (e: {
        kind: Media;
        lost: string;
        fallback: DeviceInfo | null;
    }) => void;
    timeline: (e: TimelineEntry) => void;
    ended: (reason: EndReason) => void;
}
/** One call. Events: see `CallEvents`. */
export declare class Call extends Emitter<CallEvents> {
    readonly client: Client;
    readonly id: string;
    readonly peer: string;
    readonly direction: "outgoing" | "incoming";
    readonly media: Media;
    state: CallState;
    endReason: EndReason | null;
    pc: RTCPeerConnection | null;
    localStream: MediaStream | null;
    remoteStream: MediaStream | null;
    readonly timeline: TimelineEntry[];
    /** Candidate counts by type, gathered locally and received from the peer. */
    readonly candidates: {
        local: Record<string, number>;
        remote: Record<string, number>;
    };
    connectMs: number | null;
    /** Time from the call's start to ICE connected (before DTLS), the protocol's `call.connected` moment. */
    iceConnectedMs: number | null;
    selectedPair: SelectedPair | null;
    /** The app's data about the call: what the caller passed as `meta` to `client.call()`
     * (on both sides; null when it passed none). */
    meta: CallMeta | null;
    /** The other side's device in this call (the caller's, or the one that answered). */
    peerDevice: string | null;
    private remoteCandidates;
    private remoteSet;
    private readonly t0;
    private connectTimer;
    /** The restart and renegotiation rules' state (negotiation.ts). */
    private neg;
    private readonly timers;
    /** We are creating or sending an offer that `signalingState` does not show yet. */
    private makingOffer;
    /** The call's first offer and answer are applied: renegotiation may begin. */
    private negotiated;
    /** What we send, as last told to the other side. */
    localMedia: MediaState;
    /** What the other side sends, as it last told us. */
    remoteMedia: MediaState;
    /** The other side's screen share, while it lasts. */
    remoteScreen: MediaStream | null;
    /** Our screen share, while it lasts. */
    screenStream: MediaStream | null;
    private readonly senders;
    /** Tracks the SDK opened (stopped when the call ends); an app's own stream is not. */
    private readonly ownTracks;
    private mediaOptions;
    /** The latest quality report, and the call's summary once it ended. */
    lastQuality: QualityReport | null;
    summary: CallSummary | null;
    private qualityTimer;
    private stallTimer;
    private stall;
    private lastSample;
    private readonly reports;
    private connectedAt;
    private restartsTotal;
    private screenSender;
    /** The id of the other side's camera-and-microphone stream (any other is a screen share). */
    private cameraStreamId;
    constructor(client: Client, id: string, peer: string, direction: "outgoing" | "incoming", media: Media, options?: MediaOptions);
    /**
     * Stop sending the microphone (`"audio"`) or the camera (`"video"`), and tell the other
     * side (`remotemedia` there). Nothing is sent for that track until `unmute`: its sender
     * carries no track (replaceTrack(null), no renegotiation), so the other side decodes
     * nothing; the local track stays open (disabled) for a quick unmute.
     */
    mute(kind: Media): Promise<void>;
    /** Send the microphone or camera again, and tell the other side. */
    unmute(kind: Media): Promise<void>;
    private setSending;
    /** Point the camera's or microphone's sender at its track, or at nothing while muted. */
    private applySending;
    /**
     * Share a screen (or the `stream` given, e.g. a canvas capture) on a new video track:
     * a renegotiation, which either side may start at any time after the call connected.
     * The other side gets `remotescreen` with the stream, and `remotemedia` with `screen: true`.
     * Rejects with a `FirstcallError`: `invalid_state` before the call connected or after it
     * ended, `media` when no screen could be captured (e.g. the user closed the picker).
     */
    shareScreen(opts?: {
        stream?: MediaStream;
    }): Promise<void>;
    /** Stop our screen share (a renegotiation). */
    stopScreen(): Promise<void>;
    /**
     * Answer an incoming call, with the app's own stream or constraints if given. A camera
     * or microphone that cannot be opened ends the call as `media_failed`, on both sides.
     */
    accept(options?: MediaOptions): Promise<void>;
    /** Decline an incoming call. */
    reject(): void;
    /** End the call (cancel, reject or hang up, as fits its state). */
    hangup(reason?: HangupReason): void;
    private signalingDown;
    private armConnectTimeout;
    /** What the rules need to know of the peer connection now. */
    private view;
    /** Feed one event to the rules and carry out what they say. */
    private step;
    private act;
    private sendRestartOffer;
    private setupPeer;
    /** getUserMedia, whose failure is a `media` FirstcallError; the tracks it gives are ours to stop. */
    private openMedia;
    /**
     * Send from another microphone and/or camera (device ids from enumerateDevices): the
     * new track replaces the old on the same sender (replaceTrack), so nothing is
     * renegotiated and no offer goes out. A muted kind stays muted. Rejects with a
     * `FirstcallError`: `invalid_state` without media or after the call ended, `media` when
     * the device cannot be opened.
     */
    setDevice(ids: {
        audio?: string;
        video?: string;
    }): Promise<void>;
    /** Put `track` in place of the local track of its kind, on the same sender. */
    private swapTrack;
    /** A device unplugged ends its track: fall back to the default device of that kind. */
    private watchTrack;
    private onTrackEnded;
    /** A renegotiation offer (perfect negotiation: see negotiation.ts). */
    private sendOffer;
    private signal;
    private onIceState;
    private onSignal;
    private onRemoteAnswer;
    private onRemoteOffer;
    private remoteDescriptionSet;
    private connecting;
    private onConnected;
    /**
     * Every 200 ms once connected: whether media stopped though the other side sends some
     * (stall.ts). A stall restarts ICE (the caller) or asks the caller to (the callee),
     * without waiting for ICE to notice: after an address change it did not for ~5.5 s.
     */
    private watchStall;
    /** Read the stats; from the second sample on, report the interval since the last. */
    private sampleQuality;
    private summarize;
}
