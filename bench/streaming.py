"""streaming: a continual step vs recomputing the window, vs continual-inference, and many streams.

Continual Inference Networks (Hedegaard et al.: CoX3D, ECCV 2022; Continual Transformers,
ICLR 2023) claim each new frame costs a fraction of recomputing the clip model over its
window. Measured here, per model and window (16 and 64 frames), interleaved in one run:

- `step`: `elastic.streaming` stepping one frame (batch 1, warm state);
- `recompute`: the torch model (eval, inference mode) over the last `window` frames, keeping
  the newest output — what a non-continual server does per frame;
- `co`: continual-inference 1.2.4's `forward_step` on the same weights, where it builds.

Each contender is timed call by call, alternating (every call right after another
contender's: caches cold), and in bursts of 8 consecutive calls per sample (steady state,
as a stream steps frame after frame); the per-step table reports both ratios.

FLOPs per step come from `torch.utils.flop_counter` (matmul / conv FLOPs, 2 per MAC; the
recompute is counted with the math attention backend, since the counter misses the fused
CPU kernel). Throughput: frames per second through a `StreamSet` with 1 / 8 / 64 streams
stepping every tick, against recomputing a batch of as many windows. Models: a one- and a
two-layer transformer encoder (d_model 256, 8 heads, ff 1024) and a small CoX3D-style 3D
conv net on 32x32 frames (its window is its receptive field). One intra-op thread.
"""

from __future__ import annotations

import argparse
import copy
import logging
import warnings

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import elastic.streaming as es

from .harness import interleaved, markdown_table, paired_ratio, summary, write_results

log = logging.getLogger(__name__)

D_MODEL, HEADS, FF = 256, 8, 1024


def encoder(layers: int) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(D_MODEL, HEADS, FF, dropout=0.0, batch_first=True)
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False).eval()


def conv_net() -> nn.Sequential:
    """A CoX3D-style clip model: 3D convs with temporal kernels, pooling, a linear head."""
    return nn.Sequential(
        nn.Conv3d(3, 16, (3, 3, 3), padding=(0, 1, 1)),
        nn.ReLU(),
        nn.MaxPool3d((1, 2, 2)),
        nn.Conv3d(16, 32, (3, 3, 3), padding=(0, 1, 1)),
        nn.ReLU(),
        nn.MaxPool3d((1, 2, 2)),
        nn.Conv3d(32, 32, (3, 3, 3), padding=(0, 1, 1)),
        nn.ReLU(),
        nn.AvgPool3d((1, 8, 8)),
        nn.Conv3d(32, 10, 1),
    ).eval()


def flops(fn, grad: bool = False) -> int:
    """FLOPs of one call, math attention backend. `grad=True` for torch modules whose no-grad fast path
    (`_native_multi_head_attention`, `_transformer_encoder_layer_fwd`) the counter does not see."""
    counter = FlopCounterMode(display=False)
    with torch.set_grad_enabled(grad), sdpa_kernel(SDPBackend.MATH), counter:
        fn()
    return counter.get_total_flops()


class Case:
    """One model streamed over `window` frames: its contenders as zero-argument calls, one frame each."""

    def __init__(self, name: str, torch_model: nn.Module, window: int, frame_shape: tuple[int, ...], layers: int = 0):
        self.name, self.window, self.frame_shape = name, window, frame_shape
        self.model = torch_model
        self.is_encoder = isinstance(torch_model, nn.TransformerEncoder)
        self.co_model = es.convert(torch_model, window=window) if self.is_encoder else es.convert(torch_model)
        if not self.is_encoder:
            assert self.co_model.receptive_field == window, (self.co_model.receptive_field, window)
        self.frames = torch.randn(window * 4, *frame_shape)
        self.t = window - 1  # the next step takes frame `window`: the stream goes on where warm-up stopped
        self.state = self.co_model.init_state(1, frame_shape)
        with torch.inference_mode():
            for i in range(window):  # warm state: every later step outputs
                _, self.state = self.co_model.step(self.frames[i : i + 1], self.state)
        clip = self.frames[:window].unsqueeze(0)  # (1, T, C, ...)
        self.clip = clip if self.is_encoder else clip.movedim(1, 2)  # encoder: (1, T, C); conv: (1, C, T, H, W)
        self.ref = self._make_co_ref()

    def _frame(self) -> torch.Tensor:
        self.t = (self.t + 1) % len(self.frames)
        return self.frames[self.t : self.t + 1]

    def step(self):
        y, self.state = self.co_model.step(self._frame(), self.state)
        return y

    def recompute(self):
        if self.is_encoder:
            return self.model(self.clip)[:, -1]
        return self.model(self.clip)[:, :, -1]

    def _make_co_ref(self, batch: int = 1):
        """continual-inference's module on the same weights, its state warmed for `batch` lockstep streams."""
        try:
            import continual as co
        except ImportError:
            return None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            logging.getLogger("continual").setLevel(logging.ERROR)
            model = copy.deepcopy(self.model)  # co.continual patches the modules it converts
            try:
                ref = (
                    co.TransformerEncoder.build_from(model, sequence_len=self.window)
                    if self.is_encoder
                    else co.continual(model)
                ).eval()
            except Exception as e:  # continual-inference cannot build it
                log.warning("continual-inference cannot build %s: %s", self.name, e)
                return None
            with torch.no_grad():
                x = self.frames[: self.window].t().unsqueeze(0) if self.is_encoder else self.clip
                ref.forward_steps(x.expand(batch, *x.shape[1:]).contiguous())
        return ref

    def co_step(self):
        return self.ref.forward_step(self._frame())

    def contenders(self) -> dict:
        out = {"step": self.step, "recompute": self.recompute}
        if self.ref is not None:
            out["co"] = self.co_step
        return out

    def flops(self) -> dict[str, int]:
        out = {
            "step": flops(lambda: self.co_model.step(self.frames[:1], self.state)),
            "recompute": flops(self.recompute, grad=True),
        }
        if self.ref is not None:
            with torch.no_grad():
                out["co"] = flops(lambda: self.ref.forward_step(self.frames[:1], update_state=False))
        return out


BURST = 8  # calls per sample in the "in a row" measurement


def per_step(cases: list[Case], repeats: int) -> list[dict]:
    """Per-step times, two ways: contenders alternating call by call (each call right after another
    contender's, caches cold), and in bursts of `BURST` consecutive calls per sample (steady state,
    as a stream steps frame after frame); the rounds alternate between contenders either way."""
    rows = []
    for case in cases:
        with torch.inference_mode():
            calls = case.contenders()
            times = interleaved(calls, repeats=repeats, warmup=10)
            burst = interleaved(calls, repeats=max(5, repeats // 2), warmup=2, inner=BURST)
        fl = case.flops()
        row = {
            "model": case.name,
            "window": case.window,
            **{f"{k}_ms": summary(v) for k, v in times.items()},
            **{f"{k}_ms_in_a_row": summary(v) for k, v in burst.items()},
            "flops": fl,
            "speedup_vs_recompute": paired_ratio(times["recompute"], times["step"]),
            "speedup_vs_recompute_in_a_row": paired_ratio(burst["recompute"], burst["step"]),
            "flops_ratio_vs_recompute": fl["recompute"] / fl["step"],
        }
        if "co" in times:
            row["speedup_vs_co"] = paired_ratio(times["co"], times["step"])
            row["speedup_vs_co_in_a_row"] = paired_ratio(burst["co"], burst["step"])
        rows.append(row)
        log.info("%s window %d: %.1fx vs recompute", case.name, case.window, row["speedup_vs_recompute"])
    return rows


def throughput(case: Case, streams_list=(1, 8, 64), repeats: int = 20) -> list[dict]:
    """Frames per second with N streams each stepping every tick, vs recomputing N windows per tick."""
    rows = []
    for n in streams_list:
        sset = es.StreamSet(case.co_model, case.frame_shape, capacity=n)
        ids = [sset.open() for _ in range(n)]
        frames = torch.randn(n, *case.frame_shape)
        tick = {sid: frames[i] for i, sid in enumerate(ids)}
        windows = case.clip.expand(n, *case.clip.shape[1:]).contiguous()

        def recompute_batch(windows=windows):
            return case.model(windows)

        def stream_tick(sset=sset, tick=tick):
            return sset.step(tick)

        contenders = {"streamset": stream_tick, "recompute": recompute_batch}
        co_ref = case._make_co_ref(n) if case.ref is not None else None
        if co_ref is not None:  # continual-inference: one lockstep batch of n streams, state inside the module
            co_frames = torch.randn(n, *case.frame_shape)
            contenders["co"] = lambda co_ref=co_ref, co_frames=co_frames: co_ref.forward_step(co_frames)
        with torch.inference_mode():
            times = interleaved(contenders, repeats=repeats, warmup=3)
        row = {"model": case.name, "window": case.window, "streams": n}
        for name, samples in times.items():
            row[f"{name}_ms_per_tick"] = summary(samples)
            row[f"{name}_frames_per_s"] = n / (row[f"{name}_ms_per_tick"]["median_ms"] / 1e3)
        row["speedup"] = paired_ratio(times["recompute"], times["streamset"])
        if "co" in times:
            row["speedup_vs_co"] = paired_ratio(times["co"], times["streamset"])
        rows.append(row)
    return rows


def run(args: argparse.Namespace) -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(args.seed)
        repeats = 30 if args.quick else 100
        cases = []
        for window in (16, 64):
            cases.append(Case("encoder-1layer", encoder(1), window, (D_MODEL,)))
            cases.append(Case("encoder-2layer", encoder(2), window, (D_MODEL,)))
        conv = conv_net()
        cases.append(Case("cox3d-conv", conv, es.convert(conv).receptive_field, (3, 32, 32)))
        rows = per_step(cases, repeats)
        tput = []
        for case in cases:
            if case.name == "encoder-1layer" or case.name == "cox3d-conv" or case.window == 64:
                tput += throughput(case, repeats=max(5, repeats // 5))
    finally:
        torch.set_num_threads(threads)

    def ms(row, key):
        return row[key]["median_ms"] if key in row else "—"

    table = markdown_table(
        [
            "model",
            "window",
            "step ms",
            "recompute ms",
            "co ms",
            "× vs recompute",
            "× vs co",
            f"× vs recompute, {BURST} in a row",
            f"× vs co, {BURST} in a row",
            "MFLOPs step / recompute / co",
        ],
        [
            [
                r["model"],
                r["window"],
                ms(r, "step_ms"),
                ms(r, "recompute_ms"),
                ms(r, "co_ms"),
                r["speedup_vs_recompute"],
                r.get("speedup_vs_co", "—"),
                r["speedup_vs_recompute_in_a_row"],
                r.get("speedup_vs_co_in_a_row", "—"),
                "{:.3g} / {:.3g} / {}".format(
                    r["flops"]["step"] / 1e6,
                    r["flops"]["recompute"] / 1e6,
                    f"{r['flops']['co'] / 1e6:.3g}" if "co" in r["flops"] else "—",
                ),
            ]
            for r in rows
        ],
    )
    table += "\n\n" + markdown_table(
        [
            "model",
            "window",
            "streams",
            "StreamSet frames/s",
            "recompute frames/s",
            "co frames/s",
            "× vs recompute",
            "× vs co",
        ],
        [
            [
                r["model"],
                r["window"],
                r["streams"],
                r["streamset_frames_per_s"],
                r["recompute_frames_per_s"],
                r.get("co_frames_per_s", "—"),
                r["speedup"],
                r.get("speedup_vs_co", "—"),
            ]
            for r in tput
        ],
    )
    data = {"rows": rows, "throughput": tput, "threads": 1, "d_model": D_MODEL, "heads": HEADS, "ff": FF}
    write_results(args.out, "streaming", data, table, args.command)
    return {"rows": rows, "throughput": tput, "table": table}
