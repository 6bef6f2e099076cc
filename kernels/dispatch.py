"""The one dispatch point of `elastic.kernels`: Triton kernel or torch reference.

The Triton custom op runs when all of these hold, else the reference in `reference.py`:

- the backend asked for (the `backend=` argument, else env `ELASTIC_KERNELS`, default
  "auto") is not "torch";
- triton imports, and on first use per device the kernel passes a small self-test;
- the tensors are on CUDA, fp32 / fp16 / bf16, all of one dtype, and TRITON_INTERPRET
  is not set (the interpreter is slow and wrong in bf16: tests force it explicitly);
- for `stitch_linear`: the call has a LoRA term. A plain linear (no LoRA, no LayerNorm)
  goes to torch (`F.linear`, cuBLAS) under "auto": on an H200 (torch 2.11, triton 3.6) the
  Triton kernel measured 0.02-0.72x torch's speed on every SN-Net shape (issue 16, bf16, e.g.
  b1 192->384 0.257 ms vs 0.006 ms), so it runs only when forced (`backend="triton"`).
  `PLAIN_LINEAR_BACKEND` holds that choice in one place.

In eager inference (no operand needs a gradient, no torch.compile tracing, no dispatch mode
such as the FLOP counter active) the kernel is launched directly (`ops.launch_eager`), not
through the custom op, which saves the op's per-call dispatcher overhead; otherwise the
custom op runs (autograd, torch.compile, FLOP counting). During CUDA-graph capture nothing
here synchronises: a device whose self-test has not run yet gets the reference instead.

`backend="triton"` (or `ELASTIC_KERNELS=triton`) forces the kernel and raises when it cannot
run; on CPU tensors it needs TRITON_INTERPRET=1 set before triton is imported, which is how
the tests run the kernel without a GPU. The reason for every fallback is logged once, at
INFO (a kernel failing its self-test: WARNING); nothing is logged while torch.compile traces.
"""

from __future__ import annotations

import logging
import os

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode

from . import ops
from .reference import check_lora, stitch_linear_layernorm_ref, stitch_linear_ref

log = logging.getLogger(__name__)

ENV_VAR = "ELASTIC_KERNELS"
BACKENDS = ("auto", "triton", "torch")
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# "auto" sends a plain linear (no LoRA) here; "triton" would send it to the kernel.
PLAIN_LINEAR_BACKEND = "torch"
PLAIN_LINEAR_REASON = (
    "plain linear (no LoRA) runs F.linear (cuBLAS): the Triton kernel measured 0.02-0.72x torch on an H200 "
    "(issue 16); backend='triton' or ELASTIC_KERNELS=triton forces the kernel"
)

_LOGGED: set[str] = set()  # fallback reasons already logged
_IMPORT_ERROR: list[str | None] = []  # [] until triton was tried, then [None] or [reason]
_SELF_TEST: dict[str, str | None] = {}  # device -> None (kernel works) or why not


def requested_backend(backend: str | None = None) -> str:
    """The backend asked for: `backend` if given, else env ELASTIC_KERNELS, else "auto"."""
    mode = (backend if backend is not None else os.environ.get(ENV_VAR, "auto")).lower()
    if mode not in BACKENDS:
        raise ValueError(
            f"kernel backend must be one of {BACKENDS}, not {mode!r} "
            f"(from {'the backend argument' if backend is not None else ENV_VAR})"
        )
    return mode


def _log_once(reason: str, level: int = logging.INFO) -> None:
    if torch.compiler.is_compiling() or reason in _LOGGED:
        return
    _LOGGED.add(reason)
    log.log(level, "stitch kernels: using the torch reference: %s", reason)


def triton_import_error() -> str | None:
    """None when triton and the kernel module import, else why not (tried once)."""
    if not _IMPORT_ERROR:
        try:
            from . import stitch_linear_kernel  # noqa: F401
        except Exception as e:  # ImportError, or triton failing to find a backend
            _IMPORT_ERROR.append(f"triton does not import ({type(e).__name__}: {e})")
        else:
            _IMPORT_ERROR.append(None)
    return _IMPORT_ERROR[0]


def _self_test(device: torch.device) -> str | None:
    """Launch the kernel once on `device` and compare with the reference; None if it works."""
    key = str(device)
    if key not in _SELF_TEST:
        try:
            with torch.no_grad():
                gen = torch.Generator(device=device).manual_seed(0)
                x = torch.randn(5, 24, device=device, generator=gen)
                w = torch.randn(20, 24, device=device, generator=gen)
                b = torch.randn(20, device=device, generator=gen)
                y = ops.stitch_linear_op(x, w, b, None, None, 1.0)
                err = float((y - stitch_linear_ref(x, w, b)).abs().max())
            _SELF_TEST[key] = None if err < 1e-1 else f"kernel self-test off by {err:.3g} on {key}"
        except Exception as e:
            _SELF_TEST[key] = f"kernel failed its self-test on {key} ({type(e).__name__}: {e})"
        if _SELF_TEST[key] is not None:
            log.warning("stitch kernels: %s", _SELF_TEST[key])
    return _SELF_TEST[key]


def _why_not_triton(x: torch.Tensor, tensors: tuple[torch.Tensor | None, ...]) -> str | None:
    """None when the Triton kernel can take these tensors, else the reason it cannot."""
    if x.dtype not in _DTYPES:
        return f"dtype {x.dtype} (the kernel takes fp32, fp16, bf16)"
    for t in tensors:
        if t is not None and (t.dtype != x.dtype or t.device != x.device):
            return f"mixed dtypes or devices ({t.dtype} on {t.device} with x {x.dtype} on {x.device})"
    return triton_import_error()


def use_triton(x: torch.Tensor, *tensors: torch.Tensor | None, backend: str | None = None) -> bool:
    """True to run the Triton op on these tensors, False for the reference (reason logged once).

    Raises:
        RuntimeError: the kernel was forced (`backend="triton"` or ELASTIC_KERNELS=triton)
            but cannot run here.
    """
    mode = requested_backend(backend)
    if mode == "torch":
        _log_once(f"{ENV_VAR}=torch" if backend is None else "backend='torch' was asked for")
        return False
    if mode == "auto" and not x.is_cuda:
        _log_once(f"tensors on {x.device.type}, not CUDA")
        return False
    if mode == "auto" and os.environ.get("TRITON_INTERPRET") == "1":
        _log_once("TRITON_INTERPRET=1 (the interpreter is for tests: backend='triton' forces it)")
        return False
    reason = _why_not_triton(x, tensors)
    if mode == "triton":
        if reason is None and not x.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
            reason = f"tensors on {x.device.type}: set TRITON_INTERPRET=1 before triton is imported"
        if reason is not None:
            raise RuntimeError(f"the Triton stitch kernel was forced but cannot run: {reason}")
        return True
    if reason is None and not torch.compiler.is_compiling():
        if str(x.device) not in _SELF_TEST and x.is_cuda and torch.cuda.is_current_stream_capturing():
            reason = "the kernel's self-test cannot run during CUDA-graph capture (run a batch before capturing)"
        else:
            reason = _self_test(x.device)
    if reason is not None:
        _log_once(reason)
        return False
    return True


def plain_linear_to_torch(is_cuda: bool, has_lora: bool, mode: str) -> bool:
    """Whether `stitch_linear` sends this call to F.linear by policy (`PLAIN_LINEAR_BACKEND`)
    before any other check: a plain linear on CUDA under "auto"."""
    return is_cuda and not has_lora and mode == "auto" and PLAIN_LINEAR_BACKEND == "torch"


def _eager(*tensors: torch.Tensor | None) -> bool:
    """True when the kernel may be launched without the custom op: nothing to differentiate,
    trace or intercept."""
    if torch.compiler.is_compiling() or _get_current_dispatch_mode() is not None:
        return False
    return not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors))


def _autocast(*tensors: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
    """The operands as F.linear would see them under CUDA autocast; unchanged otherwise."""
    if not (tensors[0].is_cuda and torch.is_autocast_enabled("cuda")):
        return tensors
    dtype = torch.get_autocast_dtype("cuda")
    return tuple(t.to(dtype) if t is not None and t.is_floating_point() else t for t in tensors)


def stitch_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    lora_a: torch.Tensor | None = None,
    lora_b: torch.Tensor | None = None,
    lora_scale: float = 1.0,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """The stitching layer: y = x @ W^T + b (+ lora_scale * (x @ A^T) @ B^T).

    Under CUDA autocast the operands are cast to the autocast dtype first, as F.linear does.

    Args:
        x: tokens or channels-last maps; any strides (an NHWC view of NCHW is read in place).
        weight, bias: the linear map; bias optional.
        lora_a, lora_b: optional low-rank update (both or neither).
        lora_scale: its scale.
        backend: "auto", "triton" or "torch"; None reads env ELASTIC_KERNELS. Under "auto"
            a call without LoRA runs torch (see `PLAIN_LINEAR_BACKEND`).

    Shape:
        x: (..., C_in), weight: (C_out, C_in), bias: (C_out,), lora_a: (r, C_in),
        lora_b: (C_out, r) -> (..., C_out)
    """
    if plain_linear_to_torch(x.is_cuda, check_lora(lora_a, lora_b), requested_backend(backend)):
        _log_once(PLAIN_LINEAR_REASON)
        return stitch_linear_ref(x, weight, bias)
    cast = _autocast(x, weight, bias, lora_a, lora_b)
    if use_triton(*cast, backend=backend):
        if _eager(*cast):
            return ops.launch_eager(*cast, float(lora_scale))[0]
        return ops.stitch_linear_op(*cast, float(lora_scale))
    return stitch_linear_ref(x, weight, bias, lora_a, lora_b, lora_scale)


def stitch_linear_layernorm(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    lora_a: torch.Tensor | None = None,
    lora_b: torch.Tensor | None = None,
    lora_scale: float = 1.0,
    ln_weight: torch.Tensor | None = None,
    ln_bias: torch.Tensor | None = None,
    eps: float = 1e-5,
    *,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The stitching layer and the next block's LayerNorm in one pass: (y, LayerNorm(y)).

    The kernel normalises the fp32 accumulator (before y is rounded to its dtype) and writes
    both outputs, so the norm does not read y back; for C_out > 2048 it normalises with torch.
    Both outputs have y's dtype, also under autocast (where F.layer_norm would give fp32).

    Args:
        x, weight, bias, lora_a, lora_b, lora_scale, backend: as `stitch_linear`.
        ln_weight, ln_bias, eps: the LayerNorm over C_out (weight and bias optional).

    Shape:
        x: (..., C_in), weight: (C_out, C_in), bias / ln_weight / ln_bias: (C_out,),
        lora_a: (r, C_in), lora_b: (C_out, r) -> ((..., C_out), (..., C_out))
    """
    check_lora(lora_a, lora_b)
    cast = _autocast(x, weight, bias, lora_a, lora_b)
    if use_triton(*cast, backend=backend):
        if _eager(*cast, ln_weight, ln_bias):
            return ops.launch_eager(*cast, float(lora_scale), True, ln_weight, ln_bias, float(eps))
        return ops.stitch_linear_layernorm_op(*cast, float(lora_scale), ln_weight, ln_bias, float(eps))
    return stitch_linear_layernorm_ref(x, weight, bias, lora_a, lora_b, lora_scale, ln_weight, ln_bias, eps)
