"""`elastic export-onnx MODEL_DIR --subnets pareto|all|IDS --out OUT`: one ONNX graph per subnet.

Loads a saved model on the CPU, exports the chosen subnets with `elastic.export.onnx`
(each checked in onnxruntime against torch) and prints what it wrote.
"""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    from elastic.export import DEFAULT_OPSET

    p = sub.add_parser(
        "export-onnx",
        help="export a saved model's subnets as ONNX graphs (one per subnet, dynamic batch) with a manifest",
        description="Export subnets of a model saved by elastic.save to ONNX, one graph per subnet with a "
        "dynamic batch axis, plus OUT/manifest.json (subnet id, FLOPs, accuracy and sha256 of every file). "
        "Serve them with Runtime(..., executor='onnxruntime', executor_options={'export_dir': OUT}).",
    )
    p.add_argument("model", help="checkpoint directory written by elastic.save")
    p.add_argument(
        "--subnets",
        default="pareto",
        help="'pareto' (accuracy/FLOPs front, the default; needs accuracies), 'all', or ids like '0,3,7-9'",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--opset",
        type=int,
        default=DEFAULT_OPSET,
        help=f"ONNX opset (default {DEFAULT_OPSET}: fused Attention; 18 decomposes attention into MatMul/Softmax)",
    )
    p.add_argument("--no-verify", action="store_true", help="skip the onnxruntime-vs-torch check of every graph")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from elastic.checkpoint import load
    from elastic.export.onnx import export_onnx

    model = load(args.model, map_location="cpu")
    try:
        manifest = export_onnx(
            model,
            args.out,
            args.subnets,
            opset=args.opset,
            verify=not args.no_verify,
            source=args.model,
            progress=not args.no_progress,
        )
    except ValueError as e:  # a bad --subnets or --opset
        print(f"error: {e}", file=sys.stderr)
        return 2
    entries = manifest["subnets"]
    print(
        f"{len(entries)} subnets of a {manifest['builder']} exported to {args.out} (opset {manifest['opset']}, "
        f"attention {'fused' if manifest['fused_attention'] else 'decomposed'})"
    )
    print(f"{'id':>4}  {'MFLOPs':>10} {'acc %':>7} {'MB':>7} {'max diff':>9}  file")
    for e in entries:
        acc = f"{100 * e['accuracy']:7.2f}" if e.get("accuracy") is not None else f"{'-':>7}"
        diff = f"{e['max_abs_diff']:9.1e}" if "max_abs_diff" in e else f"{'-':>9}"
        print(f"{e['id']:>4}  {e['flops'] / 1e6:>10.2f} {acc} {e['bytes'] / 1e6:>7.2f} {diff}  {e['file']}")
    print(f"wrote {args.out}/manifest.json")
    return 0
