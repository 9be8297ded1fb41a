"""``transport``: large storages travel as shared files (written once per live storage, removed when it is freed or
on ``clear``), small ones inline; unpacked tensors equal the originals, keep their views' sharing, and a write
into them stays private."""
import errno
import gc
import glob
import os

import pytest
import torch
from tandem.workers import transport

MiB = 1 << 20


def shared_files() -> set[str]:
    """This process's shared-memory files."""
    return {f for d in transport.DIRECTORIES for f in glob.glob(os.path.join(d, f"tandem-{os.getpid()}-*"))}


@pytest.fixture(autouse=True)
def no_files_left():
    yield
    transport.clear()
    assert not shared_files()


def test_round_trip_by_reference_and_inline():
    weight = torch.randn(MiB // 4)                        # 1 MiB: by reference
    half = torch.randn(2 * MiB).to(torch.bfloat16)
    fp8 = torch.randn(MiB).to(torch.float8_e4m3fn)
    small = torch.randn(10)
    obj = {"weight": weight, "view": weight.view(512, 512)[3:7, 2:].t(), "param": torch.nn.Parameter(weight),
           "half": half, "fp8": fp8, "small": small, "fn": lambda x: x + 1}     # cloudpickle, as Ray would
    data = transport.pack(obj)
    assert len(data) < 10_000 and len(shared_files()) == 3
    back = transport.unpack(data)
    for name in ("weight", "view", "param", "half", "fp8", "small"):
        assert back[name].dtype == obj[name].dtype and torch.equal(back[name].float(), obj[name].float()), name
        assert back[name].stride() == obj[name].stride()
    assert isinstance(back["param"], torch.nn.Parameter) and back["fn"](1) == 2
    shared = {back[n].untyped_storage().data_ptr() for n in ("weight", "view", "param")}
    assert len(shared) == 1                               # one storage, as in ComfyUI's process


def test_written_once_per_live_storage_and_removed_when_freed():
    weight = torch.randn(MiB)
    transport.pack(weight)
    files = shared_files()
    mtimes = {f: os.stat(f).st_mtime_ns for f in files}
    back = transport.unpack(transport.pack([weight, weight[1:]]))
    assert shared_files() == files and {f: os.stat(f).st_mtime_ns for f in files} == mtimes
    del weight
    gc.collect()
    assert not shared_files()
    assert torch.equal(back[1], back[0][1:])               # a worker's mapping outlives the file's name


def test_writes_stay_private_and_clear_removes():
    weight = torch.zeros(MiB)
    data = transport.pack(weight)
    transport.unpack(data).add_(1)
    assert transport.unpack(data).sum() == 0
    transport.clear()
    assert not shared_files()
    assert transport.unpack(transport.pack(weight)).sum() == 0     # packed again after clear: written again
    assert len(shared_files()) == 1


def test_full_shared_memory_falls_back_to_the_next_folder(monkeypatch, tmp_path):
    full, spare = tmp_path / "full", tmp_path / "spare"
    full.mkdir(), spare.mkdir()
    monkeypatch.setattr(transport, "DIRECTORIES", [str(full), str(spare)])
    fallocate = os.posix_fallocate

    def fallocate_or_full(fd, offset, nbytes):
        if os.readlink(f"/proc/self/fd/{fd}").startswith(str(full)):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        fallocate(fd, offset, nbytes)

    monkeypatch.setattr(os, "posix_fallocate", fallocate_or_full)
    weight = torch.randn(MiB)
    assert torch.equal(transport.unpack(transport.pack(weight)), weight)
    assert not list(full.iterdir()) and len(list(spare.iterdir())) == 1


def test_without_files_the_storages_go_beside_the_pickle():
    """For workers on other hosts: no file, each large storage once (as a numpy array Ray's object store carries out
    of band, once per host), views and dtypes kept; read-only arrays, as Ray hands them out, unpack quietly."""
    import pickle
    import warnings

    weight = torch.randn(MiB // 4)
    fp8 = torch.randn(MiB).to(torch.float8_e4m3fn)
    obj = {"weight": weight, "view": weight.view(512, 512)[3:7, 2:].t(), "fp8": fp8, "small": torch.randn(10)}
    stored = transport.pack(obj, files=False)
    assert isinstance(stored, transport.Stored) and not shared_files()
    assert len(stored.data) < 10_000 and [b.nbytes for b in stored.buffers] == [MiB, MiB]
    stored = pickle.loads(pickle.dumps(stored))          # as the driver's pipe carries it
    for array in stored.buffers:
        array.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        back = transport.unpack(stored)
    for name in obj:
        assert back[name].dtype == obj[name].dtype and torch.equal(back[name].float(), obj[name].float()), name
        assert back[name].stride() == obj[name].stride()
    assert back["view"].untyped_storage().data_ptr() == back["weight"].untyped_storage().data_ptr()
