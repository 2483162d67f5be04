"""Voice, offline: dictation with PocketSphinx, reading aloud with eSpeak NG.

PocketSphinx's wheel ships its US English model, so nothing is downloaded;
eSpeak NG is Debian's `espeak-ng` package (`make run` installs it). Either
missing turns its feature off (`available()`), and the page hides it.

Both are slow enough (a second or so) to be kept off the web server's event
loop: callers run them in a thread. Recognition uses one decoder at a time
(a PocketSphinx decoder is not thread-safe; loading one takes ~0.3 s).
Reads no Django settings: the limits come in as arguments.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import threading
import wave
from dataclasses import dataclass
from functools import cache

import numpy as np

SAMPLE_RATE = 16_000  # what the English model was trained on
ESPEAK_TIMEOUT_S = 30


class SpeechError(ValueError):
    """Audio or text we cannot handle; the message says what was wrong and what is allowed."""


@dataclass(frozen=True)
class Available:
    dictation: bool
    reading: bool


@cache
def available() -> Available:
    try:
        import pocketsphinx  # noqa: F401
    except ImportError:
        dictation = False
    else:
        dictation = True
    return Available(dictation=dictation, reading=shutil.which("espeak-ng") is not None)


_decoder_lock = threading.Lock()
_decoder = None


def transcribe(wav: bytes, *, max_seconds: float) -> str:
    """The words spoken in a WAV file (16-bit PCM, mono or stereo, any rate), as text."""
    samples = _pcm16_mono_16k(wav, max_seconds=max_seconds)
    global _decoder
    with _decoder_lock:
        if _decoder is None:
            from pocketsphinx import Decoder

            _decoder = Decoder(samprate=SAMPLE_RATE)
        _decoder.start_utt()
        _decoder.process_raw(samples.tobytes(), full_utt=True)
        _decoder.end_utt()
        hypothesis = _decoder.hyp()
    return hypothesis.hypstr.strip() if hypothesis is not None else ""


def _pcm16_mono_16k(wav: bytes, *, max_seconds: float) -> np.ndarray:
    try:
        with wave.open(io.BytesIO(wav)) as reader:
            rate, channels, width, frames = (
                reader.getframerate(),
                reader.getnchannels(),
                reader.getsampwidth(),
                reader.getnframes(),
            )
            if width != 2:
                raise SpeechError(f"The recording must be 16-bit PCM, got {8 * width}-bit samples.")
            # Counted from the samples there are: a streamed WAV's header may claim any length.
            data = np.frombuffer(reader.readframes(frames), dtype="<i2")
    except (wave.Error, EOFError) as exc:
        raise SpeechError(f"The recording is not a WAV file this server can read ({exc}).") from None
    seconds = len(data) / channels / rate if rate else 0
    if seconds > max_seconds:
        raise SpeechError(f"The recording is {seconds:.0f} s long; at most {max_seconds:g} s is allowed.")
    if not len(data):
        raise SpeechError("The recording is empty.")
    audio = data.reshape(-1, channels).mean(axis=1) if channels > 1 else data.astype(np.float32)
    if rate != SAMPLE_RATE:  # linear resampling: speech holds little energy near the new Nyquist
        count = max(int(len(audio) * SAMPLE_RATE / rate), 1)
        audio = np.interp(np.linspace(0, len(audio) - 1, count), np.arange(len(audio)), audio)
    return np.clip(audio, -32768, 32767).astype("<i2")


def speak(text: str, *, max_chars: int, words_per_minute: int = 160) -> bytes:
    """`text` read aloud by eSpeak NG, as a WAV file."""
    text = text.strip()
    if not text:
        raise SpeechError("There is no text to read aloud.")
    if len(text) > max_chars:
        raise SpeechError(f"The text is {len(text)} characters; at most {max_chars} can be read aloud.")
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        raise SpeechError("Reading aloud needs espeak-ng on the server, which is not installed.")
    done = subprocess.run(
        # The text on stdin, never as an argument: it could start with "-".
        [espeak, "--stdout", "-v", "en-us", "-s", str(words_per_minute)],
        input=text.encode(),
        capture_output=True,
        timeout=ESPEAK_TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0 or not done.stdout:
        raise SpeechError(f"espeak-ng failed: {done.stderr.decode(errors='replace')[:200]}")
    return _with_true_lengths(done.stdout)


def _with_true_lengths(streamed: bytes) -> bytes:
    """A WAV written to a pipe cannot go back to fill in its lengths: write them now."""
    with wave.open(io.BytesIO(streamed)) as reader:
        params = reader.getparams()
        pcm = reader.readframes(params.nframes)
    out = io.BytesIO()
    with wave.open(out, "wb") as writer:
        writer.setnchannels(params.nchannels)
        writer.setsampwidth(params.sampwidth)
        writer.setframerate(params.framerate)
        writer.writeframes(pcm)
    return out.getvalue()
