"""Large tensors of a request reach the workers on ComfyUI's host by reference, through files in shared memory.

``pack`` pickles an object (as Ray would, with cloudpickle) but writes every tensor storage of at least
``THRESHOLD`` bytes into a file of its own under ``/dev/shm`` (the temp folder where that is missing or full) and
pickles a reference to that file instead: Ray carries the rest (hint images, most conditioning), while ControlNet and
VAE weights, and any other tensor as large, stay in the files. ``unpack`` maps each file privately (copy-on-write):
the worker's tensors view the host's page cache and cost no host memory of their own, and a worker that wrote into
them would change only its own pages. A storage on a GPU is copied straight into its file and arrives on the CPU.

A storage's file is written once and reused while that storage lives, so a ControlNet used in consecutive prompts
is written once; the file is removed when the storage is freed, on Tandem Shutdown (``clear``) and at exit. The
cache assumes what ComfyUI does: a live tensor's values do not change in place between prompts.

The files exist only on ComfyUI's host: ``workers.group.Group.sample`` packs only when every worker runs there, and
otherwise sends the request through Ray whole.
"""
import io
import os
import pickle
import tempfile
import threading
import weakref

import torch
from ray import cloudpickle

THRESHOLD = 1 << 20            # storages of at least this many bytes go by reference
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


class _Pickler(cloudpickle.CloudPickler):
    def persistent_id(self, obj):
        """Tensors pickle their storage typed (most dtypes) or untyped (float8 and newer; it unpickles as bytes)."""
        typed = isinstance(obj, torch.storage.TypedStorage)
        storage = obj._untyped_storage if typed else obj
        if isinstance(storage, torch.UntypedStorage) and storage.nbytes() >= THRESHOLD:
            return "tandem-file", _file_for(storage), storage.nbytes(), obj.dtype if typed else torch.uint8
        return None


class _Unpickler(pickle.Unpickler):
    def __init__(self, file):
        super().__init__(file)
        self.storages: dict[str, torch.UntypedStorage] = {}    # tensors that shared a storage share one here

    def persistent_load(self, pid):
        _, path, nbytes, dtype = pid
        if path not in self.storages:
            self.storages[path] = torch.UntypedStorage.from_file(path, shared=False, nbytes=nbytes)
        return torch.storage.TypedStorage(wrap_storage=self.storages[path], dtype=dtype, _internal=True)


def pack(obj) -> bytes:
    """``obj`` pickled, its storages of ``THRESHOLD`` bytes or more replaced by references to shared files."""
    buffer = io.BytesIO()
    _Pickler(buffer).dump(obj)
    return buffer.getvalue()


def unpack(data: bytes):
    """What ``pack`` pickled, its large tensors viewing the shared files (on ComfyUI's host only)."""
    return _Unpickler(io.BytesIO(data)).load()


def clear() -> None:
    """Remove every shared file; a storage packed again is written again."""
    for _, finalizer in list(_files.values()):
        finalizer()
