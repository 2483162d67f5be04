"""Tokens to streamed text, and where stop strings end a reply.

Shared by the engine and the one-at-a-time backend (inference/backend.py), so
both cut a reply at the same place.
"""

from __future__ import annotations

from typing import Any


def cut_at_stop_strings(text: str, stop_strings: list[str]) -> tuple[str, bool]:
    """The text before the first stop string it contains, and whether it contained one."""
    cut = min((text.find(stop) for stop in stop_strings if stop in text), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def held_back(text: str, stop_strings: list[str]) -> int:
    """How many trailing characters might be the start of a stop string (not to be streamed yet)."""
    held = 0
    for stop in stop_strings:
        for size in range(min(len(stop) - 1, len(text)), held, -1):
            if text.endswith(stop[:size]):
                held = size
                break
    return held


class IncrementalText:
    """One reply's text as its tokens arrive.

    Incremental decoding as in text-generation-inference: decode a short
    window before and after the new token and take the difference, holding
    back while the text ends in an incomplete UTF-8 sequence. Text that might
    be the start of a stop string is held back too, so a stop string is never
    streamed.
    """

    def __init__(self, tokenizer: Any, stop_strings: list[str]) -> None:
        self.tokenizer = tokenizer
        self.stop_strings = stop_strings
        self.tokens: list[int] = []
        self.text = ""
        self._prefix_offset = 0
        self._read_offset = 0

    def add(self, token: int) -> int | None:
        """Take the next token; where a stop string begins in the text, if one just completed."""
        self.tokens.append(token)
        decode = self.tokenizer.decode
        before = decode(self.tokens[self._prefix_offset : self._read_offset], skip_special_tokens=True)
        after = decode(self.tokens[self._prefix_offset :], skip_special_tokens=True)
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return None
        start = len(self.text)
        self.text += after[len(before) :]
        self._prefix_offset, self._read_offset = self._read_offset, len(self.tokens)
        if self.stop_strings:
            window = max(0, start - max(len(stop) for stop in self.stop_strings) + 1)
            hits = [at for at in (self.text.find(stop, window) for stop in self.stop_strings) if at >= 0]
            if hits:
                return min(hits)
        return None

    def safe_length(self) -> int:
        """How much of the text may be streamed now."""
        return len(self.text) - held_back(self.text, self.stop_strings)

    def final(self, stopped_at: int | None = None) -> str:
        """The whole reply: decoded at once (as the one-at-a-time backend does), cut at a stop string."""
        if stopped_at is not None:
            return self.text[:stopped_at]
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        return cut_at_stop_strings(text, self.stop_strings)[0]
