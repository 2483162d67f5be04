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
    """Repetition penalty over each row's prompt and reply, then greedy or temperature and top-p sampling."""

    def __init__(self, rows: int, vocab: int, device: torch.device) -> None:
        self.device = device
        # Tokens each slot's request has seen (prompt and reply): for the repetition penalty.
        self._seen = torch.zeros(rows, vocab, dtype=torch.bool, device=device)

    def start(self, slot: int, prompt_ids: Sequence[int]) -> None:
        """A slot's request begins to decode, having seen its prompt."""
        seen = self._seen[slot]
        seen.zero_()
        seen[torch.tensor(list(prompt_ids), device=self.device)] = True

    def saw(self, slot: int, token: int) -> None:
        self._seen[slot, token] = True

    def sample(self, logits: torch.Tensor, rows: Sequence[SamplingRow]) -> list[int]:
        for index, row in enumerate(rows):
            if row.grammar is not None:
                allowed = allowed_tokens(row.grammar, logits.shape[-1]).to(logits.device)
                if allowed.any():  # nothing allowed: a broken grammar, which the engine ends
                    logits[index].masked_fill_(~allowed, float("-inf"))
        penalties = [row.params.repetition_penalty for row in rows]
        if any(penalty != 1.0 for penalty in penalties):
            # As transformers' RepetitionPenaltyLogitsProcessor, over prompt and reply tokens.
            penalty = torch.tensor(penalties, device=logits.device)[:, None]
            penalised = torch.where(logits < 0, logits * penalty, logits / penalty)
            slots = torch.tensor([row.slot for row in rows], device=logits.device)
            logits = torch.where(self._seen[slots], penalised, logits)
        chosen: list[int] = logits.argmax(dim=-1).tolist()
        for index, row in enumerate(rows):
            params = row.params
            if params.greedy:
                continue
            probs = (logits[index] / params.temperature).softmax(dim=-1)
            if params.top_p < 1.0:
                chosen[index] = nucleus_choice(probs, params.top_p, row.generator)
            else:
                chosen[index] = int(torch.multinomial(probs, 1, generator=row.generator).item())
        return chosen


# Candidates nucleus_choice takes first; a reply's nucleus at top_p 0.9 is
# mostly a few tokens (the default model telling a story at temperature 0.7:
# median 2, 90th percentile 15, largest 113 of 200 steps).
NUCLEUS_FIRST_K = 64


def nucleus_choice(probs: torch.Tensor, top_p: float, generator: torch.Generator | None) -> int:
    """A token drawn from the nucleus of `probs` (one row's softmax): the most likely
    tokens whose more likely ones hold less than `top_p` of the mass, at least one.

    The tokens transformers' TopPLogitsWarper keeps, found without sorting the
    whole vocabulary: the k most likely, growing k until they hold `top_p` (so
    every token past them is out). Sorting the default model's 49,152
    probabilities cost ~3-8 ms a row on these cores, most of a decode pass;
    this ~0.3 ms.
    """
    k = min(NUCLEUS_FIRST_K, probs.shape[0])
    while True:
        top, index = probs.topk(k)
        if k == probs.shape[0] or float(top.sum()) >= top_p:
            break
        k = min(4 * k, probs.shape[0])
    kept = top[(top.cumsum(0) - top) < top_p]  # top[0] always: nothing is more likely
    return int(index[torch.multinomial(kept, 1, generator=generator)].item())
