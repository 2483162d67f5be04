"""Turning a conversation into prompt tokens that fit the model's context."""

from __future__ import annotations

import bisect
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from inference.types import ContextOverflow, Turn

logger = logging.getLogger(__name__)

# Mistral-Instruct's [INST] form, for tokenizers that carry no chat template.
# The system prompt goes in front of the first user message, as Mistral does.
FALLBACK_CHAT_TEMPLATE = (
    "{%- set ns = namespace(system='') -%}"
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{%- set ns.system = message['content'] -%}"
    "{%- elif message['role'] == 'user' -%}"
    "{{- '[INST] ' + ((ns.system + '\n\n') if ns.system else '') + message['content'] + ' [/INST]' -}}"
    "{%- set ns.system = '' -%}"
    "{%- else -%}{{- ' ' + message['content'] + eos_token -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
)
# Text that means the model has started the next turn when the template is the fallback.
FALLBACK_STOP_STRINGS = ("[INST]",)


@dataclass(frozen=True)
class Prompt:
    input_ids: list[int]
    dropped_turns: int


def ensure_chat_template(tokenizer: Any) -> bool:
    """Give the tokenizer a template if it has none; True when the fallback is used."""
    if getattr(tokenizer, "chat_template", None):
        return False
    tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE
    return True


def _encode(tokenizer: Any, turns: Sequence[Turn]) -> list[int]:
    """The chat template's own markers are special tokens; what people wrote is only ever text.

    The template is rendered with a placeholder for each message's content.
    The rendered text around the placeholders (the template's markers) is
    encoded with special tokens recognised; each message's content with them
    split into plain text, so that typing "<|im_start|>system" forges no turn.
    """
    marks = [f"\ue000{index}\ue001" for index in range(len(turns))]  # private-use characters
    rendered = tokenizer.apply_chat_template(
        [{"role": turn.role, "content": mark} for turn, mark in zip(turns, marks, strict=True)],
        tokenize=False,
        add_generation_prompt=True,
    )
    ids: list[int] = []
    rest = rendered
    for turn, mark in zip(turns, marks, strict=True):
        markup, found, rest = rest.partition(mark)
        if not found:  # a template that drops or rewrites content: encode it whole, as before
            logger.warning("the chat template rewrites message content: user text is not kept apart")
            return _tokens(tokenizer, _render(tokenizer, turns), special=True)
        ids += _tokens(tokenizer, markup, special=True) + _tokens(tokenizer, turn.content, special=False)
    return ids + _tokens(tokenizer, rest, special=True)


def _render(tokenizer: Any, turns: Sequence[Turn]) -> str:
    return str(
        tokenizer.apply_chat_template(
            [{"role": t.role, "content": t.content} for t in turns],
            tokenize=False,
            add_generation_prompt=True,
        )
    )


# A fast tokenizer keeps split_special_tokens as a flag on its shared backend,
# set by each call: job threads encoding at once would read each other's flag
# (found when the engine's concurrent tests produced prompts with split markers).
_ENCODING = threading.Lock()


def _tokens(tokenizer: Any, text: str, *, special: bool) -> list[int]:
    if not text:
        return []
    with _ENCODING:
        # The template already wrote any BOS token as text: add none.
        encoded = tokenizer(text, add_special_tokens=False, split_special_tokens=not special)
    return list(encoded["input_ids"])


def build_prompt(
    tokenizer: Any, turns: Sequence[Turn], *, context_tokens: int, max_new_tokens: int
) -> Prompt:
    """Encode `turns`, dropping the oldest history until prompt + reply fit the context.

    The system prompt and the newest user message are never dropped; history is
    cut at user turns so that roles keep alternating. If even those two do not
    fit, ContextOverflow says by how much.
    """
    if not turns or turns[-1].role != "user":
        raise ValueError("the last turn must be the user's")
    system = [t for t in turns[:1] if t.role == "system"]
    history = list(turns[len(system) : -1])
    newest = turns[-1]
    budget = context_tokens - max_new_tokens

    def encode_from(start: int) -> list[int]:
        return _encode(tokenizer, [*system, *history[start:], newest])

    # Valid cut points, oldest first; a later cut always gives a shorter prompt,
    # so the first one that fits is found by bisection.
    cuts = [i for i, t in enumerate(history) if t.role == "user"] + [len(history)]
    encoded: dict[int, list[int]] = {}

    def fits(start: int) -> bool:
        encoded[start] = encode_from(start)
        return len(encoded[start]) <= budget

    index = bisect.bisect_left(cuts, True, key=fits)
    if index == len(cuts):
        minimal = len(encoded[len(history)])
        raise ContextOverflow(
            f"The message and system prompt take {minimal} tokens, but this model's context "
            f"of {context_tokens} tokens leaves {max(budget, 0)} for the prompt when "
            f"max_new_tokens is {max_new_tokens}. Shorten the message or lower max_new_tokens."
        )
    start = cuts[index]
    return Prompt(input_ids=encoded[start], dropped_turns=start)


def fits(tokenizer: Any, turns: Sequence[Turn], *, context_tokens: int, max_new_tokens: int) -> bool:
    """Whether the system prompt and the newest turn of `turns` fit the context with the
    reply (older history may still be dropped to make room, as build_prompt does)."""
    kept = [*(t for t in turns[:1] if t.role == "system"), turns[-1]]
    return len(_encode(tokenizer, kept)) <= context_tokens - max_new_tokens
