"""Structured output: a JSON schema as a grammar, and each reply's place in it.

A reply asked to answer in JSON (OpenAI's `response_format`) carries its
schema as JSON text (GenerationParams.response_schema). Before each token the
reply's `RowGrammar` says which tokens keep the text a valid prefix of some
document the schema accepts; the sampler masks the others out, so a reply that
ends (not cut by max_new_tokens) parses, whatever the model. Should the grammar
break (a limit of llguidance's parser met while decoding), the reply fails with
GrammarFailed rather than end as text that does not follow its format. The engine and the one-at-a-time
backend both use it; remote models get the schema passed on instead.

The grammar library is llguidance (Microsoft's Rust engine behind Guidance,
one of vLLM's and SGLang's structured-output backends):
- a schema compiles in well under a millisecond and needs no per-schema
  precomputation over the vocabulary (xgrammar compiles one per schema);
- a mask costs ~0.2 ms a token for the default model's 49,152-token
  vocabulary (measured here, one thread), against ~25 ms for the pass;
- its JSON-schema coverage is the widest of the three, and what it does not
  implement it names ('Unimplemented keys: ["if"]'), which is the refusal
  the API gives;
- it has no dependencies, and checking a schema needs neither torch nor a
  tokenizer, so the web process refuses a bad schema before anything is
  stored.

This module imports neither torch nor transformers at import time: the web
process calls `schema_problem`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import llguidance

from inference.params import GenerationParams
from inference.types import GenerationError

# response_format {"type": "json_object"}: any JSON object.
JSON_OBJECT_SCHEMA = '{"type":"object"}'  # as schema_text writes it
# The most characters of schema one request may carry (it is stored with the reply).
MAX_SCHEMA_CHARS = 32_000
# Compact separators and no free whitespace between tokens: a small model
# otherwise may spend its whole budget on newlines and indentation, which
# the grammar allows forever. Whitespace inside strings is unaffected.
_COMPILE_OPTIONS: Any = {"whitespace_flexible": False}


def schema_text(schema: Any) -> str:
    """A schema object as the compact JSON text stored with a reply. Its keys keep
    their order: properties are generated in the order the schema lists them."""
    return json.dumps(schema, separators=(",", ":"), ensure_ascii=False)


def grammar_of(json_schema: str) -> str:
    """The llguidance grammar for a schema (JSON text)."""
    return llguidance.LLMatcher.grammar_from_json_schema(json_schema, defaults=_COMPILE_OPTIONS)


def grammar_problem(grammar: str) -> str | None:
    """Why a compiled grammar (see grammar_of, tools.calls_grammar) cannot constrain a reply, or None."""
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
    if is_error:
        return messages[0] if messages else "the grammar could not be compiled"
    return None


def lark_grammar(lark: str) -> str:
    """The llguidance grammar for a Lark grammar (llguidance's dialect, which embeds JSON schemas)."""
    return llguidance.LLMatcher.grammar_from_lark(lark)


def constraint_of(params: GenerationParams) -> str:
    """The llguidance grammar of a constrained reply: its Lark grammar, else its schema's."""
    if params.response_grammar is not None:
        return lark_grammar(params.response_grammar)
    assert params.response_schema is not None, "not a constrained reply"
    return grammar_of(params.response_schema)


def schema_problem(json_schema: str) -> str | None:
    """Why a schema (JSON text) cannot constrain a reply, or None if it can.

    The message names what was wrong: a schema keyword llguidance does not
    implement, a reference it cannot resolve, a schema that is not an object.
    """
    if len(json_schema) > MAX_SCHEMA_CHARS:
        return f"the schema is {len(json_schema):,} characters; at most {MAX_SCHEMA_CHARS:,} are allowed"
    try:
        grammar = grammar_of(json_schema)
    except ValueError as exc:
        return str(exc)
    return grammar_problem(grammar)


class GrammarFailed(GenerationError):
    """A reply's grammar broke (llguidance met a limit of its parser, or a token the
    mask should have forbidden): the reply fails rather than end as text that does
    not follow its format."""

    code = "response_format_failed"

    def __init__(self, reason: str) -> None:
        super().__init__(f"The reply could not follow its response format: {reason[:300]}")


class RowGrammar:
    """One reply's position in its grammar: which tokens may come next, and what it has taken."""

    def __init__(self, matcher: llguidance.LLMatcher) -> None:
        self._matcher = matcher
        self.broken = matcher.is_error()  # a grammar that failed to build allows nothing

    def bitmask(self) -> bytes:
        """The tokens allowed next, one bit each (token i is bit i % 32 of 32-bit word i // 32)."""
        return self._matcher.compute_bitmask()

    def accept(self, token: int) -> None:
        """The token the reply took. One the mask did not allow breaks the grammar (see `broken`)."""
        if not self._matcher.consume_token(token):
            self.broken = True

    @property
    def finished(self) -> bool:
        """Nothing but the end of the reply may follow: the document is complete."""
        return self._matcher.is_stopped()

    @property
    def error(self) -> str:
        return self._matcher.get_error()


class GrammarTokenizer:
    """A model's vocabulary as llguidance sees it, built once (~0.3 s) and shared by its replies."""

    def __init__(self, hf_tokenizer: Any, *, vocab_size: int, end_tokens: Sequence[int]) -> None:
        """`vocab_size`: the model's logits width (a model may pad its vocabulary past the
        tokenizer's); `end_tokens`: the ids that end a reply, which the grammar allows
        once the document is complete."""
        import llguidance.hf  # imports transformers: worker side only

        self.vocab_size = vocab_size
        # At least the tokenizer's own size (llguidance refuses fewer); the mask is
        # cut or padded to the logits' width where it is applied (sampler.allowed_tokens).
        self._tokenizer = llguidance.hf.from_tokenizer(
            hf_tokenizer, n_vocab=max(vocab_size, len(hf_tokenizer)), eos_token=list(end_tokens)
        )

    def row(self, grammar: str) -> RowGrammar:
        """A fresh state of a grammar (see constraint_of; the submit path checked it) for one
        reply; GrammarFailed if it cannot even start (a limit only the tokenizer shows)."""
        row = RowGrammar(llguidance.LLMatcher(self._tokenizer, grammar, log_level=0))
        if row.broken:
            raise GrammarFailed(row.error)
        return row
