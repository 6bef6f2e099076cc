"""`ProcessExecutor`: the engine's forwards run in a child process, off the interpreter lock.

An eager forward releases and retakes the interpreter lock at every operator. In one
process, a thread that runs Python while a forward runs — the threads that submit
requests, a web framework's — takes the lock in between, and on a small CPU a 0.7 ms
forward then takes several milliseconds (docs/serving.md, "Worker threading"). vLLM's
answer is to keep the engine's Python and the model's execution in different processes;
this executor does that for the forward alone. The child loads the model from a
checkpoint (`elastic.save`: safetensors and a JSON manifest; a model given without one is
saved to a private temporary folder first), and the worker thread hands it each batch
through a pair of pipes and two shared-memory files: the input rows are copied in, one
13-byte frame names the subnet and the batch size, the child runs the forward and copies
the logits out, and one reply frame says it is done. The worker thread waits in `os.read`,
without the lock, so the front end's Python costs the forward nothing, and the forward
runs on a core of its own.

The price: the hand-off (about 0.1 ms on a 2-core machine) and a second copy of the
weights in memory; a batch larger than the shared buffers grows them first. One child
serves every lane of a runtime, one batch at a time. CPU only.

Use it as `Runtime(model, executor="process")`, or with
`executor_options={"checkpoint": DIR, "threads": 1}`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path

import torch

from elastic.model import ElasticModel

from .executor import Executor
from .process_protocol import ERROR, FRAME, REPLY, RESIZE, RUN, STOP, read_exactly, shared_tensor

log = logging.getLogger(__name__)


class ProcessExecutor(Executor):
    """Runs each batch's forward in one child process that holds its own copy of the model.

    Args:
        model: the elastic model (on the CPU, in eval mode).
        device: "cpu" (the only one).
        checkpoint: an `elastic.save` folder of this model for the child to load; None:
            the model is saved to a temporary folder, removed on `close`.
        threads: torch intra-op threads in the child.
        rows: batch rows the shared buffers hold at first (they grow on demand).
        start_timeout_s: longest to wait for the child to load the model.

    Raises:
        ValueError: a device other than the CPU.
        RuntimeError: the child could not start or load the model.
    """

    name = "process"

    def __init__(
        self,
        model: ElasticModel,
        device: str | torch.device = "cpu",
        checkpoint: str | Path | None = None,
        threads: int = 1,
        rows: int = 16,
        start_timeout_s: float = 300.0,
    ):
        super().__init__(model, device)
        if self.device.type != "cpu":
            raise ValueError(f"the process executor runs on the CPU, not {self.device}")
        if rows < 1 or threads < 1:
            raise ValueError(f"rows and threads must be >= 1, got {rows} and {threads}")
        first = next(model.parameters(), None)
        self.dtype = first.dtype if first is not None else torch.get_default_dtype()
        self._in_row = tuple(model.input_size())
        with torch.inference_mode():  # one sample's logits: the shape of an output row
            probe = torch.zeros(1, *self._in_row, dtype=self.dtype)
            self._out_row = tuple(model(probe, subnet=model.subnets()[0].id).shape[1:])
        self._dir = Path(tempfile.mkdtemp(prefix="elastic-process-executor-", dir=_shm_dir()))
        if checkpoint is None:
            import elastic

            checkpoint = elastic.save(model, self._dir / "model")
        self._lock = threading.Lock()
        self._gen = -1
        self._rows = 0
        self._dead: str | None = None
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()
        config = {
            "checkpoint": str(checkpoint),
            "dir": str(self._dir),
            "in_row": self._in_row,
            "out_row": self._out_row,
            "dtype": str(self.dtype).removeprefix("torch."),
            "threads": threads,
            "fds": [to_child_r, from_child_w],
        }
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "elastic.serving.process_worker", json.dumps(config)],
            pass_fds=(to_child_r, from_child_w),
            stdin=subprocess.DEVNULL,
        )
        os.close(to_child_r)
        os.close(from_child_w)
        self._finalizer = weakref.finalize(
            self, _shut_down, self._proc, self._to_child, self._from_child, str(self._dir)
        )
        ready, _, _ = select.select([self._from_child], [], [], start_timeout_s)
        if not ready:
            self.close()
            raise RuntimeError(f"the executor process did not load the model within {start_timeout_s} s")
        try:
            self._reply("loading the model")
            self._grow(rows)
        except RuntimeError:
            self.close()
            raise

    def run(self, subnet: int, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        with self._lock:
            if self._dead is not None:
                raise RuntimeError(f"the executor process is gone ({self._dead}); create a new Runtime")
            if n > self._rows:
                self._grow(max(n, 2 * self._rows))
            self._x[:n].copy_(x)
            self._send(RUN, subnet, n)
            self._reply(f"subnet {subnet} on {n} rows")
            return self._y[:n].clone()

    def close(self) -> None:
        """Stop the child and remove the shared files (and a temporary checkpoint)."""
        with self._lock:
            if self._dead is None:
                self._dead = "closed"
            self._finalizer()

    # ---- the protocol ------------------------------------------------------------------
    def _grow(self, rows: int) -> None:
        """New shared buffers of `rows` rows; the child maps them before the next batch."""
        self._gen += 1
        with torch.inference_mode(False):  # normal tensors: writable in and out of inference mode
            self._x = shared_tensor(self._dir, f"in-{self._gen}", (rows, *self._in_row), self.dtype, create=True)
            self._y = shared_tensor(self._dir, f"out-{self._gen}", (rows, *self._out_row), self.dtype, create=True)
        self._send(RESIZE, 0, rows)
        self._reply(f"mapping {rows}-row buffers")
        for old in (f"in-{self._gen - 1}", f"out-{self._gen - 1}"):
            (self._dir / old).unlink(missing_ok=True)
        self._rows = rows

    def _send(self, op: int, subnet: int, rows: int) -> None:
        try:
            os.write(self._to_child, FRAME.pack(op, subnet, rows, self._gen))
        except OSError as e:
            self._lost(f"write failed: {e}")

    def _reply(self, doing: str) -> None:
        head = read_exactly(self._from_child, REPLY.size)
        if head is None:
            self._lost(f"it exited while {doing}")
        status, length = REPLY.unpack(head)
        text = read_exactly(self._from_child, length) if length else b""
        if text is None:
            self._lost(f"it exited while {doing}")
        if status == ERROR:
            raise RuntimeError(f"{doing} failed in the executor process: {text.decode(errors='replace')}")

    def _lost(self, why: str) -> None:
        try:
            code = self._proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            code = None
        self._dead = f"{why}; exit code {code}"
        log.error("the executor process is gone: %s", self._dead)
        raise RuntimeError(f"the executor process is gone ({self._dead})")


def _shm_dir() -> str | None:
    """/dev/shm where there is one (memory, not disk), else the default temporary folder."""
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def _shut_down(proc: subprocess.Popen, to_child: int, from_child: int, folder: str) -> None:
    """Ask the child to stop, then make sure it has; close the pipes; remove the files."""
    with contextlib.suppress(OSError):  # the child may be gone already
        os.write(to_child, FRAME.pack(STOP, 0, 0, 0))
    deadline = time.monotonic() + 5.0
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    for fd in (to_child, from_child):
        with contextlib.suppress(OSError):
            os.close(fd)
    shutil.rmtree(folder, ignore_errors=True)
