// The demo: sign in by name, see who is online, call, answer, hang up, and read the
// call's timeline. Everything it does goes through the public SDK.
import { connect } from "/sdk/firstcall.js";

const $ = (id) => document.getElementById(id);
const wsUrl = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/v1/ws`;
const params = new URLSearchParams(location.search);
let client = null;
let current = null;
let ringing = null;
let peopleTimer = null;

function setStatus(state) {
  $("status").dataset.state = state;
  $("status").textContent = state;
}

function fmtCounts(c) {
  const parts = Object.entries(c).map(([k, v]) => `${v} ${k}`);
  return parts.length ? parts.join(", ") : "–";
}

function addEvent(e) {
  const li = document.createElement("li");
  const d = e.detail ?? {};
  if (/connected$|accepted|ringing/.test(e.event)) li.className = "good";
  if (/ended|failed|no connection/.test(e.event) && !(d.reason === "hangup")) li.className = "bad";
  if (d.type === "relay") li.classList.add("relay");
  const extra = Object.entries(d)
    .filter(([k]) => !["type"].includes(k))
    .map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`)
    .join(" ");
  li.innerHTML = `<span class="t">${(e.t / 1000).toFixed(2)}s</span><span class="ev"></span>`;
  li.querySelector(".ev").textContent = `${e.event}${d.type ? ` [${d.type}]` : ""}${extra ? ` · ${extra}` : ""}`;
  $("events").appendChild(li);
  li.scrollIntoView({ block: "nearest" });
}

function showCall(call) {
  current = call;
  $("events").innerHTML = "";
  for (const e of call.timeline) addEvent(e);
  $("callbar").classList.remove("hidden");
  $("placeholder").classList.add("hidden");
  $("call-peer").textContent = call.peer;
  const refresh = () => {
    $("call-state").textContent = call.state === "ended" ? `ended (${call.endReason})` : call.state;
    $("cand-local").textContent = fmtCounts(call.candidates.local);
    $("cand-remote").textContent = fmtCounts(call.candidates.remote);
    if (call.selectedPair) {
      const p = call.selectedPair;
      $("pair").textContent = `${p.local} ↔ ${p.remote} (${p.protocol})`;
      $("call-pair").textContent = $("pair").textContent;
    }
    $("ttc").textContent = call.connectMs != null ? `${(call.connectMs / 1000).toFixed(2)} s` : "–";
    document.body.dataset.callState = call.state;
  };
  call.on("timeline", (e) => {
    if (current === call) addEvent(e);
    refresh();
  });
  call.on("state", refresh);
  call.on("localstream", (s) => ($("local").srcObject = s));
  call.on("remotestream", (s) => ($("remote").srcObject = s));
  wireControls(call);
  call.on("ended", () => {
    refresh();
    $("remote-screen").srcObject = null;
    $("remote-screen").classList.add("hidden");
    $("remote-media").classList.add("hidden");
    $("local").srcObject = null;
    $("remote").srcObject = null;
    $("placeholder").classList.remove("hidden");
    $("placeholder").querySelector(".big").textContent = `Call ended: ${call.endReason}`;
    setTimeout(() => current === call && $("callbar").classList.add("hidden"), 1500);
  });
  refresh();
}

// Mute, camera, screen share and device pickers for `call`; the other side's media state
// and the call's quality as the SDK reports them.
function wireControls(call) {
  const buttons = () => {
    $("mute-audio").textContent = call.localMedia.audio ? "Mute" : "Unmute";
    $("mute-audio").classList.toggle("on", !call.localMedia.audio);
    $("mute-video").textContent = call.localMedia.video ? "Camera off" : "Camera on";
    $("mute-video").classList.toggle("on", !call.localMedia.video);
    $("mute-video").disabled = call.media !== "video";
    $("share-screen").textContent = call.screenStream ? "Stop sharing" : "Share screen";
    $("share-screen").classList.toggle("on", !!call.screenStream);
  };
  const report = (what) => (e) => addEvent({ t: 0, event: `${what} failed`, detail: { error: String(e) } });
  const toggle = (kind) => () => (call.localMedia[kind] ? call.mute(kind) : call.unmute(kind)).catch(report(kind)).finally(buttons);
  $("mute-audio").onclick = toggle("audio");
  $("mute-video").onclick = toggle("video");
  $("share-screen").onclick = () => (call.screenStream ? call.stopScreen() : call.shareScreen()).catch(report("screen share")).finally(buttons);
  call.on("screenended", buttons);
  for (const [id, kind, label] of [["mic-select", "audioinput", "audio"], ["camera-select", "videoinput", "video"]]) {
    $(id).innerHTML = "";
    $(id).onchange = () => call.setDevice({ [label]: $(id).value }).catch(report("device switch"));
    $(id).dataset.kind = kind;
  }
  const fillDevices = async () => {
    const devices = await navigator.mediaDevices.enumerateDevices();
    const using = (k) => call.localStream?.getTracks().find((t) => t.kind === k)?.getSettings().deviceId;
    for (const [id, kind, k] of [["mic-select", "audioinput", "audio"], ["camera-select", "videoinput", "video"]]) {
      const sel = $(id);
      sel.innerHTML = "";
      for (const d of devices.filter((d) => d.kind === kind)) {
        const o = document.createElement("option");
        o.value = d.deviceId;
        o.textContent = d.label || d.deviceId.slice(0, 8);
        o.selected = d.deviceId === using(k);
        sel.appendChild(o);
      }
      sel.disabled = sel.options.length < 2;
    }
  };
  call.on("localstream", () => void fillDevices());
  call.on("device", () => void fillDevices());
  call.on("devicelost", (e) => addEvent({ t: 0, event: `${e.kind} device lost`, detail: { now: e.fallback?.label ?? "none" } }));
  call.on("remotemedia", (m) => {
    const off = [!m.audio && "muted", call.media === "video" && !m.video && "camera off", m.screen && "sharing screen"].filter(Boolean);
    $("remote-media").textContent = `${call.peer}: ${off.length ? off.join(", ") : "on"}`;
    $("remote-media").dataset.audio = String(m.audio);
    $("remote-media").dataset.video = String(m.video);
    $("remote-media").classList.toggle("hidden", !off.length);
  });
  call.on("remotescreen", (s) => {
    $("remote-screen").srcObject = s;
    $("remote-screen").classList.toggle("hidden", !s);
  });
  call.on("quality", (q) => {
    const loss = q.loss === null ? "–" : `${(q.loss * 100).toFixed(1)} %`;
    $("quality").textContent = `${q.level} · ${q.rttMs ?? "–"} ms · ${loss} loss · ${q.inKbps} kbit/s`;
    $("quality").dataset.level = q.level;
  });
  call.on("reconnecting", () => ($("quality").textContent = "reconnecting…"));
  $("quality").textContent = "–";
  $("quality").dataset.level = "";
  buttons();
}

async function refreshPeople() {
  if (!client) return;
  let users = [];
  try {
    users = (await client.online()).filter((u) => u !== client.user);
  } catch {
    return;
  }
  const ul = $("people");
  ul.innerHTML = "";
  if (!users.length) {
    ul.innerHTML = '<li class="muted">Nobody else yet: open this page in another window.</li>';
    return;
  }
  for (const u of users) {
    const li = document.createElement("li");
    li.innerHTML = '<span class="who"></span><span><button data-media="audio" title="Audio call">Audio</button> <button data-media="video" class="primary" title="Video call">Video</button></span>';
    li.querySelector(".who").textContent = u;
    li.dataset.user = u;
    for (const b of li.querySelectorAll("button")) b.onclick = () => place(u, b.dataset.media === "video");
    ul.appendChild(li);
  }
}

function place(user, video = true) {
  if (current && current.state !== "ended") return;
  showCall(client.call(user, { video }));
}

async function signIn(name) {
  $("signin-error").textContent = "";
  const r = await fetch(`/v1/dev/token?user=${encodeURIComponent(name)}`);
  if (!r.ok) {
    $("signin-error").textContent = r.status === 404 ? "This server needs a real token (JWT): dev sign-in is off." : `Sign-in failed (${r.status})`;
    return;
  }
  const { token } = await r.json();
  setStatus("connecting");
  const rtcConfig = params.get("relay") ? { iceTransportPolicy: "relay" } : undefined;
  client = await connect(wsUrl, { token, device: `demo-${name}-${Math.random().toString(36).slice(2, 8)}`, rtcConfig });
  window.firstcall = client;
  setStatus(client.state);
  client.on("state", setStatus);
  client.on("incoming", (call) => {
    ringing = call;
    $("incoming-from").textContent = call.peer;
    $("incoming-media").textContent = `${call.media} call`;
    $("incoming").classList.remove("hidden");
    call.on("ended", () => {
      if (ringing === call) $("incoming").classList.add("hidden");
    });
  });
  $("me").textContent = `signed in as ${client.user}`;
  $("signin").classList.add("hidden");
  $("app").classList.remove("hidden");
  await refreshPeople();
  peopleTimer = setInterval(refreshPeople, 1500);
}

$("signin-form").onsubmit = (e) => {
  e.preventDefault();
  signIn($("name").value.trim()).catch((err) => ($("signin-error").textContent = String(err)));
};
$("dial").onsubmit = (e) => {
  e.preventDefault();
  const who = $("dial-name").value.trim();
  if (who) place(who, true);
};
$("hangup").onclick = () => current?.hangup();
$("accept").onclick = () => {
  $("incoming").classList.add("hidden");
  if (!ringing) return;
  showCall(ringing);
  ringing.accept();
  ringing = null;
};
$("decline").onclick = () => {
  $("incoming").classList.add("hidden");
  ringing?.reject();
  ringing = null;
};
window.addEventListener("beforeunload", () => {
  clearInterval(peopleTimer);
  client?.close();
});
if (params.get("user")) signIn(params.get("user"));
