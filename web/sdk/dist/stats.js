// Reading WebRTC stats: the selected candidate pair, candidate types.
/** The `typ` of an SDP candidate line. */
export function candidateType(line) {
    const m = / typ (\w+)/.exec(line);
    return m ? m[1] : "unknown";
}
/** The ICE username fragment of an SDP (the first `a=ice-ufrag`), to tell an ICE restart. */
export function iceUfrag(sdp) {
    const m = /a=ice-ufrag:(\S+)/.exec(sdp);
    return m ? m[1] : null;
}
export async function selectedPair(pc) {
    const stats = await pc.getStats();
    let pair;
    stats.forEach((s) => {
        if (s.type === "transport" && s.selectedCandidatePairId)
            pair = stats.get(s.selectedCandidatePairId);
    });
    if (!pair)
        stats.forEach((s) => {
            if (s.type === "candidate-pair" && s.nominated && s.state === "succeeded")
                pair = s;
        });
    const local = pair ? stats.get(pair.localCandidateId) : undefined;
    const remote = pair ? stats.get(pair.remoteCandidateId) : undefined;
    return {
        local: local?.candidateType ?? "unknown",
        remote: remote?.candidateType ?? "unknown",
        protocol: local?.candidateType === "relay" ? local?.relayProtocol ?? local?.protocol ?? "udp" : local?.protocol ?? "udp",
    };
}
