"""Voice, offline: dictation with PocketSphinx, reading aloud with eSpeak NG.

PocketSphinx's wheel ships its US English model, so nothing is downloaded;
eSpeak NG is Debian's `espeak-ng` package (`make run` installs it). Either
missing turns its feature off (`available()`), and the page hides it.

`transcribe` and `speak_to_file` are the jobs; they run in processes of their
own (inference/speech_pool.py), never in the web process: PocketSphinx holds
the GIL for the whole decode, up to a minute for a legal recording of noise.
What the web process may run is cheap and bounded: `read_wav` parses a
header of at most MAX_CHUNKS chunks and views the samples without copying
them, and `check_text` measures a string, so a bad request is refused with
400 before any job is queued.

Reads no Django settings: the limits come in as arguments.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

SAMPLE_RATE = 16_000  # what the English model was trained on
ESPEAK_TIMEOUT_S = 30  # `speak`'s; the pool passes its own job timeout

# What a recording may be, said in every refusal of one.
ALLOWED = "Send a 16-bit PCM WAV file, mono or stereo, at 8,000 to 96,000 Hz."
MIN_RATE, MAX_RATE = 8_000, 96_000
MAX_CHANNELS = 2
# Chunks before the audio: 'fmt ' and perhaps 'LIST', 'fact', 'JUNK'. Counted,
# so that a file of a million empty chunks is refused instead of walked.
MAX_CHUNKS = 64

WAVE_FORMAT_PCM = 1
WAVE_FORMAT_EXTENSIBLE = 0xFFFE
FORMAT_NAMES = {2: "ADPCM", 3: "IEEE float", 6: "A-law", 7: "mu-law", 0x55: "MP3"}


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


# --- Dictation ---------------------------------------------------------------------


@dataclass(frozen=True)
class Recording:
    rate: int
    channels: int
    samples: np.ndarray  # int16, interleaved; a view of the WAV's bytes

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.channels / self.rate


def read_wav(wav: bytes, *, max_seconds: float) -> Recording:
    """The audio of a 16-bit PCM WAV file, checked; SpeechError says what is wrong with it.

    Cheap enough for the web process: the header is at most MAX_CHUNKS chunks
    and the samples are a view of `wav`, not a copy.
    """
    view = memoryview(wav)
    if len(wav) < 12 or wav[:4] != b"RIFF" or wav[8:12] != b"WAVE":
        raise SpeechError(
            f"The recording is not a WAV file this server can read: it does not start with "
            f"a RIFF/WAVE header. {ALLOWED}"
        )
    position, rate, channels = 12, 0, 0
    for _ in range(MAX_CHUNKS):
        if position + 8 > len(view):
            raise SpeechError(
                f"The recording's WAV header is truncated: the file ends after {len(view)} bytes, "
                f"before its audio data. {ALLOWED}"
            )
        name, size = (
            bytes(view[position : position + 4]),
            int.from_bytes(view[position + 4 : position + 8], "little"),
        )
        body = view[position + 8 : position + 8 + size]  # shorter than `size` if the file is cut off
        if name == b"fmt ":
            rate, channels = _format(body)
        elif name == b"data":
            if not rate:
                raise SpeechError(
                    f"The recording's WAV header has no format chunk before its audio. {ALLOWED}"
                )
            return _recording(body, rate=rate, channels=channels, max_seconds=max_seconds)
        position += 8 + size + (size & 1)  # chunks are padded to an even length
    raise SpeechError(
        f"The recording has more than {MAX_CHUNKS} WAV chunks before its audio data; "
        f"this server reads no further. {ALLOWED}"
    )


def _format(chunk: memoryview) -> tuple[int, int]:
    """The frame rate and channel count of a 'fmt ' chunk, if this server can use them."""
    if len(chunk) < 16:
        raise SpeechError(
            f"The recording's WAV header is truncated: its format chunk has {len(chunk)} bytes, "
            f"not 16. {ALLOWED}"
        )
    tag, channels, rate, _byte_rate, block_align, bits = struct.unpack_from("<HHIIHH", chunk)
    if tag == WAVE_FORMAT_EXTENSIBLE and len(chunk) >= 26:
        tag = struct.unpack_from("<H", chunk, 24)[0]  # the first two bytes of the subformat GUID
    if tag != WAVE_FORMAT_PCM:
        kind = FORMAT_NAMES.get(tag, "not PCM")
        raise SpeechError(f"The recording must be PCM audio, got WAV format {tag} ({kind}). {ALLOWED}")
    if bits != 16:
        raise SpeechError(f"The recording must be 16-bit PCM, got {bits}-bit samples. {ALLOWED}")
    if not 1 <= channels <= MAX_CHANNELS:
        raise SpeechError(f"The recording has {channels} channels; it must be mono or stereo. {ALLOWED}")
    if not MIN_RATE <= rate <= MAX_RATE:
        raise SpeechError(f"The recording's frame rate is {rate:,} Hz. {ALLOWED}")
    if block_align != 2 * channels:
        raise SpeechError(
            f"The recording's WAV header is inconsistent: {block_align} bytes a frame, "
            f"but {channels} channels of 16-bit samples take {2 * channels}. {ALLOWED}"
        )
    return rate, channels


def _recording(data: memoryview, *, rate: int, channels: int, max_seconds: float) -> Recording:
    # Counted from the bytes there are: a streamed WAV's header may claim any
    # length, and a cut-off recording ends in part of a frame, which is dropped.
    frames = len(data) // (2 * channels)
    if not frames:
        raise SpeechError("The recording is empty.")
    recording = Recording(
        rate=rate, channels=channels, samples=np.frombuffer(data[: frames * 2 * channels], dtype="<i2")
    )
    if recording.seconds > max_seconds:
        raise SpeechError(
            f"The recording is {recording.seconds:.0f} s long; at most {max_seconds:g} s is allowed."
        )
    return recording


def transcribe(wav: bytes, *, max_seconds: float) -> str:
    """The words spoken in a WAV file (16-bit PCM, mono or stereo, 8-96 kHz), as text.

    A job: seconds to a minute of one CPU, holding the GIL throughout.
    """
    decoder = _decoder()
    decoder.start_utt()
    decoder.process_raw(_mono_16k(read_wav(wav, max_seconds=max_seconds)).tobytes(), full_utt=True)
    decoder.end_utt()
    hypothesis = decoder.hyp()
    return hypothesis.hypstr.strip() if hypothesis is not None else ""


@cache
def _decoder() -> Any:
    """One decoder per process (loading one takes ~0.3 s), used by one job at a time."""
    from pocketsphinx import Decoder

    return Decoder(samprate=SAMPLE_RATE)


def warm_up() -> None:
    """Load the decoder now, so a worker process's first job does not wait for it."""
    if available().dictation:
        _decoder()


def _mono_16k(recording: Recording) -> np.ndarray:
    data, channels, rate = recording.samples, recording.channels, recording.rate
    audio = data.reshape(-1, channels).mean(axis=1) if channels > 1 else data.astype(np.float32)
    if rate != SAMPLE_RATE:  # linear resampling: speech holds little energy near the new Nyquist
        count = max(int(len(audio) * SAMPLE_RATE / rate), 1)
        audio = np.interp(np.linspace(0, len(audio) - 1, count), np.arange(len(audio)), audio)
    samples: np.ndarray = np.clip(audio, -32768, 32767).astype("<i2")
    return samples


# --- Reading aloud -----------------------------------------------------------------


def check_text(text: str, *, max_chars: int) -> str:
    """`text` stripped, if it can be read aloud; SpeechError otherwise."""
    text = text.strip()
    if not text:
        raise SpeechError("There is no text to read aloud.")
    if len(text) > max_chars:
        raise SpeechError(f"The text is {len(text)} characters; at most {max_chars} can be read aloud.")
    return text


def speak_to_file(
    text: str, path: Path, *, max_chars: int, timeout_s: float, words_per_minute: int = 160
) -> None:
    """`text` read aloud by eSpeak NG into a WAV file at `path`.

    A job. eSpeak NG writes the file itself (`-w`), lengths included, so the
    audio is never copied in memory here: the caller reads the file once.
    """
    text = check_text(text, max_chars=max_chars)
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        raise SpeechError("Reading aloud needs espeak-ng on the server, which is not installed.")
    try:
        done = subprocess.run(
            # The text on stdin, never as an argument: it could start with "-".
            [espeak, "-v", "en-us", "-s", str(words_per_minute), "-w", str(path)],
            input=text.encode(),
            capture_output=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise TimeoutError(f"espeak-ng took longer than {timeout_s:g} s") from None
    if done.returncode != 0 or not path.exists():
        raise SpeechError(f"espeak-ng failed: {done.stderr.decode(errors='replace')[:200]}")


def speak(text: str, *, max_chars: int, words_per_minute: int = 160) -> bytes:
    """`text` read aloud by eSpeak NG, as a WAV file (in this process: for tests and scripts)."""
    with tempfile.TemporaryDirectory(prefix="sanjai-speak-") as folder:
        path = Path(folder) / "speech.wav"
        speak_to_file(
            text, path, max_chars=max_chars, timeout_s=ESPEAK_TIMEOUT_S, words_per_minute=words_per_minute
        )
        return path.read_bytes()
