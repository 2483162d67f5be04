"""Generation with a locally loaded transformers model."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, cast

import torch
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
    TextStreamer,
)

from inference.engine.detokenizer import cut_at_stop_strings
from inference.engine.sampler import allowed_tokens
from inference.grammar import GrammarFailed, GrammarTokenizer, RowGrammar, constraint_of
from inference.loading import LoadedModel
from inference.params import GenerationParams
from inference.prompt import FALLBACK_STOP_STRINGS, build_prompt
from inference.types import Completion, FinishReason, GenerationRequest

# Special tokens that end a turn or begin the next one in common chat formats.
# Whichever of them the vocabulary has stop generation: a model that starts a
# new turn has finished its reply.
TURN_BOUNDARY_TOKENS = (
    "<|im_end|>",
    "<|im_start|>",
    "<|eot_id|>",
    "<|start_header_id|>",
    "<|end|>",
    "<|user|>",
    "<end_of_turn>",
    "<start_of_turn>",
    "</s>",
)


def stop_token_ids_for(loaded: LoadedModel) -> list[int]:
    """The model's end-of-sequence ids and whichever turn-boundary tokens its vocabulary has."""
    tokenizer = loaded.tokenizer
    stop_ids = set(_as_list(loaded.model.generation_config.eos_token_id))
    stop_ids.add(tokenizer.eos_token_id)
    special = set(tokenizer.all_special_tokens) | set(getattr(tokenizer, "added_tokens_encoder", {}))
    for token in TURN_BOUNDARY_TOKENS:
        if token in special:
            stop_ids.add(tokenizer.convert_tokens_to_ids(token))
    return sorted(i for i in stop_ids if i is not None)


class _CallbackStreamer(TextStreamer):
    """Hands decoded text to a callback instead of printing it."""

    def __init__(self, tokenizer: Any, on_text: Callable[[str], None]) -> None:
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self._on_text = on_text

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if text:
            self._on_text(text)


class _StopWhen(StoppingCriteria):
    def __init__(self, predicate: Callable[[], bool]) -> None:
        self.predicate = predicate
        self.fired = False

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any
    ) -> torch.BoolTensor:
        self.fired = self.fired or self.predicate()
        fired = torch.full((input_ids.shape[0],), self.fired, dtype=torch.bool, device=input_ids.device)
        return cast(torch.BoolTensor, fired)  # torch.full types every result as a plain Tensor


class _GrammarMask(LogitsProcessor):
    """A constrained reply's grammar for generate(): each call takes the token chosen
    last (if any) and masks what the grammar does not allow next."""

    def __init__(self, grammar: RowGrammar, prompt_length: int) -> None:
        self.grammar = grammar
        self.taken = prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for token in input_ids[0, self.taken :].tolist():
            self.grammar.accept(token)
        self.taken = input_ids.shape[1]
        allowed = allowed_tokens(self.grammar, scores.shape[-1]).to(scores.device)
        if allowed.any():
            scores = cast(torch.FloatTensor, scores.masked_fill(~allowed, float("-inf")))
        return scores


class _GrammarDone(StoppingCriteria):
    """Ends generate() once the document is complete (the engine does the same)."""

    def __init__(self, mask: _GrammarMask) -> None:
        self.mask = mask

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any
    ) -> torch.BoolTensor:
        grammar = self.mask.grammar
        for token in input_ids[0, self.mask.taken :].tolist():
            grammar.accept(token)
        self.mask.taken = input_ids.shape[1]
        if grammar.broken:  # as in the engine: the reply fails rather than end off its format
            raise GrammarFailed(grammar.error)
        done = grammar.finished
        return cast(torch.BoolTensor, torch.full((input_ids.shape[0],), done, device=input_ids.device))


class TransformersBackend:
    """Runs one request at a time with `model.generate()`."""

    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded
        self.model_name = loaded.name
        self.stop_token_ids = stop_token_ids_for(loaded)
        self.stop_strings = list(FALLBACK_STOP_STRINGS) if loaded.uses_fallback_template else []
        self._grammar_tokenizer: GrammarTokenizer | None = None  # built for the first JSON reply

    def _grammar(self, params: GenerationParams) -> RowGrammar:
        if self._grammar_tokenizer is None:
            # The logits' width: out_features, since a half-stored output layer's weight lives elsewhere.
            vocab = int(cast(Any, self.loaded.model).get_output_embeddings().out_features)
            self._grammar_tokenizer = GrammarTokenizer(
                self.loaded.tokenizer, vocab_size=vocab, end_tokens=self.stop_token_ids
            )
        return self._grammar_tokenizer.row(constraint_of(params))

    def generate(
        self, request: GenerationRequest, on_text: Callable[[str], None] | None = None
    ) -> Completion:
        loaded = self.loaded
        params = request.params
        prompt = build_prompt(
            loaded.tokenizer,
            request.turns,
            context_tokens=loaded.context_tokens,
            max_new_tokens=params.max_new_tokens,
        )
        input_ids = torch.tensor([prompt.input_ids], device=loaded.device)
        cancel = _StopWhen(request.should_stop or (lambda: False))
        deadline = time.monotonic() + request.time_limit_s if request.time_limit_s else None
        timeout = _StopWhen(lambda: deadline is not None and time.monotonic() >= deadline)
        options: dict[str, Any] = {
            "max_new_tokens": params.max_new_tokens,
            "do_sample": not params.greedy,
            "repetition_penalty": params.repetition_penalty,
            "eos_token_id": self.stop_token_ids,
            "pad_token_id": loaded.tokenizer.pad_token_id,
            "stopping_criteria": StoppingCriteriaList([cancel, timeout]),
        }
        if not params.greedy:
            options.update(temperature=params.temperature, top_p=params.top_p, top_k=0)
        else:
            # Greedy: clear the sampling defaults a model's generation_config may carry.
            options.update(temperature=None, top_p=None, top_k=None)
        stop_strings = [*self.stop_strings, *params.stop]
        if params.constrained:
            # As in the engine: the grammar ends the reply, and no stop string may cut it.
            stop_strings = []
            mask = _GrammarMask(self._grammar(params), input_ids.shape[1])
            options["logits_processor"] = LogitsProcessorList([mask])
            options["stopping_criteria"].append(_GrammarDone(mask))
        if stop_strings:
            options.update(stop_strings=stop_strings, tokenizer=loaded.tokenizer)
        if params.seed is not None:
            torch.manual_seed(params.seed)  # one request at a time: the global generator is ours
        if on_text is not None:
            options["streamer"] = _CallbackStreamer(loaded.tokenizer, on_text)
        # generate() comes from GenerationMixin, which causal-LM classes mix in but
        # PreTrainedModel (the declared type) does not: nn.Module.__getattr__ answers instead.
        with torch.inference_mode():
            output = loaded.model.generate(  # type: ignore[operator]
                input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **options
            )
        new_tokens = output[0, input_ids.shape[1] :].tolist()
        text = loaded.tokenizer.decode(new_tokens, skip_special_tokens=True)
        text, hit_stop_string = cut_at_stop_strings(text, stop_strings)
        return Completion(
            text=text.strip(),
            prompt_tokens=len(prompt.input_ids),
            completion_tokens=len(new_tokens),
            finish_reason=self._finish_reason(
                new_tokens, params.max_new_tokens, cancel, timeout, hit_stop_string
            ),
            dropped_turns=prompt.dropped_turns,
        )

    def _finish_reason(
        self, new_tokens: list[int], limit: int, cancel: _StopWhen, timeout: _StopWhen, hit_stop_string: bool
    ) -> FinishReason:
        if cancel.fired:
            return "cancelled"
        if timeout.fired:
            return "timeout"
        if hit_stop_string or (new_tokens and new_tokens[-1] in self.stop_token_ids):
            return "stop"
        return "length" if len(new_tokens) >= limit else "stop"


def _as_list(value: int | list[int] | None) -> list[int]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]
