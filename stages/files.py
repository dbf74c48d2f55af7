"""Files between actors through Ray's object store, never whole in the heap of the process that passes them on.

A file's bytes travel as a uint8 numpy array: Ray keeps an array's buffer in its shared-memory object store, and a
process that gets one maps that memory instead of copying it into its heap (`bytes` it copies). So the controller,
which writes every checkpoint to disk and reads it back for a restarted trainer, holds no model in its own memory:
before, a checkpoint passed through it as bytes (an 8B student's: 32 GB of weights, and twice that of optimizer
state, in a 0-CPU actor). The trainer, which needs the bytes themselves, takes its copy with `as_bytes`.
"""
from __future__ import annotations

from pathlib import Path


def blob(data: bytes):
    """`data` as a uint8 array (no copy): what a stage actor returns for a file's bytes."""
    import numpy as np

    return np.frombuffer(data, dtype=np.uint8)


def as_bytes(data) -> bytes:
    """The bytes of a blob, a mapped file or bytes (bytes as they are)."""
    return data if isinstance(data, bytes) else memoryview(data).tobytes()


def mapped(path: Path):
    """A file's bytes as a uint8 array mapped from disk: sent to an actor, it is read into the object store as it
    is serialized, not first into this process's heap."""
    import numpy as np

    if Path(path).stat().st_size == 0:  # nothing to map
        return np.zeros(0, dtype=np.uint8)
    return np.asarray(np.memmap(path, dtype=np.uint8, mode="r"))


def write_files(files: dict, folder: Path) -> None:
    """{file name: bytes or blob} written into `folder` (made), each straight from the buffer it arrived in."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
