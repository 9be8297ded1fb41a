"""Tandem Model Loader: every worker loads the diffusion model; ComfyUI's graph gets an ordinary MODEL for it."""
import folder_paths
import safetensors

from ..parallel import gguf
from ..parallel.degrees import TandemConfigError
from ..parallel.weights import WEIGHT_DTYPES
from ..workers import standin
from ..workers.group import Group, TandemError


def check_readable(path: str, name: str, kind: str = "model file") -> None:
    """Read a safetensors or GGUF header here, once, so a truncated download fails with a fix instead of in N
    workers: both readers check that the header's tensors fit in the file."""
    try:
        if path.lower().endswith((".safetensors", ".sft")):
            with safetensors.safe_open(path, framework="pt"):
                pass
        elif gguf.is_gguf(path):
            gguf.read(path)
    except TandemConfigError as e:
        raise TandemError(str(e)) from None
    except Exception as e:
        raise TandemError(f"{kind} {name!r} is not a readable safetensors file ({e}): it is probably "
                          "incomplete or corrupt; download it again") from None


def model_files() -> list[str]:
    """What Load Diffusion Model lists, and the GGUF files in the same folders (ComfyUI itself does not list them)."""
    ggufs = {name for folder in folder_paths.get_folder_paths("diffusion_models")
             for name in folder_paths.filter_files_extensions(folder_paths.recursive_search(folder)[0], [".gguf"])}
    return folder_paths.get_filename_list("diffusion_models") + sorted(ggufs)


def load(group: Group, path: str, weight_dtype: str = "default", unet_config: dict | None = None,
         fanout: str | None = None) -> standin.StandInPatcher:
    """Load ``path`` in every worker and return the host's MODEL for it. ``unet_config`` and ``fanout`` are the
    workers' ``load`` options (tests and benchmarks). The host detects the model first, from the file's header, so
    a file ComfyUI does not recognise fails before any worker reads it."""
    try:
        model = standin.model_on_meta(path, weight_dtype, unet_config)
    except TandemConfigError as e:
        raise TandemError(str(e)) from None
    info = group.call("load", path, weight_dtype, unet_config, fanout)[0]
    return standin.patcher(group, model, info["key"])


class TandemModelLoader:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "group": ("TANDEM_GROUP",),
            "unet_name": (model_files(), {"tooltip": "A diffusion model from ComfyUI's diffusion_models folder (as "
                                                      "in Load Diffusion Model), or a GGUF file there."}),
            "weight_dtype": (list(WEIGHT_DTYPES), {"tooltip": "Weight dtype in GPU memory; default keeps the file's."}),
        }}

    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    FUNCTION = "load"
    CATEGORY = "Tandem"
    DESCRIPTION = ("Loads a diffusion model into every Tandem worker. Its MODEL goes wherever Load Diffusion Model's "
                   "goes (model-patch nodes, LoRA, any sampler); sampling then runs on all the workers.")

    def load(self, group: Group, unet_name: str, weight_dtype: str):
        path = folder_paths.get_full_path("diffusion_models", unet_name)
        if path is None:
            raise TandemError(f"model file {unet_name!r} is not in ComfyUI's diffusion_models folders: "
                              "put it there or pick another file")
        check_readable(path, unet_name)
        return (load(group, path, weight_dtype),)
