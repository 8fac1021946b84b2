// Media that stops while ICE still says connected: a pure watcher of received packet
// counts. When a host's address changes mid-call (Wi-Fi to cellular, a DHCP renewal),
// Chromium kept reporting ICE `connected` for ~5.5 s after the old address was gone, and the
// `disconnected` grace came on top: audio stopped for ~8.9 s (docs/netsim.md). Audio packets
// come 50 a second whenever the other side sends audio, so 0.8 s without any, while the
// other side says it is sending, means the path is gone.

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

export function initialStall(): StallState {
  return { packets: 0, lastGrowth: null, reported: false, expecting: true, probed: false };
}

/**
 * One sample: `packets` received so far, at `now`; `expecting` when the other side says it
 * sends audio or video. Returns the next state; whether a stall starts now (once per
 * stall, only after media has flowed in this call, only while media is expected: a side
 * that muted everything sends no packets, and is not a broken path; and only once nothing
 * has come for `limitMs`); and whether to check the signaling socket now (once, at half
 * the limit: the restart a stall sends must not go out on a socket that can no longer
 * hear back).
 */
export function stallStep(
  s: StallState,
  packets: number,
  expecting: boolean,
  now: number,
  limitMs: number,
): { state: StallState; stalled: boolean; probe: boolean } {
  if (packets > s.packets) return { state: { packets, lastGrowth: now, reported: false, expecting, probed: false }, stalled: false, probe: false };
  const state = { ...s, packets: Math.max(packets, s.packets), expecting };
  // Not expecting media (the other side muted everything), or expecting it again only
  // from now on: the wait starts again.
  if (!expecting || !s.expecting) {
    state.lastGrowth = s.lastGrowth === null ? null : now;
    return { state, stalled: false, probe: false };
  }
  if (limitMs <= 0 || s.reported || s.lastGrowth === null) return { state, stalled: false, probe: false };
  const quiet = now - s.lastGrowth;
  const probe = !s.probed && quiet >= limitMs / 2;
  state.probed = s.probed || probe;
  if (quiet < limitMs) return { state, stalled: false, probe };
  state.reported = true;
  return { state, stalled: true, probe };
}

/** Packets received over every inbound RTP stream of a getStats() report. */
export function packetsReceived(stats: { forEach(cb: (r: Record<string, unknown>) => void): void }): number {
  let n = 0;
  stats.forEach((r) => {
    if (r.type === "inbound-rtp" && typeof r.packetsReceived === "number") n += r.packetsReceived;
  });
  return n;
}
