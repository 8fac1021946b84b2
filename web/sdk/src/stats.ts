// Reading WebRTC stats: the selected candidate pair, candidate types.

export interface SelectedPair {
  local: string;
  remote: string;
  protocol: string;
}

/** The `typ` of an SDP candidate line. */
export function candidateType(line: string): string {
  const m = / typ (\w+)/.exec(line);
  return m ? m[1] : "unknown";
}

/** The ICE username fragment of an SDP (the first `a=ice-ufrag`), to tell an ICE restart. */
export function iceUfrag(sdp: string): string | null {
  const m = /a=ice-ufrag:(\S+)/.exec(sdp);
  return m ? m[1] : null;
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Stats = any;

export async function selectedPair(pc: RTCPeerConnection): Promise<SelectedPair> {
  const stats: Stats = await pc.getStats();
  let pair: Stats;
  stats.forEach((s: Stats) => {
    if (s.type === "transport" && s.selectedCandidatePairId) pair = stats.get(s.selectedCandidatePairId);
  });
  if (!pair) stats.forEach((s: Stats) => {
    if (s.type === "candidate-pair" && s.nominated && s.state === "succeeded") pair = s;
  });
  const local: Stats = pair ? stats.get(pair.localCandidateId) : undefined;
  const remote: Stats = pair ? stats.get(pair.remoteCandidateId) : undefined;
  return {
    local: local?.candidateType ?? "unknown",
    remote: remote?.candidateType ?? "unknown",
    protocol: local?.candidateType === "relay" ? local?.relayProtocol ?? local?.protocol ?? "udp" : local?.protocol ?? "udp",
  };
}
