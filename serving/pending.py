"""What the engine holds for an admitted request: its input and its future (`Pending`), and
the future a request's caller waits on (`HelpingFuture`).

`HelpingFuture.result()` lets the engine run a step on the waiting thread while the worker
sleeps (`EngineCore.help`, "caller runs" in serving/engine.py), and its `set_result`
skips the notify and callback pass when nobody waits and no callback was added: the common
case, once per answered request.
"""

from __future__ import annotations

from concurrent.futures import Future
from concurrent.futures._base import CANCELLED as _CANCELLED
from concurrent.futures._base import CANCELLED_AND_NOTIFIED as _CANCELLED_AND_NOTIFIED
from concurrent.futures._base import FINISHED as _FINISHED
from concurrent.futures._base import RUNNING as _RUNNING
from concurrent.futures._base import InvalidStateError
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from elastic.errors import ElasticError, ReentrantCall

from .request import Request

if TYPE_CHECKING:
    from .engine import EngineCore

_DONE_STATES = frozenset((_CANCELLED, _CANCELLED_AND_NOTIFIED, _FINISHED))


@dataclass(slots=True)
class Pending:
    """An admitted request with what only the engine holds: its input and its future."""

    request: Request
    x: torch.Tensor | None  # (1, C, H, W), a private copy (None: row `row` of `base`)
    squeeze: bool  # the caller sent (C, H, W): answer with (num_classes,)
    future: Future
    base: torch.Tensor | None = None  # `submit_many`: the (B, C, H, W) copy the sample is row `row` of
    row: int = 0

    def sample(self) -> torch.Tensor:
        """The sample as (1, C, H, W) (a `submit_many` row is sliced only when it runs alone).

        Shape:
            (1, C, H, W)
        """
        return self.x if self.x is not None else self.base[self.row : self.row + 1]


class HelpingFuture(Future):
    """A future whose blocking `result()` first lets the engine run a step on the waiting
    thread (`EngineCore.help`) when the worker is asleep: the caller would only wait."""

    def __init__(self, engine: EngineCore):
        super().__init__()
        # what `set_running_or_notify_cancel()` does to a new future (nobody can hold it
        # yet: no lock, no cancel check); `Future` keeps its state in `_state`
        self._state = _RUNNING
        self._engine = engine

    def result(self, timeout: float | None = None):
        # answered: `_state` is written (under the condition) after `_result`/`_exception`,
        # so once it reads FINISHED both are in place; no lock needed to read them
        if self._state == _FINISHED:
            if self._exception is None:
                return self._result
            return super().result()
        if not self.done():
            if self._engine.on_engine_thread():
                raise ReentrantCall(
                    "waiting for a result on the runtime's own thread (in a result callback?) would wait forever"
                )
            if timeout is None:
                self._engine.help()
        return super().result(timeout)

    def set_result(self, result) -> None:
        """`Future.set_result`, without the notify when no thread waits in `result()` /
        `exception()` (the caller that ran the batch, or nobody yet) and without the
        callback pass when none was added: the common case, once per answered request."""
        condition = self._condition
        with condition:
            if self._state in _DONE_STATES:
                raise InvalidStateError(f"{self._state}: {self!r}")
            self._result = result
            self._state = _FINISHED
            for waiter in self._waiters:  # `concurrent.futures.wait` / `as_completed`
                waiter.add_result(self)
            if condition._waiters:  # threads blocked in result() / exception()
                condition.notify_all()
        if self._done_callbacks:
            self._invoke_callbacks()


def fail_future(future: Future, error: ElasticError) -> None:
    """Fail `future` with `error` unless it already ended (a request ends exactly once)."""
    if not future.done():
        future.set_exception(error)
