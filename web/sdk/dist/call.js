// One call: its peer connection, media, signals, and the driver of the restart and
// renegotiation rules (negotiation.ts).
import { Emitter } from "./emitter.js";
import { FirstcallError } from "./session.js";
import { initialNegotiation, negotiate } from "./negotiation.js";
import { candidateType, iceUfrag, selectedPair } from "./stats.js";
import { quality, readSample } from "./quality.js";
import { initialStall, packetsReceived, stallStep } from "./stall.js";
/** One call. Events: see `CallEvents`. */
export class Call extends Emitter {
    constructor(client, id, peer, direction, media, options = {}) {
        super();
        this.client = client;
        this.id = id;
        this.peer = peer;
        this.direction = direction;
        this.media = media;
        this.state = "new";
        this.endReason = null;
        this.pc = null;
        this.localStream = null;
        this.remoteStream = null;
        this.timeline = [];
        /** Candidate counts by type, gathered locally and received from the peer. */
        this.candidates = { local: {}, remote: {} };
        this.connectMs = null;
        /** Time from the call's start to ICE connected (before DTLS), the protocol's `call.connected` moment. */
        this.iceConnectedMs = null;
        this.selectedPair = null;
        /** @internal */ this.offer = null;
        /** @internal */ this.fromDevice = null;
        /** The app's data about the call: what the caller passed as `meta` to `client.call()`
         * (on both sides; null when it passed none). */
        this.meta = null;
        /** The other side's device in this call (the caller's, or the one that answered). */
        this.peerDevice = null;
        /** @internal The seq of our `call.restore`, while the server has not confirmed it. */
        this.restoreSeq = null;
        this.remoteCandidates = [];
        this.remoteSet = false;
        this.connectTimer = null;
        this.timers = { failed: null, disconnect: null, answer: null };
        /** We are creating or sending an offer that `signalingState` does not show yet. */
        this.makingOffer = false;
        /** The call's first offer and answer are applied: renegotiation may begin. */
        this.negotiated = false;
        /** The other side's screen share, while it lasts. */
        this.remoteScreen = null;
        /** Our screen share, while it lasts. */
        this.screenStream = null;
        this.senders = {};
        /** Tracks the SDK opened (stopped when the call ends); an app's own stream is not. */
        this.ownTracks = new Set();
        /** The latest quality report, and the call's summary once it ended. */
        this.lastQuality = null;
        this.summary = null;
        this.qualityTimer = null;
        this.stallTimer = null;
        this.stall = initialStall();
        this.lastSample = null;
        this.reports = [];
        this.connectedAt = null;
        this.restartsTotal = 0;
        this.screenSender = null;
        /** The id of the other side's camera-and-microphone stream (any other is a screen share). */
        this.cameraStreamId = null;
        this.signalingDown = false;
        this.connecting = false;
        this.mediaOptions = options;
        this.t0 = client.env.now();
        this.neg = initialNegotiation(direction === "outgoing" ? "caller" : "callee", client.options.iceRestartGraceMs ?? 3000);
        const start = { audio: true, video: media === "video", screen: false };
        this.localMedia = { ...start };
        this.remoteMedia = { ...start };
    }
    /**
     * Stop sending the microphone (`"audio"`) or the camera (`"video"`), and tell the other
     * side (`remotemedia` there). Nothing is sent for that track until `unmute`: its sender
     * carries no track (replaceTrack(null), no renegotiation), so the other side decodes
     * nothing; the local track stays open (disabled) for a quick unmute.
     */
    mute(kind) {
        return this.setSending(kind, false);
    }
    /** Send the microphone or camera again, and tell the other side. */
    unmute(kind) {
        return this.setSending(kind, true);
    }
    async setSending(kind, on) {
        if (this.state === "ended" || (kind === "video" && this.media !== "video") || this.localMedia[kind] === on)
            return;
        this.localMedia = { ...this.localMedia, [kind]: on };
        for (const t of this.localStream?.getTracks() ?? [])
            if (t.kind === kind)
                t.enabled = on;
        await this.applySending(kind);
        this.mark(on ? `${kind} unmuted` : `${kind} muted`);
        this.signal({ media: { ...this.localMedia } });
    }
    /** Point the camera's or microphone's sender at its track, or at nothing while muted. */
    async applySending(kind) {
        const sender = this.senders[kind];
        if (!sender)
            return;
        const track = this.localStream?.getTracks().find((t) => t.kind === kind) ?? null;
        await sender.replaceTrack(this.localMedia[kind] ? track : null);
    }
    /**
     * Share a screen (or the `stream` given, e.g. a canvas capture) on a new video track:
     * a renegotiation, which either side may start at any time after the call connected.
     * The other side gets `remotescreen` with the stream, and `remotemedia` with `screen: true`.
     * Rejects with a `FirstcallError`: `invalid_state` before the call connected or after it
     * ended, `media` when no screen could be captured (e.g. the user closed the picker).
     */
    async shareScreen(opts = {}) {
        const pc = this.pc;
        if (this.state === "ended" || !pc || !this.negotiated)
            throw new FirstcallError("invalid_state", "firstcall: shareScreen needs a connected call");
        if (this.screenStream)
            return;
        const env = this.client.env;
        let stream = opts.stream;
        if (!stream) {
            if (!env.getDisplayMedia)
                throw new FirstcallError("media", "firstcall: screen capture is not available here");
            try {
                stream = await env.getDisplayMedia({ video: true, audio: false });
            }
            catch (e) {
                // E.g. NotAllowedError: the user closed the browser's picker.
                throw mediaError(e);
            }
        }
        const track = stream.getVideoTracks()[0];
        if (!track)
            throw new FirstcallError("media", "firstcall: the screen stream has no video track");
        if (this.state === "ended") {
            if (!opts.stream)
                stream.getTracks().forEach((t) => t.stop());
            return;
        }
        this.screenStream = stream;
        // The browser's own "stop sharing" ends the track.
        track.addEventListener("ended", () => void this.stopScreen());
        this.screenSender = pc.addTrack(track, stream);
        this.localMedia = { ...this.localMedia, screen: true };
        this.mark("screen share started");
        this.signal({ media: { ...this.localMedia } });
    }
    /** Stop our screen share (a renegotiation). */
    async stopScreen() {
        const stream = this.screenStream;
        if (!stream)
            return;
        this.screenStream = null;
        const sender = this.screenSender;
        this.screenSender = null;
        stream.getTracks().forEach((t) => t.stop());
        if (this.state !== "ended" && this.pc && sender) {
            try {
                this.pc.removeTrack(sender);
            }
            catch (e) {
                this.mark("screen share removal failed", { error: String(e) });
            }
            this.localMedia = { ...this.localMedia, screen: false };
            this.signal({ media: { ...this.localMedia } });
        }
        this.mark("screen share stopped");
        this.emit("screenended");
    }
    /**
     * Answer an incoming call, with the app's own stream or constraints if given. A camera
     * or microphone that cannot be opened ends the call as `media_failed`, on both sides.
     */
    async accept(options = {}) {
        if (this.direction !== "incoming" || this.state !== "ringing")
            return;
        this.mediaOptions = options;
        this.setState("connecting");
        this.armConnectTimeout();
        try {
            await this.client.whenIceReady();
            await this.setupPeer();
            await this.pc.setRemoteDescription({ type: "offer", sdp: this.offer ?? "" });
            await this.remoteDescriptionSet();
            const answer = await this.pc.createAnswer();
            await this.pc.setLocalDescription(answer);
            this.client.send({ type: "call.accept", call: this.id, sdp: this.pc.localDescription.sdp });
            this.negotiated = true;
            this.mark("accept sent");
        }
        catch (e) {
            this.mark("accept failed", { error: String(e) });
            this.hangup("media_failed");
        }
    }
    /** Decline an incoming call. */
    reject() {
        if (this.state === "ended")
            return;
        this.client.send({ type: "call.reject", call: this.id });
        this.end("rejected", "local reject");
    }
    /** End the call (cancel, reject or hang up, as fits its state). */
    hangup(reason = "user") {
        if (this.state === "ended")
            return;
        if (this.direction === "outgoing" && (this.state === "ringing" || this.state === "pending" || this.state === "new")) {
            this.client.send({ type: "call.cancel", call: this.id });
            this.end("cancelled", "local cancel");
        }
        else if (this.direction === "incoming" && this.state === "ringing") {
            this.reject();
        }
        else {
            this.client.send({ type: "call.hangup", call: this.id, reason });
            this.end(reason === "user" ? "hangup" : reason, `local hangup (${reason})`);
        }
    }
    /** @internal Live, and its peer connection not built yet. */
    get awaitingPeer() {
        return !this.pc && this.state !== "ended";
    }
    /** @internal */
    async start() {
        this.mark("calling", { to: this.peer, media: this.media, ice_servers: this.client.iceServers.length });
        this.armConnectTimeout();
        try {
            if (!(await this.client.whenIceReady()))
                this.mark("no ICE servers yet: calling without TURN");
            else if (!this.client.iceServers.length)
                this.mark("no ICE servers");
            await this.setupPeer();
            const offer = await this.pc.createOffer();
            await this.pc.setLocalDescription(offer);
            // The offer rides in the invite; candidates follow as they are found.
            this.client.send({
                type: "call.invite", call: this.id, to: this.peer, media: this.media, sdp: this.pc.localDescription.sdp,
                ...(this.meta ? { meta: this.meta } : {}),
            });
            this.setState("ringing");
            this.mark("invite sent");
        }
        catch (e) {
            this.mark("setup failed", { error: String(e) });
            // Nothing was sent yet: the other side never hears of this call.
            this.end(e instanceof FirstcallError && e.code === "media" ? "media_failed" : "local", String(e));
        }
    }
    /**
     * @internal The server lost this call (it restarted, or our session moved to another
     * node without it) while media flows between the two sides, which needs no server:
     * re-register it (`call.restore`), so that a hang-up still reaches the other side. False
     * when the call cannot be restored (media never flowed): it then ends `failed`.
     */
    restore() {
        const peerDevice = this.peerDevice ?? this.fromDevice;
        if (this.state !== "connected" || !peerDevice)
            return false;
        this.restoreSeq = this.client.send({
            type: "call.restore",
            call: this.id,
            role: this.direction === "outgoing" ? "caller" : "callee",
            peer: this.peer,
            peer_device: peerDevice,
            media: this.media,
        });
        this.mark("restoring", { seq: this.restoreSeq });
        return true;
    }
    /** @internal The client's socket went down (`reconnecting`) or its session is back (`connected`). */
    onSessionState(s, why) {
        if (this.state === "ended")
            return;
        if (s === "reconnecting" && !this.signalingDown) {
            this.signalingDown = true;
            this.emit("reconnecting", { cause: "signaling", why });
        }
        else if (s === "connected" && this.signalingDown) {
            this.signalingDown = false;
            this.mark("reconnected", { cause: "signaling" });
            this.emit("reconnected", { cause: "signaling" });
        }
    }
    /** @internal */
    setState(s) {
        if (this.state === s || this.state === "ended")
            return;
        this.state = s;
        this.emit("state", s);
    }
    /** @internal */
    mark(event, detail) {
        const e = { t: this.client.env.now() - this.t0, event, detail };
        this.timeline.push(e);
        this.emit("timeline", e);
        this.client.log(`call ${this.id.slice(0, 8)}`, event, detail);
    }
    /** @internal */
    onFrame(f) {
        switch (f.type) {
            case "call.ringing":
                this.mark("ringing", { device: f.device });
                if (this.state === "pending")
                    this.setState("ringing");
                return;
            case "call.pending":
                this.mark("callee offline: waiting (push sent)");
                this.setState("pending");
                return;
            case "call.accepted":
                this.peerDevice = f.device;
                this.mark("accepted", { device: f.device });
                this.setState("connecting");
                void this.pc
                    ?.setRemoteDescription({ type: "answer", sdp: f.sdp })
                    .then(() => {
                    this.negotiated = true;
                    return this.remoteDescriptionSet();
                })
                    .catch((e) => {
                    this.mark("bad answer", { error: String(e) });
                    this.hangup("media_failed");
                });
                return;
            case "call.signal":
                return void this.onSignal(f.data);
            case "call.restored":
                this.restoreSeq = null;
                this.mark("restored", { peer_back: f.peer_back });
                return;
            case "call.ended":
                // The other side could not open its camera or microphone: the server says
                // `rejected` (before an answer) or `hangup`, with the hang-up reason as detail.
                return this.end(f.detail === "media_failed" ? "media_failed" : f.reason, f.detail ? `remote: ${f.detail}` : "remote");
        }
    }
    /** @internal */
    end(reason, why) {
        if (this.state === "ended")
            return;
        this.endReason = reason;
        this.mark("ended", { reason, why });
        this.client.env.clearTimeout(this.connectTimer);
        this.client.env.clearTimeout(this.qualityTimer);
        this.client.env.clearTimeout(this.stallTimer);
        this.step({ type: "ended" });
        try {
            this.pc?.close();
        }
        catch {
            /* ignore */
        }
        for (const t of this.ownTracks)
            t.stop();
        this.ownTracks.clear();
        this.screenStream?.getTracks().forEach((t) => t.stop());
        this.state = "ended";
        this.summary = this.summarize();
        this.mark("summary", { ...this.summary });
        // The server keeps round-trip and loss histograms of the calls that had media.
        if (this.connectedAt !== null) {
            this.client.send({
                type: "call.report",
                call: this.id,
                duration_ms: this.summary.durationMs,
                rtt_ms: this.summary.rttMs,
                loss: this.summary.loss,
                restarts: this.summary.restarts,
            });
        }
        this.emit("state", "ended");
        this.emit("summary", this.summary);
        this.emit("ended", reason);
        // Ready for the next call once no call is in progress.
        if (!this.client.inCall())
            this.client.prewarm();
    }
    armConnectTimeout() {
        const ms = this.client.options.connectTimeoutMs ?? 45000;
        this.connectTimer = this.client.env.setTimeout(() => {
            if (this.state !== "connected" && this.state !== "ended") {
                this.mark("no connection in time", { ms });
                this.hangup("ice_failed");
            }
        }, ms);
    }
    /** What the rules need to know of the peer connection now. */
    view() {
        const pc = this.pc;
        return {
            ice: pc?.iceConnectionState ?? "new",
            conn: pc?.connectionState ?? "new",
            gathering: pc?.iceGatheringState ?? "new",
            signaling: pc?.signalingState ?? "stable",
            makingOffer: this.makingOffer,
        };
    }
    /** Feed one event to the rules and carry out what they say. */
    step(event) {
        const { state, actions } = negotiate(this.neg, event, this.client.env.now());
        this.neg = state;
        for (const a of actions)
            this.act(a);
    }
    act(a) {
        const env = this.client.env;
        switch (a.type) {
            case "mark":
                return this.mark(a.event, a.detail);
            case "arm": {
                env.clearTimeout(this.timers[a.timer]);
                const timer = a.timer;
                this.timers[timer] = env.setTimeout(() => {
                    this.timers[timer] = null;
                    if (this.pc)
                        this.step({ type: "timer", timer, pc: this.view() });
                }, Math.max(0, a.at - env.now()));
                return;
            }
            case "disarm":
                env.clearTimeout(this.timers[a.timer]);
                this.timers[a.timer] = null;
                return;
            case "restart":
                this.restartsTotal++;
                return void this.sendRestartOffer(a.gen);
            case "rollback": {
                const pc = this.pc;
                void pc
                    .setLocalDescription({ type: "rollback" })
                    .catch((e) => this.mark("rollback failed", { error: String(e) }))
                    .then(() => this.step({ type: "restart-done", gen: a.gen, what: "unanswered restart", pc: this.view() }));
                return;
            }
            case "hangup":
                return this.hangup(a.reason);
            case "reconnecting":
                return this.emit("reconnecting", { cause: "ice", why: a.why });
            case "reconnected":
                this.mark("reconnected", { cause: "ice" });
                return this.emit("reconnected", { cause: "ice" });
            case "request-restart":
                return this.signal({ restart_request: true });
            case "apply-answer":
            case "answer-offer":
            case "offer":
                // Carried out by onSignal / onNegotiationNeeded, which asked for them.
                return;
        }
    }
    async sendRestartOffer(gen) {
        const pc = this.pc;
        this.makingOffer = true;
        try {
            const offer = await pc.createOffer({ iceRestart: true });
            await pc.setLocalDescription(offer);
            if (this.state === "ended")
                return;
            this.client.send({ type: "call.signal", call: this.id, data: { sdp: { type: "offer", sdp: pc.localDescription.sdp, restart: gen } } });
        }
        catch (e) {
            this.mark("ice restart failed", { error: String(e) });
            this.makingOffer = false;
            this.step({ type: "restart-done", gen, what: "failed restart", pc: this.view() });
        }
        finally {
            this.makingOffer = false;
        }
    }
    async setupPeer() {
        const env = this.client.env;
        if (!env.RTCPeerConnection)
            throw new FirstcallError("webrtc_unavailable", "WebRTC is not available here");
        const opts = this.mediaOptions;
        if (opts.stream) {
            this.localStream = opts.stream;
            this.mark("app's own stream", { tracks: opts.stream.getTracks().map((t) => t.kind) });
        }
        else {
            const video = this.media === "video" ? (typeof opts.video === "object" ? opts.video : true) : false;
            this.localStream = await this.openMedia({ audio: opts.audio ?? true, video });
        }
        for (const t of this.localStream.getTracks())
            this.watchTrack(t);
        this.emit("localstream", this.localStream);
        const config = this.client.rtcConfiguration();
        const warm = this.client.takeWarmPeer(config);
        const pc = warm ?? new env.RTCPeerConnection(config);
        this.mark(warm ? "using pre-warmed peer connection" : "peer connection created");
        this.pc = pc;
        for (const t of this.localStream.getTracks()) {
            const sender = pc.addTrack(t, this.localStream);
            if (sender && (t.kind === "audio" || t.kind === "video"))
                this.senders[t.kind] = sender;
            // Muted before the peer connection existed.
            if (!this.localMedia[t.kind]) {
                t.enabled = false;
                await this.applySending(t.kind);
            }
        }
        pc.onicecandidate = (ev) => {
            if (ev.candidate && ev.candidate.candidate) {
                const type = ev.candidate.type ?? candidateType(ev.candidate.candidate);
                this.candidates.local[type] = (this.candidates.local[type] ?? 0) + 1;
                // Trickle: each candidate goes out the moment it is found (queued if offline).
                this.signal({ candidate: ev.candidate.toJSON() });
                this.mark("candidate gathered and sent", { type, protocol: ev.candidate.protocol });
            }
            else if (!ev.candidate) {
                this.signal({ end_of_candidates: true });
                this.mark("gathering complete", { ...this.candidates.local });
                this.step({ type: "local-gathering-complete", pc: this.view() });
            }
        };
        // A TURN or STUN server that cannot be reached or refuses us shows here, and only here:
        // without it a call that gathered no relay candidates would not say why.
        pc.onicecandidateerror = (ev) => {
            const e = ev;
            this.mark("candidate error", { url: e.url, code: e.errorCode, text: e.errorText, address: e.address });
        };
        pc.ontrack = (ev) => {
            const stream = ev.streams[0] ?? new MediaStream([ev.track]);
            // The first stream is the camera and microphone; any later one is a screen share.
            if (this.cameraStreamId === null)
                this.cameraStreamId = stream.id;
            if (stream.id === this.cameraStreamId) {
                this.remoteStream = stream;
                this.emit("remotestream", stream);
                return;
            }
            if (this.remoteScreen === stream)
                return;
            this.remoteScreen = stream;
            this.mark("remote screen share", { stream: stream.id });
            // Its track leaves the stream when the other side stops sharing (renegotiated).
            stream.onremovetrack = () => {
                if (stream.getTracks().length || this.remoteScreen !== stream)
                    return;
                this.remoteScreen = null;
                this.emit("remotescreen", null);
            };
            this.emit("remotescreen", stream);
        };
        pc.onnegotiationneeded = () => {
            // The first offer and answer go in the invite and the accept; only what changes
            // after them is renegotiated.
            if (!this.negotiated || this.state === "ended")
                return;
            const { state, actions } = negotiate(this.neg, { type: "negotiation-needed", pc: this.view() }, this.client.env.now());
            this.neg = state;
            for (const a of actions)
                this.act(a);
            if (actions.some((a) => a.type === "offer"))
                void this.sendOffer();
        };
        pc.oniceconnectionstatechange = () => this.onIceState(pc.iceConnectionState);
        pc.onconnectionstatechange = () => {
            this.mark(`connection ${pc.connectionState}`);
            if (pc.connectionState === "connected")
                void this.onConnected();
            this.step({ type: "conn", pc: this.view() });
        };
        pc.onsignalingstatechange = () => {
            if (pc.signalingState === "stable")
                this.step({ type: "stable", pc: this.view() });
        };
    }
    /** getUserMedia, whose failure is a `media` FirstcallError; the tracks it gives are ours to stop. */
    async openMedia(constraints) {
        const gum = this.client.env.getUserMedia;
        if (!gum)
            throw new FirstcallError("media", "getUserMedia is not available here");
        let stream;
        try {
            stream = await gum(constraints);
        }
        catch (e) {
            throw mediaError(e);
        }
        for (const t of stream.getTracks())
            this.ownTracks.add(t);
        return stream;
    }
    /**
     * Send from another microphone and/or camera (device ids from enumerateDevices): the
     * new track replaces the old on the same sender (replaceTrack), so nothing is
     * renegotiated and no offer goes out. A muted kind stays muted. Rejects with a
     * `FirstcallError`: `invalid_state` without media or after the call ended, `media` when
     * the device cannot be opened.
     */
    async setDevice(ids) {
        if (this.state === "ended" || !this.pc)
            throw new FirstcallError("invalid_state", "firstcall: setDevice needs a call with media");
        for (const kind of ["audio", "video"]) {
            const id = ids[kind];
            if (!id || (kind === "video" && this.media !== "video"))
                continue;
            const stream = await this.openMedia({ [kind]: { deviceId: { exact: id } } });
            const track = stream.getTracks().find((t) => t.kind === kind);
            if (!track)
                throw new FirstcallError("media", `firstcall: no ${kind} track from device ${id}`);
            if (this.state === "ended") {
                track.stop();
                return;
            }
            await this.swapTrack(kind, track);
            this.mark("device switched", { kind, label: track.label });
        }
    }
    /** Put `track` in place of the local track of its kind, on the same sender. */
    async swapTrack(kind, track) {
        const stream = this.localStream;
        const old = stream.getTracks().find((t) => t.kind === kind);
        track.enabled = this.localMedia[kind];
        if (old)
            stream.removeTrack(old);
        stream.addTrack(track);
        this.watchTrack(track);
        const sender = this.senders[kind];
        if (sender && this.localMedia[kind])
            await sender.replaceTrack(track);
        if (old && this.ownTracks.delete(old))
            old.stop();
        const info = { kind, deviceId: track.getSettings?.().deviceId ?? "", label: track.label };
        this.emit("device", info);
        return info;
    }
    /** A device unplugged ends its track: fall back to the default device of that kind. */
    watchTrack(track) {
        track.addEventListener("ended", () => void this.onTrackEnded(track));
    }
    async onTrackEnded(track) {
        const kind = track.kind;
        // Only the track we send now matters (one we replaced or stopped ourselves does not).
        if (this.state === "ended" || !this.localStream?.getTracks().includes(track))
            return;
        this.mark("device lost", { kind, label: track.label });
        let fallback = null;
        try {
            const stream = await this.openMedia({ [kind]: true });
            const next = stream.getTracks().find((t) => t.kind === kind);
            if (next && this.state !== "ended")
                fallback = await this.swapTrack(kind, next);
            else
                next?.stop();
        }
        catch (e) {
            this.mark("no fallback device", { kind, error: String(e) });
        }
        if (fallback)
            this.mark("fell back to device", { kind, label: fallback.label });
        this.emit("devicelost", { kind, lost: track.label, fallback });
    }
    /** A renegotiation offer (perfect negotiation: see negotiation.ts). */
    async sendOffer() {
        const pc = this.pc;
        this.makingOffer = true;
        try {
            // Without arguments: the offer is created and applied in one step, so an offer
            // from the other side cannot slip in between.
            await pc.setLocalDescription();
            if (this.state === "ended" || pc.signalingState !== "have-local-offer")
                return;
            this.signal({ sdp: { type: "offer", sdp: pc.localDescription.sdp } });
            this.mark("renegotiation offer sent");
        }
        catch (e) {
            this.mark("renegotiation offer failed", { error: String(e) });
        }
        finally {
            this.makingOffer = false;
        }
    }
    signal(data) {
        this.client.send({ type: "call.signal", call: this.id, data });
    }
    onIceState(s) {
        if ((s === "connected" || s === "completed") && this.iceConnectedMs === null) {
            this.iceConnectedMs = this.client.env.now() - this.t0;
            this.mark(`ice ${s}`, { ms: this.iceConnectedMs });
        }
        else
            this.mark(`ice ${s}`);
        this.step({ type: "ice", pc: this.view() });
    }
    // eslint-disable-next-line @typescript-eslint/no-explicit-any
    async onSignal(data) {
        if (!data)
            return;
        if (data.media && typeof data.media === "object") {
            const m = data.media;
            this.remoteMedia = { audio: m.audio !== false, video: m.video !== false && this.media === "video", screen: m.screen === true };
            this.mark("remote media", { ...this.remoteMedia });
            this.emit("remotemedia", { ...this.remoteMedia });
            if (!this.remoteMedia.screen && this.remoteScreen) {
                this.remoteScreen = null;
                this.emit("remotescreen", null);
            }
            return;
        }
        if (data.candidate) {
            const type = candidateType(data.candidate.candidate ?? "");
            this.candidates.remote[type] = (this.candidates.remote[type] ?? 0) + 1;
            if (!this.remoteSet || !this.pc) {
                // Until the remote description is set, candidates wait here rather than fail.
                this.remoteCandidates.push(data.candidate);
                this.mark("remote candidate buffered", { type });
                return;
            }
            this.mark("remote candidate", { type });
            await this.pc.addIceCandidate(data.candidate).catch((e) => this.mark("bad remote candidate", { error: String(e) }));
        }
        else if (data.restart_request === true) {
            this.mark("restart requested by the other side");
            if (this.pc)
                this.step({ type: "remote-restart-request", pc: this.view() });
        }
        else if (data.end_of_candidates) {
            const previous = this.neg.restartAnswerPending;
            this.mark("remote gathering complete", { ...this.candidates.remote, ...(previous ? { generation: "previous" } : {}) });
            if (this.pc)
                this.step({ type: "remote-end-of-candidates", pc: this.view() });
        }
        else if (data.sdp && this.pc) {
            const desc = { type: data.sdp.type, sdp: data.sdp.sdp };
            // `restart` numbers a restart offer and is echoed in its answer (an SDK without it
            // sends none, and its answers are taken as before).
            const tag = data.sdp.restart;
            if (desc.type === "answer")
                return this.onRemoteAnswer(desc, typeof tag === "number" ? tag : undefined);
            if (desc.type === "offer")
                return this.onRemoteOffer(desc, typeof tag === "number" ? tag : undefined);
            this.mark("unexpected sdp", { type: desc.type });
        }
    }
    async onRemoteAnswer(desc, tag) {
        const pc = this.pc;
        const { state, actions } = negotiate(this.neg, { type: "remote-answer", restart: tag, pc: this.view() }, this.client.env.now());
        this.neg = state;
        for (const a of actions)
            this.act(a);
        const apply = actions.find((a) => a.type === "apply-answer");
        if (!apply)
            return;
        let ok = true;
        try {
            await pc.setRemoteDescription(desc);
        }
        catch (e) {
            ok = false;
            this.mark("renegotiation failed", { error: String(e) });
        }
        this.step({ type: "answer-applied", gen: apply.gen, ok, pc: this.view() });
    }
    async onRemoteOffer(desc, tag) {
        const pc = this.pc;
        const current = pc.remoteDescription?.sdp;
        const ufrag = iceUfrag(desc.sdp ?? "");
        const iceRestart = !current || iceUfrag(current) !== ufrag;
        const { state, actions } = negotiate(this.neg, { type: "remote-offer", iceRestart, pc: this.view() }, this.client.env.now());
        this.neg = state;
        for (const a of actions)
            this.act(a);
        if (!actions.some((a) => a.type === "answer-offer"))
            return;
        try {
            // A polite side's own offer, if any, is rolled back by this (implicit rollback).
            await pc.setRemoteDescription(desc);
            const answer = await pc.createAnswer();
            await pc.setLocalDescription(answer);
            const echo = tag !== undefined ? { restart: tag } : {};
            this.signal({ sdp: { type: "answer", sdp: pc.localDescription.sdp, ...echo } });
            this.mark("renegotiation answered");
        }
        catch (e) {
            this.mark("renegotiation failed", { error: String(e) });
        }
    }
    async remoteDescriptionSet() {
        this.remoteSet = true;
        const pending = this.remoteCandidates.splice(0);
        if (pending.length)
            this.mark("buffered remote candidates applied", { count: pending.length });
        for (const c of pending)
            await this.pc?.addIceCandidate(c).catch((e) => this.mark("bad remote candidate", { error: String(e) }));
    }
    async onConnected() {
        if (this.state === "connected" || this.state === "ended" || !this.pc || this.connecting)
            return;
        this.connecting = true;
        this.connectMs = this.client.env.now() - this.t0;
        this.client.env.clearTimeout(this.connectTimer);
        // The pair is known before anyone sees `connected`, so listeners can read it.
        const pair = await selectedPair(this.pc);
        // The call may have ended while the stats were read.
        if (this.state === "ended")
            return;
        this.selectedPair = pair;
        this.setState("connected");
        this.mark("connected", { ms: this.connectMs, ...pair });
        this.client.send({ type: "call.connected", call: this.id, local: pair.local, remote: pair.remote, protocol: pair.protocol, ms: this.connectMs });
        this.emit("connected", { ms: this.connectMs, ...pair });
        this.connectedAt = this.client.env.now();
        void this.sampleQuality();
        void this.watchStall();
    }
    /**
     * Every 200 ms once connected: whether media stopped though the other side sends some
     * (stall.ts). A stall restarts ICE (the caller) or asks the caller to (the callee),
     * without waiting for ICE to notice: after an address change it did not for ~5.5 s.
     */
    async watchStall() {
        const limit = this.client.options.mediaStallMs ?? 800;
        const pc = this.pc;
        if (!pc || limit <= 0 || this.state === "ended")
            return;
        try {
            const packets = packetsReceived(await pc.getStats());
            if (this.state === "ended")
                return;
            const expecting = this.remoteMedia.audio || this.remoteMedia.video;
            const now = this.client.env.now();
            const wasReported = this.stall.reported;
            const { state, stalled, probe } = stallStep(this.stall, packets, expecting, now, limit);
            this.stall = state;
            // The restart (or its request) goes over signaling: make sure that still works.
            if (probe)
                this.client.probeSignaling();
            if (stalled) {
                this.mark("media stalled", { ms: now - (state.lastGrowth ?? now) });
                this.step({ type: "media-stalled", pc: this.view() });
            }
            else if (wasReported && !state.reported) {
                this.mark("media resumed");
                this.step({ type: "media-resumed", pc: this.view() });
            }
        }
        catch (e) {
            this.mark("stats failed", { error: String(e) });
        }
        if (this.state !== "ended")
            this.stallTimer = this.client.env.setTimeout(() => void this.watchStall(), 200);
    }
    /** Read the stats; from the second sample on, report the interval since the last. */
    async sampleQuality() {
        const every = this.client.options.qualityIntervalMs ?? 2000;
        const pc = this.pc;
        if (!pc || every <= 0 || this.state === "ended")
            return;
        try {
            const sample = readSample(await pc.getStats(), this.client.env.now());
            if (this.state === "ended")
                return;
            if (this.lastSample) {
                const q = quality(this.lastSample, sample);
                this.lastQuality = q;
                this.reports.push(q);
                this.emit("quality", q);
            }
            this.lastSample = sample;
        }
        catch (e) {
            this.mark("stats failed", { error: String(e) });
        }
        if (this.state !== "ended")
            this.qualityTimer = this.client.env.setTimeout(() => void this.sampleQuality(), every);
    }
    summarize() {
        const mean = (xs) => {
            const v = xs.filter((x) => x !== null);
            return v.length ? Math.round((v.reduce((a, b) => a + b, 0) / v.length) * 10000) / 10000 : null;
        };
        return {
            durationMs: this.connectedAt === null ? 0 : this.client.env.now() - this.connectedAt,
            pair: this.selectedPair,
            bytesSent: this.lastSample?.bytesSent ?? 0,
            bytesReceived: this.lastSample?.bytesReceived ?? 0,
            restarts: this.restartsTotal,
            rttMs: mean(this.reports.map((r) => r.rttMs)),
            loss: mean(this.reports.map((r) => r.loss)),
        };
    }
}
/**
 * The camera, microphone or screen could not be opened (a call that cannot open its
 * media ends as `media_failed`): the browser's error as a `media` FirstcallError.
 */
function mediaError(e) {
    const err = e;
    return new FirstcallError("media", `${err?.name ?? "Error"}: ${err?.message ?? String(e)}`, { cause: e });
}
