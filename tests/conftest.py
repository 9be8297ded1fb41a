"""Shared fixtures.

``tandem`` is registered as a package without running its ``__init__`` (that imports the ComfyUI nodes, which need
a running ComfyUI), so test helpers import as ``tandem.tests.*`` and never clash with ComfyUI's own ``server.py``.
"""
import importlib.util
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("COMFYUI_PATH", str(ROOT / ".comfyui"))
if "tandem" not in sys.modules:
    _spec = importlib.util.spec_from_file_location("tandem", ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    sys.modules["tandem"] = importlib.util.module_from_spec(_spec)

from tandem.workers.comfyui import import_comfyui  # noqa: E402

import_comfyui()
from tandem.tests.server import ComfyServer, tandem_server  # noqa: E402


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``checkpoint(family)`` -> path of that family's tiny safetensors file, written once per session."""
    from tandem.tests.checkpoints import make_checkpoint

    directory = tmp_path_factory.mktemp("checkpoints")
    paths: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in paths:
            paths[family] = make_checkpoint(family, directory)
            print(f"{paths[family].name}: {paths[family].stat().st_size / 1e6:.1f} MB")
        return paths[family]

    return get


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComfyServer]:
    """One real ComfyUI server for the whole session (startup is slow), SHARED by every test that uses it:
    tests may add files under ``diffusion_models_dir`` and queue prompts, but must not stop or reconfigure it.
    Besides Tandem it loads ``tests/comfy_nodes/tandem_test_nodes`` (a stand-in text encoder for CI)."""
    server = tandem_server(tmp_path_factory.mktemp("comfyui"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def demo_models(comfy_server: ComfyServer) -> dict[str, Path]:
    """The CPU demo's model files (``scripts/demo.py``, as ``bash scripts/run.sh --demo`` writes them) in the shared
    server's model folders: {folder: path}."""
    from tandem.scripts.demo import install

    return install(comfy_server.base_dir / "models")


@pytest.fixture(scope="session")
def _tandem_session():
    """Stops whatever Tandem group and Ray head the session's tests left running."""
    from tandem.workers import group as groups

    yield
    groups.shutdown()


@pytest.fixture
def tandem_group(_tandem_session):
    """The running 2-worker CPU group (Ulysses 2, gloo) in this process, started or reused by Tandem itself."""
    from tandem.parallel.degrees import GroupConfig
    from tandem.workers import group as groups

    return groups.start(GroupConfig(gpu_count=2, ulysses_degree=2, timeout_s=60))
