// The live-avatar page: mint a session token with the API token, open the WebSocket stream
// (protocol: dinet_platform/serving/live.py), send the microphone's (or a WAV's) audio as
// 16-bit PCM at the audio context's rate, draw every frame as it arrives, acknowledge it.
"use strict";

const base = location.pathname.replace(/\/app$/, "");
const $ = (id) => document.getElementById(id);
const HEADER_BYTES = 16; // <IdHH: index, media time (s), height, width
const stats = { frames: 0, dropped: 0, fps: 0, latency: null, state: "idle", error: null };
window.dinet = stats;

let session = null;

function token() {
  const value = $("token").value.trim();
  sessionStorage.setItem("dinet-token", value);
  return value;
}

function status(text) {
  $("status").textContent = text;
}

async function api(path, options = {}) {
  const response = await fetch(base + path, {
    ...options, headers: { Authorization: "Bearer " + token(), ...(options.headers || {}) } });
  const body = await response.json();
  if (!response.ok) {
    throw new Error(`${response.status} ${body.error.field}: ${body.error.message}`);
  }
  return body;
}

async function listAvatars(select) {
  const { avatars } = await api("/v1/avatars");
  const menu = $("avatar");
  const keep = select || menu.value; // listing again must not change the choice
  menu.innerHTML = "";
  for (const avatar of avatars) {
    const option = document.createElement("option");
    option.value = avatar.avatar_id;
    option.textContent = `${avatar.avatar_id.slice(0, 8)} (${avatar.num_frames ?? "?"} frames)`;
    menu.appendChild(option);
  }
  if (avatars.some((avatar) => avatar.avatar_id === keep)) menu.value = keep;
  if (!avatars.length) menu.innerHTML = "<option value=''>(no avatars yet: upload one)</option>";
}

async function upload(files) {
  const form = new FormData();
  const images = [...files].filter((f) => f.type.startsWith("image/"));
  if (images.length) images.forEach((f) => form.append("frames", f));
  else form.append("video", files[0]);
  status("uploading and analysing the face…");
  const body = await api("/v1/avatars", { method: "POST", body: form });
  await listAvatars(body.avatar_id);
  status(`avatar ${body.avatar_id.slice(0, 8)} ready (${body.frames} frames)`);
}

class Session {
  constructor(avatarId, context) {
    this.avatarId = avatarId;
    this.context = context;
    this.sent = []; // [samples sent so far, time] per chunk: the latency of each frame
    this.samples = 0;
    this.arrivals = [];
    this.draw = Promise.resolve();
    this.canvas = $("view");
  }

  async open() {
    const minted = await api(`/v1/avatars/${this.avatarId}/sessions`, { method: "POST" });
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    this.socket = new WebSocket(scheme + location.host + minted.stream_path,
                                [minted.subprotocol, minted.session_token]);
    this.socket.binaryType = "arraybuffer";
    this.socket.onmessage = (event) => this.message(event.data);
    this.socket.onclose = (event) => {
      stats.state = "closed";
      if (event.code !== 1000 && !stats.error) status(`stream closed (${event.code}) ${event.reason}`);
    };
    await new Promise((resolve, reject) => {
      this.socket.onopen = resolve;
      this.socket.onerror = () => reject(new Error("the stream could not be opened"));
    });
    this.socket.send(JSON.stringify({ type: "start", format: "jpeg", output: "frames",
                                      sample_rate: this.context.sampleRate }));
    stats.state = "streaming";
  }

  send(pcm) {
    if (this.socket.readyState !== WebSocket.OPEN) return;
    this.socket.send(pcm);
    this.samples += pcm.byteLength / 2;
    this.sent.push([this.samples, performance.now()]);
  }

  message(data) {
    if (typeof data === "string") {
      const event = JSON.parse(data);
      if (event.type === "ready") this.ready = event;
      else if (event.type === "dropped") stats.dropped = event.total;
      else if (event.type === "error") {
        stats.error = `${event.field}: ${event.message}`;
        status("error: " + stats.error);
      }
      return;
    }
    const view = new DataView(data);
    const index = view.getUint32(0, true);
    this.socket.send(JSON.stringify({ type: "ack", index }));
    this.measure(index);
    const image = new Blob([data.slice(HEADER_BYTES)], { type: "image/jpeg" });
    this.draw = this.draw.then(async () => {
      const bitmap = await createImageBitmap(image);
      if (this.canvas.width !== bitmap.width) {
        this.canvas.width = bitmap.width;
        this.canvas.height = bitmap.height;
      }
      this.canvas.getContext("2d").drawImage(bitmap, 0, 0);
      bitmap.close();
      stats.frames += 1;
      $("frames").textContent = stats.frames;
      $("dropped").textContent = stats.dropped;
    });
  }

  measure(index) {
    // the frame became computable once the audio lookahead_frames past its own end was sent
    const now = performance.now();
    const ready = this.ready || { fps: 25, lookahead_frames: 3 };
    const needed = (index + 1 + ready.lookahead_frames) * this.context.sampleRate / ready.fps;
    while (this.sent.length > 1 && this.sent[1][0] <= needed) this.sent.shift();
    const chunk = this.sent.find(([samples]) => samples >= needed) || this.sent[this.sent.length - 1];
    if (chunk) stats.latency = Math.max(0, Math.round(now - chunk[1]));
    this.arrivals.push(now);
    while (this.arrivals[0] < now - 1000) this.arrivals.shift();
    stats.fps = this.arrivals.length;
    $("fps").textContent = stats.fps;
    $("latency").textContent = stats.latency ?? "-";
  }

  close() {
    if (this.socket && this.socket.readyState === WebSocket.OPEN) {
      this.socket.send(JSON.stringify({ type: "close" }));
    }
    if (this.source) this.source.disconnect();
    this.context.close();
  }
}

async function start(connectSource) {
  const avatarId = $("avatar").value;
  if (!avatarId) {
    status("choose or upload an avatar first");
    return;
  }
  stats.error = null;
  const context = new AudioContext();
  await context.audioWorklet.addModule(base + "/app/capture.js");
  const capture = new AudioWorkletNode(context, "dinet-capture");
  session = new Session(avatarId, context);
  await session.open();
  capture.port.onmessage = (event) => session.send(event.data);
  session.source = await connectSource(context, capture);
  $("stop").disabled = false;
  status("live");
}

async function microphone(context, capture) {
  const media = await navigator.mediaDevices.getUserMedia({
    audio: { echoCancellation: true, noiseSuppression: true, channelCount: 1 } });
  const source = context.createMediaStreamSource(media);
  source.connect(capture);
  return source;
}

function wavFile(file) {
  return async (context, capture) => {
    const audio = await context.decodeAudioData(await file.arrayBuffer());
    const source = context.createBufferSource();
    source.buffer = audio;
    source.connect(capture);
    source.connect(context.destination);
    source.onended = () => stop();
    source.start();
    return source;
  };
}

function stop() {
  if (session) session.close();
  session = null;
  $("stop").disabled = true;
}

function guard(action) {
  return (...args) => action(...args).catch((error) => {
    stats.error = error.message;
    status("error: " + error.message);
  });
}

$("token").value = sessionStorage.getItem("dinet-token") || "";
$("token").addEventListener("change", guard(() => listAvatars()));
if ($("token").value) guard(() => listAvatars())();
$("upload").addEventListener("change", guard((e) => upload(e.target.files)));
$("mic").addEventListener("click", guard(() => start(microphone)));
$("wav").addEventListener("change", guard((e) => start(wavFile(e.target.files[0]))));
$("stop").addEventListener("click", stop);
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  if (e.dataTransfer.files.length) guard(() => start(wavFile(e.dataTransfer.files[0])))();
});
