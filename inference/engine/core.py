"""The engine: one model copy serving many conversations at once.

A worker's job threads call `Engine.generate()`, which blocks the calling
thread while one engine thread runs every admitted request through the model
together (continuous batching). Requests join between passes as slots free up
and leave as soon as they finish, so a long reply never holds a short one back.

Division of labour between the two kinds of thread:
- The engine thread owns the model, the KV rows, the prefix cache and the
  scheduler. Each pass it asks the scheduler (scheduler.py) what to run,
  runs it as one forward pass (decode rows and prompt chunks together, so the
  weights are read once for all), samples, and reports back. It never
  touches the database or the channel layer.
- A job thread builds the prompt, then relays what the engine reports (text,
  queue position, the final completion) to the request's callbacks, and polls
  `should_stop` (which may query the database). So every callback runs on the
  job's own thread, as with the one-at-a-time backend.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from inference.backend import stop_token_ids_for
from inference.engine.config import EngineConfig
from inference.engine.detokenizer import IncrementalText
from inference.engine.kv import KVRows, capacity_for
from inference.engine.prefix_cache import PrefixCache
from inference.engine.sampler import Sampler, SamplingRow
from inference.engine.scheduler import Request, Scheduler, SchedulerOutput
from inference.engine.threads import ThreadChoice
from inference.grammar import GrammarFailed, GrammarTokenizer, RowGrammar, constraint_of
from inference.loading import HALF_LOADED, LoadedModel
from inference.metrics import WorkerMetrics, worker_metrics
from inference.model.decoder import FastDecoder, KVRow, supports
from inference.model.memory import give_back_freed_memory
from inference.model.weights import INT4_GROUP
from inference.params import GenerationParams
from inference.prompt import FALLBACK_STOP_STRINGS, build_prompt
from inference.sizing import MEMORY_MARGIN_BYTES, available_memory, decodes_in_int4
from inference.types import Completion, FinishReason, GenerationRequest

logger = logging.getLogger(__name__)

DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_threads() -> int:
    """torch threads for decode passes where nothing is measured yet: every core
    but one, which is left to the job threads, the web process and Redis (the
    engine then measures every core too: see threads.py)."""
    return max(1, available_cores() - 1)


class EngineUnsupported(RuntimeError):
    """The model's architecture is not one the engine's forward pass implements."""


_ids = itertools.count(1)


@dataclass(eq=False)
class _Job:
    request: GenerationRequest
    prompt_ids: list[int]
    dropped_turns: int
    text: IncrementalText
    sched: Request
    grammar: RowGrammar | None = None  # a reply asked for JSON: its grammar state
    events: queue.Queue[tuple[str, Any]] = field(default_factory=queue.Queue)
    # Engine-thread state.
    slot: int = -1  # its row of the sampler's seen-token matrix while admitted; -1 otherwise
    kv: KVRow | None = None
    length: int = 0  # positions whose keys and values are in the KV row
    generated: list[int] = field(default_factory=list)
    emitted: int = 0  # characters of the text already handed out
    emitted_at: float = 0.0  # when text was last handed out
    generator: torch.Generator | None = None
    position: int = 0  # last queue position reported
    # For the metrics: time to first token counts from submission, queue wait included.
    submitted_at: float = field(default_factory=time.monotonic)
    last_token_at: float = 0.0

    def sampling(self) -> SamplingRow:
        return SamplingRow(
            slot=self.slot, params=self.request.params, generator=self.generator, grammar=self.grammar
        )


@dataclass
class EngineStats:
    """Counters for tests and the benchmark."""

    steps: int = 0  # passes with decoding replies
    prefilled_tokens: int = 0
    reused_tokens: int = 0
    max_batch_seen: int = 0
    max_prefill_rows: int = 0
    prefill_chunks: int = 0  # passes that carried prompt tokens
    steps_while_prefilling: int = 0  # decode passes run while a prompt was part-way prefilled
    largest_chunk: int = 0  # the most prompt tokens of one pass


class Engine:
    """Implements the Backend protocol; see the module docstring."""

    def __init__(
        self, loaded: LoadedModel, config: EngineConfig | None = None, *, metrics: WorkerMetrics | None = None
    ) -> None:
        config = config or EngineConfig()
        if not supports(loaded.model):
            raise EngineUnsupported(f"{type(loaded.model).__name__} is not supported by the engine")
        self.config = config
        self.loaded = loaded
        self.model_name = loaded.name
        self.threads = config.threads or default_threads()
        # Decode passes: the configured count, or whichever of every core but
        # one and every core the engine measures faster (see threads.py).
        self.thread_choice = ThreadChoice(
            (config.threads,) if config.threads else (self.threads, available_cores())
        )
        self._threads_now = 0  # what torch.set_num_threads was last given on the engine thread
        # Prefill is compute-bound, so it takes every core: measured on 2
        # cores, 56 prompt tokens in 95-100 ms on two threads against 155-160
        # ms on one, 1200 tokens in 1.9-2.1 s against 3.6-3.7 s.
        self.prefill_threads = config.prefill_threads or available_cores()
        self.stop_token_ids = stop_token_ids_for(loaded)
        self.stop_strings = list(FALLBACK_STOP_STRINGS) if loaded.uses_fallback_template else []
        # int4 only: a half-stored model's layers go straight to 4 bits, never packed for fp16.
        int4_group = INT4_GROUP if config.weights == "int4" else 0
        self.decoder = FastDecoder(loaded.model, int4_group=int4_group)
        # What the weights are stored as, for the log and the benchmark.
        self.weights = self._store_weights(config.weights, config.max_batch)
        give_back_freed_memory()  # what the packing's transients freed
        self.device = loaded.device
        self.stats = EngineStats()
        # Prometheus metrics (inference/metrics.py): by default the process's
        # own, which the worker publishes; a test may pass its own.
        self.metrics = metrics if metrics is not None else worker_metrics()
        self.scheduler = Scheduler(config)
        self.kv = KVRows(self.decoder)
        self.prefix_cache = PrefixCache(config.prefix_block_tokens, config.prefix_cache_mb * 1024 * 1024)
        self.sampler = Sampler(config.max_batch, self.decoder.lm_head.out_features, self.device)
        self._free_slots = list(range(config.max_batch - 1, -1, -1))
        self._grammar_tokenizer: GrammarTokenizer | None = None  # built for the first JSON reply
        self._grammar_lock = threading.Lock()
        self._jobs: dict[int, _Job] = {}  # by scheduler request id: every job the engine thread holds
        self._incoming: list[_Job] = []  # submitted, not yet handed to the scheduler
        self._wake = threading.Condition()
        self._closing = False
        # Started by the first request, ended after IDLE_THREAD_S with nothing to do.
        self._thread: threading.Thread | None = None
        logger.info(
            "engine: batch up to %d, %d per owner, prefix cache %d MB in blocks of %d tokens, %s weights, "
            "%d torch threads (%d in prefill), passes beside replies within %.1fx their own time",
            config.max_batch,
            config.owner_cap,
            config.prefix_cache_mb,
            config.prefix_block_tokens,
            self.weights,
            self.threads,
            self.prefill_threads,
            config.gap_ratio,
        )

    def _store_weights(self, weights: str, max_batch: int) -> str:
        """Store the projection weights as `weights` asks, where the model and the
        device allow it (see registry.WEIGHT_CHOICES); returns what they are stored as."""
        decoder = self.decoder
        half = weights in HALF_LOADED and decoder.can_store_half()
        if decoder.half_stored:
            # Loaded in fp16 (load_model(half_weights=True)): there are no originals in another format.
            if weights in ("fp32", "bf16"):
                logger.warning(
                    "the model was loaded with fp16 weights; %s weights need a %s load", weights, weights
                )
            half = True
        elif weights in ("fp16", "int4", "int4-decode") and not half:
            logger.warning(
                "%s weights need an fp32 or fp16 model on an x86-64 CPU; keeping them as loaded", weights
            )
        elif weights == "bf16" and decoder.dtype != torch.bfloat16:
            logger.warning(
                "bf16 weights need a model loaded in bf16 (the worker's ENGINE_WEIGHTS=bf16 does it)"
            )
        if not half:
            if max_batch > 1:
                decoder.pack_for_batches(max_batch)
            return DTYPE_NAMES.get(decoder.dtype, str(decoder.dtype))
        decoder.store_half_weights()
        if weights == "auto" and decodes_in_int4(weights, self.loaded.source_bits):
            # The file's own precision (a Q4 GGUF): 4 bits lose nothing it had. Where the
            # 4-bit copy does not fit beside the fp16 one, fp16 alone still serves.
            layers = decoder.projections()[:-1]  # the output layer stays fp16
            extra = sum(p.in_features * p.out_features for p in layers) * 5 // 8  # 4 bits + scales
            available = available_memory()
            if available is None or extra + MEMORY_MARGIN_BYTES < available:
                weights = "int4-decode"
            else:
                logger.warning("no memory for 4-bit decode weights beside the fp16 ones; keeping fp16")
        if weights in ("int4", "int4-decode"):
            if decoder.store_int4_weights(keep_fp16=weights == "int4-decode"):
                return weights
            logger.warning("no layer's shapes suit the int4 kernel; keeping fp16 weights")
        return "fp16"

    # --- The Backend protocol (job threads) -------------------------------------

    def generate(
        self, request: GenerationRequest, on_text: Callable[[str], None] | None = None
    ) -> Completion:
        params = request.params
        prompt = build_prompt(
            self.loaded.tokenizer,
            request.turns,
            context_tokens=self.loaded.context_tokens,
            max_new_tokens=params.max_new_tokens,
        )
        grammar = self._grammar(params) if params.constrained else None
        # A stop string could cut a JSON document short: a constrained reply ends with its document.
        stop_strings = [] if grammar is not None else [*self.stop_strings, *params.stop]
        job = _Job(
            request=request,
            prompt_ids=prompt.input_ids,
            dropped_turns=prompt.dropped_turns,
            text=IncrementalText(self.loaded.tokenizer, stop_strings),
            grammar=grammar,
            sched=Request(
                id=next(_ids),
                prompt_tokens=len(prompt.input_ids),
                owner=request.owner,
                time_limit_s=request.time_limit_s,
                arrived=time.monotonic(),
            ),
        )
        with self._wake:
            if self._closing:
                raise RuntimeError("the engine is closed")
            self._incoming.append(job)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="generation-engine", daemon=True)
                self._thread.start()
            self._wake.notify()
        should_stop = request.should_stop
        while True:
            try:
                kind, payload = job.events.get(timeout=self.config.poll_interval_s)
            except queue.Empty:
                kind, payload = "", None
            if kind == "text" and on_text is not None:
                on_text(payload)
            elif kind == "queued" and request.on_queued is not None:
                request.on_queued(payload)
            elif kind == "done":
                assert isinstance(payload, Completion)
                return payload
            elif kind == "error":
                raise payload
            if should_stop is not None and not job.sched.cancelled and should_stop():
                job.sched.cancelled = True  # read by the scheduler at the next pass
                with self._wake:
                    self._wake.notify()

    def _grammar(self, params: GenerationParams) -> RowGrammar:
        """A reply's grammar state, on its job thread (building one drops the GIL)."""
        with self._grammar_lock:
            if self._grammar_tokenizer is None:
                self._grammar_tokenizer = GrammarTokenizer(
                    self.loaded.tokenizer,
                    vocab_size=self.decoder.lm_head.out_features,
                    end_tokens=self.stop_token_ids,
                )
        return self._grammar_tokenizer.row(constraint_of(params))

    def close(self) -> None:
        with self._wake:
            self._closing = True
            self._wake.notify()
            thread = self._thread
        if thread is not None:  # it fails what it still holds, then ends
            thread.join(timeout=30)

    def settle(self, timeout_s: float = 30.0) -> bool:
        """Wait until the engine, idle, has ended its thread and with it the
        thread's OpenMP team (see IDLE_THREAD_S); True once it has. For a
        process that measures several engines in turn: two live teams slow
        each other's passes (threads.on_a_thread_of_its_own)."""
        with self._wake:
            thread = self._thread
        if thread is not None:
            thread.join(timeout=timeout_s)
            return not thread.is_alive()
        return True

    def kv_row_bytes(self) -> dict[int, int]:
        """Allocated KV bytes of each admitted request's row, by the request's slot."""
        return {job.slot: job.kv.nbytes for job in list(self._jobs.values()) if job.kv is not None}

    # --- The engine thread ----------------------------------------------------------

    # An engine with nothing to do for this long ends its thread, and with it the
    # thread's OpenMP team (see threads.on_a_thread_of_its_own): an idle engine
    # must not slow another one's passes in the same process (a benchmark's, a
    # test's). The next request starts a new thread.
    IDLE_THREAD_S = 2.0

    def _run(self) -> None:
        # Intra-op threads are per calling thread (OpenMP, MKL): this sets this
        # thread's own, not the process's.
        self._threads_now = 0
        self._use_threads(self.threads)
        with torch.inference_mode():
            while True:
                with self._wake:
                    while not self._closing and not self.scheduler.has_work() and not self._incoming:
                        if not self._wake.wait(timeout=self.IDLE_THREAD_S) and not (
                            self.scheduler.has_work() or self._incoming
                        ):
                            self._thread = None  # the next request starts another
                            return
                    if self._closing:
                        break
                    incoming, self._incoming = self._incoming, []
                for job in incoming:
                    self._jobs[job.sched.id] = job
                    self.scheduler.add(job.sched)
                try:
                    self._pass()
                except Exception as exc:  # keep serving: fail the batch, not the worker
                    logger.exception("generation engine pass failed")
                    self._fail_all(exc)
                self.kv.trim(idle=not self.scheduler.running)
                self._record_gauges()
        self._fail_all(RuntimeError("the engine was closed"))

    def _pass(self) -> None:
        """Admit, plan, run one forward pass of the plan, sample, and report back."""
        scheduler = self.scheduler
        admission = scheduler.admit(time.monotonic())
        for request, reason in admission.ended:
            self._finish(self._jobs[request.id], reason)
        for request in admission.admitted:
            self._start(self._jobs[request.id])
        for position, request in enumerate(admission.waiting, start=1):
            job = self._jobs[request.id]
            if job.position != position:
                job.position = position
                job.events.put(("queued", position))
        plan = scheduler.schedule(time.monotonic())
        if plan.empty:
            return
        sampled = [*plan.decode, *plan.completing]  # before update(), which advances the prompts
        threads = self.prefill_threads if plan.prefill else self.thread_choice.threads(len(plan.decode))
        self._use_threads(threads)
        started = time.perf_counter()
        tokens = self._execute(plan)
        seconds = time.perf_counter() - started
        scheduler.update(plan, seconds)
        if not plan.prefill:
            self.thread_choice.observe(threads, len(plan.decode), seconds)
        self._count(plan)
        for request, token in zip(sampled, tokens, strict=True):
            self._accept(self._jobs[request.id], token)

    def _execute(self, plan: SchedulerOutput) -> list[int]:
        """The plan's forward pass and the sampled tokens of its decode rows and completed prompts."""
        decoding = [self._jobs[request.id] for request in plan.decode]
        pieces = [(self._jobs[request.id], count) for request, count in plan.prefill]
        for job in decoding:
            assert job.kv is not None
            if job.length >= job.kv.capacity:
                capacity = self._capacity(job, job.length + 1, job.kv.capacity)
                job.kv = self.kv.grown(job.kv, capacity, job.length)
        tokens = [job.generated[-1] for job in decoding]
        for job, count in pieces:
            tokens += job.prompt_ids[job.length : job.length + count]
        rows = [*decoding, *(job for job, _ in pieces)]
        logits_of = list(range(len(decoding)))  # every decode row's, then each completed prompt's
        completed: list[_Job] = []
        for index, (job, count) in enumerate(pieces, start=len(decoding)):
            if job.length + count == len(job.prompt_ids):
                logits_of.append(index)
                completed.append(job)
        logits = self.decoder(
            torch.tensor([tokens], device=self.device),
            [job.kv for job in rows if job.kv is not None],
            [job.length for job in rows],
            [1] * len(decoding) + [count for _, count in pieces],
            logits_of,
            decoding=len(decoding),
        )
        for job in decoding:
            job.length += 1
        for job, count in pieces:
            job.length += count
        for job in completed:
            self.sampler.start(job.slot, job.prompt_ids)
        sampled = [*decoding, *completed]
        return self.sampler.sample(logits, [job.sampling() for job in sampled]) if sampled else []

    def _use_threads(self, threads: int) -> None:
        if threads != self._threads_now:
            torch.set_num_threads(threads)
            self._threads_now = threads

    def _count(self, plan: SchedulerOutput) -> None:
        stats = self.stats
        if plan.decode:
            stats.steps += 1
            if plan.prefill or self.scheduler.prefilling:
                stats.steps_while_prefilling += 1
        if plan.prefill:
            stats.prefill_chunks += 1
            stats.max_prefill_rows = max(stats.max_prefill_rows, len(plan.prefill))
            stats.largest_chunk = max(stats.largest_chunk, plan.prompt_tokens)
            stats.prefilled_tokens += plan.prompt_tokens
            self.metrics.prefill_tokens.inc(plan.prompt_tokens)
        stats.max_batch_seen = max(stats.max_batch_seen, len(self.scheduler.running))

    def _start(self, job: _Job) -> None:
        """Give an admitted job a slot and a KV row, with its prompt's cached blocks copied in."""
        seed = job.request.params.seed
        if seed is not None:
            job.generator = torch.Generator(device=self.device).manual_seed(seed)
        job.slot = self._free_slots.pop()
        prompt = job.prompt_ids
        job.kv = self.kv.new(self._capacity(job, len(prompt) + 1))
        # At least one prompt token is left to prefill: its logits give the first token.
        blocks = self.prefix_cache.match(prompt, len(prompt) - 1)
        reused = self.prefix_cache.copy_into(blocks, job.kv)
        self.scheduler.started(job.sched, reused)
        job.length = reused
        self.metrics.prefix_cache_lookups.inc()
        if reused:
            self.metrics.prefix_cache_hits.inc()
        self.stats.reused_tokens += reused
        self.metrics.prefix_reused_tokens.inc(reused)

    def _capacity(self, job: _Job, needed: int, current: int = 0) -> int:
        most = min(len(job.prompt_ids) + job.request.params.max_new_tokens, self.loaded.context_tokens + 1)
        return capacity_for(needed, most, current)

    def _accept(self, job: _Job, token: int) -> None:
        job.generated.append(token)
        now = time.monotonic()
        metrics = self.metrics
        metrics.generated_tokens.inc()
        if len(job.generated) == 1:
            metrics.time_to_first_token.observe(now - job.submitted_at)
        else:
            metrics.inter_token_latency.observe(now - job.last_token_at)
        job.last_token_at = now
        self.sampler.saw(job.slot, token)
        if token in self.stop_token_ids:
            self._finish(job, "stop")
            return
        grammar = job.grammar
        if grammar is not None:
            grammar.accept(token)
            if grammar.broken:
                self._fail(job, GrammarFailed(grammar.error))
                return
        stopped_at = job.text.add(token)
        if stopped_at is not None or (grammar is not None and grammar.finished):
            self._finish(job, "stop", stopped_at)
            return
        self._emit(job, job.text.safe_length())
        if len(job.generated) >= job.request.params.max_new_tokens:
            self._finish(job, "length")

    def _emit(self, job: _Job, upto: int, *, now: bool = False) -> None:
        if upto > job.emitted:
            moment = time.monotonic()
            interval = self.config.stream_interval(len(self.scheduler.running))
            if not now and job.emitted and moment - job.emitted_at < interval:
                return  # handed out with a later piece, or at the end
            job.events.put(("text", job.text.text[job.emitted : upto]))
            job.emitted = upto
            job.emitted_at = moment

    def _fail(self, job: _Job, exc: Exception) -> None:
        """End one job with an error its caller raises (the others go on)."""
        self.scheduler.finish(job.sched)
        self._release(job)
        self.metrics.replies.labels(finish_reason="error").inc()
        job.events.put(("error", exc))

    def _finish(self, job: _Job, reason: FinishReason, stopped_at: int | None = None) -> None:
        self.scheduler.finish(job.sched)
        self._release(job)
        self.metrics.replies.labels(finish_reason=reason).inc()
        text = job.text.final(stopped_at)
        if text.startswith(job.text.text[: job.emitted]):
            job.text.text = text
            self._emit(job, len(text), now=True)
        job.events.put(
            (
                "done",
                Completion(
                    text=text.strip(),
                    prompt_tokens=len(job.prompt_ids),
                    completion_tokens=len(job.generated),
                    finish_reason=reason,
                    dropped_turns=job.dropped_turns,
                ),
            )
        )

    def _release(self, job: _Job) -> None:
        """Give back the job's slot; its KV row's whole blocks go to the prefix cache."""
        kv, job.kv = job.kv, None
        if kv is not None:
            self.prefix_cache.store([*job.prompt_ids, *job.generated], kv, job.length)
            self.kv.free(kv)
        if job.slot >= 0:
            self._free_slots.append(job.slot)
            job.slot = -1
        self._jobs.pop(job.sched.id, None)
        self._record_gauges()  # before the job's caller hears it is done

    def _record_gauges(self) -> None:
        metrics = self.metrics
        metrics.queue_depth.set(len(self.scheduler.waiting))
        metrics.batch_size.set(len(self.scheduler.running))
        metrics.kv_batch_bytes.set(sum(self.kv_row_bytes().values()))
        metrics.kv_prefix_bytes.set(self.prefix_cache.nbytes)

    def _fail_all(self, exc: Exception) -> None:
        with self._wake:
            incoming, self._incoming = self._incoming, []
        jobs = [*(self._jobs[request.id] for request in self.scheduler.finish_all()), *incoming]
        self._jobs.clear()
        for job in jobs:
            if job.kv is not None:
                self.kv.free(job.kv)
                job.kv = None
            if job.slot >= 0:
                self._free_slots.append(job.slot)
                job.slot = -1
            self.metrics.replies.labels(finish_reason="error").inc()
            job.events.put(("error", exc))
        self._record_gauges()
