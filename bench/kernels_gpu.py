"""GPU check of the stitching kernels (`elastic.kernels`): correctness, then speed vs torch.

1. Correctness: every variant (linear+bias, +LoRA, +LayerNorm output) and dtype against an
   fp64 reference, as a relative error ||ours - ref|| / ||ref||, next to torch's own error.
2. Speed on SN-Net shapes (DeiT Ti/S/B: batch x 197 tokens; 192->384, 384->768, 768->1024;
   batch 1, 8, 64): ours vs torch (`F.linear`, + the LoRA add, + `F.layer_norm`), with
   TFLOP/s and GB/s set against this GPU's measured matmul rate and copy bandwidth.
3. Where a call's time goes (`host_path`), at batch 1 192->384 per variant: microseconds per
   call of each layer of the host path (the public function, the custom op, the launcher,
   back-to-back with one sync at the end, so the host cost shows when it exceeds the GPU's),
   against the GPU time of the same call replayed from a CUDA graph (no host work at all),
   and the same for torch. The issue-16 target is <= 15 us per call on the host.

Writes JSON to `--out`; exits 1 if a correctness check fails. Stays under 5 minutes on an
H100 (timing stops at `--budget-s` and lists what it skipped).

    python bench/kernels_gpu.py --out bench/results/kernels_gpu.json
    python bench/kernels_gpu.py --interpret-smoke --out /tmp/kernels_smoke.json   # CPU, tiny

`--interpret-smoke` runs the same code on the CPU through the Triton interpreter at tiny
sizes, fp32 only, so a test can check that the script works without a GPU; its numbers
mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

if "--interpret-smoke" in sys.argv:  # must precede the first import of triton (timm, torch)
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from elastic import kernels  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# Relative-error bound per dtype: a few units of output rounding (fp32: IEEE accumulation,
# or TF32 when torch allows it).
TOLERANCE = {"bf16": 1.5e-2, "fp16": 2e-3, "fp32": 1e-5, "fp32-tf32": 5e-3}
VARIANTS = ("linear", "lora", "layernorm")
SNNET_PAIRS = ((192, 384), (384, 768), (768, 1024))
TOKENS = 197
LORA_RANK = 16


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="JSON results path")
    p.add_argument(
        "--interpret-smoke", action="store_true", help="CPU + Triton interpreter at tiny sizes (no GPU needed)"
    )
    p.add_argument("--dtypes", default="bf16,fp16,fp32", help="comma list of bf16, fp16, fp32")
    p.add_argument("--batches", default="1,8,64")
    p.add_argument("--budget-s", type=float, default=240.0, help="stop timing new cases after this many seconds in all")
    return p.parse_args(argv)


# ---- inputs ------------------------------------------------------------------------------
def make_case(
    rows: int,
    c_in: int,
    c_out: int,
    variant: str,
    dtype: torch.dtype,
    device: str,
    seed: int = 0,
    lora_rank: int = LORA_RANK,
) -> dict:
    """Operands of one call, drawn in fp64 and rounded to `dtype` (the fp64 copy is kept)."""
    g = torch.Generator().manual_seed(seed)
    r = lora_rank

    def draw(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(device)

    case = dict(x=draw(rows, c_in), weight=draw(c_out, c_in, scale=c_in**-0.5), bias=draw(c_out, scale=0.1))
    if variant == "lora":
        case.update(lora_a=draw(r, c_in, scale=c_in**-0.5), lora_b=draw(c_out, r, scale=r**-0.5), lora_scale=0.5)
    if variant == "layernorm":
        case.update(ln_weight=1 + draw(c_out, scale=0.1), ln_bias=draw(c_out, scale=0.1))
    cast = {k: v.to(dtype) if torch.is_tensor(v) else v for k, v in case.items()}
    return dict(exact=case, cast=cast)


def ours(variant: str) -> Callable[..., torch.Tensor | tuple[torch.Tensor, torch.Tensor]]:
    if variant == "layernorm":
        return lambda **kw: kernels.stitch_linear_layernorm(**kw, backend="triton")
    return lambda **kw: kernels.stitch_linear(**kw, backend="triton")


def torch_baseline(variant: str) -> Callable[..., torch.Tensor | tuple[torch.Tensor, torch.Tensor]]:
    """What a model runs without our kernel: F.linear, + LoRA add, + F.layer_norm."""
    if variant == "layernorm":

        def run(x, weight, bias, ln_weight, ln_bias):
            y = F.linear(x, weight, bias)
            return y, F.layer_norm(y, (y.shape[-1],), ln_weight, ln_bias)

        return run
    if variant == "lora":
        return lambda x, weight, bias, lora_a, lora_b, lora_scale: (
            F.linear(x, weight, bias) + lora_scale * F.linear(F.linear(x, lora_a), lora_b)
        )
    return lambda x, weight, bias: F.linear(x, weight, bias)


def _outputs(out) -> list[torch.Tensor]:
    return list(out) if isinstance(out, tuple) else [out]


def rel_error(got: torch.Tensor, exact: torch.Tensor) -> float:
    return float((got.double() - exact).norm() / exact.norm().clamp_min(1e-30))


# ---- correctness -------------------------------------------------------------------------
def check_correctness(shapes: list[tuple[int, int, int]], dtypes: list[str], device: str, lora_rank: int) -> list[dict]:
    """Relative error vs fp64 of ours and of torch, per (shape, variant, dtype)."""
    results = []
    tf32 = torch.backends.cuda.matmul.allow_tf32
    for rows, c_in, c_out in shapes:
        for variant in VARIANTS:
            for name in dtypes:
                case = make_case(rows, c_in, c_out, variant, DTYPES[name], device, lora_rank=lora_rank)
                ref = kernels.stitch_linear_layernorm_ref if variant == "layernorm" else kernels.stitch_linear_ref
                exact = _outputs(ref(**case["exact"]))
                got = _outputs(ours(variant)(**case["cast"]))
                base = _outputs(torch_baseline(variant)(**case["cast"]))
                tol = TOLERANCE["fp32-tf32" if name == "fp32" and tf32 else name]
                errs = [rel_error(g, e) for g, e in zip(got, exact, strict=True)]
                base_errs = [rel_error(b, e) for b, e in zip(base, exact, strict=True)]
                results.append(
                    dict(
                        rows=rows,
                        c_in=c_in,
                        c_out=c_out,
                        variant=variant,
                        dtype=name,
                        rel_error=errs,
                        torch_rel_error=base_errs,
                        tolerance=tol,
                        ok=all(e <= tol for e in errs),
                    )
                )
    return results


# ---- timing ------------------------------------------------------------------------------
def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_ms(fn: Callable[[], object], device: str, reps: int) -> float:
    """Median milliseconds of `fn` (after one warm-up call, which also autotunes)."""
    fn()
    sync(device)
    if device == "cuda":
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=10, rep=reps, return_mode="median"))
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return sorted(times)[len(times) // 2]


def measure_peaks(device: str, dtypes: list[str], smoke: bool) -> dict:
    """This device's copy bandwidth (GB/s, read + write) and dense matmul rate per dtype."""
    nbytes = (1 << 20) if smoke else (1 << 30)
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), device, 3 if smoke else 50)  # noqa: F821 (del below)
    peaks = dict(copy_gb_s=2 * nbytes / ms / 1e6, matmul_tflop_s={})
    del src, dst
    n = 128 if smoke else 8192
    for name in dtypes:
        a = torch.randn(n, n, device=device, dtype=DTYPES[name])
        b = torch.randn(n, n, device=device, dtype=DTYPES[name])
        ms = time_ms(lambda a=a, b=b: a @ b, device, 3 if smoke else 100)
        peaks["matmul_tflop_s"][name] = 2 * n**3 / ms / 1e9
    return peaks


def case_cost(rows: int, c_in: int, c_out: int, variant: str, itemsize: int, r: int) -> tuple[int, int]:
    """(FLOPs, bytes that must move at least once) of one call."""
    flops = 2 * rows * c_in * c_out
    elems = rows * c_in + c_out * c_in + c_out + rows * c_out
    if variant == "lora":
        flops += 2 * rows * r * (c_in + c_out)
        elems += r * (c_in + c_out)
    if variant == "layernorm":
        elems += rows * c_out + 2 * c_out
    return flops, elems * itemsize


def time_cases(
    cases: list[tuple[int, int, int, int]],
    dtypes: list[str],
    device: str,
    peaks: dict,
    reps: int,
    deadline: float,
    lora_rank: int,
) -> tuple[list[dict], list[dict]]:
    timings, skipped = [], []
    for name in dtypes:  # the most used dtype first, so a budget cut drops fp32
        for batch, rows, c_in, c_out in cases:
            for variant in VARIANTS:
                entry = dict(batch=batch, rows=rows, c_in=c_in, c_out=c_out, variant=variant, dtype=name)
                if time.monotonic() > deadline:
                    skipped.append(entry)
                    continue
                kw = make_case(rows, c_in, c_out, variant, DTYPES[name], device, lora_rank=lora_rank)["cast"]
                mine, theirs = partial(ours(variant), **kw), partial(torch_baseline(variant), **kw)
                t_ours, t_torch = [], []
                for _ in range(2):  # interleaved: ours, torch, ours, torch; best median of each
                    t_ours.append(time_ms(mine, device, reps))
                    t_torch.append(time_ms(theirs, device, reps))
                t_ours, t_torch = min(t_ours), min(t_torch)
                flops, nbytes = case_cost(rows, c_in, c_out, variant, DTYPES[name].itemsize, lora_rank)
                entry.update(
                    ms=t_ours,
                    torch_ms=t_torch,
                    speedup=t_torch / t_ours,
                    tflop_s=flops / t_ours / 1e9,
                    torch_tflop_s=flops / t_torch / 1e9,
                    gb_s=nbytes / t_ours / 1e6,
                    torch_gb_s=nbytes / t_torch / 1e6,
                )
                entry["frac_of_matmul_peak"] = entry["tflop_s"] / peaks["matmul_tflop_s"][name]
                entry["frac_of_copy_bw"] = entry["gb_s"] / peaks["copy_gb_s"]
                timings.append(entry)
    return timings, skipped


# ---- host path -----------------------------------------------------------------------
def per_call_us(fn: Callable[[], object], device: str, calls: int) -> float:
    """Wall microseconds per call of `calls` back-to-back calls, one sync at the end."""
    fn()
    sync(device)
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        sync(device)
        best = min(best, (time.perf_counter() - t) * 1e6 / calls)
    return best


def graph_replay_us(fn: Callable[[], object], calls: int) -> float | None:
    """GPU microseconds per call of `fn` captured in a CUDA graph (CUDA events); None if it
    cannot be captured (the error is logged in the result by the caller)."""
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    best = float("inf")
    for _ in range(3):
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) * 1e3 / calls)
    return best


def host_path(device: str, dtype: str, rows: int, c_in: int, c_out: int, lora_rank: int, calls: int) -> list[dict]:
    """Per-call microseconds of each layer of the kernel's host path and of torch, per variant."""
    from elastic.kernels import ops
    from elastic.kernels.stitch_linear_kernel import stitch_linear_triton

    results = []
    for variant in VARIANTS:
        kw = make_case(rows, c_in, c_out, variant, DTYPES[dtype], device, lora_rank=lora_rank)["cast"]
        args = (kw["x"], kw["weight"], kw["bias"], kw.get("lora_a"), kw.get("lora_b"), kw.get("lora_scale", 1.0))
        ln = (kw.get("ln_weight"), kw.get("ln_bias"), 1e-5)
        if variant == "layernorm":
            op = partial(ops.stitch_linear_layernorm_op, *args, *ln)
            launcher = partial(stitch_linear_triton, *args, layernorm=True, ln_weight=ln[0], ln_bias=ln[1])
        else:
            op, launcher = partial(ops.stitch_linear_op, *args), partial(stitch_linear_triton, *args)
        layers = {
            "public": partial(ours(variant), **kw),
            "custom_op": op,
            "launcher": launcher,
            "torch": partial(torch_baseline(variant), **kw),
        }
        entry = dict(variant=variant, dtype=dtype, rows=rows, c_in=c_in, c_out=c_out, calls=calls)
        with torch.no_grad():
            for name, fn in layers.items():
                entry[f"{name}_host_us"] = per_call_us(fn, device, calls)
            if device == "cuda":
                for name in ("public", "torch"):
                    try:
                        entry[f"{name}_graph_gpu_us"] = graph_replay_us(layers[name], calls)
                    except Exception as e:  # a capture failure is a result, not a crash
                        entry[f"{name}_graph_error"] = f"{type(e).__name__}: {e}"
        results.append(entry)
    return results


# ---- main --------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.monotonic()
    smoke = args.interpret_smoke
    if smoke:
        device, dtypes, reps, r = "cpu", ["fp32"], 1, 3
        pairs, tokens, batches = ((24, 40), (33, 17)), 7, [1, 2]
        check_shapes = [(1, 24, 40), (7, 33, 17)]
    else:
        if not torch.cuda.is_available():
            print("no CUDA device: run on a GPU, or pass --interpret-smoke", file=sys.stderr)
            return 2
        device, dtypes, reps, r = "cuda", args.dtypes.split(","), 50, LORA_RANK
        pairs, tokens, batches = SNNET_PAIRS, TOKENS, [int(b) for b in args.batches.split(",")]
        check_shapes = [(8 * TOKENS, ci, co) for ci, co in SNNET_PAIRS]
        check_shapes += [(1, 33, 17), (1023, 24, 40)]  # awkward edges
    unknown = set(dtypes) - set(DTYPES)
    if unknown:
        print(f"unknown dtypes {sorted(unknown)}; use {sorted(DTYPES)}", file=sys.stderr)
        return 2
    torch.manual_seed(0)

    correctness = check_correctness(check_shapes, dtypes, device, r)
    for c in correctness:
        print(
            f"check {c['dtype']:>4} {c['variant']:>9} {c['rows']:>5}x{c['c_in']}->{c['c_out']}: "
            f"rel err {', '.join(f'{e:.2e}' for e in c['rel_error'])} "
            f"(torch {', '.join(f'{e:.2e}' for e in c['torch_rel_error'])}, "
            f"tol {c['tolerance']:.0e}) "
            f"{'ok' if c['ok'] else 'FAIL'}"
        )
    peaks = measure_peaks(device, dtypes, smoke)
    print(
        f"copy {peaks['copy_gb_s']:.0f} GB/s; matmul "
        + ", ".join(f"{k} {v:.1f} TFLOP/s" for k, v in peaks["matmul_tflop_s"].items())
    )
    cases = [(b, b * tokens, ci, co) for ci, co in pairs for b in batches]
    timings, skipped = time_cases(cases, dtypes, device, peaks, reps, start + args.budget_s, r)
    for t in timings:
        print(
            f"time {t['dtype']:>4} {t['variant']:>9} b{t['batch']:<3} {t['c_in']}->{t['c_out']}: "
            f"ours {t['ms']:.4f} ms ({t['tflop_s']:.1f} TFLOP/s, {t['gb_s']:.0f} GB/s) "
            f"torch {t['torch_ms']:.4f} ms  x{t['speedup']:.2f}"
        )
    if skipped:
        print(f"skipped {len(skipped)} timing cases (time budget {args.budget_s:.0f} s)")
    hp_shape = (2, 24, 40) if smoke else (TOKENS, *SNNET_PAIRS[0])
    hp = host_path(device, dtypes[0], *hp_shape, r, 5 if smoke else 200)
    for h in hp:
        print(
            f"host {h['dtype']:>4} {h['variant']:>9} {h['rows']}x{h['c_in']}->{h['c_out']}: "
            + ", ".join(f"{k[:-3]} {v:.1f} us" for k, v in h.items() if k.endswith("_us"))
        )

    result = dict(
        mode="interpret-smoke" if smoke else "gpu",
        device=torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
        torch=torch.__version__,
        triton=_triton_version(),
        python=platform.python_version(),
        allow_tf32=torch.backends.cuda.matmul.allow_tf32,
        lora_rank=r,
        tokens=tokens,
        peaks=peaks,
        correctness=correctness,
        all_correct=all(c["ok"] for c in correctness),
        timings=timings,
        skipped=skipped,
        host_path=hp,
        command=" ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        commit=_git_commit(),
        date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        elapsed_s=time.monotonic() - start,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(args.out)
    print(f"wrote {args.out} in {result['elapsed_s']:.0f} s; correctness {'ok' if result['all_correct'] else 'FAILED'}")
    return 0 if result["all_correct"] else 1


def _git_commit() -> str | None:
    import subprocess

    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _triton_version() -> str | None:
    try:
        import triton
    except ImportError:
        return None
    return triton.__version__


if __name__ == "__main__":
    sys.exit(main())
