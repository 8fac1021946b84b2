export type Role = "caller" | "callee";
export type TimerName = "failed" | "disconnect" | "answer";
/** What the peer connection shows at the moment of the event (read by the driver). */
export interface PcView {
    ice: string;
    conn: string;
    gathering: string;
    signaling: string;
    /** This side is creating or sending an offer (not yet in `signaling`). */
    makingOffer: boolean;
}
export interface NegotiationState {
    role: Role;
    /** How long a failed or disconnected ICE is given before a restart (ms). */
    grace: number;
    ended: boolean;
    /** Restarts since ICE last connected. */
    restarts: number;
    /** Number of the latest restart. */
    restartGen: number;
    /** Our restart offer is out and its answer not yet applied. */
    restartInFlight: boolean;
    /** Our restart offer is out and its answer has not arrived: an end-of-candidates
     * received meanwhile is the old generation's. */
    restartAnswerPending: boolean;
    /** The remote side sent end-of-candidates for the current ICE generation. */
    remoteGatheringDone: boolean;
    /** A restart was due while a renegotiation was under way: decide again once stable. */
    restartBlocked: boolean;
    /** Why the failed-grace timer is armed. */
    failedWhy: string;
    /** Deadlines (ms, on the caller's clock) of the armed timers. */
    timers: Record<TimerName, number | null>;
    /** The restart the answer timer is for. */
    answerTimerGen: number;
    /** ICE has connected at least once in this call. */
    wasConnected: boolean;
    /** The media path broke after it had connected (told as `reconnecting`) and is not back yet. */
    recovering: boolean;
    /** Media stalled and no restart has been sent for it yet (one was deferred). */
    stalled: boolean;
}
export type NegotiationEvent = 
/** iceConnectionState changed (to `pc.ice`). */
{
    type: "ice";
    pc: PcView;
}
/** connectionState changed (to `pc.conn`). */
 | {
    type: "conn";
    pc: PcView;
} | {
    type: "local-gathering-complete";
    pc: PcView;
} | {
    type: "remote-end-of-candidates";
    pc: PcView;
} | {
    type: "timer";
    timer: TimerName;
    pc: PcView;
}
/** Restart `gen` is over (answer applied or unusable, offer failed, rolled back). */
 | {
    type: "restart-done";
    gen: number;
    what: string;
    pc: PcView;
} | {
    type: "remote-answer";
    restart?: number;
    pc: PcView;
}
/** The answer `apply-answer` asked for was applied (`ok`) or refused. */
 | {
    type: "answer-applied";
    gen: number;
    ok: boolean;
    pc: PcView;
}
/** An offer from the other side; `iceRestart` when its ICE credentials changed. */
 | {
    type: "remote-offer";
    iceRestart: boolean;
    pc: PcView;
}
/** The browser says a renegotiation is needed (a track added, removed or replaced by a new kind). */
 | {
    type: "negotiation-needed";
    pc: PcView;
}
/** signalingState is back to stable. */
 | {
    type: "stable";
    pc: PcView;
}
/** No media has arrived for a while though the other side sends some (stall.ts). */
 | {
    type: "media-stalled";
    pc: PcView;
}
/** Media arrives again after a stall. */
 | {
    type: "media-resumed";
    pc: PcView;
}
/** The callee's media stalled and it asks the caller (who alone restarts) to restart. */
 | {
    type: "remote-restart-request";
    pc: PcView;
} | {
    type: "ended";
};
export type NegotiationAction = {
    type: "mark";
    event: string;
    detail?: Record<string, unknown>;
} | {
    type: "arm";
    timer: TimerName;
    at: number;
} | {
    type: "disarm";
    timer: TimerName;
}
/** Create and send restart offer number `gen`. */
 | {
    type: "restart";
    gen: number;
}
/** Roll back restart offer `gen`, then report `restart-done`. */
 | {
    type: "rollback";
    gen: number;
}
/** Apply the answer just received; report `answer-applied` with `gen`. */
 | {
    type: "apply-answer";
    gen: number;
}
/** Apply the offer just received and send an answer (echoing its `restart`). */
 | {
    type: "answer-offer";
    collision: boolean;
}
/** Create and send a (non-restart) offer. */
 | {
    type: "offer";
} | {
    type: "hangup";
    reason: "ice_failed";
}
/** The call's media path broke after it had connected (ICE disconnected or failed), or
 * a restart began: once until `reconnected`. */
 | {
    type: "reconnecting";
    why: string;
}
/** ICE is connected again. */
 | {
    type: "reconnected";
}
/** Ask the caller to restart ICE (`{"restart_request": true}` in a `call.signal`). */
 | {
    type: "request-restart";
};
export declare function initialNegotiation(role: Role, grace: number): NegotiationState;
/**
 * What to do when ICE reports `failed`: restart now only when no restart is in flight and
 * neither side can still bring a candidate; otherwise wait for the restart's answer, or
 * for gathering to end (bounded by the grace period).
 */
export declare function restartDecision(s: {
    inFlight: boolean;
    localGatheringDone: boolean;
    remoteGatheringDone: boolean;
}): "restart" | "after-answer" | "wait";
/** One step of the rules. `state` is not modified. */
export declare function negotiate(state: NegotiationState, event: NegotiationEvent, now: number): {
    state: NegotiationState;
    actions: NegotiationAction[];
};
