export interface StallState {
    /** Packets received (audio and video, every inbound stream) at the last sample. */
    packets: number;
    /** When the count last grew (ms), or null before it ever did. */
    lastGrowth: number | null;
    /** A stall was reported and the count has not grown since. */
    reported: boolean;
    /** Media was expected at the last sample. */
    expecting: boolean;
    /** Half the limit passed without media and the signaling socket was checked. */
    probed: boolean;
}
export declare function initialStall(): StallState;
/**
 * One sample: `packets` received so far, at `now`; `expecting` when the other side says it
 * sends audio or video. Returns the next state; whether a stall starts now (once per
 * stall, only after media has flowed in this call, only while media is expected: a side
 * that muted everything sends no packets, and is not a broken path; and only once nothing
 * has come for `limitMs`); and whether to check the signaling socket now (once, at half
 * the limit: the restart a stall sends must not go out on a socket that can no longer
 * hear back).
 */
export declare function stallStep(s: StallState, packets: number, expecting: boolean, now: number, limitMs: number): {
    state: StallState;
    stalled: boolean;
    probe: boolean;
};
/** Packets received over every inbound RTP stream of a getStats() report. */
export declare function packetsReceived(stats: {
    forEach(cb: (r: Record<string, unknown>) => void): void;
}): number;
