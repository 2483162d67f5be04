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

Each row of the batch has its own KV cache row: a new request is prefilled
alone into a free row, and the decode step attends over each row's own
length with a padding mask. When a request carries a `cache_key` (the
conversation), its KV cache is kept after it finishes, in an LRU bounded by
bytes, and the next turn prefills only what is new after the longest common
prefix.
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
from inference.fastpath import FastDecoder, KVBuffer, give_back_freed_memory, supports
from inference.loading import LoadedModel
from inference.metrics import WorkerMetrics, worker_metrics
from inference.prompt import FALLBACK_STOP_STRINGS, build_prompt
from inference.types import Completion, FinishReason, GenerationRequest

logger = logging.getLogger(__name__)

# How the engine stores the projection weights: "fp16" (fp32 arithmetic on
# weights rounded to fp16: half the bytes per token, see Projection.store_half),
# "fp32" (the model's weights as loaded), or "auto": fp16 where the CPU has
# fbgemm's kernel and the model is fp32, else as loaded (a GPU model is
# already bf16/fp16). A model loaded with half_weights=True (the worker's
# default) holds fp16 weights only, so its engine stores fp16 whatever this says.
WEIGHT_CHOICES = ("auto", "fp16", "fp32")
DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
INITIAL_CAPACITY = 256  # tokens per KV row; doubled on demand up to the context window
# A grown KV buffer is kept while replies keep coming (regrowing it for every
# turn of a long conversation cost ~90 ms of time to first token) and given
# back after this long with nothing to do.
SHRINK_AFTER_IDLE_S = 30.0


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
    keys: torch.Tensor  # [layers, kv_heads, tokens, head_dim]
    values: torch.Tensor

    @property
    def nbytes(self) -> int:
        return 2 * self.keys.numel() * self.keys.element_size()


@dataclass
class _Job:
    request: GenerationRequest
    prompt_ids: list[int]
    dropped_turns: int
    stop_strings: list[str]
    events: queue.Queue[tuple[str, Any]] = field(default_factory=queue.Queue)
    cancel_requested: bool = False
    # Engine-thread state.
    row: int = -1
    length: int = 0  # tokens whose keys and values are in the cache row
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


@dataclass
class EngineStats:
    """Counters for tests and the benchmark."""

    steps: int = 0
    prefilled_tokens: int = 0
    reused_tokens: int = 0
    max_batch_seen: int = 0
    max_prefill_rows: int = 0


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
        self.stop_token_ids = stop_token_ids_for(loaded)
        self.stop_strings = list(FALLBACK_STOP_STRINGS) if loaded.uses_fallback_template else []
        self.decoder = FastDecoder(loaded.model)
        half = weights != "fp32" and self.decoder.can_store_half()
        if self.decoder.half_stored:
            # Loaded in fp16 (load_model(half_weights=True)): there are no fp32 originals to use.
            if weights == "fp32":
                logger.warning("the model was loaded with fp16 weights; fp32 weights need an fp32 load")
            half = True
        elif weights == "fp16" and not half:
            logger.warning("fp16 weights need an fp32 model on an x86-64 CPU; keeping the weights as loaded")
        if half:
            self.decoder.store_half_weights()
        elif max_batch > 1:
            self.decoder.pack_for_batches(max_batch)
        give_back_freed_memory()  # what the packing's transients freed
        # What the weights are stored as, for the log and the benchmark.
        self.weights = "fp16" if half else DTYPE_NAMES.get(self.decoder.dtype, str(self.decoder.dtype))
        self.device = loaded.device
        self.stats = EngineStats()
        # Prometheus metrics (inference/metrics.py): by default the process's
        # own, which the worker publishes; a test may pass its own.
        self.metrics = metrics if metrics is not None else worker_metrics()

        self._cache: KVBuffer = self.decoder.new_buffer(max_batch, INITIAL_CAPACITY)
        self._record_kv_buffer()
        vocab = self.decoder.embed.weight.shape[0]
        self._seen = torch.zeros(max_batch, vocab, dtype=torch.bool, device=self.device)
        self._active: list[_Job] = []
        self._waiting: list[_Job] = []
        self._prefix: OrderedDict[str, _Cached] = OrderedDict()
        self._prefix_bytes = 0
        self._wake = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="generation-engine", daemon=True)
        self._thread.start()
        logger.info(
            "engine: batch up to %d, %d per owner, prefix cache %d MB, %s weights, "
            "%d torch threads (%d in prefill)",
            max_batch,
            self.max_per_owner,
            prefix_cache_mb,
            self.weights,
            self.threads,
            self.prefill_threads,
        )

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

    # --- The engine thread ----------------------------------------------------------

    def _run(self) -> None:
        # Intra-op threads are per calling thread (OpenMP, MKL): this sets the
        # engine thread's own, not the process's.
        torch.set_num_threads(self.threads)
        with torch.inference_mode():
            while True:
                with self._wake:
                    while not self._closing and not self._active and not self._waiting:
                        if not self._wake.wait(timeout=SHRINK_AFTER_IDLE_S):
                            self._shrink()
                    if self._closing:
                        break
                    admitted = self._admit()
                try:
                    if admitted:
                        torch.set_num_threads(self.prefill_threads)
                        try:
                            self._prefill(admitted)
                        finally:
                            torch.set_num_threads(self.threads)
                    if self._active:
                        self._step()
                except Exception as exc:  # keep serving: fail the batch, not the worker
                    logger.exception("generation engine step failed")
                    self._fail_all(exc)
                self.metrics.batch_size.set(len(self._active))
                self.metrics.kv_prefix_bytes.set(self._prefix_bytes)
        self._fail_all(RuntimeError("the engine was closed"))

    def _admit(self) -> list[_Job]:
        """Move waiting jobs into free rows, oldest first, within the per-owner cap."""
        admitted: list[_Job] = []
        running: dict[str | None, int] = {}
        for job in self._active:
            running[job.owner] = running.get(job.owner, 0) + 1
        still_waiting: list[_Job] = []
        for job in self._waiting:
            if job.cancel_requested:
                self._finish(job, "cancelled")
                continue
            free = len(self._active) + len(admitted) < self.max_batch
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

    def _prefill(self, jobs: list[_Job]) -> None:
        """Prefill newly admitted jobs together, in one forward pass over rows padded to one length.

        They take consecutive free rows. A padded query sits at its row's
        prompt length (clamped): it writes keys and values only where the
        row's first decode step writes next, and no real query attends there.
        """
        rows = []
        for job in jobs:
            job.admitted_at = time.monotonic()
            limit = job.request.time_limit_s
            job.deadline = job.admitted_at + limit if limit else None
            seed = job.request.params.seed
            if seed is not None:
                job.generator = torch.Generator(device=self.device).manual_seed(seed)
            job.row = len(self._active)
            self._active.append(job)
            self._ensure_capacity(len(job.prompt_ids) + 1)
            reused = self._restore_prefix(job)
            if job.request.cache_key is not None:
                self.metrics.prefix_cache_lookups.inc()
                if reused:
                    self.metrics.prefix_cache_hits.inc()
            rows.append((job, reused, job.prompt_ids[reused:]))
        self.stats.max_batch_seen = max(self.stats.max_batch_seen, len(self._active))
        self.stats.max_prefill_rows = max(self.stats.max_prefill_rows, len(jobs))
        steps = max(len(new) for _, _, new in rows)
        attend = max(len(job.prompt_ids) for job in jobs)
        tokens = torch.tensor([new + [0] * (steps - len(new)) for _, _, new in rows], device=self.device)
        offsets = torch.arange(steps, device=self.device)[None]
        starts = torch.tensor([reused for _, reused, _ in rows], device=self.device)[:, None]
        totals = torch.tensor([len(job.prompt_ids) for job in jobs], device=self.device)[:, None]
        positions = torch.minimum(starts + offsets, totals)
        mask = None
        if len(jobs) > 1 or rows[0][1]:
            # Each query sees its row's reused prefix and, causally, the new tokens before it.
            columns = torch.arange(attend, device=self.device)
            mask = (columns[None, None, :] <= positions[:, :, None])[:, None]
        last = torch.tensor([len(new) - 1 for _, _, new in rows], device=self.device)
        logits = self.decoder(tokens, positions, self._cache, jobs[0].row, attend, mask, last)
        for job, reused, new in rows:
            job.length = len(job.prompt_ids)
            job.reused_tokens = reused
            self.stats.prefilled_tokens += len(new)
            self.stats.reused_tokens += reused
            self.metrics.prefill_tokens.inc(len(new))
            self.metrics.prefix_reused_tokens.inc(reused)
            seen = self._seen[job.row]
            seen.zero_()
            seen[torch.tensor(job.prompt_ids, device=self.device)] = True
        for job, token in zip(jobs, self._sample(jobs, logits), strict=True):
            self._accept(job, token)

    def _step(self) -> None:
        jobs = self._active
        rows = len(jobs)
        lengths = [job.length for job in jobs]
        attend = max(lengths) + 1
        self._ensure_capacity(attend)
        tokens = torch.tensor([[job.last_token] for job in jobs], device=self.device)
        positions = torch.tensor(lengths, device=self.device)[:, None]
        mask = None
        if rows > 1 and min(lengths) + 1 < attend:
            columns = torch.arange(attend, device=self.device)
            mask = (columns[None, :] <= positions)[:, None, None, :]
        logits = self.decoder(tokens, positions, self._cache, 0, attend, mask)
        self.stats.steps += 1
        for job in jobs:
            job.length += 1
        for job, token in zip(list(jobs), self._sample(jobs, logits), strict=True):
            self._accept(job, token)

    def _sample(self, jobs: list[_Job], logits: torch.Tensor) -> list[int]:
        rows = len(jobs)
        first = jobs[0].row
        penalties = [job.request.params.repetition_penalty for job in jobs]
        if any(p != 1.0 for p in penalties):
            # As transformers' RepetitionPenaltyLogitsProcessor, over prompt and reply tokens.
            penalty = torch.tensor(penalties, device=logits.device)[:, None]
            penalised = torch.where(logits < 0, logits * penalty, logits / penalty)
            logits = torch.where(self._seen[first : first + rows], penalised, logits)
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
        self._seen[job.row, token] = True
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
        if job.row >= 0:
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
        """Take the job's row out of the batch, keeping its KV cache if it has a cache key."""
        row = job.row
        key = job.request.cache_key
        if key is not None and job.length > 0:
            self._remember(key, job, row)
        last = len(self._active) - 1
        mover = self._active[last]
        if mover is not job:
            # Compact: the last row takes the freed place, so the batch is rows 0..n-1.
            span = mover.length
            for keys, values in zip(self._cache.keys, self._cache.values, strict=True):
                keys[row, :, :span] = keys[last, :, :span]
                values[row, :, :span] = values[last, :, :span]
            self._seen[row] = self._seen[last]
            self._active[row] = mover
            mover.row = row
        self._active.pop()
        job.row = -1

    def _shrink(self) -> None:
        """Give a grown KV buffer's memory back (called when the engine has been idle a while)."""
        if not self._active and self._cache.capacity > INITIAL_CAPACITY:
            self._cache = self.decoder.new_buffer(self.max_batch, INITIAL_CAPACITY)
            self._record_kv_buffer()

    def _record_kv_buffer(self) -> None:
        buffer = self._cache
        self.metrics.kv_batch_bytes.set(
            sum(t.numel() * t.element_size() for t in (*buffer.keys, *buffer.values))
        )

    def _remember(self, key: str, job: _Job, row: int) -> None:
        length = job.length
        tokens = (job.prompt_ids + job.generated)[:length]
        entry = _Cached(
            tokens=tokens,
            keys=torch.stack([k[row, :, :length] for k in self._cache.keys]),
            values=torch.stack([v[row, :, :length] for v in self._cache.values]),
        )
        self._forget(key)
        if entry.nbytes > self.prefix_cache_bytes:
            return
        self._prefix[key] = entry
        self._prefix_bytes += entry.nbytes
        while self._prefix_bytes > self.prefix_cache_bytes:
            self._forget(next(iter(self._prefix)))

    def _forget(self, key: str) -> _Cached | None:
        entry = self._prefix.pop(key, None)
        if entry is not None:
            self._prefix_bytes -= entry.nbytes
        return entry

    def _restore_prefix(self, job: _Job) -> int:
        """Copy the longest reusable cached prefix into the job's row; its length."""
        key = job.request.cache_key
        entry = self._forget(key) if key is not None else None
        if entry is None:
            return 0
        prompt = job.prompt_ids
        limit = min(len(entry.tokens), len(prompt) - 1)  # at least one token to prefill for logits
        common = 0
        while common < limit and entry.tokens[common] == prompt[common]:
            common += 1
        if common:
            for index, (keys, values) in enumerate(zip(self._cache.keys, self._cache.values, strict=True)):
                keys[job.row, :, :common] = entry.keys[index, :, :common]
                values[job.row, :, :common] = entry.values[index, :, :common]
        return common

    def _ensure_capacity(self, needed: int) -> None:
        capacity = self._cache.capacity
        if needed <= capacity:
            return
        new_capacity = capacity
        while new_capacity < needed:
            new_capacity *= 2
        new_capacity = max(needed, min(new_capacity, self.loaded.context_tokens + 1))
        grown = self.decoder.new_buffer(self.max_batch, new_capacity)
        for old, new in zip(self._cache.keys + self._cache.values, grown.keys + grown.values, strict=True):
            new[:, :, :capacity] = old
        self._cache = grown
        self._record_kv_buffer()

    def _fail_all(self, exc: Exception) -> None:
        with self._wake:
            jobs = self._active + self._waiting
            self._active, self._waiting = [], []
            self.metrics.queue_depth.set(0)
            self.metrics.batch_size.set(0)
        for job in jobs:
            job.row = -1
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
    )
