"""Triton kernel for the stitching layer (SN-Net, Pan et al., CVPR 2023).

    y    = x @ W^T + b + lora_scale * (x @ A^T) @ B^T        (bias and low-rank term optional)
    ln_y = LayerNorm(y) over C_out                            (optional second output)

One program computes a (BLOCK_M, BLOCK_N) tile of y with fp32 accumulation; the low-rank
term rides along in the same K loop (`t = x @ A^T`, (BLOCK_M, r)) and is added in the
epilogue, so it costs no extra pass over x. With the LayerNorm output one program owns whole
rows (BLOCK_N >= C_out), normalises the fp32 accumulator in registers and writes y and
ln_y together, so the next block's norm does not read y again.

Rows are addressed as (batch, position) with their own strides, so a channels-last view of
an NCHW map (`x.permute(0, 2, 3, 1)`, the 1x1-conv stitch) is read in place, with no copy.
Offsets are 64-bit; every load and store is masked, so any shape works.

Importing this module imports triton; `elastic.kernels.dispatch` does that lazily. (Not named
`stitch_linear.py`: importing such a submodule would rebind `elastic.kernels.stitch_linear`,
the public function, to the module.)
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, replace

import torch
import triton
import triton.language as tl

log = logging.getLogger(__name__)

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
LN_MAX_BLOCK_N = 2048  # widest C_out (rounded up to a power of two) fused with LayerNorm
# (narrower in fp32 where the tiles do not fit shared memory: see `_fits`)

# ---- autotune configs --------------------------------------------------------------------
# Large tiles with deep pipelines suit Hopper (228 KB shared memory, wgmma); the small ones
# suit Ampere / Ada and the batch-1 shapes (197 rows). Configs that do not fit a GPU fail
# to compile there and the autotuner skips them. The interpreter gets one small config.


def _cfg(bm: int, bn: int, bk: int, warps: int, stages: int) -> triton.Config:
    return triton.Config(
        {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8}, num_warps=warps, num_stages=stages
    )


def _ln_cfg(bm: int, bk: int, warps: int, stages: int) -> triton.Config:
    return triton.Config({"BLOCK_M": bm, "BLOCK_K": bk, "GROUP_M": 1}, num_warps=warps, num_stages=stages)


GPU_LINEAR_CONFIGS = [
    _cfg(128, 256, 64, 8, 3),  # Hopper
    _cfg(128, 128, 64, 8, 4),  # Hopper
    _cfg(256, 128, 64, 8, 3),  # Hopper
    _cfg(128, 128, 32, 4, 4),
    _cfg(128, 64, 32, 4, 4),
    _cfg(64, 128, 32, 4, 4),
    _cfg(64, 64, 32, 4, 4),
    _cfg(64, 64, 64, 4, 3),
    _cfg(32, 64, 32, 4, 5),  # small M, smaller GPUs
]
GPU_LN_CONFIGS = [  # BLOCK_N = C_out rounded up to a power of two, set by the launcher
    _ln_cfg(16, 16, 4, 2),  # the smallest: the last resort
    _ln_cfg(16, 32, 4, 3),
    _ln_cfg(16, 64, 4, 3),
    _ln_cfg(32, 32, 8, 3),
    _ln_cfg(32, 64, 8, 3),
    _ln_cfg(64, 32, 8, 3),
    _ln_cfg(128, 32, 8, 3),  # Hopper, narrow C_out
]
LINEAR_CONFIGS = [_cfg(16, 16, 16, 1, 1)] if INTERPRET else GPU_LINEAR_CONFIGS
LN_CONFIGS = [_ln_cfg(16, 16, 1, 1)] if INTERPRET else GPU_LN_CONFIGS

SMEM_BYTES = 227 * 1024  # the most any GPU here has (H100 / H200); bigger configs never fit
ACC_ELEMENTS = 32 * 1024  # fp32 accumulator elements per program (128 registers at 8 warps)


def _fits(config: triton.Config, block_n: int, itemsize: int) -> bool:
    """Whether a config's pipelined tiles can fit shared memory and its accumulator registers."""
    bm, bk, stages = config.kwargs["BLOCK_M"], config.kwargs["BLOCK_K"], max(1, config.num_stages)
    smem = stages * (bm * bk + bk * block_n) * itemsize
    return smem <= SMEM_BYTES and bm * block_n <= ACC_ELEMENTS * (1 if block_n > 256 else 2)


def _prune_linear_configs(configs, named_args, **kwargs):
    itemsize = named_args["x_ptr"].element_size()
    return [c for c in configs if _fits(c, c.kwargs["BLOCK_N"], itemsize)] or configs[-1:]


def _prune_ln_configs(configs, named_args, **kwargs):
    itemsize = named_args["x_ptr"].element_size()
    return [c for c in configs if _fits(c, kwargs["BLOCK_N"], itemsize)] or configs[:1]


@triton.jit(do_not_specialize=["M", "P", "M_KEY"])
def _stitch_linear_kernel(
    x_ptr,  # (B, P, K) input rows, strides (stride_xb, stride_xp, stride_xk); M = B * P rows
    w_ptr,  # (N, K) stitch weight, strides (stride_wn, stride_wk)
    b_ptr,  # (N,) bias, contiguous; unused unless HAS_BIAS
    a_ptr,  # (R, K) LoRA down factor, strides (stride_ar, stride_ak); unused unless HAS_LORA
    lb_ptr,  # (N, R) LoRA up factor, strides (stride_lbn, stride_lbr); unused unless HAS_LORA
    y_ptr,  # (M, N) output, contiguous
    lnw_ptr,  # (N,) LayerNorm weight, contiguous; unused unless FUSE_LN and HAS_LN_W
    lnb_ptr,  # (N,) LayerNorm bias, contiguous; unused unless FUSE_LN and HAS_LN_B
    ln_ptr,  # (M, N) LayerNorm output, contiguous; unused unless FUSE_LN
    M,
    N,
    K,
    R,
    P,
    stride_xb,
    stride_xp,
    stride_xk,
    stride_wn,
    stride_wk,
    stride_ar,
    stride_ak,
    stride_lbn,
    stride_lbr,
    lora_scale,
    eps,
    M_KEY,  # power-of-two bucket of M, only an autotune key
    HAS_BIAS: tl.constexpr,
    HAS_LORA: tl.constexpr,
    FUSE_LN: tl.constexpr,
    HAS_LN_W: tl.constexpr,
    HAS_LN_B: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    R_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    # Grouped tile order: GROUP_M row tiles share each weight tile while it sits in L2.
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_pid_in_group = GROUP_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_n = (pid % num_pid_in_group) // group_size_m

    offs_m = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,) int64
    offs_n = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,) int64
    offs_k = tl.arange(0, BLOCK_K).to(tl.int64)
    mask_m = offs_m < M
    mask_n = offs_n < N
    x_rows = (offs_m // P) * stride_xb + (offs_m % P) * stride_xp  # (BLOCK_M,) int64

    # (BLOCK_M, BLOCK_K) tile of x; (BLOCK_K, BLOCK_N) tile of W^T
    x_ptrs = x_ptr + x_rows[:, None] + offs_k[None, :] * stride_xk
    w_ptrs = w_ptr + offs_n[None, :] * stride_wn + offs_k[:, None] * stride_wk
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if HAS_LORA:
        offs_r = tl.arange(0, R_PAD)
        mask_r = offs_r < R
        # (BLOCK_K, R_PAD) tile of A^T
        a_ptrs = a_ptr + offs_r[None, :] * stride_ar + offs_k[:, None] * stride_ak
        t = tl.zeros((BLOCK_M, R_PAD), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        mask_k = offs_k < K - k0
        x = tl.load(x_ptrs, mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        w = tl.load(w_ptrs, mask=mask_k[:, None] & mask_n[None, :], other=0.0)
        acc = tl.dot(x, w, acc, input_precision=INPUT_PRECISION)
        if HAS_LORA:
            a = tl.load(a_ptrs, mask=mask_k[:, None] & mask_r[None, :], other=0.0)
            t = tl.dot(x, a, t, input_precision=INPUT_PRECISION)
            a_ptrs += BLOCK_K * stride_ak
        x_ptrs += BLOCK_K * stride_xk
        w_ptrs += BLOCK_K * stride_wk

    if HAS_LORA:
        # (R_PAD, BLOCK_N) tile of B^T
        lb_ptrs = lb_ptr + offs_n[None, :] * stride_lbn + offs_r[:, None] * stride_lbr
        lb = tl.load(lb_ptrs, mask=mask_r[:, None] & mask_n[None, :], other=0.0)
        # x @ A^T is rounded to the input dtype, as the two chained F.linear of the reference.
        acc += lora_scale * tl.dot(t.to(lb.dtype), lb, input_precision=INPUT_PRECISION)
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]

    mask = mask_m[:, None] & mask_n[None, :]
    out_offs = offs_m[:, None] * N + offs_n[None, :]  # (BLOCK_M, BLOCK_N) into row-major (M, N)
    tl.store(y_ptr + out_offs, acc.to(y_ptr.dtype.element_ty), mask=mask)

    if FUSE_LN:
        # This program holds whole rows (pid_n == 0, BLOCK_N >= N); padded columns are 0.
        mean = tl.sum(acc, axis=1) / N  # (BLOCK_M,)
        diff = tl.where(mask_n[None, :], acc - mean[:, None], 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(diff * diff, axis=1) / N + eps)  # (BLOCK_M,)
        ln = diff * rstd[:, None]
        if HAS_LN_W:
            ln *= tl.load(lnw_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
        if HAS_LN_B:
            ln += tl.load(lnb_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
        tl.store(ln_ptr + out_offs, ln.to(ln_ptr.dtype.element_ty), mask=mask)


_TUNE_KEY = ["M_KEY", "N", "K", "HAS_LORA", "R_PAD"]  # the autotuner adds the dtypes
_linear_tuned = triton.autotune(
    configs=LINEAR_CONFIGS, key=_TUNE_KEY, prune_configs_by={"early_config_prune": _prune_linear_configs}
)(_stitch_linear_kernel)
_layernorm_tuned = triton.autotune(
    configs=LN_CONFIGS, key=_TUNE_KEY, prune_configs_by={"early_config_prune": _prune_ln_configs}
)(_stitch_linear_kernel)


def _as_rows(x: torch.Tensor) -> torch.Tensor:
    """(..., K) -> a (B, P, K) view when the strides allow it (a copy otherwise)."""
    k = x.shape[-1]
    if x.dim() <= 2:
        return x.reshape(1, -1, k)
    return x.reshape(x.shape[0], -1, k)


def _check(x: torch.Tensor, weight: torch.Tensor, *others: tuple[str, torch.Tensor | None, tuple[int, ...]]) -> None:
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"stitch_linear kernel: x must be fp32, fp16 or bf16, not {x.dtype}")
    if weight.dim() != 2 or weight.shape[1] != x.shape[-1]:
        raise ValueError(
            f"stitch_linear kernel: weight {tuple(weight.shape)} does not map "
            f"x (..., {x.shape[-1]}) (expected (C_out, {x.shape[-1]}))"
        )
    for name, t, shape in (("weight", weight, tuple(weight.shape)), *others):
        if t is None:
            continue
        if tuple(t.shape) != shape:
            raise ValueError(f"stitch_linear kernel: {name} has shape {tuple(t.shape)}, expected {shape}")
        if t.device != x.device:
            raise ValueError(f"stitch_linear kernel: {name} is on {t.device}, x on {x.device}")
        if name != "ln_weight" and name != "ln_bias" and t.dtype != x.dtype:
            raise TypeError(f"stitch_linear kernel: {name} is {t.dtype}, x is {x.dtype}")


@dataclass(frozen=True)
class LaunchPlan:
    """Everything about one launch that depends only on shapes, strides, dtype and flags.

    Built (validated, autotuned) on the first call with a new `plan_key`; later calls with
    the same key allocate the outputs and launch the plain JIT kernel with `config`, with no
    validation, no autotuner and no Python-side key building beyond `plan_key`.
    """

    grid: tuple[int]  # programs along axis 0
    args: dict  # scalar kernel arguments (sizes, strides, constexpr flags), no pointers
    config: dict  # BLOCK_* meta-parameters, num_warps, num_stages of the tuned config
    fuse_ln: bool  # the kernel writes ln_y (else torch normalises y afterwards)
    tuned: bool  # False when made during CUDA-graph capture without autotuning


PLAN_CACHE_SIZE = 4096  # plans kept before the cache is cleared (each is a few hundred bytes)
_PLANS: dict[tuple, LaunchPlan] = {}


def plan_key(
    x3: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    lora_a: torch.Tensor | None,
    lora_b: torch.Tensor | None,
    layernorm: bool,
    ln_weight: torch.Tensor | None,
    ln_bias: torch.Tensor | None,
) -> tuple:
    """What a `LaunchPlan` depends on: shapes, strides, dtypes, device, optional operands."""

    def sig(t: torch.Tensor | None) -> tuple | None:
        return None if t is None else (t.shape, t.stride(), t.dtype)

    return (
        x3.shape,
        x3.stride(),
        x3.dtype,
        x3.device,
        weight.shape,
        weight.stride(),
        sig(bias),
        sig(lora_a),
        sig(lora_b),
        layernorm,
        sig(ln_weight) if layernorm else None,
        sig(ln_bias) if layernorm else None,
        torch.backends.cuda.matmul.allow_tf32,
    )


def _capturing(x: torch.Tensor) -> bool:
    return x.is_cuda and torch.cuda.is_current_stream_capturing()


def _make_plan(x3, x, weight, bias, lora_a, lora_b, layernorm, ln_weight, ln_bias) -> LaunchPlan | None:
    """Validate once and work out the launch arguments; None when no kernel is needed (empty)."""
    n, k = weight.shape[0], x.shape[-1]
    has_lora = lora_a is not None and lora_b is not None
    r = lora_a.shape[0] if has_lora else 0
    _check(
        x,
        weight,
        ("bias", bias, (n,)),
        ("lora_a", lora_a, (r, k)),
        ("lora_b", lora_b, (n, r)),
        ("ln_weight", ln_weight if layernorm else None, (n,)),
        ("ln_bias", ln_bias if layernorm else None, (n,)),
    )
    m = x3.shape[0] * x3.shape[1]
    if m == 0 or n == 0 or k == 0:
        return None
    fp32_ieee = x.dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32
    block_n = triton.next_power_of_2(n)
    fuse_ln = layernorm and block_n <= LN_MAX_BLOCK_N and any(_fits(c, block_n, x.element_size()) for c in LN_CONFIGS)
    args = dict(
        M=m,
        N=n,
        K=k,
        R=r,
        P=x3.shape[1],
        stride_xb=x3.stride(0),
        stride_xp=x3.stride(1),
        stride_xk=x3.stride(2),
        stride_wn=weight.stride(0),
        stride_wk=weight.stride(1),
        stride_ar=lora_a.stride(0) if has_lora else 0,
        stride_ak=lora_a.stride(1) if has_lora else 0,
        stride_lbn=lora_b.stride(0) if has_lora else 0,
        stride_lbr=lora_b.stride(1) if has_lora else 0,
        M_KEY=min(triton.next_power_of_2(m), 1 << 16),
        HAS_BIAS=bias is not None,
        HAS_LORA=has_lora,
        FUSE_LN=fuse_ln,
        HAS_LN_W=fuse_ln and ln_weight is not None,
        HAS_LN_B=fuse_ln and ln_bias is not None,
        INPUT_PRECISION="ieee" if fp32_ieee else "tf32",
        R_PAD=max(16, triton.next_power_of_2(r)),
    )
    if fuse_ln:
        args["BLOCK_N"] = block_n
    return LaunchPlan(grid=(0,), args=args, config={}, fuse_ln=fuse_ln, tuned=False)


def _grid(plan: LaunchPlan, config: dict) -> tuple[int]:
    m, n = plan.args["M"], plan.args["N"]
    if plan.fuse_ln:
        return (triton.cdiv(m, config["BLOCK_M"]),)
    return (triton.cdiv(m, config["BLOCK_M"]) * triton.cdiv(n, config["BLOCK_N"]),)


def _untuned_config(plan: LaunchPlan, x3: torch.Tensor) -> dict:
    """A config chosen without benchmarking (for a first call made during CUDA-graph capture)."""
    if plan.fuse_ln:
        pruned = _prune_ln_configs(LN_CONFIGS, {"x_ptr": x3}, BLOCK_N=plan.args["BLOCK_N"])
    else:
        pruned = _prune_linear_configs(LINEAR_CONFIGS, {"x_ptr": x3})
    small_m = plan.args["M"] <= 256
    config = min(pruned, key=lambda c: c.kwargs["BLOCK_M"]) if small_m else pruned[0]
    return config.all_kwargs()


def stitch_linear_triton(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    lora_a: torch.Tensor | None = None,
    lora_b: torch.Tensor | None = None,
    lora_scale: float = 1.0,
    *,
    layernorm: bool = False,
    ln_weight: torch.Tensor | None = None,
    ln_bias: torch.Tensor | None = None,
    eps: float = 1e-5,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Validate (once per shape), allocate and launch `_stitch_linear_kernel`.

    The first call with a new `plan_key` validates the operands and autotunes; its
    `LaunchPlan` is cached, so later calls only allocate and launch. Nothing here reads a
    tensor's values or synchronises, so a warmed-up shape can be captured in a CUDA graph
    (a shape first seen during capture gets an untuned config instead of the autotuner).

    Returns:
        (y, ln_y), ln_y None unless `layernorm`. Outputs are contiguous, dtype of x.

    Shape:
        x: (..., C_in) any strides, weight: (C_out, C_in), bias / ln_weight / ln_bias:
        (C_out,), lora_a: (r, C_in), lora_b: (C_out, r) -> ((..., C_out), (..., C_out))
    """
    x3 = _as_rows(x)
    key = plan_key(x3, weight, bias, lora_a, lora_b, layernorm, ln_weight, ln_bias)
    plan = _PLANS.get(key)
    if plan is None:  # validate once per key; the allocation below needs a valid weight
        plan = _make_plan(x3, x, weight, bias, lora_a, lora_b, layernorm, ln_weight, ln_bias)
    y = torch.empty((*x.shape[:-1], weight.shape[0]), device=x.device, dtype=x.dtype)
    ln_y = torch.empty_like(y) if layernorm else None
    if plan is None:
        return _empty(y, ln_y, bias, ln_weight, ln_bias, eps)
    if not plan.tuned:
        plan = _first_launch(plan, key, x3, weight, bias, lora_a, lora_b, y, ln_weight, ln_bias, ln_y, lora_scale, eps)
    else:
        ptrs = (x3, weight, bias, lora_a, lora_b, y, ln_weight, ln_bias, ln_y if plan.fuse_ln else None)
        with _on_device(x):
            _stitch_linear_kernel[plan.grid](
                *_pointers(plan, ptrs), **plan.args, lora_scale=float(lora_scale), eps=float(eps), **plan.config
            )
    if layernorm and not plan.fuse_ln:
        ln_y.copy_(torch.nn.functional.layer_norm(y, (y.shape[-1],), ln_weight, ln_bias, eps))
    return y, ln_y


def _on_device(x: torch.Tensor):
    """The CUDA device context of x, entered only when it is not the current device."""
    if x.is_cuda and x.device.index != torch.cuda.current_device():
        return torch.cuda.device(x.device)
    return contextlib.nullcontext()


def _pointers(plan: LaunchPlan, ptrs: tuple) -> tuple:
    """The pointer arguments, contiguous where the kernel indexes them as contiguous."""
    x3, weight, bias, lora_a, lora_b, y, ln_w, ln_b, ln_y = ptrs
    bias = bias.contiguous() if bias is not None else None
    ln_w = ln_w.contiguous() if plan.args["HAS_LN_W"] else None
    ln_b = ln_b.contiguous() if plan.args["HAS_LN_B"] else None
    return x3, weight, bias, lora_a, lora_b, y, ln_w, ln_b, ln_y


def _first_launch(plan, key, x3, weight, bias, lora_a, lora_b, y, ln_weight, ln_bias, ln_y, lora_scale, eps):
    """Launch through the autotuner (or, during capture, an untuned config) and cache the plan."""
    ptrs = _pointers(plan, (x3, weight, bias, lora_a, lora_b, y, ln_weight, ln_bias, ln_y if plan.fuse_ln else None))
    scalars = dict(lora_scale=float(lora_scale), eps=float(eps))
    with _on_device(x3):
        if _capturing(x3):
            config = _untuned_config(plan, x3)
            log.warning(
                "stitch kernel: shape %s first seen during CUDA-graph capture: untuned config %s "
                "(run it once before capture)",
                tuple(x3.shape),
                config,
            )
            plan = replace(plan, config=config, grid=_grid(plan, config), tuned=False)
            _stitch_linear_kernel[plan.grid](*ptrs, **plan.args, **scalars, **plan.config)
            return plan  # not cached: an eager call autotunes this shape later
        tuner = _layernorm_tuned if plan.fuse_ln else _linear_tuned
        tuner[lambda meta: _grid(plan, meta)](*ptrs, **plan.args, **scalars)
        config = tuner.best_config.all_kwargs()
    plan = replace(plan, config=config, grid=_grid(plan, config), tuned=True)
    if len(_PLANS) >= PLAN_CACHE_SIZE:
        _PLANS.clear()
    _PLANS[key] = plan
    return plan


def _empty(y, ln_y, bias, ln_weight, ln_bias, eps):
    """Outputs when there is nothing to multiply: no rows, no columns, or C_in = 0 (y = bias)."""
    n = y.shape[-1]
    if y.numel() == 0:
        if ln_y is not None:
            ln_y.zero_()
        return y, ln_y
    y.copy_(bias.expand(y.shape) if bias is not None else torch.zeros_like(y))
    if ln_y is not None:
        ln_y.copy_(torch.nn.functional.layer_norm(y, (n,), ln_weight, ln_bias, eps))
    return y, ln_y
