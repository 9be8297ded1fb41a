"""Large tensors of a job reach the workers on ComfyUI's host by reference, through files in shared memory.

``pack`` pickles an object (as Ray would, with cloudpickle) but writes every tensor storage of at least
``THRESHOLD`` bytes into a file of its own under ``/dev/shm`` (the temp folder where that is missing or full) and
pickles a reference to that file instead: Ray carries the rest (hint images, most conditioning), while ControlNet and
VAE weights, and any other tensor as large, stay in the files. ``unpack`` maps each file privately (copy-on-write):
the worker's tensors view the host's page cache and cost no host memory of their own, and a worker that wrote into
them would change only its own pages. A storage on a GPU is copied straight into its file and arrives on the CPU.

A storage's file is written once and reused while that storage lives, so a ControlNet used in consecutive prompts
is written once; the file is removed when the storage is freed, on Tandem Shutdown (``clear``) and at exit. The
cache assumes what ComfyUI does: a live tensor's values do not change in place between prompts.

The files exist only on ComfyUI's host, so they are used only when every worker runs there (``Group.on_this_host``).
Otherwise (``files=False``) the large storages go beside the pickle as numpy arrays (``Stored``): Ray's object store
holds them once per host (it moves an object to a node once, into that node's shared memory), and every worker there
reads them without a copy (Ray's zero-copy numpy deserialization); the tensors view that memory, read-only as Ray
hands it out. So LoRA, ControlNet and VAE weights reach other hosts once per host too, per job (nothing is cached
there between jobs), and no worker keeps a private copy.

Objects that already exist in every worker (Tandem's stand-in model on ComfyUI's host, and every patcher cloned from
it) are not pickled at all: ``pack``'s ``reference`` names them, and ``unpack``'s ``resolve`` gives each name the
worker's own object (its resident model, the job's patcher), so a patch that captured the model stays bound to it.
"""
import functools
import importlib
import io
import os
import pickle
import tempfile
import threading
import types
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from ray import cloudpickle

from .comfyui import importable_name

THRESHOLD = 1 << 16            # storages of at least this many bytes go by reference (LoRA factors are ~100 KB)
DIRECTORIES = [d for d in ("/dev/shm", tempfile.gettempdir()) if os.path.isdir(d)]    # the first with room

_files: dict[int, tuple[str, weakref.finalize]] = {}    # id of a live UntypedStorage -> its file, its finalizer
_writing = threading.Lock()


def _remove(key: int, path: str) -> None:
    _files.pop(key, None)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _new_file(nbytes: int) -> str:
    """A file of ``nbytes`` in the first of ``DIRECTORIES`` with room: the space is reserved up front, as writing
    into a mapping of a full tmpfs (Docker's /dev/shm is 64 MB by default) kills the process with SIGBUS."""
    for directory in DIRECTORIES:
        fd, path = tempfile.mkstemp(prefix=f"tandem-{os.getpid()}-", dir=directory)
        try:
            os.posix_fallocate(fd, 0, nbytes)
            return path
        except OSError:
            os.unlink(path)
            if directory == DIRECTORIES[-1]:
                raise
        finally:
            os.close(fd)


def _file_for(storage: torch.UntypedStorage) -> str:
    """The file holding ``storage``'s bytes, written on first use. Torch keeps one Python object per live storage,
    and its finalizer drops the entry before its id can be reused."""
    with _writing:
        if id(storage) not in _files:
            path = _new_file(storage.nbytes())
            torch.UntypedStorage.from_file(path, shared=True, nbytes=storage.nbytes()).copy_(storage)
            _files[id(storage)] = path, weakref.finalize(storage, _remove, id(storage), path)
        return _files[id(storage)][0]


@dataclass
class Stored:
    """An object packed for workers on other hosts: the pickle, and its large storages as numpy arrays (uint8) that
    Ray's object store carries out of band, once per host."""
    data: bytes
    buffers: list = field(default_factory=list)


class _Pickler(cloudpickle.CloudPickler):
    def __init__(self, file, reference: Callable[[object], str | None], files: bool):
        super().__init__(file)
        self.reference, self.files = reference, files
        self.buffers: list = []                 # without files: the large storages, in order
        self.stored: dict[int, int] = {}        # id of a storage -> its index in ``buffers``

    def reducer_override(self, obj):
        """A class or function of a module ComfyUI loaded by path (``comfy_extras``: guiders, patch functions)
        travels by its importable name, which workers import as usual."""
        if isinstance(obj, (type, types.FunctionType)) and "<locals>" not in obj.__qualname__:
            name = importable_name(obj.__module__)
            if name is not None:
                return _import_attribute, (name, obj.__qualname__)
        return super().reducer_override(obj)

    def persistent_id(self, obj):
        """Tensors pickle their storage typed (most dtypes) or untyped (float8 and newer; it unpickles as bytes)."""
        name = self.reference(obj)
        if name is not None:
            return "tandem-ref", name
        typed = isinstance(obj, torch.storage.TypedStorage)
        storage = obj._untyped_storage if typed else obj
        if not isinstance(storage, torch.UntypedStorage) or storage.nbytes() < THRESHOLD:
            return None
        dtype = obj.dtype if typed else torch.uint8
        if self.files:
            return "tandem-file", _file_for(storage), storage.nbytes(), dtype
        if id(storage) not in self.stored:
            self.stored[id(storage)] = len(self.buffers)
            self.buffers.append(torch.empty(0, dtype=torch.uint8, device=storage.device).set_(storage).cpu().numpy())
        return "tandem-buffer", self.stored[id(storage)], storage.nbytes(), dtype


def _import_attribute(module: str, qualname: str):
    return functools.reduce(getattr, qualname.split("."), importlib.import_module(module))


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, resolve: Callable[[str], object], buffers: list):
        super().__init__(file)
        self.resolve, self.buffers = resolve, buffers
        self.storages: dict[str, torch.UntypedStorage] = {}    # tensors that shared a storage share one here

    def persistent_load(self, pid):
        if pid[0] == "tandem-ref":
            return self.resolve(pid[1])
        kind, where, nbytes, dtype = pid
        if where not in self.storages and kind == "tandem-file":
            self.storages[where] = torch.UntypedStorage.from_file(where, shared=False, nbytes=nbytes)
        elif where not in self.storages:
            with warnings.catch_warnings():      # Ray's arrays are read-only: nothing here writes into them
                warnings.filterwarnings("ignore", message=".*not writable")
                self.storages[where] = torch.frombuffer(self.buffers[where], dtype=torch.uint8).untyped_storage()
        return torch.storage.TypedStorage(wrap_storage=self.storages[where], dtype=dtype, _internal=True)


def pack(obj, reference: Callable[[object], str | None] = lambda obj: None, files: bool = True) -> bytes | Stored:
    """``obj`` pickled; objects ``reference`` names are left for the worker to resolve, and storages of ``THRESHOLD``
    bytes or more are replaced by references to shared files (``files``: every worker is on this host) or go beside
    the pickle for Ray's object store (``Stored``)."""
    buffer = io.BytesIO()
    pickler = _Pickler(buffer, reference, files)
    pickler.dump(obj)
    return buffer.getvalue() if files else Stored(buffer.getvalue(), pickler.buffers)


def unpack(data: bytes | Stored, resolve: Callable[[str], object] | None = None):
    """What ``pack`` pickled, its named objects given by ``resolve``, its large tensors viewing the shared files or
    Ray's copy of the storages on this host."""
    stored = data if isinstance(data, Stored) else Stored(data)
    return _Unpickler(io.BytesIO(stored.data), resolve, stored.buffers).load()


def hand_over(tensor: torch.Tensor) -> tuple[str, torch.Size, torch.dtype]:
    """A large result for ComfyUI's host, copied (from a GPU: once, straight from device memory) into a new shared
    file that the host takes over with ``take``: Ray would pickle and copy it twice more."""
    nbytes = tensor.numel() * tensor.element_size()
    path = _new_file(nbytes)
    storage = torch.UntypedStorage.from_file(path, shared=True, nbytes=nbytes)
    torch.empty(0, dtype=tensor.dtype).set_(storage, 0, tensor.shape).copy_(tensor)
    return path, tensor.shape, tensor.dtype


def take(handle: tuple[str, torch.Size, torch.dtype]) -> torch.Tensor:
    """The tensor ``hand_over`` wrote, mapped privately; its file is removed at once (the mapping keeps the pages)."""
    path, shape, dtype = handle
    nbytes = shape.numel() * dtype.itemsize
    storage = torch.UntypedStorage.from_file(path, shared=False, nbytes=nbytes)
    os.unlink(path)
    return torch.empty(0, dtype=dtype).set_(storage, 0, shape)


def clear() -> None:
    """Remove every shared file; a storage packed again is written again."""
    for _, finalizer in list(_files.values()):
        finalizer()
