// The call page: talks to its own node only (WebSocket /ws, and a WebRTC leg on
// loopback). No build step, no external resources.
"use strict";

const $ = (id) => document.getElementById(id);
const query = new URLSearchParams(location.search);
// Only a person's click (a trusted event) places, answers or rejects a call: another
// page can navigate here (?call=KEY), never press a button (no framing: CSP
// frame-ancestors 'none'). The URL only preselects whom to call.
const byPerson = (handler) => (e) => { if (e.isTrusted) handler(e); };
const page = {            // what the page knows; window.meshCall for tests and debugging
  view: "idle", call: null, pc: null, ws: null, local: null, remote: new MediaStream(),
  mediaReady: false, errors: [], events: [], notices: [], hellos: 0, preset: null, muted: false,
  videoOff: false, placing: false,
};
window.meshCall = page;

// -- small helpers ----------------------------------------------------------------------
function el(tag, props = {}, ...kids) {
  const node = document.createElement(tag);
  Object.assign(node, props);
  for (const kid of kids) node.append(kid);
  return node;
}
function short(key) { return key ? key.slice(0, 12) + "…" + key.slice(-4) : ""; }
// Names come only from our contacts (call.alias is the node's lookup in them); what a
// caller says it is called is shown as its claim, beside its key's start.
function claimed(name, key) {
  const start = short(key);
  if (!name) return start || "?";
  return start ? `${start} (says “${name}”)` : `“${name}”?`;
}
function who(call) { return !call ? "?" : call.alias || claimed(call.name, call.peer); }
// The call this page follows: page.call (its id once the node has it). Events of any
// other call (a stranger refused, a busy ring) only show as a notice.
function follows(data) { return !!(page.call && page.call.id && data && data.id === page.call.id); }
function free() { return !page.call || page.view === "idle" || page.view === "ended"; }
const OUTCOMES = {
  missed: "missed call", "no-answer": "no answer", rejected: "call rejected",
  "not-a-contact": "call refused: not a contact", failed: "call failed", answered: "call ended",
};
function notice(data) {
  const what = data.detail === "refused: busy" ? "called while you were in a call"
    : OUTCOMES[data.result] || String(data.result || "call");
  page.notices.push({ id: data.id, text: `${who(data)}: ${what}` });
  if (page.notices.length > 50) page.notices.shift();
  note(`${who(data)}: ${what}`);
}
function initial(text) { return (text || "?").trim().charAt(0).toUpperCase() || "?"; }
function show(view) {
  page.view = view;
  document.body.dataset.view = view;
  if (view === "incoming") ring.start("incoming");
  else if (view === "outgoing") ring.start("outgoing");
  else ring.stop();
}
function note(text) {
  const box = $("note");
  box.textContent = text || "";
  box.hidden = !text;
}
function send(message) {
  if (page.ws && page.ws.readyState === WebSocket.OPEN) page.ws.send(JSON.stringify(message));
}

// -- ringtone: generated with WebAudio, no file -----------------------------------------
const ring = {
  ctx: null, timer: null, kind: null,
  start(kind) {
    if (this.kind === kind) return;
    this.stop();
    this.kind = kind;
    try {
      this.ctx = this.ctx || new AudioContext();
      this.ctx.resume().catch(() => {});
    } catch (e) { return; }
    const burst = () => {
      const ctx = this.ctx, now = ctx.currentTime;
      const tones = kind === "incoming" ? [440, 480] : [425];
      const length = kind === "incoming" ? 1.2 : 1.0;
      const gain = ctx.createGain();
      gain.gain.setValueAtTime(0, now);
      gain.gain.linearRampToValueAtTime(kind === "incoming" ? 0.15 : 0.06, now + 0.03);
      gain.gain.setValueAtTime(kind === "incoming" ? 0.15 : 0.06, now + length - 0.05);
      gain.gain.linearRampToValueAtTime(0, now + length);
      gain.connect(ctx.destination);
      for (const hz of tones) {
        const osc = ctx.createOscillator();
        osc.frequency.value = hz;
        osc.connect(gain);
        osc.start(now);
        osc.stop(now + length);
      }
    };
    burst();
    this.timer = setInterval(burst, kind === "incoming" ? 3000 : 4000);
  },
  stop() {
    this.kind = null;
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  },
};

// -- the idle view: contacts and the call log -----------------------------------------
function renderIdle(hello) {
  const contacts = $("contacts"), log = $("log");
  contacts.replaceChildren();
  for (const c of hello.contacts || []) {
    if (c.trust === "blocked") continue;
    const name = c.alias || short(c.key);
    contacts.append(el("li", {},
      el("div", { className: "avatar", style: "width:32px;height:32px;font-size:1em", textContent: initial(name) }),
      el("span", { className: "grow", textContent: name, title: c.key }),
      el("span", { className: "muted", textContent: c.trust }),
      callButton(c.key)));
  }
  if (!contacts.children.length) contacts.append(el("li", { className: "muted", textContent: "no contacts yet (mesh contacts add KEY ALIAS)" }));
  log.replaceChildren();
  const aliases = new Map((hello.contacts || []).filter((c) => c.alias).map((c) => [c.key, c.alias]));
  for (const row of hello.log || []) {
    const when = new Date(row.started * 1000).toLocaleString();
    const arrow = row.direction === "outgoing" ? "→" : "←";
    log.append(el("li", {},
      el("span", { textContent: arrow }),
      el("span", { className: "grow", textContent: aliases.get(row.peer) || claimed(row.name, row.peer), title: row.peer }),
      el("span", { className: "muted", textContent: `${row.outcome} · ${Math.round(row.duration_s || 0)} s · ${when}` }),
      callButton(row.peer)));
  }
  if (!log.children.length) log.append(el("li", { className: "muted", textContent: "no calls yet" }));
}
function callButton(key) {
  const button = el("button", { className: "go call", textContent: "Call" });
  button.dataset.key = key;
  button.addEventListener("click", byPerson(() => place(key)));
  return button;
}
// ?call=KEY (mesh call page CONTACT): the dial box holds them and the Call button has
// the focus; the call goes only when the person presses it.
function preselect(hello) {
  const target = query.get("call");
  if (!target || page.preset !== null) return;
  history.replaceState(null, "", "/");
  page.preset = target;
  const known = (hello.contacts || []).find((c) => c.key === target || c.alias === target);
  $("dial-to").value = known && known.alias ? known.alias : target;
  const hint = $("preset");
  hint.textContent = `Press Call to call ${known && known.alias ? known.alias : short(target) || target}.`;
  hint.hidden = false;
  $("dial-go").focus();
}
function place(contact) {
  if (!contact) return;
  if (!free()) return;
  page.call = { peer: contact.length === 64 ? contact : "", alias: contact.length === 64 ? "" : contact };
  page.placing = true;
  showOutgoing(page.call, "calling…");
  send({ op: "place", contact, source: page.local && page.local.getVideoTracks().length ? "browser" : null });
}

// -- call views --------------------------------------------------------------------------
function showOutgoing(call, status) {
  $("out-avatar").textContent = initial(who(call));
  $("out-name").textContent = who(call);
  $("out-key").textContent = call.peer || "";
  $("out-status").textContent = status;
  show("outgoing");
}
function showIncoming(call) {
  $("in-avatar").textContent = initial(who(call));
  $("in-name").textContent = who(call) + (call.media && !call.media.includes("video") ? " (audio only)" : "");
  $("in-key").textContent = call.peer;
  show("incoming");
}
function showInCall(call) {
  $("call-name").textContent = who(call);
  if (page.view !== "incall") {
    page.muted = false; page.videoOff = false;
    $("mute").classList.remove("on"); $("mute").textContent = "Mute";
    $("camera").classList.remove("on"); $("camera").textContent = "Camera off";
    $("source").value = page.local && page.local.getVideoTracks().length ? "browser" : "testsrc";
  }
  show("incall");
  const video = $("remote");
  // No picture when the other side sends none (an audio-only answer), rather than
  // the last frame of an earlier call.
  video.hidden = !(call.receiving || ["video"]).includes("video");
  if (video.srcObject !== page.remote) video.srcObject = page.remote;
  video.play().catch(() => {});
}
function showEnded(summary) {
  $("end-avatar").textContent = initial(who(summary));
  $("end-name").textContent = who(summary);
  const reason = summary.result === "answered" ? "call ended" : summary.result;
  $("end-reason").textContent = reason + (summary.detail ? ` (${summary.detail})` : "");
  $("end-duration").textContent = `duration ${Number(summary.duration_s || 0).toFixed(1)} s`;
  show("ended");
}
function onCallState(data) {
  page.call = data;
  const state = data.state;
  if (state === "ended") return;
  if (state === "active" || state === "connecting") showInCall(data);
  else if (data.direction === "incoming") showIncoming(data);
  else showOutgoing(data, state === "ringing" ? "ringing…" : "calling…");
  if (data.local && (state === "active" || state === "connecting")) {  // any tab, the CLI
    setToggle("audio", !!data.local.audio_muted);
    setToggle("video", !!data.local.video_off);
  }
  if (state === "active" && data.remote) {
    const r = data.remote;
    const bits = [];
    if (r.audio_muted) bits.push("muted");
    if (r.video_off) bits.push("camera off");
    $("call-name").textContent = who(data) + (bits.length ? ` (${bits.join(", ")})` : "");
  }
}
function stats(s) {
  const f = (v, unit) => (v === null || v === undefined ? "–" : `${v}${unit}`);
  $("stats").textContent = `RTT ${f(s.rtt_ms, " ms")} · loss ${f(s.loss === null ? null : (100 * s.loss).toFixed(1), " %")} · `
    + `${f(s.bitrate_kbps, " kbit/s")} · ${f(s.fps, " fps")} · ${f(s.resolution, "")}`;
}

// -- buttons and keys ----------------------------------------------------------------------
function hangup() {
  if (page.call && page.call.id) send({ op: "hangup", id: page.call.id });
  else if (page.placing) send({ op: "hangup" });  // still dialling: the node's only call
}
// Mute and camera off: the preview's track and the node's gate (what the peer gets).
const TOGGLES = {
  audio: { flag: "muted", button: "mute", field: "audio_muted", labels: ["Mute", "Unmute"] },
  video: { flag: "videoOff", button: "camera", field: "video_off", labels: ["Camera off", "Camera on"] },
};
function setToggle(kind, off) {
  const t = TOGGLES[kind];
  page[t.flag] = off;
  for (const track of page.local ? page.local.getTracks() : []) if (track.kind === kind) track.enabled = !off;
  $(t.button).classList.toggle("on", off);
  $(t.button).textContent = t.labels[off ? 1 : 0];
}
function toggle(kind) {
  const t = TOGGLES[kind], off = !page[t.flag];
  setToggle(kind, off);
  send({ op: "update", [t.field]: off });
}
const toggleMute = () => toggle("audio");
const toggleVideo = () => toggle("video");
// The dial box calls on a click of its button or Enter in it, never on a submit event
// alone: a script's button.click() or requestSubmit() fires a trusted submit.
function dial() { $("preset").hidden = true; place($("dial-to").value.trim()); }
$("dial").addEventListener("submit", (e) => e.preventDefault());
$("dial-go").addEventListener("click", byPerson(dial));
$("dial-to").addEventListener("keydown", byPerson((e) => {
  if (e.key === "Enter") { e.preventDefault(); dial(); }
}));
$("cancel").addEventListener("click", hangup);
$("hangup").addEventListener("click", hangup);
$("reject").addEventListener("click", byPerson(() => page.call && page.call.id && send({ op: "reject", id: page.call.id })));
$("accept-video").addEventListener("click", byPerson(() => answer(false)));
$("accept-audio").addEventListener("click", byPerson(() => answer(true)));
$("mute").addEventListener("click", toggleMute);
$("watch").addEventListener("click", byPerson(() => send({ op: "watch", id: $("watch").dataset.id })));
$("camera").addEventListener("click", toggleVideo);
$("source").addEventListener("change", (e) => {
  let source = e.target.value;
  if (source === "other") {
    source = (prompt("A media file or device the node can open (/dev/video0, pulse:default, /path/clip.mp4):") || "").trim();
    if (!source) { e.target.value = "testsrc"; return; }
  }
  send({ op: "update", source });
});
$("back").addEventListener("click", () => { show("idle"); send({ op: "refresh" }); });
document.addEventListener("keydown", (e) => {
  if (e.target instanceof HTMLInputElement || e.ctrlKey || e.metaKey || e.altKey) return;
  if (page.view !== "incall" && !(e.key === "h" && page.view === "outgoing")) return;
  if (e.key === "m") toggleMute();
  else if (e.key === "v") toggleVideo();
  else if (e.key === "h") hangup();
});
function answer(audioOnly) {
  if (!page.call || !page.call.id) return;
  const camera = page.local && page.local.getVideoTracks().length;
  send({ op: "answer", id: page.call.id, audio_only: audioOnly, source: camera ? "browser" : null });
}

// -- the loopback WebRTC leg to the node -------------------------------------------------
async function openMedia() {
  try {
    page.local = await navigator.mediaDevices.getUserMedia({ audio: true, video: { width: 640, height: 480 } });
  } catch (e) {
    try { page.local = await navigator.mediaDevices.getUserMedia({ audio: true }); } catch (e2) { page.local = null; }
    note("No camera from this browser (" + e.name + "): the other side sees your node's test pattern. "
      + "Allow the camera and microphone for this page and reload to send your own.");
  }
  if (page.local) $("local").srcObject = page.local;
}
async function connectMedia() {
  const pc = new RTCPeerConnection({ iceServers: [] });
  page.pc = pc;
  for (const kind of ["audio", "video"]) {
    const track = page.local && page.local.getTracks().find((t) => t.kind === kind);
    if (track) pc.addTransceiver(track, { direction: "sendrecv", streams: [page.local] });
    else pc.addTransceiver(kind, { direction: "recvonly" });
  }
  pc.ontrack = (e) => {
    // A call wants the frame now: no extra playout buffering on a loopback leg.
    if ("jitterBufferTarget" in e.receiver) e.receiver.jitterBufferTarget = 0;
    else if ("playoutDelayHint" in e.receiver) e.receiver.playoutDelayHint = 0;
    page.remote.addTrack(e.track);
    const video = $("remote");
    video.srcObject = page.remote;
    video.play().catch(() => {});
  };
  pc.onconnectionstatechange = () => {
    page.mediaReady = pc.connectionState === "connected";
    $("link").textContent = page.mediaReady ? "node connected" : pc.connectionState;
    $("link").classList.toggle("ok", page.mediaReady);
  };
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((done) => {       // non-trickle: the whole offer at once
    if (pc.iceGatheringState === "complete") return done();
    pc.addEventListener("icegatheringstatechange", () => pc.iceGatheringState === "complete" && done());
    setTimeout(done, 3000);
  });
  send({ op: "offer", sdp: pc.localDescription.sdp });
}

// -- frame stamps: the node's test pattern codes its frame number and send time in the
// top rows (apps/video/media.py); reading them here gives the latency to this page.
function readStamp(video) {
  const w = video.videoWidth, h = video.videoHeight;
  if (w < 160 || h < 40) return null;
  const canvas = page.stampCanvas || (page.stampCanvas = document.createElement("canvas"));
  const scale = w / 640, rows = Math.ceil(40 * scale);
  canvas.width = w; canvas.height = rows;
  const g = canvas.getContext("2d", { willReadFrequently: true });
  g.drawImage(video, 0, 0, w, rows, 0, 0, w, rows);
  const data = g.getImageData(0, 0, w, rows).data;
  const block = w / 40, bytes = new Array(10).fill(0);
  for (let bit = 0; bit < 80; bit++) {
    const line = Math.floor(bit / 40), i = bit % 40;
    const x = Math.floor(i * block + block / 2), y = Math.floor((line * 16 + 8) * scale);
    const at = (y * w + x) * 4, luma = (data[at] + data[at + 1] + data[at + 2]) / 3;
    if (luma > 128) bytes[bit >> 3] |= 0x80 >> (bit & 7);
  }
  const sum = bytes.slice(0, 8).reduce((a, b) => a + b, 0);
  if (((sum * 7 + 0x5a5a) & 0xffff) !== ((bytes[8] << 8) | bytes[9])) return null;
  const word = (o) => ((bytes[o] << 24) >>> 0) + (bytes[o + 1] << 16) + (bytes[o + 2] << 8) + bytes[o + 3];
  const ms = word(4), now = Date.now() % 4294967296;
  return { frame: word(0), latency: (now - ms + 4294967296) % 4294967296 };
}
// Every frame the remote video presents: the first one's time, and the stamps' latencies.
page.presented = 0; page.firstFrameAt = null; page.latencies = []; page.stampFrames = [];
function watchFrames() {
  const video = $("remote");
  if (!video.requestVideoFrameCallback) return;
  const each = () => {
    page.presented += 1;
    if (page.firstFrameAt === null) page.firstFrameAt = Date.now();
    if (page.readStamps) {
      const stamp = readStamp(video);
      if (stamp) {
        page.latencies.push(stamp.latency); page.stampFrames.push(stamp.frame);
        if (page.latencies.length > 5000) { page.latencies.shift(); page.stampFrames.shift(); }
      }
    }
    video.requestVideoFrameCallback(each);
  };
  video.requestVideoFrameCallback(each);
}
page.readStamp = () => readStamp($("remote"));
watchFrames();

// -- the node's events: this page's call, or a notice -------------------------------------
function onEvent(kind, data) {
  const ours = follows(data)
    // the call this page is placing, before the node's "placed" reply names it
    || (page.placing && data.direction === "outgoing" && kind === "call.state")
    // nothing followed: a call that rings here, or one placed elsewhere (the CLI)
    || (free() && data.state !== "ended" && kind !== "call.ended");
  if (!ours) {
    if (kind === "call.ended") notice(data);
    return;
  }
  if (page.placing && data.id) { page.placing = false; }
  if (kind === "call.incoming") { page.call = data; showIncoming(data); }
  else if (kind === "call.state") onCallState(data);
  else if (kind === "call.ended") { page.call = null; showEnded(data); page.lastEnded = data; }
}

// -- the node's WebSocket ------------------------------------------------------------------
function onMessage(message) {
  if (message.type === "hello") {
    page.hellos += 1;
    $("me").textContent = "you: " + (message.self.name || short(message.self.key));
    renderIdle(message);
    preselect(message);
    const state = message.state || {};
    if (state.id && state.state && state.state !== "ended" && (free() || follows(state))) {
      page.call = state;
      onCallState(state);
    }
  } else if (message.type === "answer") {
    page.pc.setRemoteDescription({ type: "answer", sdp: message.sdp });
  } else if (message.type === "event") {
    page.events.push(message.event);
    const data = message.data || {};
    onEvent(message.event, data);
  } else if (message.type === "placed") {
    if (page.placing) {
      page.placing = false;
      page.call = message.call;
      if (page.view === "outgoing") showOutgoing(message.call, "calling…");
    }
  } else if (message.type === "relay") {
    // A call placed elsewhere (mesh call) plays here only when its person asks.
    page.relay = message.on;
    $("watch").hidden = message.on;
    $("watch").dataset.id = message.id;
  } else if (message.type === "stats") {
    stats(message.stats || {});
  } else if (message.type === "error") {
    page.errors.push(message.message);
    note(message.message);
    if (page.placing) { page.placing = false; page.call = null; show("idle"); }
  }
}
// The node keeps the page's address and token across restarts: once it answers again
// the page reloads itself (a 403 means the token was replaced: a new link is needed).
const REPLACED = "This page's token was replaced (mesh call page --new-token): open the new link.";
function comeBack() {
  const again = () => fetch("/static/call.css", { cache: "no-store" }).then((r) => {
    if (r.ok) location.reload();
    else if (r.status === 403) note(REPLACED);
    else setTimeout(again, 1000);
  }, () => setTimeout(again, 1000));
  setTimeout(again, 1000);
}
function openSocket() {
  return new Promise((opened) => {
    const ws = new WebSocket(`ws://${location.host}/ws`);
    page.ws = ws;
    ws.onopen = () => opened();
    ws.onmessage = (e) => onMessage(JSON.parse(e.data));
    ws.onclose = (e) => {
      $("link").textContent = "node gone";
      $("link").classList.remove("ok");
      if (e.code === 4001) { note(REPLACED); return; }
      note("The node closed the page's connection: waiting for it to come back (mesh up)…");
      comeBack();
    };
  });
}

(async () => {
  await openMedia();
  await openSocket();
  await connectMedia();
})().catch((e) => { page.errors.push(String(e)); note(String(e)); });
