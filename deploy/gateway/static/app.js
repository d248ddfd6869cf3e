// The talking-head page: WebRTC to the gateway (microphone out; the avatar's voice and face in), push-to-talk or
// hands-free, the conversation as it streams, and latency measured here: from the end of the question (the VAD
// turn_end event's arrival, or sending a typed message) to the first audible reply audio (WebAudio level) and to
// the reply's first video frame on screen (requestVideoFrameCallback, matched by RTP timestamp).
// Query parameters: autostart=1, handsfree=1, raw=1 (no echo cancellation / noise suppression / gain control),
// avatar=ID, options={JSON per-turn options}. Tests read window.th.
"use strict";
const $ = (id) => document.getElementById(id);
const query = new URLSearchParams(location.search);
const AUDIO_LEVEL = 0.001;  // RMS over ~10 ms (-60 dBFS) that counts as the reply's voice (between replies: zeros)
const th = window.th = {events: [], turns: [], frames: 0, level: 0, peak: 0, connected: false, origin: null,
                        error: null, current: null, flushedAt: null, flushedTurn: null, lastLoud: null,
                        lastArrived: null};
let pc = null, dc = null, mic = null, cfg = null, turn = null, avatarLine = null, talking = false;
let voice = null;  // the gain the voice plays through: a barge-in closes it at once (what the browser has buffered
                   // of the interrupted reply, its audio delay, is not heard), the next reply's voice opens it
const recent = [];  // [rtpTimestamp, presentation time] of the last frames shown
const SLACK = 3;  // RTP units (90 kHz) of rounding allowed when matching timestamps

const status = (text) => { $("status").textContent = text; };
const u32 = (x) => x >>> 0;
const s32 = (x) => x | 0;
function logLine(cls, text) {
  const li = document.createElement("li");
  li.className = cls;
  li.textContent = text;
  const log = $("log");
  log.appendChild(li);
  log.scrollTop = log.scrollHeight;
  return li;
}
const ms = (v) => (v == null ? "–" : `${Math.round(v)} ms`);

// ------------------------------------------------------------------------------------ avatars
async function loadConfig() {
  cfg = await (await fetch("/config")).json();
  const def = $("avatar").options[0];
  def.value = cfg.default_avatar || "";
  if (query.get("avatar")) addAvatar(query.get("avatar"), "From the link", true);
}
function addAvatar(id, label, select) {
  const opt = new Option(label, id);
  $("avatar").add(opt);
  if (select) $("avatar").value = id;
}
$("upload").addEventListener("change", async (e) => {
  const file = e.target.files[0];
  if (!file) return;
  status(`Registering ${file.name}…`);
  const r = await fetch("/avatar", {method: "POST", body: file});
  if (!r.ok) { status(`That image was refused: ${await r.text()}`); return; }
  const info = await r.json();
  addAvatar(info.id, file.name, true);
  status(`Avatar ${file.name} ready${info.message ? ` (${info.message})` : ""}.`);
  sendMsg({type: "avatar", id: info.id});
});
$("avatar").addEventListener("change", () => sendMsg({type: "avatar", id: $("avatar").value}));

// ------------------------------------------------------------------------------------ connection
async function connect() {
  $("connect").disabled = true;
  status("Asking for the microphone…");
  const raw = query.get("raw") === "1";
  mic = await navigator.mediaDevices.getUserMedia({audio: {echoCancellation: !raw, noiseSuppression: !raw,
                                                           autoGainControl: !raw, channelCount: 1}});
  setTalking(false);
  pc = new RTCPeerConnection({iceServers: cfg.ice_servers || []});
  pc.addTrack(mic.getAudioTracks()[0], mic);
  pc.addTransceiver("video", {direction: "recvonly"});
  const remote = new MediaStream();
  pc.ontrack = (e) => {
    remote.addTrack(e.track);
    $("face").srcObject = remote;
    if (e.track.kind === "audio") watchAudio(e.track);
  };
  pc.onconnectionstatechange = () => {
    th.connected = pc.connectionState === "connected";
    if (pc.connectionState === "connected") status(handsfree() ? "Listening: just speak." : "Hold to talk.");
    if (pc.connectionState === "failed") status("The connection failed.");
  };
  dc = pc.createDataChannel("events");
  dc.onmessage = (m) => onMessage(JSON.parse(m.data));
  dc.onopen = () => {
    for (const b of ["stop", "text", "send"]) $(b).disabled = false;
    $("talk").disabled = handsfree();
  };
  status("Connecting…");
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((resolve) => {
    if (pc.iceGatheringState === "complete") return resolve();
    pc.addEventListener("icegatheringstatechange", () => pc.iceGatheringState === "complete" && resolve());
  });
  let options = {};
  try { options = JSON.parse(query.get("options") || "{}"); } catch (e) { status("Bad options in the link."); }
  const r = await fetch("/offer", {method: "POST", headers: {"Content-Type": "application/json"},
    body: JSON.stringify({sdp: pc.localDescription.sdp, type: "offer", avatar_id: $("avatar").value || null, options})});
  if (!r.ok) throw new Error(await r.text());
  await pc.setRemoteDescription(await r.json());
  $("face").requestVideoFrameCallback(onFrame);
}
function sendMsg(msg) { if (dc && dc.readyState === "open") dc.send(JSON.stringify(msg)); }
window.addEventListener("pagehide", () => { sendMsg({type: "bye"}); if (pc) pc.close(); });

// ------------------------------------------------------------------------------------ talking
const handsfree = () => $("handsfree").checked;
function setTalking(on) {
  talking = on;
  if (mic) mic.getAudioTracks()[0].enabled = on || handsfree();
  $("talk").setAttribute("aria-pressed", String(on));
  $("talk").textContent = on ? "Talking… release to send" : "Hold to talk";
}
function release() {
  if (!talking) return;
  setTalking(false);
  if (!handsfree()) sendMsg({type: "ptt", down: false});  // the turn ends now, not after the silence
}
$("talk").addEventListener("pointerdown", () => setTalking(true));
$("talk").addEventListener("pointerup", release);
$("talk").addEventListener("pointerleave", release);
$("talk").addEventListener("keydown", (e) => {
  if ((e.key === " " || e.key === "Enter") && !e.repeat) { e.preventDefault(); setTalking(true); }
});
$("talk").addEventListener("keyup", (e) => { if (e.key === " " || e.key === "Enter") { e.preventDefault(); release(); } });
$("handsfree").addEventListener("change", () => {
  setTalking(false);
  $("talk").disabled = handsfree() || !dc;
  status(handsfree() ? "Hands-free: just speak." : "Hold to talk.");
});
$("stop").addEventListener("click", () => sendMsg({type: "cancel"}));
$("say").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = $("text").value.trim();
  if (!text) return;
  $("text").value = "";
  logLine("user", text);
  startTurn("text");
  sendMsg({type: "text", text});
});
$("connect").addEventListener("click", () => connect().catch(fail));
function fail(e) { th.error = String(e); status(`Error: ${e}`); $("connect").disabled = false; }

// ------------------------------------------------------------------------------------ the reply
function startTurn(kind) {
  turn = th.current = {kind, t0: performance.now(), turn_id: null, audioOn: false, firstAudio: null, firstFrame: null,
                       framePts: null};
  avatarLine = null;
  $("lat-audio").textContent = $("lat-frame").textContent = "…";
}
function onMessage(msg) {
  msg.at = performance.now();
  th.events.push(msg);
  if (th.events.length > 2000) th.events.shift();
  switch (msg.type) {
    case "vad":
      if (msg.state === "speech_start") status("Hearing you…");
      if (msg.state === "turn_end") { status("Thinking…"); startTurn("speech"); }
      break;
    case "transcript":
      if (turn && !turn.turn_id) turn.turn_id = msg.turn_id;  // the reply to this question
      logLine("user", msg.text || "(nothing heard)");
      break;
    case "text":
      if (turn && !turn.turn_id) turn.turn_id = msg.turn_id;
      if (!avatarLine) { avatarLine = logLine("avatar", ""); status("Speaking…"); }
      avatarLine.textContent += msg.delta;
      break;
    case "reply_audio":  // this reply's voice is leaving the gateway: its level from now on is the first audio
      if (turn && msg.turn_id === turn.turn_id) turn.audioOn = true;
      if (voice && msg.turn_id !== th.flushedTurn) voice.gain.value = 1;
      break;
    case "reply_video":
      if (turn && msg.turn_id === turn.turn_id && turn.framePts == null) { turn.framePts = msg.pts; matchFrame(); }
      break;
    case "video_clock": learnOrigin(msg.pts); break;
    case "latency":
      $("lat-server").textContent = ms(msg.server_audio_ms);
      $("lat-gateway").textContent = `${ms(msg.gateway_audio_ms)} / ${ms(msg.gateway_video_ms)}`;
      break;
    case "flushed":
      if (voice) voice.gain.value = 0;
      logLine("note", "(interrupted)"); th.flushedAt = msg.at; th.flushedTurn = msg.turn_id;
      break;
    case "done": {
      const mine = turn && msg.turn_id === turn.turn_id;  // a late done of an earlier reply has no measurements
      th.turns.push({turn_id: msg.turn_id, interrupted: msg.interrupted, reply: msg.reply,
                     first_audio_ms: mine ? turn.firstAudio : null, first_frame_ms: mine ? turn.firstFrame : null,
                     server: msg.timings_ms, video_frames: msg.video_frames, frames_dropped: msg.frames_dropped});
      if (msg.interrupted) logLine("note", `(reply stopped: ${msg.interrupted})`);
      status(handsfree() ? "Listening: just speak." : "Hold to talk.");
      break;
    }
    case "error": logLine("note", `Server: ${msg.message}`); break;
    case "server":  // the conversation model is being restarted (a drain, a reload), or is back
      logLine("note", msg.state === "ready" ? "Server: back, listening again." : `Server: ${msg.message}`);
      status(msg.state === "ready" ? (handsfree() ? "Listening: just speak." : "Hold to talk.") : "Server restarting…");
      break;
  }
}

// The voice plays through WebAudio (the <video> element is muted): `voice` silences it at a barge-in. Its level,
// 10 ms at a time, after that gain (what is heard: first audio, and when a stopped voice went quiet) and before it
// (th.lastArrived: what the browser was still playing out of the interrupted reply).
function watchAudio(track) {
  const ctx = new AudioContext();
  const source = ctx.createMediaStreamSource(new MediaStream([track]));
  voice = ctx.createGain();
  const heard = ctx.createAnalyser(), arrived = ctx.createAnalyser();
  heard.fftSize = arrived.fftSize = 512;
  source.connect(arrived);
  source.connect(voice).connect(heard);
  voice.connect(ctx.destination);
  const buf = new Float32Array(heard.fftSize);
  const rms = (analyser) => {
    analyser.getFloatTimeDomainData(buf);
    let sum = 0;
    for (const v of buf) sum += v * v;
    return Math.sqrt(sum / buf.length);
  };
  setInterval(() => {
    if (ctx.state === "suspended") ctx.resume();
    th.level = rms(heard);
    th.peak = Math.max(th.peak, th.level);
    if (th.level > AUDIO_LEVEL) th.lastLoud = performance.now();  // after a barge-in: when the voice stopped
    if (rms(arrived) > AUDIO_LEVEL) th.lastArrived = performance.now();
    if (turn && turn.audioOn && turn.firstAudio == null && th.level > AUDIO_LEVEL) {
      turn.firstAudio = performance.now() - turn.t0;
      $("lat-audio").textContent = ms(turn.firstAudio);
    }
  }, 10);
}

// First frame: the gateway says which pts the reply's first frame has (reply_video) and, every second, the pts of
// the frames it sent (video_clock); RTP timestamp = origin + pts (mod 2^32), origin being the sender's random one.
function onFrame(now, meta) {
  th.frames += 1;
  if (meta.rtpTimestamp !== undefined) {
    recent.push([u32(meta.rtpTimestamp), meta.presentationTime || now]);
    if (recent.length > 150) recent.shift();
    matchFrame();
  }
  $("face").requestVideoFrameCallback(onFrame);
}
function learnOrigin(ptsList) {
  const votes = new Map();
  for (const [rtp] of recent) for (const p of ptsList) {
    const o = u32(rtp - p);
    votes.set(o, (votes.get(o) || 0) + 1);
  }
  let best = null, n = 0;
  for (const o of votes.keys()) {  // the browser's timestamps may be 1-2 units off ours (rounding): a window
    let c = 0;
    for (let d = -SLACK; d <= SLACK; d++) c += votes.get(u32(o + d)) || 0;
    if (c > n) { best = o; n = c; }
  }
  if (n >= 3) th.origin = best;
  matchFrame();
}
function matchFrame() {
  if (!turn || turn.framePts == null || turn.firstFrame != null || th.origin == null) return;
  const since = (rtp) => s32(u32(rtp - th.origin) - turn.framePts);
  const hit = recent.find(([rtp]) => since(rtp) >= -SLACK && since(rtp) < 90000 * 5);
  if (hit && hit[1] >= turn.t0) {
    turn.firstFrame = hit[1] - turn.t0;
    $("lat-frame").textContent = ms(turn.firstFrame);
  }
}

// ------------------------------------------------------------------------------------ start
loadConfig().then(() => {
  if (query.get("handsfree") === "1") $("handsfree").checked = true;
  if (query.get("autostart") === "1") return connect();
}).catch(fail);
