"""Logits to tokens for the rows of one pass.

The seam between the model and what a reply may say: `Sampler.sample` takes
the pass's logits and each row's own state (its parameters, its random
generator, the tokens it has seen) and returns one token per row. Anything
that narrows a row's choice applies here, to that row's logits, before the
choice: a row with a grammar (a reply asked for JSON, see inference/grammar.py)
has every token its grammar does not allow masked out, so constrained and
free rows share one batch and each keeps its own grammar state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from inference.grammar import RowGrammar
from inference.params import GenerationParams

# Bit i of a 32-bit mask word: which of its 32 tokens the word allows.
_BITS = torch.arange(32, dtype=torch.int32)


@dataclass
class SamplingRow:
    slot: int  # its row of the seen-token matrix
    params: GenerationParams
    generator: torch.Generator | None = None  # a seeded request's own
    grammar: RowGrammar | None = None  # what the reply may say next, if it is constrained


def allowed_tokens(grammar: RowGrammar, vocab: int) -> torch.Tensor:
    """The grammar's mask as one bool per token of a `vocab`-wide logits row."""
    words = torch.frombuffer(bytearray(grammar.bitmask()), dtype=torch.int32)
    allowed = ((words[:, None] >> _BITS) & 1).view(-1).bool()
    if allowed.shape[0] >= vocab:
        return allowed[:vocab]
    return torch.cat((allowed, allowed.new_zeros(vocab - allowed.shape[0])))


class Sampler:
    """Repetition penalty over each row's prompt and reply, then greedy or temperature and top-p sampling.

    Each step's work is over the few tokens that matter, not the vocabulary:
    the penalty reads and writes only the logits of tokens a row has seen,
    and the rows that sample share one softmax and one top-k (see
    nucleus_choice). Measured at 8 rows of the default model's 49,152
    logits, the chat's defaults: 5.3 ms a pass before, with a dense
    seen-token matrix and per-row softmax and top-k.
    """

    def __init__(self, rows: int, vocab: int, device: torch.device) -> None:
        """`vocab`: the width of a logits row; a token id past it (a tokenizer's
        added token the output layer has no row for) has no logit to penalise."""
        self.device = device
        self.vocab = vocab
        # The distinct tokens each slot's request has seen (prompt and reply),
        # for the repetition penalty: as a set, and as the first `_counts[slot]`
        # entries of a tensor that doubles when full.
        self._seen: list[set[int]] = [set() for _ in range(rows)]
        self._ids: list[torch.Tensor] = [torch.empty(0, dtype=torch.long, device=device) for _ in range(rows)]
        self._counts = [0] * rows

    def start(self, slot: int, prompt_ids: Sequence[int]) -> None:
        """A slot's request begins to decode, having seen its prompt."""
        seen = {token for token in prompt_ids if 0 <= token < self.vocab}
        ids = torch.empty(max(2 * len(seen), 256), dtype=torch.long, device=self.device)
        ids[: len(seen)] = torch.tensor(sorted(seen), dtype=torch.long)
        self._seen[slot], self._ids[slot], self._counts[slot] = seen, ids, len(seen)

    def saw(self, slot: int, token: int) -> None:
        seen = self._seen[slot]
        if token in seen or not 0 <= token < self.vocab:
            return
        seen.add(token)
        count, ids = self._counts[slot], self._ids[slot]
        if count == ids.shape[0]:
            ids = self._ids[slot] = torch.cat((ids, torch.empty_like(ids)))
        ids[count] = token
        self._counts[slot] = count + 1

    def sample(self, logits: torch.Tensor, rows: Sequence[SamplingRow]) -> list[int]:
        for index, row in enumerate(rows):
            if row.grammar is not None:
                allowed = allowed_tokens(row.grammar, logits.shape[-1]).to(logits.device)
                if allowed.any():  # nothing allowed: a broken grammar, which the engine ends
                    logits[index].masked_fill_(~allowed, float("-inf"))
        self._penalise(logits, rows)
        sampling = [index for index, row in enumerate(rows) if not row.params.greedy]
        if not sampling:
            return logits.argmax(dim=-1).tolist()
        chosen = [0] * len(rows)
        greedy = [index for index, row in enumerate(rows) if row.params.greedy]
        if greedy:  # an argmax costs as much as a softmax: only for the rows that take it
            for index, token in zip(greedy, logits[greedy].argmax(dim=-1).tolist(), strict=True):
                chosen[index] = token
        temperatures = torch.tensor(
            [rows[index].params.temperature for index in sampling], device=logits.device
        )
        picked = logits if len(sampling) == len(rows) else logits[sampling]
        probs = (picked / temperatures[:, None]).softmax(dim=-1)
        first = probs.topk(min(NUCLEUS_FIRST_K, probs.shape[-1]), dim=-1)
        for at, index in enumerate(sampling):
            params, generator = rows[index].params, rows[index].generator
            if params.top_p < 1.0:
                chosen[index] = nucleus_choice(
                    probs[at], params.top_p, generator, first=(first.values[at], first.indices[at])
                )
            else:
                chosen[index] = int(torch.multinomial(probs[at], 1, generator=generator).item())
        return chosen

    def _penalise(self, logits: torch.Tensor, rows: Sequence[SamplingRow]) -> None:
        """As transformers' RepetitionPenaltyLogitsProcessor, over prompt and reply
        tokens, in place: each seen token's logit divided by the penalty, or
        multiplied where it is negative."""
        penalised = [(index, row) for index, row in enumerate(rows) if row.params.repetition_penalty != 1.0]
        if not penalised:
            return
        width = logits.shape[-1]
        assert width == self.vocab, f"logits {width} wide for a sampler of {self.vocab} tokens"
        positions = torch.cat(
            [self._ids[row.slot][: self._counts[row.slot]] + index * width for index, row in penalised]
        )
        penalty = torch.repeat_interleave(
            torch.tensor([row.params.repetition_penalty for _, row in penalised], device=logits.device),
            torch.tensor([self._counts[row.slot] for _, row in penalised], device=logits.device),
        )
        flat = logits.view(-1)
        seen = flat[positions]
        flat[positions] = torch.where(seen < 0, seen * penalty, seen / penalty)


# Candidates nucleus_choice takes first; a reply's nucleus at top_p 0.9 is
# mostly a few tokens (the default model telling a story at temperature 0.7:
# median 2, 90th percentile 15, largest 113 of 200 steps).
NUCLEUS_FIRST_K = 64


def nucleus_choice(
    probs: torch.Tensor,
    top_p: float,
    generator: torch.Generator | None,
    *,
    first: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> int:
    """A token drawn from the nucleus of `probs` (one row's softmax): the most likely
    tokens whose more likely ones hold less than `top_p` of the mass, at least one.

    The tokens transformers' TopPLogitsWarper keeps, found without sorting the
    whole vocabulary: the k most likely, growing k until they hold `top_p` (so
    every token past them is out). Sorting the default model's 49,152
    probabilities cost ~3-8 ms a row on these cores, most of a decode pass;
    this ~0.3 ms. `first`: the NUCLEUS_FIRST_K most likely already taken
    (values, indices), as the sampler takes them for all its rows at once.
    """
    k = min(NUCLEUS_FIRST_K, probs.shape[0])
    top, index = first if first is not None else probs.topk(k)
    while k < probs.shape[0] and float(top.sum()) < top_p:
        k = min(4 * k, probs.shape[0])
        top, index = probs.topk(k)
    kept = top[(top.cumsum(0) - top) < top_p]  # top[0] always: nothing is more likely
    return int(index[torch.multinomial(kept, 1, generator=generator)].item())
