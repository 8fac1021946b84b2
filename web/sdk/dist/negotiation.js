// The rules for ICE restarts and renegotiation, as a pure function: `negotiate(state,
// event, now)` returns the next state and the actions the call must carry out. It
// never reads the clock, sets a timer or touches a peer connection; the Call drives it
// (call.ts) and the unit tests drive it directly.
//
// Restarts (docs/protocol.md): only the caller restarts ICE, one restart at a time.
// Chromium reports `failed` whenever every pair it has *so far* failed, even while
// candidates are still coming (a TURN server refusing a permission to a private host
// candidate fails that pair at once), so a restart waits until both sides sent
// end-of-candidates for the generation, or until the grace period ends still failed.
// A restart unanswered after twice the grace period is rolled back; three restarts in a
// row that do not bring ICE back end the call with `ice_failed`. Restarts are numbered:
// the offer carries `restart` and the answer echoes it, so an answer to an earlier,
// rolled-back restart is not taken for the current one's.
//
// Renegotiation (screen share, a track added or removed) follows the perfect-negotiation
// pattern: either side may offer when its connection is stable; when offers cross, the
// callee is polite (its own offer is rolled back and it answers the caller's) and the
// caller is impolite (it ignores the callee's offer, which the callee makes again once
// stable). A restart waits while a renegotiation is under way, and the other way round.
export function initialNegotiation(role, grace) {
    return {
        role,
        grace,
        ended: false,
        restarts: 0,
        restartGen: 0,
        restartInFlight: false,
        restartAnswerPending: false,
        remoteGatheringDone: false,
        restartBlocked: false,
        failedWhy: "",
        timers: { failed: null, disconnect: null, answer: null },
        answerTimerGen: 0,
        wasConnected: false,
        recovering: false,
        stalled: false,
    };
}
/**
 * What to do when ICE reports `failed`: restart now only when no restart is in flight and
 * neither side can still bring a candidate; otherwise wait for the restart's answer, or
 * for gathering to end (bounded by the grace period).
 */
export function restartDecision(s) {
    if (s.inFlight)
        return "after-answer";
    return s.localGatheringDone && s.remoteGatheringDone ? "restart" : "wait";
}
/** One step of the rules. `state` is not modified. */
export function negotiate(state, event, now) {
    const s = { ...state, timers: { ...state.timers } };
    const out = [];
    const mark = (ev, detail) => out.push(detail ? { type: "mark", event: ev, detail } : { type: "mark", event: ev });
    const arm = (timer, ms) => {
        s.timers[timer] = now + ms;
        out.push({ type: "arm", timer, at: now + ms });
    };
    const disarm = (timer) => {
        if (s.timers[timer] === null)
            return;
        s.timers[timer] = null;
        out.push({ type: "disarm", timer });
    };
    // The media path broke: say so once, until ICE is back.
    const lost = (why) => {
        if (s.recovering)
            return;
        s.recovering = true;
        out.push({ type: "reconnecting", why });
    };
    const stillFailed = (pc) => pc.conn === "failed" || pc.ice === "failed";
    const busy = (pc) => pc.signaling !== "stable" || pc.makingOffer;
    const restartIce = (why, pc) => {
        if (s.ended || s.role !== "caller" || s.restartInFlight)
            return;
        disarm("failed");
        if (busy(pc)) {
            // A renegotiation is under way: its offer or answer first.
            s.restartBlocked = true;
            mark("ice restart deferred", { why, until: "renegotiation" });
            return;
        }
        s.restartBlocked = false;
        if (s.restarts >= 3) {
            // Still failing after three restarts: end the call and say why, rather than keep
            // a call that shows connected with nothing flowing.
            mark("ice restarts exhausted", { why });
            out.push({ type: "hangup", reason: "ice_failed" });
            return;
        }
        // Before ICE ever connected the call is still connecting, not reconnecting.
        if (s.wasConnected)
            lost(why);
        s.restarts++;
        s.stalled = false;
        const gen = ++s.restartGen;
        s.restartInFlight = true;
        s.restartAnswerPending = true;
        // The remote's end-of-candidates so far was for the generation being replaced.
        s.remoteGatheringDone = false;
        mark("ice restart", { why, attempt: s.restarts });
        // An answer that never comes (the callee could not apply the offer, or the frame was
        // lost with a session the server replaced) must not hold every later restart back.
        s.answerTimerGen = gen;
        arm("answer", 2 * s.grace);
        out.push({ type: "restart", gen });
    };
    const onFailed = (why, pc) => {
        if (s.ended || s.role !== "caller")
            return;
        const decision = restartDecision({
            inFlight: s.restartInFlight,
            localGatheringDone: pc.gathering === "complete",
            remoteGatheringDone: s.remoteGatheringDone,
        });
        if (decision === "restart")
            return restartIce(why, pc);
        if (decision === "after-answer")
            return mark("ice restart deferred", { why, until: "restart answer" });
        if (s.timers.failed !== null)
            return;
        mark("ice failed while gathering", { why, local: pc.gathering, remote: s.remoteGatheringDone ? "complete" : "gathering" });
        s.failedWhy = why;
        arm("failed", s.grace);
    };
    // Restart if ICE is still `disconnected` when the grace period ends.
    const armDisconnect = () => arm("disconnect", s.grace);
    // Something that can end a wait for a restart happened: decide again.
    const recheckFailed = (what, pc) => {
        if (stillFailed(pc))
            onFailed(`failed at ${what}`, pc);
        else if (pc.ice === "disconnected")
            armDisconnect();
    };
    // Restart `gen` is over, answered or not: the next failure may restart again. Nothing
    // to do if a later restart has started since.
    const restartDone = (gen, what, pc) => {
        if (gen !== s.restartGen || s.ended)
            return;
        s.restartInFlight = false;
        s.restartAnswerPending = false;
        disarm("answer");
        recheckFailed(what, pc);
    };
    switch (event.type) {
        case "ended":
            s.ended = true;
            for (const t of ["failed", "disconnect", "answer"])
                disarm(t);
            break;
        case "ice": {
            const { pc } = event;
            if ((pc.ice === "failed" || pc.ice === "disconnected") && s.wasConnected)
                lost(`ice ${pc.ice}`);
            if (pc.ice === "failed")
                onFailed("ice failed", pc);
            else if (pc.ice === "disconnected")
                armDisconnect();
            else if (pc.ice === "connected" || pc.ice === "completed") {
                disarm("disconnect");
                disarm("failed");
                s.wasConnected = true;
                if (s.recovering) {
                    s.recovering = false;
                    out.push({ type: "reconnected" });
                }
                // A restart that got here helped: a long call may need a few, far apart.
                s.restarts = 0;
            }
            break;
        }
        case "conn":
            if (event.pc.conn === "failed")
                onFailed("connection failed", event.pc);
            break;
        case "local-gathering-complete":
            recheckFailed("local gathering complete", event.pc);
            break;
        case "remote-end-of-candidates":
            if (s.restartAnswerPending)
                break;
            s.remoteGatheringDone = true;
            recheckFailed("remote gathering complete", event.pc);
            break;
        case "timer": {
            const { pc, timer } = event;
            if (s.timers[timer] === null || s.ended)
                break;
            s.timers[timer] = null;
            if (timer === "failed") {
                if (stillFailed(pc))
                    restartIce(`${s.failedWhy}, still failed after the grace period`, pc);
            }
            else if (timer === "disconnect") {
                if (pc.ice !== "disconnected")
                    break;
                if (s.restartInFlight)
                    armDisconnect();
                else
                    restartIce("disconnected beyond grace", pc);
            }
            else if (timer === "answer") {
                // An answer that has arrived and is being applied is not rolled back under it.
                if (s.answerTimerGen !== s.restartGen || !s.restartAnswerPending)
                    break;
                mark("ice restart unanswered", { ms: 2 * s.grace });
                out.push({ type: "rollback", gen: s.restartGen });
            }
            break;
        }
        case "restart-done":
            restartDone(event.gen, event.what, event.pc);
            break;
        case "remote-answer": {
            const tag = event.restart;
            if (typeof tag === "number" && tag !== s.restartGen) {
                mark("answer to an earlier restart ignored", { restart: tag, current: s.restartGen });
                break;
            }
            // From here on, what arrives is the new generation's.
            s.restartAnswerPending = false;
            out.push({ type: "apply-answer", gen: s.restartGen });
            break;
        }
        case "answer-applied":
            if (!s.restartInFlight)
                break;
            if (event.ok) {
                mark("ice restart answered");
                restartDone(event.gen, "restart answer", event.pc);
            }
            else
                restartDone(event.gen, "unusable restart answer", event.pc);
            break;
        case "remote-offer": {
            const { pc } = event;
            const collision = busy(pc);
            if (collision && s.role === "caller") {
                // Impolite: our own offer stands; the callee rolls back and offers again.
                mark("remote offer ignored (offers crossed)", { signaling: pc.signaling });
                break;
            }
            if (event.iceRestart)
                s.remoteGatheringDone = false;
            if (collision)
                mark("offers crossed: own offer rolled back", { signaling: pc.signaling });
            out.push({ type: "answer-offer", collision });
            break;
        }
        case "negotiation-needed": {
            const { pc } = event;
            // The browser fires it again once stable if it is still needed.
            if (s.ended || busy(pc) || s.restartInFlight)
                break;
            out.push({ type: "offer" });
            break;
        }
        case "stable":
            if (s.restartBlocked && !s.ended) {
                s.restartBlocked = false;
                if (s.stalled)
                    restartIce("media stalled", event.pc);
                else
                    recheckFailed("renegotiation done", event.pc);
            }
            break;
        case "media-stalled": {
            const { pc } = event;
            if (s.ended || !s.wasConnected)
                break;
            lost("media stalled");
            if (s.role === "caller") {
                if (s.restartInFlight) {
                    mark("media stalled during a restart");
                    break;
                }
                s.stalled = true;
                restartIce("media stalled", pc);
            }
            else {
                // Only the caller restarts: ask it to.
                mark("media stalled: restart requested");
                out.push({ type: "request-restart" });
            }
            break;
        }
        case "media-resumed":
            s.stalled = false;
            if (s.recovering && !s.ended && (event.pc.ice === "connected" || event.pc.ice === "completed")) {
                s.recovering = false;
                s.restarts = 0;
                out.push({ type: "reconnected" });
            }
            break;
        case "remote-restart-request":
            if (s.ended || s.role !== "caller" || !s.wasConnected)
                break;
            if (s.restartInFlight) {
                mark("restart request during a restart");
                break;
            }
            s.stalled = true;
            restartIce("the other side's media stalled", event.pc);
            break;
    }
    return { state: s, actions: out };
}
