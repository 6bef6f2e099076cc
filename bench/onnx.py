"""onnx: torch eager vs torch compiled vs traced vs onnxruntime, per subnet, at batch 1 and 8.

Each chosen subnet is exported (`elastic.export.onnx`, opset 23, attention fused) to a
temporary folder and run by four executors of the serving engine: "eager" (the model's
forward), "compiled" (`torch.compile`, inductor, one graph per batch bucket), "traced"
(one TorchScript graph per subnet, `elastic.serving.traced_executor`) and "onnxruntime"
(CPU provider); "onnxruntime-opset18" runs the same subnets exported at
opset 18, where attention is decomposed into MatMul/Softmax, to show what the fused
`Attention` operator of opset 23 is worth. All run with the same thread count (torch's
intra-op threads, which `elastic bench --threads` sets, default 1, and as many onnxruntime
intra-op threads), interleaved in one run; the table gives each one's median and its ratio
to eager (paired per round), and the largest output difference from eager, so a fast wrong
executor cannot pass.

Model: the demo's (`out/demo/model`, its accuracy/FLOPs Pareto front) when it is there,
else a StitchedNet of the demo's architecture with random weights (latency does not
depend on the weights), anchors plus evenly spaced stitches.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import statistics
import tempfile
import time

import torch

import elastic
from elastic.subnet import pareto

from .harness import interleaved, markdown_table, paired_ratio, summary, write_results
from .models import demo_model_or_architecture

log = logging.getLogger(__name__)

CONTENDERS = ("eager", "compiled", "traced", "onnxruntime", "onnxruntime-opset18")
BATCH_SIZES = (1, 8)


def choose_subnets(model: elastic.ElasticModel, most: int) -> list[int]:
    """The Pareto front when the model has accuracies, else the anchors and evenly spaced
    stitches; at most `most`, spread over the FLOPs range."""
    subnets = model.subnets()
    front = pareto(subnets)
    if front:
        ids = sorted(front, key=lambda s: subnets[s].flops)
    else:
        anchors = [s.id for s in subnets if s.kind == "anchor"]
        others = [s.id for s in subnets if s.kind != "anchor"]
        step = max(1, len(others) // max(1, most - len(anchors)))
        ids = sorted(anchors + others[step // 2 :: step], key=lambda s: subnets[s].flops)
    if len(ids) > most:
        ids = [ids[round(k * (len(ids) - 1) / (most - 1))] for k in range(most)]
    return ids


def make_compiled(model: elastic.ElasticModel):
    """The engine's "compiled" executor when it is registered, else a plain torch.compile one."""
    from elastic.serving.executor import EXECUTORS, EagerExecutor, make_executor

    if "compiled" in EXECUTORS:
        return make_executor("compiled", model, "cpu", buckets=BATCH_SIZES)

    class TorchCompiled(EagerExecutor):
        name = "compiled"
        pausable = False  # a compiled forward runs as one call

        def __init__(self, model):
            super().__init__(model)
            self._fns = {}

        @torch.inference_mode()
        def run(self, subnet, x):
            if subnet not in self._fns:
                self._fns[subnet] = torch.compile(lambda t, s=subnet: self.model(t, subnet=s), dynamic=False)
            return self._fns[subnet](x)

    return TorchCompiled(model)


def compare(
    model: elastic.ElasticModel, ids: list[int], repeats: int, inner: int, threads: int = 1
) -> tuple[list[dict], dict]:
    from elastic.export.onnx import export_onnx
    from elastic.serving.executor import EagerExecutor
    from elastic.serving.onnx_executor import OnnxRuntimeExecutor
    from elastic.serving.traced_executor import TracedExecutor

    rows = []
    subnets = model.subnets()
    with tempfile.TemporaryDirectory(prefix="elastic-onnx-bench-") as folder:
        t0 = time.perf_counter()
        manifest = export_onnx(model, f"{folder}/opset23", ids)
        export_s = time.perf_counter() - t0
        export_onnx(model, f"{folder}/opset18", ids, opset=18)
        executors = {
            "eager": EagerExecutor(model),
            "compiled": make_compiled(model),
            "traced": TracedExecutor(model),
            "onnxruntime": OnnxRuntimeExecutor(model, export_dir=f"{folder}/opset23", intra_op_threads=threads),
            "onnxruntime-opset18": OnnxRuntimeExecutor(model, export_dir=f"{folder}/opset18", intra_op_threads=threads),
        }
        compile_s = 0.0
        for sid in ids:
            for b in BATCH_SIZES:
                x = torch.randn(b, *model.input_size(), generator=torch.Generator().manual_seed(sid * 100 + b))
                t0 = time.perf_counter()
                for ex in executors.values():
                    ex.warmup(sid, b)
                compile_s += time.perf_counter() - t0
                with torch.inference_mode():
                    reference = executors["eager"].run(sid, x)
                    diffs = {
                        name: float((ex.run(sid, x) - reference).abs().max())
                        for name, ex in executors.items()
                        if name != "eager"
                    }
                times = interleaved(
                    {name: (lambda ex=ex, x=x, sid=sid: ex.run(sid, x)) for name, ex in executors.items()},
                    repeats=repeats,
                    inner=inner,
                )
                rows.append(
                    {
                        "subnet": sid,
                        "description": subnets[sid].description,
                        "mflops": subnets[sid].flops / 1e6,
                        "batch": b,
                        **{name: summary(times[name]) for name in CONTENDERS},
                        "compiled_vs_eager": paired_ratio(times["compiled"], times["eager"]),
                        "traced_vs_eager": paired_ratio(times["traced"], times["eager"]),
                        "onnxruntime_vs_eager": paired_ratio(times["onnxruntime"], times["eager"]),
                        "onnxruntime_vs_compiled": paired_ratio(times["onnxruntime"], times["compiled"]),
                        "opset18_vs_opset23": paired_ratio(times["onnxruntime-opset18"], times["onnxruntime"]),
                        "max_abs_diff_vs_eager": diffs,
                    }
                )
                log.info("subnet %d batch %d: %s", sid, b, {k: v for k, v in rows[-1].items() if "_vs_" in k})
    setup = {
        "export_s": export_s,
        "warmup_s": compile_s,
        "opset": manifest["opset"],
        "fused_attention": manifest["fused_attention"],
        "onnxruntime": manifest["versions"]["onnxruntime"],
        "compiled": executors["compiled"].__class__.__name__,
    }
    return rows, setup


def geomean(values: list[float]) -> float:
    return math.exp(statistics.fmean(math.log(v) for v in values))


def run(args: argparse.Namespace) -> dict:
    # one call per sample: on a shared CPU a sub-millisecond call is often preempted, and a
    # sample of several calls would carry every preemption among them into the median
    repeats, inner, most = (15, 1, 3) if args.quick else (60, 1, 6)
    load_before = os.getloadavg()[0]
    threads = torch.get_num_threads()  # what `elastic bench --threads` set; onnxruntime gets as many
    model, name = demo_model_or_architecture(args.model)
    ids = choose_subnets(model, most)
    rows, setup = compare(model, ids, repeats, inner, threads)
    setup["loadavg_1min"] = [load_before, os.getloadavg()[0]]
    overall = {
        f"batch {b}": {
            key: geomean([r[key] for r in rows if r["batch"] == b])
            for key in (
                "compiled_vs_eager",
                "traced_vs_eager",
                "onnxruntime_vs_eager",
                "onnxruntime_vs_compiled",
                "opset18_vs_opset23",
            )
        }
        for b in BATCH_SIZES
    }
    table = markdown_table(
        [
            "subnet",
            "MFLOPs",
            "batch",
            "eager ms",
            "compiled ms",
            "traced ms",
            "ORT ms",
            "compiled/eager",
            "traced/eager",
            "ORT/eager",
            "ORT/compiled",
            "ORT-18/ORT",
            "max diff",
        ],
        [
            [
                r["subnet"],
                r["mflops"],
                r["batch"],
                r["eager"]["median_ms"],
                r["compiled"]["median_ms"],
                r["traced"]["median_ms"],
                r["onnxruntime"]["median_ms"],
                r["compiled_vs_eager"],
                r["traced_vs_eager"],
                r["onnxruntime_vs_eager"],
                r["onnxruntime_vs_compiled"],
                r["opset18_vs_opset23"],
                f"{max(r['max_abs_diff_vs_eager'].values()):.1e}",
            ]
            for r in rows
        ],
    )
    table += "\n\nGeometric mean over subnets (ratio < 1: faster than the denominator):\n\n" + markdown_table(
        ["batch", "compiled/eager", "traced/eager", "ORT/eager", "ORT/compiled", "ORT-18/ORT"],
        [[b, *overall[f"batch {b}"].values()] for b in BATCH_SIZES],
    )
    table += (
        f"\n\nModel: {name}; subnets {ids}; {threads} thread(s) each (torch and onnxruntime); {repeats} interleaved "
        f"rounds of {inner} call(s); 1-min load average {setup['loadavg_1min'][0]:.1f} -> "
        f"{setup['loadavg_1min'][1]:.1f} on {os.cpu_count()} CPUs; ORT: opset {setup['opset']} (attention "
        f"{'fused' if setup['fused_attention'] else 'decomposed'}); ORT-18: opset 18 (attention decomposed); "
        f"onnxruntime {setup['onnxruntime']}; compiled: {setup['compiled']}."
    )
    data = {
        "model": name,
        "subnets": ids,
        "threads": threads,
        "repeats": repeats,
        "inner": inner,
        "setup": setup,
        "overall": overall,
    }
    write_results(args.out, "onnx", {**data, "rows": rows}, table, args.command)
    return {"rows": rows, "overall": overall, "table": table}
