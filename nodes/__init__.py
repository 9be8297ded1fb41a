"""ComfyUI node classes only: validate inputs, call into workers/, return graph types."""
from .group import TandemInit, TandemShutdown
from .loader import TandemModelLoader
from .sampler import XFuserKSamplerAdvanced

NODE_CLASS_MAPPINGS = {
    "TandemInit": TandemInit,
    "TandemShutdown": TandemShutdown,
    "TandemModelLoader": TandemModelLoader,
    "XFuserKSamplerAdvanced": XFuserKSamplerAdvanced,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "TandemInit": "Tandem Init",
    "TandemShutdown": "Tandem Shutdown",
    "TandemModelLoader": "Tandem Model Loader",
    "XFuserKSamplerAdvanced": "XFuser KSampler (Advanced)",
}
