"""Voice jobs within their limits: one at a time per user, VOICE_JOBS_PER_MINUTE each.

Both limits are kept in Redis, so they hold across web processes; the pool's
own bounds (inference/speech_pool.py) are per process: 503 when its workers
and backlog are full, 504 for a job past VOICE_JOB_TIMEOUT_S.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any, cast

import redis
import redis.asyncio
from django.conf import settings
from django.contrib.auth.models import User

from inference import speech_pool
from inference.speech_pool import JobFailed, JobTimedOut, PoolBusy, SpeechPool

# A hint for clients refused because something is busy: about how long a dictation takes.
BUSY_RETRY_AFTER_S = 5
LOCK_KEY = "sanjai:voice:job:{user_id}"
RATE_KEY = "sanjai:voice:rate:{user_id}"

# One script, so that two requests of one user (to two web processes, say)
# cannot both pass. The rate is a token bucket, as for replies
# (chat.services.limits.take_rate_token): a refused request uses none of it.
# KEYS: the user's job lock, the user's bucket. ARGV: a token for the lock,
# the lock's life in ms, jobs per minute (0: no limit).
ADMIT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return {'busy', 0} end
local per_minute = tonumber(ARGV[3])
if per_minute > 0 then
  local clock = redis.call('TIME')
  local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
  local bucket = redis.call('HMGET', KEYS[2], 'allowance', 'at')
  local allowance = tonumber(bucket[1]) or per_minute
  if bucket[2] then
    allowance = math.min(per_minute, allowance + (now - tonumber(bucket[2])) * per_minute / 60)
  end
  if allowance < 1 then return {'rate', math.ceil((1 - allowance) * 60 / per_minute)} end
  redis.call('HSET', KEYS[2], 'allowance', tostring(allowance - 1), 'at', tostring(now))
  redis.call('EXPIRE', KEYS[2], 120)
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {'ok', 0}
"""
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class VoiceRefused(Exception):
    """A voice job refused or stopped; the message says why and what to do."""

    def __init__(self, message: str, *, status: int, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after_s = retry_after_s


def voice_pool() -> SpeechPool:
    return speech_pool.shared(workers=settings.VOICE_WORKERS, backlog=settings.VOICE_BACKLOG)


@asynccontextmanager
async def voice_job(user: User, *, doing: str) -> AsyncIterator[SpeechPool]:
    """The pool, for one job of `user`'s, once the per-user limits allow it; VoiceRefused if not."""
    pool = voice_pool()
    timeout_s = settings.VOICE_JOB_TIMEOUT_S
    per_minute = settings.VOICE_JOBS_PER_MINUTE
    # A job may wait behind the backlog, then run for its timeout (reading
    # aloud: plus its grace): the lock outlives that and is released as soon as
    # the job ends. It expires by itself only after a web process died holding it.
    waits = math.ceil((pool.capacity - pool.workers) / pool.workers)
    lock_ms = int(((waits + 1) * (timeout_s + speech_pool.SPEAK_GRACE_S) + 10) * 1000)
    keys = [LOCK_KEY.format(user_id=user.pk), RATE_KEY.format(user_id=user.pk)]
    token = secrets.token_hex(8)
    client = redis.asyncio.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=2, socket_timeout=5)
    try:
        try:
            verdict, wait_s = await cast(Any, client.eval(ADMIT, 2, *keys, token, lock_ms, per_minute))
        except redis.RedisError:
            raise VoiceRefused(
                "Voice is unavailable: this server keeps each user's voice limits in Redis, "
                "which does not answer. Try again later.",
                status=503,
                retry_after_s=BUSY_RETRY_AFTER_S,
            ) from None
        if verdict == b"busy":
            raise VoiceRefused(
                "You already have a voice job running (a dictation or a reply read aloud); "
                "one runs at a time. Wait for it to finish.",
                status=429,
                retry_after_s=BUSY_RETRY_AFTER_S,
            )
        if verdict == b"rate":
            raise VoiceRefused(
                f"You may start at most {per_minute} voice jobs (dictations or replies read aloud) "
                f"a minute. Try again in {wait_s} s.",
                status=429,
                retry_after_s=int(wait_s),
            )
        try:
            yield pool
        except PoolBusy as exc:
            raise VoiceRefused(str(exc), status=503, retry_after_s=BUSY_RETRY_AFTER_S) from None
        except JobTimedOut:
            raise VoiceRefused(
                f"{doing} took longer than {timeout_s:g} s, the most this server allows, "
                "and was stopped. Try something shorter.",
                status=504,
            ) from None
        except JobFailed as exc:
            raise VoiceRefused(f"{doing} failed: {exc} Try again.", status=503) from None
    finally:
        # Whatever happened, the admission included (a caller that went away while
        # Redis was admitting it): only a lock holding this token is deleted.
        with suppress(redis.RedisError):
            await client.eval(RELEASE, 1, keys[0], token)
        await client.aclose()
