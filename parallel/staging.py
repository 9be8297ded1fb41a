"""Copy checkpoint tensors into their destinations fast: file → staging buffers (reader threads) → device.

Tensors that view the safetensors mmap are read with ``os.preadv`` straight from the page cache into a ring of
staging buffers (pinned on a GPU, so uploads are DMA and overlap the next reads); several threads read at once, as
one thread's copy (and the page faults of touching the mmap) tops out far below what memory can deliver. Tensors
that ComfyUI rebuilt while processing the state dict are copied from memory the same way. Items complete strictly
in the order they were queued, so every rank can issue collectives on them in one shared order.
"""
import json
import os
import struct
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch

MAX_PREAD = 1 << 30          # Linux reads at most ~2 GiB per call; stay well below


class FileRanges:
    """Where each mmap-backed tensor of a file lies in it, found from its address: ``base`` is the address of the
    file's byte 0 in the mmap (None: the tensors are not views of one mmap)."""

    def __init__(self, path: str, base: int | None):
        self.path, self.base = path, base
        self.size = os.path.getsize(path)

    @classmethod
    def safetensors(cls, path: str, raw: dict[str, torch.Tensor]) -> "FileRanges":
        with open(path, "rb") as f:
            header_len = struct.unpack("<Q", f.read(8))[0]
            header = json.loads(f.read(header_len))
        data_start = 8 + header_len
        entries = {k: v for k, v in header.items() if k != "__metadata__" and k in raw}
        bases = {raw[k].data_ptr() - data_start - v["data_offsets"][0] for k, v in entries.items() if raw[k].numel()}
        return cls(path, bases.pop() if len(bases) == 1 else None)

    def offset(self, t: torch.Tensor) -> int | None:
        """File offset of ``t``'s bytes, or None when ``t`` is not a contiguous view of this file's mmap."""
        if self.base is None or not t.is_contiguous() or t.device.type != "cpu":
            return None
        start = t.data_ptr() - self.base
        end = start + t.numel() * t.element_size()
        return start if 0 <= start and end <= self.size else None


def _bytes(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1).view(torch.uint8)


class Stager:
    """An ordered pipeline: ``put`` queues a copy of ``source``'s bytes into ``dst`` (same dtype and shape) and/or a
    callback; ``finish`` drains it. A callback runs on the calling thread once every copy queued before it has been
    issued to its device (a GPU copy may still be in flight, ordered on the current stream)."""

    def __init__(self, ranges: FileRanges | None, threads: int, slot_bytes: int = 16 << 20):
        self.ranges = ranges if ranges is not None and ranges.base is not None else None
        self.fd = os.open(self.ranges.path, os.O_RDONLY) if self.ranges else None
        self.pool = ThreadPoolExecutor(threads)
        self.slot_bytes = slot_bytes
        pin = torch.cuda.is_available()
        self.free = deque(torch.empty(slot_bytes, dtype=torch.uint8, pin_memory=pin) for _ in range(2 * threads))
        self.uploads: dict[int, torch.cuda.Event] = {}      # slot address -> its last upload
        self.queue: deque[tuple] = deque()                  # (read, slot, n, dst bytes) or (None, callback)

    def put(self, source: torch.Tensor | None, dst: torch.Tensor | None = None,
            then: Callable[[], None] | None = None) -> None:
        if source is not None and source.numel():
            offset = self.ranges.offset(source) if self.ranges else None
            src, out = _bytes(source.contiguous()), _bytes(dst)
            for start in range(0, out.numel(), self.slot_bytes):
                n = min(self.slot_bytes, out.numel() - start)
                slot = self._take_slot()
                if offset is None:
                    read = self.pool.submit(slot[:n].copy_, src[start:start + n])
                else:
                    read = self.pool.submit(self._pread, slot[:n], offset + start)
                self.queue.append((read, slot, n, out[start:start + n]))
        if then is not None:
            self.queue.append((None, then))

    def finish(self) -> None:
        try:
            while self.queue:
                self._complete_one()
            if torch.cuda.is_available():
                torch.cuda.current_stream().synchronize()
        finally:
            self.pool.shutdown(cancel_futures=True)
            if self.fd is not None:
                os.close(self.fd)
            self.free.clear()
            self.uploads.clear()
            if torch.cuda.is_available():
                torch._C._host_emptyCache()     # hand the pinned slots back: they would stay as private host RAM

    def _take_slot(self) -> torch.Tensor:
        while not self.free:
            self._complete_one()
        slot = self.free.popleft()
        upload = self.uploads.pop(slot.data_ptr(), None)
        if upload is not None:
            upload.synchronize()           # the slot's previous upload has left
        return slot

    def _pread(self, view: torch.Tensor, offset: int) -> None:
        buffer, done = memoryview(view.numpy()), 0
        while done < len(buffer):
            n = os.preadv(self.fd, [buffer[done:done + MAX_PREAD]], offset + done)
            if n <= 0:
                raise OSError(f"{self.ranges.path} ends at byte {offset + done}, inside a tensor: it is truncated")
            done += n

    def _complete_one(self) -> None:
        item = self.queue.popleft()
        if item[0] is None:
            item[1]()
            return
        read, slot, n, target = item
        read.result()
        target.copy_(slot[:n], non_blocking=target.is_cuda)
        if target.is_cuda:
            self.uploads[slot.data_ptr()] = torch.cuda.Event()
            self.uploads[slot.data_ptr()].record()
        self.free.append(slot)


def reader_threads(local_workers: int) -> int:
    """Reader threads per worker: the host's cores shared by the workers on it, between 2 and 8."""
    return max(2, min(8, (os.cpu_count() or 2) // max(1, local_workers)))
