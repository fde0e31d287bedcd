"""Calls to scoring services: many requests at once under a concurrency cap, each retried, and a
failure (after the retries) reported as None so that it never turns into reward."""

from __future__ import annotations

import asyncio
import os
from typing import Awaitable, Callable, Sequence, TypeVar

import openai

T = TypeVar("T")
FAILURES = (openai.OpenAIError, asyncio.TimeoutError, ValueError, KeyError, TypeError, IndexError)
"""What a service can do wrong: HTTP errors, timeouts, refused connections, malformed replies."""


def client(base_url: str | None, api_key_env: str | None, timeout: float) -> openai.AsyncOpenAI:
    """An async client without the library's own retries (ours count the attempts)."""
    key = os.environ[api_key_env] if api_key_env else "none"
    return openai.AsyncOpenAI(base_url=base_url, api_key=key, timeout=timeout, max_retries=0)


async def gather(
    calls: Sequence[Callable[[], Awaitable[T]]], concurrency: int, retries: int, timeout: float
) -> list[T | None]:
    """Run every call, at most `concurrency` at once; a call that fails is retried up to `retries`
    times after a short backoff, and gives None if it never succeeds."""
    slots = asyncio.Semaphore(concurrency)

    async def attempt(call: Callable[[], Awaitable[T]]) -> T | None:
        for k in range(retries + 1):
            async with slots:
                try:
                    return await asyncio.wait_for(call(), timeout)
                except FAILURES:
                    pass
            if k < retries:
                await asyncio.sleep(min(4.0, 0.1 * 2**k))
        return None

    return list(await asyncio.gather(*(attempt(c) for c in calls)))
