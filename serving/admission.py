"""The front door: every argument of a request checked at submit, before anything is queued.

A request that reaches the engine is well formed: one dense, finite sample of the model's
input size and dtype (a float64 sample batched with float32 ones would fail the whole batch,
so it is refused here, not cast), a numeric budget, an integer priority, a boolean
best-effort flag and an accuracy floor in [0, 1]. Each refusal is a typed `elastic.errors`
error naming the field: `InvalidInput` for the sample and the request's options,
`BudgetInfeasible` for a budget that is not a positive number of milliseconds. Triton
Inference Server's request validation (datatype and shape against the model
configuration) plays the same role. The queue-aware part of admission — whether the
request can still make its deadline behind the queue — is the scheduler's `add_request`.

The checks run on the caller's thread, so the engine's worker never re-validates.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import torch

from elastic.errors import BudgetInfeasible, InvalidInput
from elastic.model import ElasticModel

_STRIDED = torch.strided


def check_budget(budget_ms: object) -> float:
    """The budget as a float; `BudgetInfeasible` unless it is a real number (not a bool or a
    string). Non-positive and NaN budgets pass here and are refused by the scheduler."""
    if type(budget_ms) is float:  # the common case, without the ABC check below
        return budget_ms
    if isinstance(budget_ms, bool) or not isinstance(budget_ms, Real):
        raise BudgetInfeasible(f"budget_ms must be a number of milliseconds, got {budget_ms!r}")
    return float(budget_ms)


def check_priority(priority: object) -> int:
    if type(priority) is int:  # the common case, without the ABC check below
        return priority
    if isinstance(priority, bool) or not isinstance(priority, Integral):
        raise InvalidInput(f"priority must be an integer, got {priority!r}")
    return int(priority)


def check_best_effort(best_effort: object) -> bool:
    if not isinstance(best_effort, bool):
        raise InvalidInput(f"best_effort must be True or False, got {best_effort!r}")
    return best_effort


def check_min_accuracy(min_accuracy: object) -> float | None:
    if min_accuracy is None:
        return None
    if isinstance(min_accuracy, bool) or not isinstance(min_accuracy, Real) or not 0 <= min_accuracy <= 1:
        raise InvalidInput(f"min_accuracy must be None or a number in [0, 1], got {min_accuracy!r}")
    value = float(min_accuracy)
    if math.isnan(value):  # pragma: no cover - NaN fails the range check above
        raise InvalidInput("min_accuracy is NaN")
    return value


class SampleCheck:
    """Validates one sample against the model: dense, on a real device, the model's dtype,
    its input size, finite.

    The checks are `ElasticModel.check_input`'s, done here with the input size read once
    (reading it walks the model's modules) and finiteness tested on the sample's sum (one
    reduction instead of an element-wise mask: a finite sum means every element is finite;
    a sum that is not finite — a NaN or infinity, or an overflow — is checked element by
    element). A model that overrides `check_input` has its own method called.

    Args:
        model: the served model (`input_size()`, `check_input`).
        dtype: the dtype the model runs in; samples of any other dtype are refused.
    """

    def __init__(self, model: ElasticModel, dtype: torch.dtype):
        self.model = model
        self.dtype = dtype
        self.input_size = tuple(model.input_size())
        self._own_check = getattr(type(model), "check_input", None) is not ElasticModel.check_input
        # the shapes `shape` passes on attribute reads alone (a model with its own check: none)
        usual = () if self._own_check or not dtype.is_floating_point else (self.input_size, (1, *self.input_size))
        self._usual = usual

    def _check_tensor(self, x: object, name: str) -> None:
        """What every sample tensor must be, whatever its shape: a dense tensor with data,
        of the model's dtype (`name`: the argument, for the error message)."""
        if not isinstance(x, torch.Tensor):
            raise InvalidInput(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.layout is not torch.strided:
            raise InvalidInput(f"{name} must be a dense tensor, got layout {x.layout}")
        if x.is_meta:
            raise InvalidInput(f"{name} is a meta tensor: it holds no data")
        if x.dtype is not self.dtype:
            raise InvalidInput(f"{name} has dtype {x.dtype}; the model runs {self.dtype}: send {name}.to({self.dtype})")

    def __call__(self, x: object, copy: bool = True) -> tuple[torch.Tensor, bool]:
        """Returns the sample as (1, C, H, W), and whether to squeeze the answer: `shape`,
        then `finish`.

        Shape:
            x: (C, H, W) or (1, C, H, W) -> (1, C, H, W)

        Args:
            x: the sample.
            copy: return a private copy (the caller may change `x` once `submit` returns);
                False returns a view, for a sample that is used before the call returns.

        Raises:
            InvalidInput: naming what is wrong with `x`.
        """
        squeeze = self.shape(x)
        batch = self.finish(x, squeeze)
        return (batch.clone() if copy else batch), squeeze

    def shape(self, x: object) -> bool:
        """Everything but finiteness, without a tensor operation: the interpreter lock is
        never let go, so a request refused at admission next costs the worker's forward no
        hand-offs. Returns whether `x` is one (C, H, W) sample (its answer is squeezed).

        Raises:
            InvalidInput: naming what is wrong with `x`.
        """
        # the usual sample, on attribute reads only: a plain dense tensor of the model's
        # (floating) dtype, shaped (C, H, W) or (1, C, H, W); anything else the checks below
        if type(x) is torch.Tensor and x.dtype is self.dtype and x.layout is _STRIDED and not x.is_meta:
            shape = x.shape
            if shape in self._usual:
                return len(shape) == 3
        self._check_tensor(x, "x")
        shape = x.shape
        squeeze = len(shape) == 3
        usual = (
            not self._own_check
            and (squeeze or (len(shape) == 4 and shape[0] == 1))
            and tuple(shape[-3:]) == self.input_size
            and x.is_floating_point()
        )
        if not usual:
            batch = x.unsqueeze(0) if squeeze else x
            self.model.check_input(batch)  # its own checks, or its error message for this shape
            if batch.shape[0] != 1:
                raise InvalidInput(
                    f"one sample per request: got a batch of {batch.shape[0]}; submit each sample, "
                    "the runtime batches them"
                )
        return squeeze

    def finish(self, x: torch.Tensor, squeeze: bool) -> torch.Tensor:
        """A sample `shape` passed, as (1, C, H, W): a view without autograd history, checked
        finite (on its sum: a finite sum means every element is finite; a sum that is not —
        a NaN, an infinity, or only an overflow — is checked element by element, and a model
        that overrides `check_input` has its own method called on it).

        Raises:
            InvalidInput: `x` holds NaN or infinite values.
        """
        batch = x.unsqueeze(0) if squeeze else x
        if batch.requires_grad:  # a view of a tensor with history carries none after this
            batch = batch.detach()
        if not math.isfinite(batch.sum().item()):
            self.model.check_input(batch)  # NaN / infinity, or only an overflowing sum
        return batch

    def batch(self, xs: object) -> torch.Tensor:
        """Validates a stacked batch of samples (`Runtime.submit_many`); returns a private copy.

        Shape:
            xs: (B, C, H, W), B >= 1 -> (B, C, H, W)

        Raises:
            InvalidInput: naming what is wrong with `xs` (and which rows are not finite).
        """
        self._check_tensor(xs, "xs")
        if xs.dim() != 4:
            raise InvalidInput(f"xs must be a stacked batch (B, C, H, W), got shape {tuple(xs.shape)}")
        usual = not self._own_check and xs.shape[0] > 0 and xs.shape[1:] == self.input_size and xs.is_floating_point()
        if not usual:
            self.model.check_input(xs)
        copied = xs.detach().clone() if xs.requires_grad else xs.clone()  # checked below while in cache
        if usual and not math.isfinite(copied.sum().item()):  # a finite sum: every element is finite
            finite = torch.isfinite(copied.reshape(copied.shape[0], -1)).all(dim=1)
            bad = [i for i, ok in enumerate(finite.tolist()) if not ok]
            if bad:
                raise InvalidInput(f"xs rows {bad} hold NaN or infinite values")
        return copied
