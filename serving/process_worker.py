"""The child side of `ProcessExecutor`: `python -m elastic.serving.process_worker CONFIG`.

Loads the model from the checkpoint CONFIG names, answers "ready", then serves frames
until told to stop or its parent goes away: RESIZE maps the parent's new shared buffers,
RUN runs one subnet on the first rows of the input buffer and writes the logits to the
output buffer. A failed forward is answered with its error text; the child keeps serving.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from .process_executor import _ERROR, _FRAME, _OK, _READY, _REPLY, _RESIZE, _RUN, _STOP, _read_exactly


def _answer(fd: int, status: int, text: str = "") -> None:
    data = text.encode()
    os.write(fd, _REPLY.pack(status, len(data)) + data)


def _mapped(folder: Path, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    numel = 1
    for d in shape:
        numel *= d
    return torch.from_file(str(folder / name), shared=True, size=numel, dtype=dtype).view(shape)


def serve(config: dict) -> None:
    inbox, outbox = config["fds"]
    torch.set_num_threads(config["threads"])
    try:
        import elastic

        model = elastic.load(config["checkpoint"]).eval()
    except Exception as e:  # noqa: BLE001 - the parent reports it
        _answer(outbox, _ERROR, f"{type(e).__name__}: {e}")
        return
    _answer(outbox, _READY)
    folder, dtype = Path(config["dir"]), getattr(torch, config["dtype"])
    in_row, out_row = tuple(config["in_row"]), tuple(config["out_row"])
    x = y = None
    with torch.inference_mode():
        while True:
            frame = _read_exactly(inbox, _FRAME.size)
            if frame is None:
                return  # the parent is gone
            op, subnet, rows, gen = _FRAME.unpack(frame)
            if op == _STOP:
                return
            try:
                if op == _RESIZE:
                    x = _mapped(folder, f"in-{gen}", (rows, *in_row), dtype)
                    y = _mapped(folder, f"out-{gen}", (rows, *out_row), dtype)
                elif op == _RUN:
                    y[:rows].copy_(model(x[:rows], subnet=subnet))
                else:
                    raise ValueError(f"unknown operation {op}")
            except Exception as e:  # noqa: BLE001 - the batch fails, the child serves on
                _answer(outbox, _ERROR, f"{type(e).__name__}: {e}")
                continue
            _answer(outbox, _OK)


if __name__ == "__main__":
    serve(json.loads(sys.argv[1]))
