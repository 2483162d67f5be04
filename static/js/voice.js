// Voice on the chat page: dictation into the message box, and replies read aloud.
// Loaded before chat.js, which asks it for each reply's "Read aloud" button.
// Dictation records with MediaRecorder, turns the recording into 16 kHz mono
// WAV here (the Web Audio API decodes and resamples it), and the server
// transcribes it offline; the text lands in the box for review, never sent.
"use strict";

window.SanjaiVoice = (function () {
  const chat = document.getElementById("chat");
  const input = document.getElementById("input");
  const mic = document.getElementById("dictate");
  const RATE = 16000;

  const { csrfToken } = window.SanjaiHttp;  // static/js/http.js

  function say(text) {
    const announcer = document.getElementById("announcer");
    if (announcer) announcer.textContent = text;
  }

  function showProblem(text) {
    const banner = document.getElementById("banner");
    if (!banner) return;
    banner.textContent = text;
    banner.hidden = false;
  }

  // ---- Dictation ----------------------------------------------------------------
  let recorder = null;
  let stopTimer = null;

  if (mic && navigator.mediaDevices && window.MediaRecorder) {
    mic.hidden = false;
    mic.addEventListener("click", () => (recorder ? recorder.stop() : record()));
  }

  async function record() {
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    } catch (error) {
      showProblem(gettext("The microphone is not available: allow it for this site to dictate."));
      return;
    }
    const chunks = [];
    recorder = new MediaRecorder(stream);
    recorder.addEventListener("dataavailable", (event) => chunks.push(event.data));
    recorder.addEventListener("stop", async () => {
      clearTimeout(stopTimer);
      stream.getTracks().forEach((track) => track.stop());
      recorder = null;
      mic.setAttribute("aria-pressed", "false");
      mic.textContent = gettext("Dictate");
      await transcribe(new Blob(chunks, { type: chunks[0]?.type || "audio/webm" }));
    });
    recorder.start();
    mic.setAttribute("aria-pressed", "true");
    mic.textContent = `■ ${gettext("Stop dictating")}`;
    say(gettext("Recording: speak, then press Stop dictating."));
    stopTimer = setTimeout(() => recorder && recorder.stop(), Number(mic.dataset.maxSeconds || 60) * 1000);
  }

  async function transcribe(blob) {
    mic.disabled = true;
    say(gettext("Transcribing…"));
    try {
      const wav = await toWav(blob);
      const response = await fetch(mic.dataset.url, {
        method: "POST",
        body: wav,
        headers: { "Content-Type": "audio/wav", "X-CSRFToken": csrfToken() },
        credentials: "same-origin",
      });
      const answer = await response.json();
      if (!response.ok) {
        showProblem(answer.error || gettext("The recording could not be transcribed."));
      } else if (answer.text) {
        input.value = input.value.trim() ? `${input.value.trimEnd()} ${answer.text}` : answer.text;
        input.dispatchEvent(new Event("input"));
        say(gettext("Dictated text added to the message box: check it, then send."));
      } else {
        showProblem(gettext("No words were recognised in the recording."));
      }
    } catch (error) {
      showProblem(gettext("The recording could not be read."));
    } finally {
      mic.disabled = false;
      input.focus();
    }
  }

  // The recording as 16-bit PCM WAV at 16 kHz, mono: what the recogniser reads.
  async function toWav(blob) {
    const decoder = new AudioContext();
    const decoded = await decoder.decodeAudioData(await blob.arrayBuffer());
    decoder.close();
    const length = Math.max(1, Math.ceil(decoded.duration * RATE));
    const offline = new OfflineAudioContext(1, length, RATE);
    const source = offline.createBufferSource();
    source.buffer = decoded;
    source.connect(offline.destination);
    source.start();
    const samples = (await offline.startRendering()).getChannelData(0);
    const buffer = new ArrayBuffer(44 + samples.length * 2);
    const view = new DataView(buffer);
    const text = (offset, value) => [...value].forEach((c, i) => view.setUint8(offset + i, c.charCodeAt(0)));
    text(0, "RIFF");
    view.setUint32(4, 36 + samples.length * 2, true);
    text(8, "WAVEfmt ");
    view.setUint32(16, 16, true);
    view.setUint16(20, 1, true); // PCM
    view.setUint16(22, 1, true); // mono
    view.setUint32(24, RATE, true);
    view.setUint32(28, RATE * 2, true);
    view.setUint16(32, 2, true);
    view.setUint16(34, 16, true);
    text(36, "data");
    view.setUint32(40, samples.length * 2, true);
    samples.forEach((sample, i) => view.setInt16(44 + i * 2, Math.max(-1, Math.min(1, sample)) * 0x7fff, true));
    return buffer;
  }

  // ---- Read aloud -------------------------------------------------------------------
  let playing = null;

  function hasVoices() {
    return "speechSynthesis" in window && window.speechSynthesis.getVoices().length > 0;
  }
  if ("speechSynthesis" in window) window.speechSynthesis.getVoices(); // some browsers load them lazily

  function plainText(markdown) {
    return markdown.replace(/```[^\n]*|[*_`#>|~]+/g, " ").replace(/\[([^\]]*)\]\([^)]*\)/g, "$1");
  }

  function stopReading() {
    if (playing) playing.pause();
    playing = null;
    if ("speechSynthesis" in window) window.speechSynthesis.cancel();
  }

  // A button for one finished reply, or null where neither the browser nor the server can speak.
  function readAloudButton(message) {
    const serverUrl = chat && chat.dataset.readUrl;
    if (!hasVoices() && !serverUrl) return null;
    const b = document.createElement("button");
    b.type = "button";
    b.className = "read-aloud";
    b.textContent = gettext("Read aloud");
    b.setAttribute("aria-label", gettext("Read this reply aloud"));
    b.addEventListener("click", () => {
      stopReading();
      if (hasVoices()) {
        window.speechSynthesis.speak(new SpeechSynthesisUtterance(plainText(message.content)));
      } else {
        playing = new Audio(serverUrl.replace("/0/", `/${message.id}/`));
        playing.play().catch(() => showProblem(gettext("The reply could not be played.")));
      }
      say(gettext("Reading the reply aloud."));
    });
    return b;
  }

  return { readAloudButton, stopReading };
})();
