"""Calls to scoring services: many requests at once under a concurrency cap, each retried, and a
failure (after the retries) reported as None so that it never turns into reward.

A rate limit (HTTP 429) or a server error (5xx) is waited out: for as long as the reply's
Retry-After asks, else by an exponential backoff that starts at a second, each wait at most the
per-call timeout. Other failures (a refused connection, a timeout, a malformed reply) are retried
after a short backoff. Waits carry random jitter, so that requests turned away together do not
all come back at the same instant."""

from __future__ import annotations

import asyncio
import email.utils
import os
import random
import time
from typing import Awaitable, Callable, Sequence, TypeVar

import openai

T = TypeVar("T")
FAILURES = (openai.OpenAIError, asyncio.TimeoutError, ValueError, KeyError, TypeError, IndexError)
"""What a service can do wrong: HTTP errors, timeouts, refused connections, malformed replies."""
BUSY_BACKOFF, OTHER_BACKOFF = 1.0, 0.1  # seconds before the first retry: after a 429 or 5xx, after anything else


def client(base_url: str | None, api_key_env: str | None, timeout: float) -> openai.AsyncOpenAI:
    """An async client without the library's own retries (ours count the attempts)."""
    key = os.environ[api_key_env] if api_key_env else "none"
    return openai.AsyncOpenAI(base_url=base_url, api_key=key, timeout=timeout, max_retries=0)


def retry_after(error: BaseException) -> float | None:
    """Seconds a 429 or 5xx reply asks to wait (Retry-After in seconds or as an HTTP date, or
    OpenAI's retry-after-ms); None for other failures, 0.0 when such a reply names no wait."""
    if not isinstance(error, openai.APIStatusError) or not (error.status_code == 429 or error.status_code >= 500):
        return None
    headers = error.response.headers
    try:
        if "retry-after-ms" in headers:
            return max(0.0, float(headers["retry-after-ms"]) / 1000)
        if "retry-after" in headers:
            value = headers["retry-after"]
            try:
                return max(0.0, float(value))
            except ValueError:
                return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (ValueError, TypeError):  # an unreadable header: back off as if there were none
        pass
    return 0.0


def backoff(error: BaseException, attempt: int, timeout: float) -> float:
    """Seconds to wait after failed attempt `attempt` (from 0): Retry-After when the service
    names it, else exponential from BUSY_BACKOFF (429, 5xx) or OTHER_BACKOFF; at most `timeout`."""
    asked = retry_after(error)
    if asked:  # the service's own wait, and a little more
        wait = asked * random.uniform(1.0, 1.1) + random.uniform(0.0, 0.05)
    else:
        wait = (OTHER_BACKOFF if asked is None else BUSY_BACKOFF) * 2**attempt * random.uniform(0.5, 1.0)
    return min(timeout, wait)


async def gather(
    calls: Sequence[Callable[[], Awaitable[T]]], concurrency: int, retries: int, timeout: float
) -> list[T | None]:
    """Run every call, at most `concurrency` at once (a call waiting to retry holds no slot); a
    call that fails is retried up to `retries` times after `backoff`, and gives None if it never
    succeeds."""
    slots = asyncio.Semaphore(concurrency)

    async def attempt(call: Callable[[], Awaitable[T]]) -> T | None:
        for k in range(retries + 1):
            async with slots:
                try:
                    return await asyncio.wait_for(call(), timeout)
                except FAILURES as e:
                    error = e
            if k < retries:
                await asyncio.sleep(backoff(error, k, timeout))
        return None

    return list(await asyncio.gather(*(attempt(c) for c in calls)))
