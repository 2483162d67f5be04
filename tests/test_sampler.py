"""The sampler's nucleus (top-p) draw against transformers' own TopPLogitsWarper."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from transformers.generation.logits_process import TopPLogitsWarper

from inference.engine.sampler import NUCLEUS_FIRST_K, Sampler, SamplingRow, nucleus_choice
from inference.params import GenerationParams


def warper_kept(logits: torch.Tensor, top_p: float) -> set[int]:
    """The tokens transformers keeps for sampling at `top_p`."""
    warped = TopPLogitsWarper(top_p)(torch.zeros(1, 1, dtype=torch.long), logits[None].clone())[0]
    return set(torch.nonzero(warped > float("-inf")).flatten().tolist())


def distributions() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    peaked = torch.randn(5000, generator=generator)
    peaked[:6] += torch.tensor([9.0, 8.5, 8.0, 7.0, 6.0, 5.0])
    return {
        "peaked": peaked,  # a few likely tokens, as a model mostly gives
        "flat": torch.randn(5000, generator=generator) * 0.01,  # a nucleus far over NUCLEUS_FIRST_K
        "one": torch.cat((torch.tensor([30.0]), torch.zeros(4999))),  # one token holds it all
    }


@pytest.mark.parametrize("name", ["peaked", "flat", "one"])
@pytest.mark.parametrize("top_p", [0.05, 0.5, 0.9, 0.999])
def test_draws_come_from_the_same_tokens_transformers_keeps(name: str, top_p: float) -> None:
    logits = distributions()[name]
    kept = warper_kept(logits, top_p)
    generator = torch.Generator().manual_seed(1)
    probs = logits.softmax(-1)
    draws = {nucleus_choice(probs, top_p, generator) for _ in range(300)}
    assert draws <= kept
    if len(kept) <= 8:  # every one of a few kept tokens comes up in 300 draws
        assert draws == kept
    if name == "flat":
        assert len(kept) > NUCLEUS_FIRST_K  # the case that grows k
        assert len(draws) > NUCLEUS_FIRST_K


def test_draws_follow_the_nucleus_probabilities() -> None:
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.04, 0.01] + [0.0] * 995) + 1e-12)
    probs = logits.softmax(-1)
    generator = torch.Generator().manual_seed(2)
    counts = Counter(nucleus_choice(probs, 0.9, generator) for _ in range(6000))
    # The nucleus at 0.9 is the first three tokens (0.5 + 0.3 < 0.9), renormalised over 0.95.
    assert set(counts) == {0, 1, 2}
    for token, p in ((0, 0.5), (1, 0.3), (2, 0.15)):
        assert abs(counts[token] / 6000 - p / 0.95) < 0.03


def test_a_seeded_row_draws_the_same_reply_twice() -> None:
    logits = distributions()["peaked"].repeat(2, 1)
    params = GenerationParams(temperature=0.7, top_p=0.9, repetition_penalty=1.0, seed=5)

    def draws() -> list[int]:
        sampler = Sampler(rows=2, vocab=logits.shape[1], device=torch.device("cpu"))
        rows = [SamplingRow(slot, params, torch.Generator().manual_seed(5)) for slot in range(2)]
        return [token for _ in range(20) for token in sampler.sample(logits.clone(), rows)]

    first = draws()
    assert first == draws()
    assert len(set(first)) > 1  # sampled, not greedy


def test_the_repetition_penalty_is_transformers_own() -> None:
    """Greedy choices after the penalty equal those after transformers'
    RepetitionPenaltyLogitsProcessor, over each row's prompt and reply tokens."""
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

    generator = torch.Generator().manual_seed(3)
    vocab, penalty = 3000, 1.6
    sampler = Sampler(rows=4, vocab=vocab, device=torch.device("cpu"))
    params = GenerationParams(temperature=0, repetition_penalty=penalty)
    changed = 0
    for trial in range(40):
        # Rows 1 and 3 wholly negative: the penalty multiplies those logits instead.
        logits = (
            torch.randn(4, vocab, generator=generator) * 3 - torch.tensor([0.0, 30.0, 0.0, 30.0])[:, None]
        )
        histories = []
        for slot in range(4):
            # The likeliest tokens are among those seen, so the penalty often decides.
            prompt = (
                logits[slot].topk(4).indices.tolist()
                + torch.randint(vocab, (300,), generator=generator).tolist()
            )
            reply = torch.randint(vocab, (trial * 8,), generator=generator).tolist()  # grows past 256 ids
            sampler.start(slot, prompt)
            for token in reply:
                sampler.saw(slot, token)
            histories.append(prompt + reply)
        expected = [
            int(
                RepetitionPenaltyLogitsProcessor(penalty)(
                    torch.tensor([ids]), logits[slot : slot + 1].clone()
                ).argmax()
            )
            for slot, ids in enumerate(histories)
        ]
        rows = [SamplingRow(slot, params) for slot in range(4)]
        assert sampler.sample(logits.clone(), rows) == expected
        changed += sum(e != int(logits[slot].argmax()) for slot, e in enumerate(expected))
    assert changed > 20  # the penalty changed many choices, so the comparison meant something


def test_greedy_and_sampled_rows_share_a_pass() -> None:
    logits = torch.randn(3, 2000, generator=torch.Generator().manual_seed(4))
    sampler = Sampler(rows=3, vocab=2000, device=torch.device("cpu"))
    greedy = GenerationParams(temperature=0, repetition_penalty=1.0)
    sampled = GenerationParams(temperature=1.0, top_p=0.5, repetition_penalty=1.0)
    rows = [
        SamplingRow(0, greedy),
        SamplingRow(1, sampled, torch.Generator().manual_seed(1)),
        SamplingRow(2, greedy),
    ]
    chosen = sampler.sample(logits.clone(), rows)
    assert chosen[0] == int(logits[0].argmax()) and chosen[2] == int(logits[2].argmax())
    assert chosen[1] in warper_kept(logits[1], 0.5)


def test_token_ids_past_the_logits_touch_no_other_row() -> None:
    """A tokenizer's added token past the output layer's rows has no logit: it is
    not penalised, and the next row's logits stay as they were."""
    vocab = 100
    sampler = Sampler(rows=2, vocab=vocab, device=torch.device("cpu"))
    sampler.start(0, [vocab + 7, 3])
    sampler.saw(0, vocab + 1)
    sampler.start(1, [])
    logits = torch.zeros(2, vocab)
    logits[1, 7] = logits[1, 1] = 5.0  # what row 0's stray ids would hit, one row on
    params = GenerationParams(temperature=0, repetition_penalty=100.0)
    assert sampler.sample(logits, [SamplingRow(0, params), SamplingRow(1, params)]) == [0, 1]
    assert logits[1, 7] == 5.0 and logits[1, 1] == 5.0
