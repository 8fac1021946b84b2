// A relay-only call between two pages, driven from node: offer/answer carried by
// playwright, ICE servers fetched by each page from firstcall's HTTP API.

/** Runs in the page: fetch TURN credentials and keep only the URIs for `transport`. */
export async function fetchIceServers(page, user, transport) {
  return page.evaluate(
    async ({ user, transport }) => {
      const r = await fetch("/v1/turn-credentials", { headers: { Authorization: `Bearer dev:${user}` } });
      if (!r.ok) throw new Error(`turn-credentials: HTTP ${r.status}`);
      const c = await r.json();
      const urls = c.uris.filter((u) => u.startsWith(transport === "tls" ? "turns:" : "turn:") && u.endsWith(`transport=${transport === "tls" ? "tcp" : transport}`));
      return [{ urls, username: c.username, credential: c.password }];
    },
    { user, transport },
  );
}

export async function preparePeer(page, iceServers) {
  await page.evaluate(async (iceServers) => {
    const pc = new RTCPeerConnection({ iceServers, iceTransportPolicy: "relay" });
    window.pc = pc;
    window.candidateTypes = [];
    pc.addEventListener("icecandidate", (e) => {
      if (e.candidate) window.candidateTypes.push(e.candidate.type);
    });
    const stream = await navigator.mediaDevices.getUserMedia({ video: { width: 320, height: 240 }, audio: false });
    for (const t of stream.getTracks()) pc.addTrack(t, stream);
  }, iceServers);
}

const gathered = () =>
  new Promise((resolve, reject) => {
    const pc = window.pc;
    if (pc.iceGatheringState === "complete") return resolve(pc.localDescription.toJSON());
    const timer = setTimeout(() => reject(new Error("ICE gathering did not complete in 15 s")), 15000);
    pc.addEventListener("icegatheringstatechange", () => {
      if (pc.iceGatheringState === "complete") {
        clearTimeout(timer);
        resolve(pc.localDescription.toJSON());
      }
    });
  });

export async function connect(caller, callee) {
  const offer = await caller.evaluate(async (gatheredSrc) => {
    await window.pc.setLocalDescription(await window.pc.createOffer());
    return eval(`(${gatheredSrc})`)();
  }, gathered.toString());
  const answer = await callee.evaluate(
    async ({ offer, gatheredSrc }) => {
      await window.pc.setRemoteDescription(offer);
      await window.pc.setLocalDescription(await window.pc.createAnswer());
      return eval(`(${gatheredSrc})`)();
    },
    { offer, gatheredSrc: gathered.toString() },
  );
  await caller.evaluate((answer) => window.pc.setRemoteDescription(answer), answer);
}

/** Wait (bounded) until the page's connection is `connected`; returns the selected pair and media stats. */
export async function waitConnectedWithMedia(page, timeoutMs = 30000) {
  return page.evaluate(async (timeoutMs) => {
    const pc = window.pc;
    const deadline = Date.now() + timeoutMs;
    while (pc.connectionState !== "connected") {
      if (pc.connectionState === "failed" || Date.now() > deadline) {
        throw new Error(`connectionState ${pc.connectionState}, ice ${pc.iceConnectionState}, candidates ${window.candidateTypes}`);
      }
      await new Promise((r) => setTimeout(r, 50));
    }
    for (;;) {
      const stats = await pc.getStats();
      let pair, local, remote, frames = 0;
      stats.forEach((s) => {
        if (s.type === "transport" && s.selectedCandidatePairId) pair = stats.get(s.selectedCandidatePairId);
        if (s.type === "inbound-rtp" && s.kind === "video") frames = s.framesDecoded || 0;
      });
      if (pair) {
        local = stats.get(pair.localCandidateId);
        remote = stats.get(pair.remoteCandidateId);
      }
      if (pair && frames > 0) {
        return {
          local: local.candidateType,
          remote: remote.candidateType,
          relayProtocol: local.relayProtocol,
          framesDecoded: frames,
          gathered: window.candidateTypes,
        };
      }
      if (Date.now() > deadline) throw new Error(`connected but no video frames decoded (pair ${!!pair})`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }, timeoutMs);
}
