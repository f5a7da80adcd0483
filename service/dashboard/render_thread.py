"""The dashboard's render thread: runs picture jobs off the request path and caches them.

:class:`Renderer` is one per app (``app.state.model_renderer``, set by
``service.dashboard.install_dashboard``); ``service.dashboard.model_view`` says what is
rendered and ``routes`` awaits it. Nothing here knows about models: a job is a callable
that returns ``bytes`` or a tuple of ``bytes``.
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

MAX_PENDING = 4  # distinct renders queued or running; more answer "busy"
CACHE_BYTES = 16 << 20
RENDER_TIMEOUT_S = 60.0


class RendererBusy(Exception):
    """``MAX_PENDING`` renders are queued or running: try again in a moment."""


def _one_torch_thread() -> None:
    # The coordinator runs no other torch code: one intra-op thread keeps a render off the
    # cores that serve the API (torch's setting is per process, set once here).
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover - torch is a dependency
        pass


class Renderer:
    """Runs render jobs on one dedicated thread and caches their results.

    ``await get(key, fn)``: the cached value for ``key``, else the result of ``fn()`` run
    on the render thread (then cached). Requests for a key being rendered wait for that
    render (one run per key). With ``max_pending`` distinct renders queued or running,
    a new one raises :class:`RendererBusy` at once; a wait longer than ``timeout``
    raises ``TimeoutError`` (the render goes on and is cached). An exception of ``fn``
    reaches every waiter and is not cached. Values are ``bytes`` or tuples of ``bytes``;
    the cache keeps the most recently used ones within ``cache_bytes``.
    """

    def __init__(
        self,
        *,
        max_pending: int = MAX_PENDING,
        cache_bytes: int = CACHE_BYTES,
        timeout: float = RENDER_TIMEOUT_S,
    ) -> None:
        self.max_pending = max_pending
        self.cache_bytes = cache_bytes
        self.timeout = timeout
        self.hits = 0
        self.renders = 0
        self._lock = threading.Lock()
        self._cache: OrderedDict[Any, Any] = OrderedDict()
        self._size = 0
        self._running: dict[Any, Future[Any]] = {}
        self._executor: ThreadPoolExecutor | None = None

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:  # created on first use: most coordinators never render
            self._executor = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="dashboard-render", initializer=_one_torch_thread
            )
        return self._executor

    def cached(self, key: Any) -> Any | None:
        with self._lock:
            value = self._cache.get(key)
            if value is not None:
                self._cache.move_to_end(key)
                self.hits += 1
            return value

    async def get(self, key: Any, fn: Callable[[], Any]) -> Any:
        value = self.cached(key)
        if value is not None:
            return value
        with self._lock:
            future = self._running.get(key)
            if future is None:
                if len(self._running) >= self.max_pending:
                    raise RendererBusy(f"{self.max_pending} renders are already waiting")
                future = self._pool().submit(self._run, key, fn)
                self._running[key] = future
        # shield: a client that goes away (or times out) must not cancel the shared render
        return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)), self.timeout)

    def _run(self, key: Any, fn: Callable[[], Any]) -> Any:
        try:
            value = fn()
            self._store(key, value)
            return value
        finally:
            with self._lock:
                self._running.pop(key, None)
                self.renders += 1

    def _store(self, key: Any, value: Any) -> None:
        size = sum(map(len, value)) if isinstance(value, tuple) else len(value)
        if size > self.cache_bytes:
            return
        with self._lock:
            if key in self._cache:
                return
            self._cache[key] = value
            self._size += size
            while self._size > self.cache_bytes:
                _, old = self._cache.popitem(last=False)
                self._size -= sum(map(len, old)) if isinstance(old, tuple) else len(old)

    def close(self) -> None:
        """Stop the render thread (pending renders are dropped)."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
