"""Import this checkout as the ``tandem`` package from a benchmark script (as ComfyUI's loader would)."""
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def import_tandem():
    if "tandem" not in sys.modules:
        spec = importlib.util.spec_from_file_location("tandem", ROOT / "__init__.py",
                                                      submodule_search_locations=[str(ROOT)])
        module = importlib.util.module_from_spec(spec)
        sys.modules["tandem"] = module
        spec.loader.exec_module(module)
    return sys.modules["tandem"]
