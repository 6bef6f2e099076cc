"""The child side of `ProcessExecutor`: `python -m elastic.serving.process_worker CONFIG`.

Loads the model from the checkpoint CONFIG names, answers "ready", then serves frames
until told to stop or its parent goes away: RESIZE maps the parent's new shared buffers,
RUN runs one subnet on the first rows of the input buffer and writes the logits to the
output buffer. A failed forward is answered with its error text; the child keeps serving.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from .executor import takes_check
from .process_protocol import ERROR, FRAME, OK, READY, RESIZE, RUN, STOP, answer, read_exactly, shared_tensor


def serve(config: dict) -> None:
    inbox, outbox = config["fds"]
    torch.set_num_threads(config["threads"])
    try:
        import elastic

        model = elastic.load(config["checkpoint"]).eval()
    except Exception as e:  # noqa: BLE001 - the parent reports it
        answer(outbox, ERROR, f"{type(e).__name__}: {e}")
        return
    answer(outbox, READY)
    skip = {"check": False} if takes_check(type(model).forward) else {}  # the parent checked every sample
    folder, dtype = Path(config["dir"]), getattr(torch, config["dtype"])
    in_row, out_row = tuple(config["in_row"]), tuple(config["out_row"])
    x = y = None
    with torch.inference_mode():
        while True:
            frame = read_exactly(inbox, FRAME.size)
            if frame is None:
                return  # the parent is gone
            op, subnet, rows, gen = FRAME.unpack(frame)
            if op == STOP:
                return
            try:
                if op == RESIZE:
                    x = shared_tensor(folder, f"in-{gen}", (rows, *in_row), dtype, create=False)
                    y = shared_tensor(folder, f"out-{gen}", (rows, *out_row), dtype, create=False)
                elif op == RUN:
                    y[:rows].copy_(model(x[:rows], subnet=subnet, **skip))
                else:
                    raise ValueError(f"unknown operation {op}")
            except Exception as e:  # noqa: BLE001 - the batch fails, the child serves on
                answer(outbox, ERROR, f"{type(e).__name__}: {e}")
                continue
            answer(outbox, OK)


if __name__ == "__main__":
    serve(json.loads(sys.argv[1]))
