// Call quality from WebRTC stats: a sample is read from getStats (readSample), and the
// report over an interval is a pure function of two samples (quality), unit-tested
// without a browser.

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
  pair: { local: string; remote: string; protocol: string } | null;
  /** As of the last quality sample. */
  bytesSent: number;
  bytesReceived: number;
  /** ICE restarts in the whole call. */
  restarts: number;
  /** Mean of the interval round-trip times and losses reported (null if none). */
  rttMs: number | null;
  loss: number | null;
}

export function emptySample(at: number): QualitySample {
  return { at, bytesSent: 0, bytesReceived: 0, audioReceived: 0, audioLost: 0, remoteAudioReceived: 0, remoteAudioLost: 0, rtcpRttTotal: 0, rtcpRttCount: 0, rttTotal: 0, rttCount: 0, rttCurrent: null, jitter: null };
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Stat = any;

/** The sample in one getStats() report. */
export function readSample(stats: Stat, at: number): QualitySample {
  const s = emptySample(at);
  let pair: Stat;
  stats.forEach((r: Stat) => {
    if (r.type === "transport") {
      s.bytesSent += r.bytesSent ?? 0;
      s.bytesReceived += r.bytesReceived ?? 0;
      if (r.selectedCandidatePairId) pair = stats.get(r.selectedCandidatePairId);
    } else if (r.type === "inbound-rtp") {
      if (typeof r.jitter === "number") s.jitter = Math.max(s.jitter ?? 0, r.jitter);
      if (r.kind === "audio") {
        s.audioReceived += r.packetsReceived ?? 0;
        s.audioLost += r.packetsLost ?? 0;
      }
    } else if (r.type === "remote-inbound-rtp") {
      s.rtcpRttTotal += r.totalRoundTripTime ?? 0;
      s.rtcpRttCount += r.roundTripTimeMeasurements ?? 0;
    }
    if (r.type === "remote-inbound-rtp" && r.kind === "audio") {
      s.remoteAudioLost += r.packetsLost ?? 0;
      // What the other side received of ours: what we sent, less what it lost. The
      // matching outbound-rtp has the count sent.
      const out = r.localId ? stats.get(r.localId) : undefined;
      if (out?.packetsSent !== undefined) s.remoteAudioReceived += Math.max(0, out.packetsSent - (r.packetsLost ?? 0));
    }
  });
  if (pair) {
    s.rttTotal = pair.totalRoundTripTime ?? 0;
    s.rttCount = pair.responsesReceived ?? 0;
    s.rttCurrent = pair.currentRoundTripTime ?? null;
  }
  return s;
}

/** The level: good under 2 % loss and 250 ms, poor from 8 % or 600 ms, fair between. */
export function qualityLevel(loss: number | null, rttMs: number | null): QualityLevel {
  const l = loss ?? 0;
  const r = rttMs ?? 0;
  if (l >= 0.08 || r >= 600) return "poor";
  if (l >= 0.02 || r >= 250) return "fair";
  return "good";
}

/** The report for the interval between two samples. */
export function quality(prev: QualitySample, cur: QualitySample): QualityReport {
  const ms = Math.max(1, cur.at - prev.at);
  // RTCP's round trips first: they leave out how long the other side held the report,
  // which a busy browser answering a STUN check does not.
  const dRtcp = cur.rtcpRttCount - prev.rtcpRttCount;
  const dCount = cur.rttCount - prev.rttCount;
  const rtt =
    dRtcp > 0 ? ((cur.rtcpRttTotal - prev.rtcpRttTotal) / dRtcp) * 1000
    : dCount > 0 ? ((cur.rttTotal - prev.rttTotal) / dCount) * 1000
    : cur.rttCurrent !== null ? cur.rttCurrent * 1000
    : null;
  // Lost counts can go down (a late packet counted as lost arrives); never below zero.
  const lost = Math.max(0, cur.audioLost - prev.audioLost) + Math.max(0, cur.remoteAudioLost - prev.remoteAudioLost);
  const got = Math.max(0, cur.audioReceived - prev.audioReceived) + Math.max(0, cur.remoteAudioReceived - prev.remoteAudioReceived);
  const loss = lost + got > 0 ? lost / (lost + got) : null;
  const rttMs = rtt === null ? null : Math.round(rtt * 10) / 10;
  return {
    rttMs,
    jitterMs: cur.jitter === null ? null : Math.round(cur.jitter * 10000) / 10,
    loss: loss === null ? null : Math.round(loss * 10000) / 10000,
    inKbps: Math.round(((cur.bytesReceived - prev.bytesReceived) * 8) / ms),
    outKbps: Math.round(((cur.bytesSent - prev.bytesSent) * 8) / ms),
    level: qualityLevel(loss, rttMs),
    intervalMs: ms,
  };
}
