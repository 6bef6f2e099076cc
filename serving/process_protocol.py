"""The wire between `ProcessExecutor` and its child (`process_worker`), shared by both sides.

Requests are 13-byte frames (operation, subnet, rows, generation of the shared files) on
one pipe; answers are 5-byte frames (status, length of the error text that follows) on
another. Batches themselves never cross a pipe: they sit in file-backed tensors both
processes map, named by generation (`in-G`, `out-G`), replaced by larger ones on RESIZE.
"""

from __future__ import annotations

import math
import os
import struct
from pathlib import Path

import torch

FRAME = struct.Struct("<Biii")  # op, subnet, rows, generation of the shared files
REPLY = struct.Struct("<BI")  # status, length of the error text that follows
RUN, RESIZE, STOP = 0, 1, 2  # operations
OK, ERROR, READY = 0, 1, 2  # statuses


def read_exactly(fd: int, n: int) -> bytes | None:
    """`n` bytes from `fd`, or None at end of file (the other side exited)."""
    chunks, left = [], n
    while left:
        chunk = os.read(fd, left)
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def answer(fd: int, status: int, text: str = "") -> None:
    """Write one reply frame, with `text` (an error) after it."""
    data = text.encode()
    os.write(fd, REPLY.pack(status, len(data)) + data)


def shared_tensor(folder: Path, name: str, shape: tuple[int, ...], dtype: torch.dtype, create: bool) -> torch.Tensor:
    """A tensor backed by the file `folder / name`, mapped shared (`create`: make the file
    first; it is zero-filled to size)."""
    path = folder / name
    if create:
        path.touch()
    return torch.from_file(str(path), shared=True, size=math.prod(shape), dtype=dtype).view(shape)
