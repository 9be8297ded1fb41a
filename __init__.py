"""Tandem: run one ComfyUI diffusion-transformer job on several GPUs at once.

ComfyUI imports this folder under whatever name it was cloned as. Ray workers on any host must import the
same code, so the package always lives in ``sys.modules`` as ``tandem`` and this entry point re-exports it.
"""
import importlib.util
import os
import sys

if __name__ == "tandem":
    from .workers.comfyui import import_comfyui

    import_comfyui()   # a no-op inside ComfyUI; Ray workers and tests need ComfyUI importable first
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
else:
    if "tandem" not in sys.modules:
        _here = os.path.dirname(os.path.abspath(__file__))
        _spec = importlib.util.spec_from_file_location("tandem", os.path.join(_here, "__init__.py"),
                                                       submodule_search_locations=[_here])
        _module = importlib.util.module_from_spec(_spec)
        sys.modules["tandem"] = _module
        _spec.loader.exec_module(_module)
    from tandem import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
    from tandem.workers.driver import prestart

    prestart()    # ComfyUI is loading Tandem: start its Ray head in the background

WEB_DIRECTORY = None
__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
