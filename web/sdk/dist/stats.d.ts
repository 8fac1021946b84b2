export interface SelectedPair {
    local: string;
    remote: string;
    protocol: string;
}
/** The `typ` of an SDP candidate line. */
export declare function candidateType(line: string): string;
/** The ICE username fragment of an SDP (the first `a=ice-ufrag`), to tell an ICE restart. */
export declare function iceUfrag(sdp: string): string | null;
export declare function selectedPair(pc: RTCPeerConnection): Promise<SelectedPair>;
