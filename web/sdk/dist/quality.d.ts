/** Counters read from one getStats() (cumulative since the call started). */
export interface QualitySample {
    /** ms, on the caller's clock */
    at: number;
    bytesSent: number;
    bytesReceived: number;
    /** Audio RTP packets received and lost (inbound-rtp), this side's view of the path towards it. */
    audioReceived: number;
    audioLost: number;
    /** Audio packets the other side reports received and lost of ours (remote-inbound-rtp). */
    remoteAudioReceived: number;
    remoteAudioLost: number;
    /** Round trips measured by RTCP (remote-inbound-rtp: the other side's receiver reports,
     * its own time holding the report taken out), all streams together. */
    rtcpRttTotal: number;
    rtcpRttCount: number;
    /** Round trips measured on the selected pair (STUN consent checks). */
    rttTotal: number;
    rttCount: number;
    /** The latest round trip the browser knows (s), when no new one was measured. */
    rttCurrent: number | null;
    /** Inbound jitter (s), the worst of the streams. */
    jitter: number | null;
}
export type QualityLevel = "good" | "fair" | "poor";
/** The `quality` event: the last interval's figures. */
export interface QualityReport {
    /** Round-trip time (ms): RTCP's over the interval, else the selected pair's STUN checks; null before any was measured. */
    rttMs: number | null;
    /** Inbound jitter (ms). */
    jitterMs: number | null;
    /** Fraction of audio packets lost in the interval, both directions together (0..1);
     * audio is not retransmitted, so this is the path's own loss. Null without audio. */
    loss: number | null;
    /** Received and sent bitrates (kbit/s). */
    inKbps: number;
    outKbps: number;
    level: QualityLevel;
    /** Length of the interval (ms). */
    intervalMs: number;
}
/** What the SDK sums up when a call ends. */
export interface CallSummary {
    /** From connected to the end (ms); 0 if it never connected. */
    durationMs: number;
    pair: {
        local: string;
        remote: string;
        protocol: string;
    } | null;
    /** As of the last quality sample. */
    bytesSent: number;
    bytesReceived: number;
    /** ICE restarts in the whole call. */
    restarts: number;
    /** Mean of the interval round-trip times and losses reported (null if none). */
    rttMs: number | null;
    loss: number | null;
}
export declare function emptySample(at: number): QualitySample;
type Stat = any;
/** The sample in one getStats() report. */
export declare function readSample(stats: Stat, at: number): QualitySample;
/** The level: good under 2 % loss and 250 ms, poor from 8 % or 600 ms, fair between. */
export declare function qualityLevel(loss: number | null, rttMs: number | null): QualityLevel;
/** The report for the interval between two samples. */
export declare function quality(prev: QualitySample, cur: QualitySample): QualityReport;
export {};
