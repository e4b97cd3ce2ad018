"""One job per output folder: an advisory lock on the folder itself, released by the OS when the job dies (even
by kill -9). Locking the directory leaves no lock file behind among the outputs."""
from __future__ import annotations

import fcntl
import os


class FolderBusy(RuntimeError):
    pass


class OutputLock:
    def __init__(self, folder: str):
        self.folder = folder
        self.fd: int | None = None

    def __enter__(self) -> "OutputLock":
        os.makedirs(self.folder, exist_ok=True)
        fd = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise FolderBusy(f"{self.folder}: another retouch-batch job is writing here; wait for it to finish "
                             "or choose another --out") from None
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
