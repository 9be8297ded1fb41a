"""Make ComfyUI's ``comfy`` package importable in a process that ComfyUI did not start (Ray workers, tests)."""
import os
import sys


def comfyui_path() -> str:
    """The ComfyUI tree in use: the one already imported, else ``$COMFYUI_PATH``."""
    folder_paths = sys.modules.get("folder_paths")
    if folder_paths is not None:
        return os.path.dirname(os.path.abspath(folder_paths.__file__))
    path = os.environ.get("COMFYUI_PATH")
    if not path or not os.path.isfile(os.path.join(path, "comfy", "model_management.py")):
        raise RuntimeError("Tandem cannot find ComfyUI: set COMFYUI_PATH to the folder that holds ComfyUI's main.py")
    return os.path.abspath(path)


def import_comfyui(cpu: bool | None = None) -> None:
    """Put ComfyUI on sys.path and choose its device before ``comfy.model_management`` is imported.

    ComfyUI picks CPU mode from its ``--cpu`` flag; a process without CUDA must set that flag first or
    ``comfy.model_management`` fails at import.
    """
    path = comfyui_path()
    if path not in sys.path:
        sys.path.insert(0, path)
    if "comfy.model_management" in sys.modules:
        return
    import torch
    from comfy.cli_args import args

    args.cpu = (not torch.cuda.is_available()) if cpu is None else cpu


def importable_name(module_name: str) -> str | None:
    """The dotted name of a module ComfyUI loaded by file path (its ``comfy_extras`` nodes, whose classes and
    functions carry the path as ``__module__``), for a process that imports it by name; None for any other module.
    Custom-node packages are not ComfyUI's and get None."""
    if not os.path.isabs(module_name):
        return None
    relative = os.path.relpath(module_name, comfyui_path())
    if relative.startswith("..") or relative.split(os.sep)[0] == "custom_nodes":
        return None
    return relative.replace(os.sep, ".")
