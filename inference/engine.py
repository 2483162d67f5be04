"""One model copy serving many conversations at once: the generation engine.

A worker's job threads call `Engine.generate()`, which blocks the calling
thread while one engine thread runs every admitted request through the model
together, one token per step (continuous batching). Requests join the batch
between steps as slots free up and leave it as soon as they finish, so a long
reply never holds a short one back.

Division of labour between the two kinds of thread:
- The engine thread owns the model, the KV cache and the batch. It never
  touches the database or the channel layer.
- A job thread builds the prompt, then relays what the engine reports (text,
  queue position, the final completion) to the request's callbacks, and polls
  `should_stop` (which may query the database) and tells the engine. So every
  callback runs on the job's own thread, as with the one-at-a-time backend.

Each request holds its own KV row (model.decoder.KVRow), sized to its tokens and
grown alone: a long prompt in one row costs the other rows nothing, and a
finished row's memory is freed (and handed back to the operating system).
A new prompt is prefilled in chunks of at most `prefill_chunk_tokens`
tokens, one chunk between two decode steps of the running batch, so running
replies keep streaming while a long prompt arrives. When a request carries a
`cache_key` (the conversation), its KV row is kept after it finishes, in an
LRU bounded by bytes, and the next turn prefills only what is new after the
longest common prefix.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from inference.backend import stop_token_ids_for
from inference.loading import LoadedModel
from inference.metrics import WorkerMetrics, worker_metrics
from inference.model.decoder import FastDecoder, KVRow, supports
from inference.model.memory import give_back_freed_memory
from inference.model.weights import INT4_GROUP
from inference.prompt import FALLBACK_STOP_STRINGS, build_prompt
from inference.registry import WEIGHT_CHOICES
from inference.types import Completion, FinishReason, GenerationRequest

logger = logging.getLogger(__name__)

# How the engine stores the projection weights: "fp16" (fp32 arithmetic on
# weights rounded to fp16: half the bytes per token, see Projection.store_half),
# "fp32" (the model's weights as loaded), "bf16" (bf16 weights and arithmetic,
# for a model loaded in bf16: a GPU's format, and the CUDA path's arithmetic
# on a CPU), "int4" (the layers' weights in 4 bits, on a CPU where fp16 is
# possible: see model.weights.quantize_int4; opt-in, since it changes answers more
# than fp16 does), or "auto": fp16 where the CPU has fbgemm's kernel and the
# model is fp32, else as loaded (a GPU model is already bf16/fp16). A model loaded
# with half_weights=True (the worker's default for auto, fp16 and int4) holds
# fp16 weights only, so its engine stores fp16 (or int4, if asked) whatever
# this says. The choices: registry.WEIGHT_CHOICES; see Engine._store_weights.
DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
# A KV row is allocated for its prompt plus this many tokens (rounded up to
# KV_ROUND), and doubled when a reply outgrows it, never beyond what the
# request can hold (prompt + max_new_tokens) or the context window.
KV_HEADROOM = 128
KV_ROUND = 64
# Freed KV rows are handed back to the operating system (malloc_trim) once
# this much has been freed, and whenever the engine falls idle.
TRIM_AFTER_FREED_BYTES = 64 * 1024 * 1024
# Prompt tokens prefilled in each decode step's pass while replies are running.
# Prefill is compute-bound (~1 ms a token of the default model on 2 cores,
# more as the prompt's own prefix grows), a step of 7 replies ~25 ms: 12
# tokens keep the replies' p99 gap at 2.2-2.3x their usual gap on a shared
# 2-core machine (16: 2.5-3.4x over five runs, 32: 3.3-5x). See docs/models/engine.md.
DEFAULT_PREFILL_CHUNK_TOKENS = 12
# With no reply decoding there is nobody to keep waiting, so a prompt is
# prefilled in passes of up to this many tokens (per token, a pass of 1,500
# costs ~0.75x one of 32): bounded so that activations stay small.
PREFILL_ALONE_TOKENS = 1024


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_threads() -> int:
    """torch threads for decode steps: every core but one, which is left to the
    job threads, the web process and Redis. Measured on a 2-core machine: one
    thread decodes as fast as two alone and much faster under that load."""
    return max(1, available_cores() - 1)


class EngineUnsupported(RuntimeError):
    """The model's architecture is not one the engine's forward pass implements."""


@dataclass
class _Cached:
    tokens: list[int]
    kv: KVRow  # holds at least len(tokens) positions

    @property
    def nbytes(self) -> int:
        return self.kv.nbytes


@dataclass
class _Job:
    request: GenerationRequest
    prompt_ids: list[int]
    dropped_turns: int
    stop_strings: list[str]
    events: queue.Queue[tuple[str, Any]] = field(default_factory=queue.Queue)
    cancel_requested: bool = False
    # Engine-thread state.
    slot: int = -1  # its row of the engine's seen-token matrix while admitted; -1 otherwise
    kv: KVRow | None = None
    length: int = 0  # tokens whose keys and values are in the KV row
    generated: list[int] = field(default_factory=list)
    text: str = ""  # decoded so far
    emitted: int = 0  # characters of `text` already handed out
    emitted_at: float = 0.0  # when text was last handed out
    prefix_offset: int = 0
    read_offset: int = 0
    deadline: float | None = None
    generator: torch.Generator | None = None
    position: int = 0  # last queue position reported
    reused_tokens: int = 0
    admitted_at: float = 0.0
    # For the metrics: time to first token counts from submission, queue wait included.
    submitted_at: float = field(default_factory=time.monotonic)
    last_token_at: float = 0.0

    @property
    def owner(self) -> str | None:
        return self.request.owner

    @property
    def last_token(self) -> int:
        return self.generated[-1]


@dataclass(frozen=True)
class EngineConfig:
    """How an engine is set up; the defaults are the deployment's and Engine's own.

    The worker builds one from its settings: nothing here reads Django settings.
    """

    max_batch: int = 8  # rows decoded together
    max_per_owner: int = 4  # rows one owner may hold at once (0 = no cap)
    prefix_cache_mb: int = 512  # KV cache kept for finished conversations
    weights: str = "auto"  # one of WEIGHT_CHOICES
    threads: int = 0  # torch threads for decode steps (0 = every core but one)
    prefill_threads: int = 0  # torch threads while prefilling (0 = every core)
    prefill_chunk_tokens: int = DEFAULT_PREFILL_CHUNK_TOKENS  # prompt tokens between decode steps


@dataclass
class EngineStats:
    """Counters for tests and the benchmark."""

    steps: int = 0
    prefilled_tokens: int = 0
    reused_tokens: int = 0
    max_batch_seen: int = 0
    max_prefill_rows: int = 0
    prefill_chunks: int = 0  # forward passes over prompt tokens
    steps_while_prefilling: int = 0  # decode steps run while a prompt was part-way prefilled


class Engine:
    """Implements the Backend protocol; see the module docstring."""

    def __init__(
        self,
        loaded: LoadedModel,
        *,
        max_batch: int = EngineConfig.max_batch,
        max_per_owner: int = EngineConfig.max_per_owner,
        prefix_cache_mb: int = EngineConfig.prefix_cache_mb,
        weights: str = EngineConfig.weights,
        poll_interval_s: float = 0.05,
        stream_interval_s: float = 0.05,
        threads: int = EngineConfig.threads,
        prefill_threads: int = EngineConfig.prefill_threads,
        prefill_chunk_tokens: int = EngineConfig.prefill_chunk_tokens,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        if not supports(loaded.model):
            raise EngineUnsupported(f"{type(loaded.model).__name__} is not supported by the engine")
        if weights not in WEIGHT_CHOICES:
            raise ValueError(f"weights={weights!r}: expected one of {', '.join(WEIGHT_CHOICES)}")
        self.loaded = loaded
        self.model_name = loaded.name
        self.max_batch = max_batch
        self.max_per_owner = max_per_owner or max_batch
        self.prefix_cache_bytes = prefix_cache_mb * 1024 * 1024
        self.poll_interval_s = poll_interval_s
        # Streamed text goes to a job thread at most this often (the first
        # piece at once): fewer wake-ups of job threads competing with the
        # engine thread for the interpreter.
        self.stream_interval_s = stream_interval_s
        self.threads = threads or default_threads()
        # Prefill is compute-bound and short, so it takes every core: measured
        # on 2 cores, 56 prompt tokens in 95-100 ms on two threads against
        # 155-160 ms on one, 1200 tokens in 1.9-2.1 s against 3.6-3.7 s.
        self.prefill_threads = prefill_threads or available_cores()
        if prefill_chunk_tokens < 1:
            raise ValueError(f"prefill_chunk_tokens={prefill_chunk_tokens}: expected at least 1")
        self.prefill_chunk_tokens = prefill_chunk_tokens
        self.stop_token_ids = stop_token_ids_for(loaded)
        self.stop_strings = list(FALLBACK_STOP_STRINGS) if loaded.uses_fallback_template else []
        self.decoder = FastDecoder(loaded.model, int4_group=INT4_GROUP if weights == "int4" else 0)
        # What the weights are stored as, for the log and the benchmark.
        self.weights = self._store_weights(weights, max_batch)
        give_back_freed_memory()  # what the packing's transients freed
        self.device = loaded.device
        self.stats = EngineStats()
        # Prometheus metrics (inference/metrics.py): by default the process's
        # own, which the worker publishes; a test may pass its own.
        self.metrics = metrics if metrics is not None else worker_metrics()

        vocab = self.decoder.embed.weight.shape[0]
        # Tokens each admitted request has seen (prompt and reply), by its slot: for the repetition penalty.
        self._seen = torch.zeros(max_batch, vocab, dtype=torch.bool, device=self.device)
        self._free_slots = list(range(max_batch - 1, -1, -1))
        self._active: list[_Job] = []  # decoding, one token a step
        self._prefilling: list[_Job] = []  # admitted, prompt not yet all in its KV row
        self._waiting: list[_Job] = []
        self._freed_bytes = 0  # KV bytes freed since memory was last handed back
        self._prefix: OrderedDict[str, _Cached] = OrderedDict()
        self._prefix_bytes = 0
        self._wake = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="generation-engine", daemon=True)
        self._thread.start()
        logger.info(
            "engine: batch up to %d, %d per owner, prefix cache %d MB, %s weights, "
            "%d torch threads (%d in prefill), prefill chunks of %d tokens",
            max_batch,
            self.max_per_owner,
            prefix_cache_mb,
            self.weights,
            self.threads,
            self.prefill_threads,
            self.prefill_chunk_tokens,
        )

    def _store_weights(self, weights: str, max_batch: int) -> str:
        """Store the projection weights as `weights` asks, where the model and the
        device allow it (see WEIGHT_CHOICES); returns what they are stored as."""
        decoder = self.decoder
        half = weights in ("auto", "fp16", "int4") and decoder.can_store_half()
        if decoder.half_stored:
            # Loaded in fp16 (load_model(half_weights=True)): there are no originals in another format.
            if weights in ("fp32", "bf16"):
                logger.warning(
                    "the model was loaded with fp16 weights; %s weights need a %s load", weights, weights
                )
            half = True
        elif weights in ("fp16", "int4") and not half:
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
        if weights == "int4":
            if decoder.store_int4_weights():
                return "int4"
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
        job = _Job(
            request=request,
            prompt_ids=prompt.input_ids,
            dropped_turns=prompt.dropped_turns,
            stop_strings=[*self.stop_strings, *params.stop],
        )
        with self._wake:
            if self._closing:
                raise RuntimeError("the engine is closed")
            self._waiting.append(job)
            self.metrics.queue_depth.set(len(self._waiting))
            self._wake.notify()
        should_stop = request.should_stop
        while True:
            try:
                kind, payload = job.events.get(timeout=self.poll_interval_s)
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
            if should_stop is not None and not job.cancel_requested and should_stop():
                job.cancel_requested = True  # read by the engine thread at its next step
                with self._wake:
                    self._wake.notify()

    def close(self) -> None:
        with self._wake:
            self._closing = True
            self._wake.notify()
        self._thread.join(timeout=30)

    def cached_conversations(self) -> list[str]:
        return list(self._prefix)

    def kv_row_bytes(self) -> dict[int, int]:
        """Allocated KV bytes of each admitted request's row, by the request's slot."""
        return {job.slot: job.kv.nbytes for job in [*self._active, *self._prefilling] if job.kv is not None}

    # --- The engine thread ----------------------------------------------------------

    def _run(self) -> None:
        # Intra-op threads are per calling thread (OpenMP, MKL): this sets the
        # engine thread's own, not the process's.
        torch.set_num_threads(self.threads)
        with torch.inference_mode():
            while True:
                with self._wake:
                    while not self._closing and not self._busy() and not self._waiting:
                        self._wake.wait()
                    if self._closing:
                        break
                    admitted = self._admit()
                try:
                    for job in admitted:
                        self._start(job)
                    self._pass()
                except Exception as exc:  # keep serving: fail the batch, not the worker
                    logger.exception("generation engine step failed")
                    self._fail_all(exc)
                if self._freed_bytes >= TRIM_AFTER_FREED_BYTES or (self._freed_bytes and not self._busy()):
                    give_back_freed_memory()
                    self._freed_bytes = 0
                self.metrics.batch_size.set(len(self._active) + len(self._prefilling))
                self.metrics.kv_prefix_bytes.set(self._prefix_bytes)
        self._fail_all(RuntimeError("the engine was closed"))

    def _busy(self) -> bool:
        return bool(self._active or self._prefilling)

    def _admit(self) -> list[_Job]:
        """Move waiting jobs into free slots, oldest first, within the per-owner cap."""
        admitted: list[_Job] = []
        running: dict[str | None, int] = {}
        for job in [*self._active, *self._prefilling]:
            running[job.owner] = running.get(job.owner, 0) + 1
        held = len(self._active) + len(self._prefilling)
        still_waiting: list[_Job] = []
        for job in self._waiting:
            if job.cancel_requested:
                self._finish(job, "cancelled")
                continue
            free = held + len(admitted) < self.max_batch
            under_cap = job.owner is None or running.get(job.owner, 0) < self.max_per_owner
            if free and under_cap:
                admitted.append(job)
                running[job.owner] = running.get(job.owner, 0) + 1
            else:
                still_waiting.append(job)
        self._waiting = still_waiting
        self.metrics.queue_depth.set(len(still_waiting))
        for position, job in enumerate(still_waiting, start=1):
            if job.position != position:
                job.position = position
                job.events.put(("queued", position))
        return admitted

    def _start(self, job: _Job) -> None:
        """Give an admitted job a slot and a KV row (with its cached prefix, if any) to prefill into."""
        job.admitted_at = time.monotonic()
        limit = job.request.time_limit_s
        job.deadline = job.admitted_at + limit if limit else None
        seed = job.request.params.seed
        if seed is not None:
            job.generator = torch.Generator(device=self.device).manual_seed(seed)
        job.slot = self._free_slots.pop()
        self._prefilling.append(job)
        reused = self._restore_prefix(job)
        if job.kv is None:
            job.kv = self.decoder.new_row(self._capacity_for(job, len(job.prompt_ids) + 1))
        if job.request.cache_key is not None:
            self.metrics.prefix_cache_lookups.inc()
            if reused:
                self.metrics.prefix_cache_hits.inc()
        job.length = job.reused_tokens = reused
        self.stats.reused_tokens += reused
        self.metrics.prefix_reused_tokens.inc(reused)
        self.stats.max_batch_seen = max(self.stats.max_batch_seen, len(self._active) + len(self._prefilling))
        self._record_kv_rows()

    def _capacity_for(self, job: _Job, needed: int, current: int = 0) -> int:
        """A KV row's capacity for `needed` positions: headroom or doubling, within what the job can hold."""
        most = min(len(job.prompt_ids) + job.request.params.max_new_tokens, self.loaded.context_tokens + 1)
        wanted = max(needed + KV_HEADROOM, 2 * current)
        wanted = -(-wanted // KV_ROUND) * KV_ROUND
        return max(needed, min(wanted, most))

    def _pass(self) -> None:
        """One forward pass: a decode step of every running reply, plus the next chunk of waiting prompts.

        The chunk holds at most prefill_chunk_tokens prompt tokens (up to
        PREFILL_ALONE_TOKENS when no reply is decoding), oldest prompt first;
        several short prompts may share it. Running replies and the chunk share
        one pass, so the weights are read once for both and a long prompt
        delays each running reply by one chunk's compute per token, not by its
        whole prefill. A prompt completed by the chunk samples its first token
        and decodes from the next pass on.
        """
        for job in list(self._prefilling):
            if job.cancel_requested:
                self._finish(job, "cancelled")
            elif job.deadline is not None and time.monotonic() >= job.deadline:
                self._finish(job, "timeout")
        decoding = list(self._active)
        grew = False
        for job in decoding:
            assert job.kv is not None
            if job.length >= job.kv.capacity:
                old = job.kv
                job.kv = self.decoder.grown(
                    old, self._capacity_for(job, job.length + 1, old.capacity), job.length
                )
                self._freed_bytes += old.nbytes
                grew = True
        budget = (
            self.prefill_chunk_tokens if decoding else max(self.prefill_chunk_tokens, PREFILL_ALONE_TOKENS)
        )
        pieces: list[tuple[_Job, int]] = []
        for job in self._prefilling:
            piece = min(len(job.prompt_ids) - job.length, budget)
            if piece < 1:
                break
            pieces.append((job, piece))
            budget -= piece
        if grew or pieces:
            self._record_kv_rows()
        if not decoding and not pieces:
            return
        tokens = [job.last_token for job in decoding]
        for job, piece in pieces:
            tokens += job.prompt_ids[job.length : job.length + piece]
        rows = [*decoding, *(job for job, _ in pieces)]
        completed = [job for job, piece in pieces if job.length + piece == len(job.prompt_ids)]
        logits_of = [*range(len(decoding)), *(rows.index(job) for job in completed)]
        if pieces:
            torch.set_num_threads(self.prefill_threads)
        try:
            logits = self.decoder(
                torch.tensor([tokens], device=self.device),
                [job.kv for job in rows if job.kv is not None],
                [job.length for job in rows],
                [1] * len(decoding) + [piece for _, piece in pieces],
                logits_of,
            )
        finally:
            if pieces:
                torch.set_num_threads(self.threads)
        if decoding:
            self.stats.steps += 1
            if pieces or self._prefilling:
                self.stats.steps_while_prefilling += 1
        for job in decoding:
            job.length += 1
        if pieces:
            self.stats.prefill_chunks += 1
            self.stats.max_prefill_rows = max(self.stats.max_prefill_rows, len(pieces))
        for job, piece in pieces:
            job.length += piece
            self.stats.prefilled_tokens += piece
            self.metrics.prefill_tokens.inc(piece)
        for job in completed:
            self._prefilling.remove(job)
            self._active.append(job)
            seen = self._seen[job.slot]
            seen.zero_()
            seen[torch.tensor(job.prompt_ids, device=self.device)] = True
        self.stats.max_batch_seen = max(self.stats.max_batch_seen, len(self._active) + len(self._prefilling))
        sampled = [*decoding, *completed]
        for job, token in zip(sampled, self._sample(sampled, logits), strict=True):
            self._accept(job, token)

    def _sample(self, jobs: list[_Job], logits: torch.Tensor) -> list[int]:
        penalties = [job.request.params.repetition_penalty for job in jobs]
        if any(p != 1.0 for p in penalties):
            # As transformers' RepetitionPenaltyLogitsProcessor, over prompt and reply tokens.
            penalty = torch.tensor(penalties, device=logits.device)[:, None]
            penalised = torch.where(logits < 0, logits * penalty, logits / penalty)
            slots = torch.tensor([job.slot for job in jobs], device=logits.device)
            logits = torch.where(self._seen[slots], penalised, logits)
        chosen = logits.argmax(dim=-1).tolist()
        for index, job in enumerate(jobs):
            params = job.request.params
            if params.greedy:
                continue
            row = logits[index] / params.temperature
            if params.top_p < 1.0:
                # As transformers' TopPLogitsWarper: drop the least likely tokens
                # whose total probability is at most 1 - top_p; keep at least one.
                ascending, order = torch.sort(row)
                cumulative = ascending.softmax(dim=-1).cumsum(dim=-1)
                remove = cumulative <= (1 - params.top_p)
                remove[-1] = False
                row = row.scatter(0, order[remove], float("-inf"))
            probs = row.softmax(dim=-1)
            chosen[index] = int(torch.multinomial(probs, 1, generator=job.generator).item())
        return chosen

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
        self._seen[job.slot, token] = True
        if token in self.stop_token_ids:
            self._finish(job, "stop")
            return
        if self._detokenize(job):
            return  # hit a stop string and finished
        if len(job.generated) >= job.request.params.max_new_tokens:
            self._finish(job, "length")
        elif job.cancel_requested:
            self._finish(job, "cancelled")
        elif job.deadline is not None and time.monotonic() >= job.deadline:
            self._finish(job, "timeout")

    def _detokenize(self, job: _Job) -> bool:
        """Extend job.text with the new token and stream what is safe; True if a stop string ended it.

        Incremental decoding as in text-generation-inference: decode a short
        window before and after the new token and take the difference, holding
        back while the text ends in an incomplete UTF-8 sequence.
        """
        decode = self.loaded.tokenizer.decode
        ids = job.generated
        before = decode(ids[job.prefix_offset : job.read_offset], skip_special_tokens=True)
        after = decode(ids[job.prefix_offset :], skip_special_tokens=True)
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return False
        delta = after[len(before) :]
        job.prefix_offset, job.read_offset = job.read_offset, len(ids)
        start = len(job.text)
        job.text += delta
        if job.stop_strings:
            longest = max(len(s) for s in job.stop_strings)
            window = max(0, start - longest + 1)
            hits = [job.text.find(s, window) for s in job.stop_strings]
            hits = [h for h in hits if h >= 0]
            if hits:
                self._finish(job, "stop", cut=min(hits))
                return True
        self._emit(job, len(job.text) - _held_back(job.text, job.stop_strings))
        return False

    def _emit(self, job: _Job, upto: int, *, now: bool = False) -> None:
        if upto > job.emitted:
            moment = time.monotonic()
            if not now and job.emitted and moment - job.emitted_at < self.stream_interval_s:
                return  # handed out with a later piece, or at the end
            job.events.put(("text", job.text[job.emitted : upto]))
            job.emitted = upto
            job.emitted_at = moment

    def _finish(self, job: _Job, reason: FinishReason, cut: int | None = None) -> None:
        if job.slot >= 0:
            self._release(job)
        self.metrics.replies.labels(finish_reason=reason).inc()
        text = job.text
        if reason != "stop" or cut is None:
            # The final text is the whole reply decoded at once, as the
            # one-at-a-time backend does; cut any stop string it contains.
            text = self.loaded.tokenizer.decode(job.generated, skip_special_tokens=True)
            cuts = [text.find(s) for s in job.stop_strings if s in text]
            cut = min(cuts) if cuts else None
        if cut is not None:
            text = text[:cut]
        if text.startswith(job.text[: job.emitted]):
            job.text = text
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
        """Take the job out of the batch, keeping its KV row if it has a cache key, else freeing it."""
        if job in self._active:
            self._active.remove(job)
        else:
            self._prefilling.remove(job)
        key = job.request.cache_key
        kv, job.kv = job.kv, None
        if kv is not None:
            if key is not None and job.length > 0:
                self._remember(key, job, kv)
            else:
                self._freed_bytes += kv.nbytes
        self._free_slots.append(job.slot)
        job.slot = -1
        self._record_kv_rows()

    def _record_kv_rows(self) -> None:
        self.metrics.kv_batch_bytes.set(sum(self.kv_row_bytes().values()))

    def _remember(self, key: str, job: _Job, kv: KVRow) -> None:
        length = job.length
        tokens = (job.prompt_ids + job.generated)[:length]
        if kv.capacity > length + max(KV_HEADROOM, length // 4):
            # Mostly unused room (a reply stopped early): keep a copy of what it holds.
            old = kv
            kv = self.decoder.grown(old, -(-length // KV_ROUND) * KV_ROUND, length)
            self._freed_bytes += old.nbytes
        entry = _Cached(tokens=tokens, kv=kv)
        self._forget(key)
        if entry.nbytes > self.prefix_cache_bytes:
            self._freed_bytes += entry.nbytes
            return
        self._prefix[key] = entry
        self._prefix_bytes += entry.nbytes
        while self._prefix_bytes > self.prefix_cache_bytes:
            self._forget(next(iter(self._prefix)))

    def _forget(self, key: str) -> _Cached | None:
        entry = self._prefix.pop(key, None)
        if entry is not None:
            self._prefix_bytes -= entry.nbytes
            self._freed_bytes += entry.nbytes  # unless the caller adopts it (see _restore_prefix)
        return entry

    def _restore_prefix(self, job: _Job) -> int:
        """Give the job the cached KV row of its conversation, if any; how many prompt tokens it holds.

        The cached row itself becomes the job's (positions past the common
        prefix are overwritten before anything reads them); it is copied only
        when it is too small for the prompt.
        """
        key = job.request.cache_key
        entry = self._forget(key) if key is not None else None
        if entry is None:
            return 0
        prompt = job.prompt_ids
        limit = min(len(entry.tokens), len(prompt) - 1)  # at least one token to prefill for logits
        common = 0
        while common < limit and entry.tokens[common] == prompt[common]:
            common += 1
        if not common:
            return 0
        self._freed_bytes -= entry.nbytes  # adopted, not freed
        if entry.kv.capacity >= len(prompt) + 1:
            job.kv = entry.kv
        else:
            job.kv = self.decoder.grown(entry.kv, self._capacity_for(job, len(prompt) + 1), common)
            self._freed_bytes += entry.nbytes
        return common

    def _fail_all(self, exc: Exception) -> None:
        with self._wake:
            jobs = self._active + self._prefilling + self._waiting
            self._active, self._prefilling, self._waiting = [], [], []
            self._free_slots = list(range(self.max_batch - 1, -1, -1))
            self.metrics.queue_depth.set(0)
            self.metrics.batch_size.set(0)
        for job in jobs:
            if job.kv is not None:
                self._freed_bytes += job.kv.nbytes
            job.slot = -1
            job.kv = None
            self.metrics.replies.labels(finish_reason="error").inc()
            job.events.put(("error", exc))


def _held_back(text: str, stop_strings: list[str]) -> int:
    """How many trailing characters might be the start of a stop string."""
    held = 0
    for stop in stop_strings:
        for size in range(min(len(stop) - 1, len(text)), held, -1):
            if text.endswith(stop[:size]):
                held = size
                break
    return held


def engine_from_config(loaded: LoadedModel, config: EngineConfig) -> Engine:
    return Engine(
        loaded,
        max_batch=config.max_batch,
        max_per_owner=config.max_per_owner,
        prefix_cache_mb=config.prefix_cache_mb,
        weights=config.weights,
        threads=config.threads,
        prefill_threads=config.prefill_threads,
        prefill_chunk_tokens=config.prefill_chunk_tokens,
    )
