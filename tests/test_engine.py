"""The batching engine: same answers as plain generate(), fairness, cancellation, prefix reuse."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from inference.engine.config import EngineConfig
from inference.engine.core import Engine
from inference.engine.detokenizer import held_back
from inference.loading import LoadedModel, load_model
from inference.params import GenerationParams
from inference.prompt import build_prompt
from inference.types import Completion, GenerationRequest, Turn
from tests.tiny_model import greedy_reference

HELLO = [
    Turn("system", "You are a helpful assistant."),
    Turn("user", "Hello! What is the capital of France?"),
]
PROMPTS = [
    [Turn("user", "Tell me a short story about a cat who learns to fly.")],
    [Turn("user", "Python is a programming language; Django is a web framework.")],
    [Turn("system", "You are a helpful assistant."), Turn("user", "The capital of Italy is Rome.")],
    [Turn("user", "Numbers: 0 1 2 3 4 5 6 7 8 9.")],
]


def greedy(max_new_tokens: int) -> GenerationParams:
    return GenerationParams(max_new_tokens=max_new_tokens, temperature=0, repetition_penalty=1.0)


@pytest.fixture(scope="module")
def tiny_loaded(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    return load_model(str(tiny_model_dir), device="cpu", cache_dir=tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def tiny_rounded(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    """The tiny model with the weights the engine stores in fp16 rounded to fp16
    (and kept in fp32): what the engine computes with `weights="fp16"`."""
    loaded = load_model(str(tiny_model_dir), device="cpu", cache_dir=tmp_path_factory.mktemp("cache"))
    with torch.no_grad():
        for module in loaded.model.model.layers.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.copy_(module.weight.half().float())
        # The output layer is tied to the embedding, which the engine keeps in fp32.
        lm_head = loaded.model.lm_head
        lm_head.weight = torch.nn.Parameter(lm_head.weight.detach().half().float(), requires_grad=False)
    return loaded


@pytest.fixture(params=["fp32", "fp16"])
def weights(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def same_math(weights: str, tiny_loaded: LoadedModel, tiny_rounded: LoadedModel) -> LoadedModel:
    """The model whose plain generate() an engine with `weights` must match token for token."""
    return tiny_rounded if weights == "fp16" else tiny_loaded


@pytest.fixture
def make_engine(tiny_loaded: LoadedModel) -> Iterator[Callable[..., Engine]]:
    engines: list[Engine] = []

    def make(**options: Any) -> Engine:
        # Text for every token, unless a test asks otherwise: several tests
        # pace themselves on the pieces a reply streams.
        options.setdefault("stream_interval_s", 0.0)
        options.setdefault("stream_pieces_per_s", 0)
        engine = Engine(tiny_loaded, EngineConfig(**options))
        # Never stop at a turn boundary: every reply runs to max_new_tokens, so
        # the batch really holds requests of the lengths each test chooses.
        engine.stop_token_ids = []
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.close()


def reference(loaded: LoadedModel, turns: list[Turn], max_new_tokens: int) -> list[int]:
    """Unbatched greedy generate() of the same prompt, never stopping early."""
    return greedy_reference(loaded, turns, max_new_tokens)


def reference_text(loaded: LoadedModel, turns: list[Turn], max_new_tokens: int) -> str:
    return loaded.tokenizer.decode(reference(loaded, turns, max_new_tokens), skip_special_tokens=True).strip()


def in_thread(target: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(target()))
    thread.start()
    return thread, result


def test_greedy_output_alone_equals_plain_generate(
    make_engine: Callable[..., Engine], weights: str, same_math: LoadedModel
) -> None:
    engine = make_engine(weights=weights)
    assert engine.weights == weights
    pieces: list[str] = []
    completion = engine.generate(GenerationRequest(turns=HELLO, params=greedy(40)), on_text=pieces.append)
    assert completion.text == reference_text(same_math, HELLO, 40)
    assert completion.completion_tokens == 40
    assert completion.finish_reason == "length"
    assert "".join(pieces).strip() == completion.text


def test_greedy_output_equals_plain_generate_while_others_join_and_leave(
    make_engine: Callable[..., Engine], weights: str, same_math: LoadedModel
) -> None:
    engine = make_engine(max_batch=4, weights=weights)
    lengths = [150, 6, 30, 12]
    threads: list[threading.Thread] = []
    results: dict[int, Completion] = {}

    def run(index: int) -> None:
        request = GenerationRequest(turns=PROMPTS[index], params=greedy(lengths[index]))
        results[index] = engine.generate(request, on_text=lambda text: on_text(index))
        if index == 1:  # the short one leaves; another joins the running batch
            start(3)

    started: set[int] = set()
    pieces = dict.fromkeys(range(4), 0)

    def on_text(index: int) -> None:
        pieces[index] += 1
        if index == 0 and pieces[0] == 3:  # the long one is running: two more join it
            start(1)
            start(2)

    def start(index: int) -> None:
        if index not in started:
            started.add(index)
            thread = threading.Thread(target=run, args=(index,))
            threads.append(thread)
            thread.start()

    start(0)
    while any(t.is_alive() for t in threads) or len(threads) < 4:
        time.sleep(0.01)
    for index, length in enumerate(lengths):
        assert results[index].text == reference_text(same_math, PROMPTS[index], length), index
        assert results[index].completion_tokens == length
    assert engine.stats.max_batch_seen >= 3  # they really ran together


def test_requests_arriving_together_are_prefilled_together_and_answer_as_alone(
    make_engine: Callable[..., Engine], weights: str, same_math: LoadedModel
) -> None:
    engine = make_engine(max_batch=4, weights=weights)
    lengths = [9, 17, 5, 12]
    results: dict[int, Completion] = {}

    def run(index: int) -> None:
        request = GenerationRequest(turns=PROMPTS[index], params=greedy(lengths[index]))
        results[index] = engine.generate(request)

    threads = [threading.Thread(target=run, args=(index,)) for index in range(4)]
    engine.IDLE_THREAD_S = 60.0
    engine.generate(GenerationRequest(turns=HELLO, params=greedy(1)))  # its thread now waits for work
    wake = engine._wake
    wake.notify = lambda n=1: None  # type: ignore[method-assign]  # the engine sleeps until all four wait
    for thread in threads:
        thread.start()
    while len(engine._incoming) < 4:
        time.sleep(0.001)
    del wake.notify
    with wake:
        wake.notify()
    for thread in threads:
        thread.join()
    assert engine.stats.max_prefill_rows == 4
    for index, length in enumerate(lengths):
        assert results[index].text == reference_text(same_math, PROMPTS[index], length), index


def test_prefills_take_their_own_thread_count_and_decode_steps_theirs(
    make_engine: Callable[..., Engine],
) -> None:
    engine = make_engine(threads=1, prefill_threads=2)
    calls: list[tuple[int, int]] = []  # (tokens per row, torch threads) of each forward pass
    forward = engine.decoder.forward

    def spy(tokens: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        calls.append((tokens.shape[1], torch.get_num_threads()))
        return forward(tokens, *args, **kwargs)

    engine.decoder.forward = spy  # type: ignore[method-assign]
    engine.generate(GenerationRequest(turns=HELLO, params=greedy(4)))
    prefill, *steps = calls
    assert prefill[0] > 1 and prefill[1] == 2
    assert steps == [(1, 1)] * 3


def test_streamed_text_is_coalesced_and_adds_up_to_the_reply(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine(stream_interval_s=60.0)
    pieces: list[str] = []
    completion = engine.generate(GenerationRequest(turns=HELLO, params=greedy(40)), on_text=pieces.append)
    assert len(pieces) == 2  # the first piece at once (time to first token), the rest at the end
    assert "".join(pieces).strip() == completion.text


def test_a_cancelled_request_keeps_its_text_and_frees_its_slot(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine(max_batch=1)
    seen: list[str] = []
    first, first_result = in_thread(
        lambda: engine.generate(
            GenerationRequest(turns=HELLO, params=greedy(200), should_stop=lambda: len(seen) >= 2),
            on_text=seen.append,
        )
    )
    while not seen:
        time.sleep(0.001)
    # The only slot is taken; this one waits until the cancelled one leaves.
    waiting = engine.generate(GenerationRequest(turns=PROMPTS[0], params=greedy(5)))
    first.join()
    cancelled = first_result[0]
    assert cancelled.finish_reason == "cancelled"
    assert 0 < cancelled.completion_tokens < 200
    assert cancelled.text
    assert waiting.finish_reason == "length" and waiting.completion_tokens == 5


def test_the_queue_reports_positions_and_runs_in_order(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine(max_batch=1)
    running = threading.Event()
    positions: dict[str, list[int]] = {"second": [], "third": []}
    finished: list[str] = []

    def generate(name: str, tokens: int) -> Completion:
        completion = engine.generate(
            GenerationRequest(
                turns=HELLO, params=greedy(tokens), on_queued=positions.setdefault(name, []).append
            ),
            on_text=lambda _: running.set(),
        )
        finished.append(name)
        return completion

    first, _ = in_thread(lambda: generate("first", 150))
    running.wait(10)
    second, _ = in_thread(lambda: generate("second", 5))
    while positions["second"] != [1]:
        time.sleep(0.001)
    third, _ = in_thread(lambda: generate("third", 5))
    for thread in (first, second, third):
        thread.join()
    assert positions["first"] == []
    assert positions["second"] == [1]
    assert positions["third"][:1] == [2] and positions["third"][-1] == 1
    assert finished == ["first", "second", "third"]


def test_one_owner_cannot_take_every_slot(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine(max_batch=3, max_per_owner=1)
    running = threading.Event()
    events: list[str] = []

    def generate(name: str, owner: str, tokens: int) -> Completion:
        def on_text(_: str) -> None:
            if f"{name} started" not in events:
                events.append(f"{name} started")
            running.set()

        completion = engine.generate(
            GenerationRequest(
                turns=HELLO,
                params=greedy(tokens),
                owner=owner,
                on_queued=lambda position: events.append(f"{name} queued at {position}"),
            ),
            on_text=on_text,
        )
        events.append(f"{name} done")
        return completion

    alice, _ = in_thread(lambda: generate("alice-1", "alice", 150))
    running.wait(10)
    alice_again, _ = in_thread(lambda: generate("alice-2", "alice", 5))
    while "alice-2 queued at 1" not in events:
        time.sleep(0.001)
    bob, _ = in_thread(lambda: generate("bob", "bob", 5))  # a free slot, and bob has none running
    for thread in (alice, alice_again, bob):
        thread.join()
    assert events.index("bob done") < events.index("alice-1 done")
    assert events.index("alice-2 started") > events.index("alice-1 done")


def test_a_follow_up_turn_reuses_the_cached_blocks_and_answers_as_a_cold_run(
    make_engine: Callable[..., Engine], weights: str, same_math: LoadedModel
) -> None:
    engine = make_engine(weights=weights, prefix_block_tokens=4)
    first = engine.generate(GenerationRequest(turns=HELLO, params=greedy(20)))
    assert len(engine.prefix_cache) > 0
    follow_up = [*HELLO, Turn("assistant", first.text), Turn("user", "And of Italy?")]
    prefilled = engine.stats.prefilled_tokens
    warm = engine.generate(GenerationRequest(turns=follow_up, params=greedy(20)))
    new_tokens = engine.stats.prefilled_tokens - prefilled
    hello_ids = build_prompt(same_math.tokenizer, HELLO, context_tokens=256, max_new_tokens=20).input_ids
    assert engine.stats.reused_tokens >= len(hello_ids) - 4  # every whole block of the first prompt
    assert new_tokens < warm.prompt_tokens / 2  # most of the prompt came from the cache
    cold = make_engine(weights=weights).generate(GenerationRequest(turns=follow_up, params=greedy(20)))
    assert warm.text == cold.text == reference_text(same_math, follow_up, 20)


def test_branches_and_a_shared_system_prompt_reuse_blocks_and_answer_as_generate(
    make_engine: Callable[..., Engine], weights: str, same_math: LoadedModel
) -> None:
    engine = make_engine(weights=weights, prefix_block_tokens=4)
    system = Turn("system", "You are a careful assistant who answers in one short sentence, always.")
    question = [system, Turn("user", "Hello! What is the capital of France?")]
    first = engine.generate(GenerationRequest(turns=question, params=greedy(12)))
    conversation = [*question, Turn("assistant", first.text), Turn("user", "And of Italy?")]
    engine.generate(GenerationRequest(turns=conversation, params=greedy(12)))
    cases = {
        "regenerated": conversation,  # the same prompt again: everything but its last block
        "edited": [*question, Turn("assistant", first.text), Turn("user", "And of Spain?")],
        "another conversation": [system, Turn("user", "Numbers: 0 1 2 3 4 5 6 7 8 9.")],
    }
    for name, turns in cases.items():
        reused = engine.stats.reused_tokens
        completion = engine.generate(GenerationRequest(turns=turns, params=greedy(12)))
        assert engine.stats.reused_tokens - reused >= 8, name  # the system prompt's blocks at least
        assert completion.text == reference_text(same_math, turns, 12), name


def test_the_prefix_cache_is_bounded_by_memory_and_keeps_the_most_recent(
    make_engine: Callable[..., Engine],
) -> None:
    engine = make_engine(prefix_cache_mb=1, prefix_block_tokens=4)
    per_conversation = engine.decoder.kv_bytes_per_token() * 40
    conversations = [
        [Turn("user", f"Conversation number {index}: tell me about the number {index}.")]
        for index in range(2 + (1024 * 1024) // per_conversation + 2)
    ]
    for turns in conversations:
        engine.generate(GenerationRequest(turns=turns, params=greedy(20)))
        assert engine.prefix_cache.nbytes <= 1024 * 1024
    tokenizer = engine.loaded.tokenizer
    newest, oldest = (
        build_prompt(tokenizer, turns, context_tokens=256, max_new_tokens=2).input_ids
        for turns in (conversations[-1], conversations[0])
    )
    shared = next(at for at, (a, b) in enumerate(zip(newest, oldest, strict=False)) if a != b)
    reused = engine.stats.reused_tokens
    engine.generate(GenerationRequest(turns=conversations[-1], params=greedy(2)))
    assert engine.stats.reused_tokens - reused >= len(newest) - 4  # the most recent is kept whole
    reused = engine.stats.reused_tokens
    engine.generate(GenerationRequest(turns=conversations[0], params=greedy(2)))
    # The oldest went first: only the blocks it shares with the others are found.
    assert engine.stats.reused_tokens - reused <= shared


def test_sampling_with_a_seed_is_repeatable_and_parameters_apply(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine()
    params = GenerationParams(max_new_tokens=15, temperature=1.5, top_p=0.95, repetition_penalty=1.2, seed=7)
    runs = [engine.generate(GenerationRequest(turns=HELLO, params=params)).text for _ in range(2)]
    assert runs[0] == runs[1]
    other_seed = GenerationParams(max_new_tokens=15, temperature=1.5, top_p=0.95, seed=8)
    assert engine.generate(GenerationRequest(turns=HELLO, params=other_seed)).text != runs[0]


def test_stop_strings_end_the_reply_and_are_never_streamed(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine()
    free = engine.generate(GenerationRequest(turns=HELLO, params=greedy(30)))
    marker = free.text[4:7]
    pieces: list[str] = []
    params = GenerationParams(max_new_tokens=30, temperature=0, repetition_penalty=1.0, stop=(marker,))
    stopped = engine.generate(GenerationRequest(turns=HELLO, params=params), on_text=pieces.append)
    assert stopped.finish_reason == "stop"
    assert stopped.text == free.text[: free.text.index(marker)].strip()
    assert marker not in "".join(pieces)
    assert held_back("abc[IN", ["[INST]"]) == 3 and held_back("abc", ["[INST]"]) == 0


def test_turn_boundaries_and_the_time_limit_stop_generation(tiny_loaded: LoadedModel) -> None:
    engine = Engine(tiny_loaded, EngineConfig(weights="fp32"))
    try:
        reference_ids = reference(tiny_loaded, HELLO, 20)
        engine.stop_token_ids = [reference_ids[2]]
        stopped = engine.generate(GenerationRequest(turns=HELLO, params=greedy(20)))
        assert stopped.finish_reason == "stop"
        assert stopped.completion_tokens == reference_ids.index(reference_ids[2]) + 1
        engine.stop_token_ids = []
        timed_out = engine.generate(GenerationRequest(turns=HELLO, params=greedy(100), time_limit_s=1e-9))
        assert timed_out.finish_reason == "timeout" and timed_out.completion_tokens < 100
    finally:
        engine.close()


@pytest.mark.django_db
def test_a_reply_waiting_for_a_slot_publishes_its_queue_position(
    owner: Any, make_engine: Callable[..., Engine], django_capture_on_commit_callbacks: Any, queued: list[int]
) -> None:
    from chat.lifecycle.run import reply_generate
    from tests.conftest import captured_events, submit

    engine = make_engine(max_batch=1)
    running = threading.Event()
    blocker, _ = in_thread(
        lambda: engine.generate(
            GenerationRequest(turns=HELLO, params=greedy(200)), on_text=lambda _: running.set()
        )
    )
    running.wait(10)
    posted = submit(owner, "Hello?", max_new_tokens=5, temperature=0)
    reply = posted.reply
    with (
        captured_events(reply.conversation_id) as events,
        django_capture_on_commit_callbacks(execute=True),
    ):
        reply_generate(reply_id=reply.pk, backend=engine, worker="test-worker")
    blocker.join()
    assert {"type": "message.queued", "message_id": reply.pk, "position": 1} in events
    kinds = [event["type"] for event in events]
    assert kinds.index("message.started") < kinds.index("message.queued") < kinds.index("message.done")


@pytest.mark.default_model
def test_the_default_model_answers_the_same_through_the_engine_alone_and_batched() -> None:
    from django.conf import settings

    from inference.backend import TransformersBackend

    loaded = load_model("", device="cpu", cache_dir=settings.MODEL_CACHE_DIR)
    plain = TransformersBackend(loaded)
    engine = Engine(loaded)
    try:
        question = [Turn("user", "What is the capital of France?")]
        params = GenerationParams(max_new_tokens=24, temperature=0)
        expected = plain.generate(GenerationRequest(turns=question, params=params))
        assert "Paris" in expected.text
        alone = engine.generate(GenerationRequest(turns=question, params=params))
        assert alone == expected
        other, _ = in_thread(
            lambda: engine.generate(
                GenerationRequest(turns=[Turn("user", "Write a poem about the sea.")], params=params)
            )
        )
        batched = engine.generate(GenerationRequest(turns=question, params=params))
        other.join()
        assert batched == expected
    finally:
        engine.close()


LONG = [Turn("user", "Please repeat these words back to me: " + " ".join(f"item{i}" for i in range(15)))]


def test_chunked_prefill_gives_greedy_tokens_equal_to_generate_while_other_rows_decode(
    make_engine: Callable[..., Engine], weights: str, same_math: LoadedModel
) -> None:
    engine = make_engine(max_batch=3, weights=weights, max_pass_tokens=8)
    long_ids = build_prompt(same_math.tokenizer, LONG, context_tokens=256, max_new_tokens=12).input_ids
    assert len(long_ids) > 6 * 8  # several chunks
    decoding = threading.Event()
    results: dict[str, Completion] = {}
    first, _ = in_thread(
        lambda: results.setdefault(
            "running",
            engine.generate(
                GenerationRequest(turns=PROMPTS[0], params=greedy(120)), on_text=lambda _: decoding.set()
            ),
        )
    )
    decoding.wait(10)
    steps_before = engine.stats.steps
    results["long"] = engine.generate(GenerationRequest(turns=LONG, params=greedy(12)))
    first.join()
    assert results["long"].text == reference_text(same_math, LONG, 12)
    assert results["running"].text == reference_text(same_math, PROMPTS[0], 120)
    assert engine.stats.prefill_chunks >= 1 + len(long_ids) // 8  # the running prompt's, then the long one's
    # The running reply kept decoding between the long prompt's chunks, not after them.
    assert engine.stats.steps_while_prefilling >= len(long_ids) // 8 - 1
    assert engine.stats.steps > steps_before


def test_a_long_prompt_alone_is_prefilled_in_bounded_passes_and_answers_as_generate(
    make_engine: Callable[..., Engine],
) -> None:
    engine = make_engine(max_pass_tokens=20)
    completion = engine.generate(GenerationRequest(turns=LONG, params=greedy(12)))
    assert completion.text == reference_text(engine.loaded, LONG, 12)
    assert engine.stats.prefill_chunks == -(-completion.prompt_tokens // 20)


def test_each_pass_keeps_within_the_budget_its_measured_costs_give(
    make_engine: Callable[..., Engine],
) -> None:
    # No whole-prompt bursts: this tiny model's prompts would all fit one pass, and none would be cut.
    engine = make_engine(max_batch=6, gap_ratio=1.5, burst_pass_s=0.001)
    plans: list[tuple[int, int, int]] = []  # (prompt tokens, budget, replies decoding) of each pass
    schedule = engine.scheduler.schedule

    def spy(now: float) -> Any:
        plan = schedule(now)
        if plan.prefill:
            plans.append((plan.prompt_tokens, plan.budget, len(plan.decode)))
        return plan

    engine.scheduler.schedule = spy  # type: ignore[method-assign]
    decoding = threading.Event()
    running, _ = in_thread(
        lambda: engine.generate(
            GenerationRequest(turns=HELLO, params=greedy(100)), on_text=lambda _: decoding.set()
        )
    )
    decoding.wait(10)
    threads = [
        in_thread(lambda turns=turns: engine.generate(GenerationRequest(turns=turns, params=greedy(3))))[0]
        for turns in [LONG, *PROMPTS]
    ]
    for thread in [*threads, running]:
        thread.join()
    alone, *beside = plans
    assert alone[2] == 0 and alone[0] > 16  # nobody decoding: the first prompt in one pass
    assert all(tokens <= budget for tokens, budget, _ in plans)
    # Beside a decoding reply, the budget is what half its pass's time buys: less than alone.
    assert any(rows and budget < alone[1] for _, budget, rows in beside)


def test_one_long_row_does_not_grow_the_kv_memory_of_the_others(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine(max_batch=2)
    per_token = engine.decoder.kv_bytes_per_token()
    tokenizer = engine.loaded.tokenizer
    short_ids = build_prompt(tokenizer, PROMPTS[3], context_tokens=256, max_new_tokens=60).input_ids
    long_ids = build_prompt(tokenizer, LONG, context_tokens=256, max_new_tokens=20).input_ids
    assert len(long_ids) > 3 * len(short_ids)
    snapshots: list[dict[int, int]] = []
    short_running = threading.Event()
    short, short_result = in_thread(
        lambda: engine.generate(
            GenerationRequest(turns=PROMPTS[3], params=greedy(60)),
            on_text=lambda _: (snapshots.append(engine.kv_row_bytes()), short_running.set()),
        )
    )
    short_running.wait(10)
    alone = snapshots[0]
    assert list(alone) == [0]
    # Sized to what the short reply can hold (its prompt and up to 60 new tokens), not to the context.
    assert alone[0] <= (len(short_ids) + 60) * per_token
    long_running: list[dict[int, int]] = []
    engine.generate(
        GenerationRequest(turns=LONG, params=greedy(20)),
        on_text=lambda _: long_running or long_running.append(engine.kv_row_bytes()),
    )
    short.join()
    assert short_result[0].completion_tokens == 60
    together = long_running[0]
    if 0 in together:  # the short reply was still running when the long one began
        assert together[0] == alone[0]
    assert (len(long_ids) + 1) * per_token <= together[1] <= (len(long_ids) + 20) * per_token
    assert all(snapshot.get(0, alone[0]) == alone[0] for snapshot in snapshots)
    # Finished rows hold nothing.
    assert engine.kv_row_bytes() == {}
    assert engine.metrics.kv_batch_bytes._value.get() == 0


def test_an_idle_engine_ends_its_thread_and_the_next_request_starts_one(
    make_engine: Callable[..., Engine], tiny_loaded: LoadedModel
) -> None:
    """An idle engine holds no thread (nor its OpenMP team, which would slow other
    engines' passes in the process); it answers the next request as before."""
    engine = make_engine()
    engine.IDLE_THREAD_S = 0.05
    expected = reference_text(tiny_loaded, HELLO, 6)

    assert engine.generate(GenerationRequest(turns=HELLO, params=greedy(6))).text == expected
    serving = engine._thread  # (None already, on a slow enough machine)
    assert engine.settle(timeout_s=10)  # returns once the idle thread has ended
    assert engine._thread is None and (serving is None or not serving.is_alive())
    assert engine.generate(GenerationRequest(turns=HELLO, params=greedy(6))).text == expected
