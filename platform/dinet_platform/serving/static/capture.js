// AudioWorklet: the audio graph's samples (mono, the context's rate) to the page, ~20 ms at
// a time, as 16-bit PCM ready to send.
class Capture extends AudioWorkletProcessor {
  constructor() {
    super();
    this.chunk = Math.round(sampleRate / 50);
    this.buffer = new Int16Array(this.chunk);
    this.filled = 0;
  }
  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (channel) {
      for (let i = 0; i < channel.length; i++) {
        const s = Math.max(-1, Math.min(1, channel[i]));
        this.buffer[this.filled++] = Math.round(s * 32767);
        if (this.filled === this.chunk) {
          this.port.postMessage(this.buffer.buffer, [this.buffer.buffer]);
          this.buffer = new Int16Array(this.chunk);
          this.filled = 0;
        }
      }
    }
    return true;
  }
}
registerProcessor("dinet-capture", Capture);
