"""What the harness can measure: models (real layouts, as ComfyUI detects them) and modes (how a job is run).

Plain data only, so the harness's parent process imports neither torch's CUDA nor ComfyUI; the per-cell
subprocesses turn these entries into ComfyUI model configs and Tandem ``GroupConfig``s.
"""
import math
from dataclasses import dataclass, field
from typing import Callable


@dataclass(frozen=True)
class Model:
    """One DiT: the ComfyUI config class its file is detected as, that detection's unet_config, and its inputs."""

    config_class: str            # a class in comfy.supported_models
    unet_config: dict            # what comfy.model_detection reads from the real checkpoint
    size: str                    # default WxH (images) or WxHxF (videos)
    latent: Callable[[int, int, int], tuple[int, ...]]   # (width, height, frames) -> latent shape
    patch: tuple[int, ...]       # patch size over the latent's trailing dims: tokens = prod(ceil(dim / patch))
    context: tuple[int, int]     # text conditioning: tokens × width
    cfg: float                   # 1.0 for guidance-distilled models: one model call per step
    extra_cond: dict = field(default_factory=dict)   # more conditioning tensors: name -> width

    def tokens(self, size: str) -> int:
        dims = self.latent(*parse_size(size))[-len(self.patch):]
        return math.prod(math.ceil(d / p) for d, p in zip(dims, self.patch))


def parse_size(size: str) -> tuple[int, int, int]:
    """'832x480x81' -> (832, 480, 81); an image size 'WxH' has one frame."""
    w, h, *f = map(int, size.lower().split("x"))
    return w, h, (f[0] if f else 1)


def _video(channels: int, down: int) -> Callable[[int, int, int], tuple[int, ...]]:
    """Latent of a video VAE with 4× temporal and ``down``× spatial compression (Wan, HunyuanVideo)."""
    return lambda w, h, f: (1, channels, (f - 1) // 4 + 1, h // down, w // down)


def _image(w: int, h: int, f: int) -> tuple[int, ...]:
    return 1, 16, h // 8, w // 8


_WAN = dict(image_model="wan2.1", model_type="t2v", patch_size=(1, 2, 2), freq_dim=256, text_dim=4096,
            window_size=(-1, -1), qk_norm=True, cross_attn_norm=True, eps=1e-6, in_dim=16, out_dim=16)
_WAN21 = dict(size="832x480x81", latent=_video(16, 8), patch=(1, 2, 2), context=(512, 4096), cfg=5.0)

_CHROMA = dict(image_model="chroma", axes_dim=[16, 56, 56], num_heads=24, mlp_ratio=4.0, theta=10000, out_channels=64,
               qkv_bias=True, in_channels=64, hidden_size=3072, context_in_dim=4096, patch_size=2, depth=19,
               depth_single_blocks=38, in_dim=64, out_dim=3072, hidden_dim=5120, n_layers=5)
_LUMINA2 = dict(image_model="lumina2", patch_size=2, in_channels=16, dim=2304, cap_feat_dim=2304, n_layers=26,
                qk_norm=True, n_heads=24, n_kv_heads=8, axes_dims=[32, 32, 32], axes_lens=[300, 512, 512],
                rope_theta=10000.0, ffn_dim_multiplier=4.0)

MODELS: dict[str, Model] = {
    "tiny-wan": Model("WAN21_T2V", {**_WAN, "dim": 256, "ffn_dim": 512, "num_heads": 2, "num_layers": 2},
                      **{**_WAN21, "size": "16x16x5"}),
    "wan2.1-1.3b": Model("WAN21_T2V", {**_WAN, "dim": 1536, "ffn_dim": 8960, "num_heads": 12, "num_layers": 30},
                         **_WAN21),
    "wan2.1-14b": Model("WAN21_T2V", {**_WAN, "dim": 5120, "ffn_dim": 13824, "num_heads": 40, "num_layers": 40},
                        **_WAN21),
    "wan2.2-5b": Model("WAN22_T2V", {**_WAN, "in_dim": 48, "out_dim": 48, "dim": 3072, "ffn_dim": 14336,
                                     "num_heads": 24, "num_layers": 30},
                       **{**_WAN21, "latent": _video(48, 16)}),
    "flux-12b": Model("Flux", dict(image_model="flux", in_channels=16, out_channels=16, vec_in_dim=768,
                                   context_in_dim=4096, hidden_size=3072, mlp_ratio=4.0, num_heads=24, depth=19,
                                   depth_single_blocks=38, axes_dim=[16, 56, 56], theta=10000, patch_size=2,
                                   qkv_bias=True, guidance_embed=True),
                      "1024x1024", _image, (2, 2), (512, 4096), 1.0, {"pooled_output": 768}),
    "qwen-image-20b": Model("QwenImage", dict(image_model="qwen_image", in_channels=64, num_layers=60),
                            "1328x1328", _image, (2, 2), (128, 3584), 2.5),
    "hunyuanvideo-13b": Model("HunyuanVideo", dict(
        image_model="hunyuan_video", in_channels=16, out_channels=16, patch_size=[1, 2, 2], vec_in_dim=768,
        axes_dim=[16, 56, 56], meanflow=False, context_in_dim=4096, hidden_size=3072, mlp_ratio=4.0, num_heads=24,
        depth=20, depth_single_blocks=40, theta=256, qkv_bias=True, byt5=False, guidance_embed=True,
        use_cond_type_embedding=False, vision_in_dim=None),
        "1280x720x33", _video(16, 8), (1, 2, 2), (128, 4096), 1.0, {"pooled_output": 768}),
    "chroma-8.9b": Model("Chroma", _CHROMA, "1024x1024", _image, (2, 2), (512, 4096), 4.0, {"pooled_output": 768}),
    "lumina2-2.6b": Model("Lumina2", _LUMINA2, "1024x1024", _image, (2, 2), (256, 2304), 4.0),
}


@dataclass(frozen=True)
class Mode:
    """How one job runs: ``group`` gives Tandem's GroupConfig fields for n GPUs (None: ComfyUI alone)."""

    label: str                                    # table label; {n} is the GPU count, {half} n // 2
    group: Callable[[int], dict] | None
    multi_gpu: bool = True                        # runs once per requested GPU count ≥ 2; else on 1 GPU only

    def gpu_counts(self, requested: list[int]) -> list[int]:
        return [n for n in requested if n > 1] if self.multi_gpu else [1]


# A later mode is one line here; until Tandem supports it, its cells read "unsupported: <Tandem's message>".
# Data parallel is missing on purpose: it runs several prompts at once, which one prompt's s/step cannot show.
MODES: dict[str, Mode] = {
    "comfyui": Mode("ComfyUI, 1 GPU", None, multi_gpu=False),
    "tandem1": Mode("Tandem, 1 GPU", lambda n: dict(gpu_count=1, ulysses_degree=1), multi_gpu=False),
    "usp": Mode("Tandem, Ulysses {n}", lambda n: dict(gpu_count=n, ulysses_degree=n)),
    "ring": Mode("Tandem, Ring {n}", lambda n: dict(gpu_count=n, ulysses_degree=1, ring_degree=n)),
    "ulysses-ring": Mode("Tandem, Ulysses {half} × Ring 2",
                         lambda n: dict(gpu_count=n, ulysses_degree=max(1, n // 2), ring_degree=2)),
    "fsdp": Mode("Tandem, FSDP over {n}", lambda n: dict(gpu_count=n, ulysses_degree=1, fsdp=True)),
    "usp+fsdp": Mode("Tandem, Ulysses {n} + FSDP", lambda n: dict(gpu_count=n, ulysses_degree=n, fsdp=True)),
    "fsdp+offload": Mode("Tandem, Ulysses {n} + FSDP + CPU offload",
                         lambda n: dict(gpu_count=n, ulysses_degree=n, fsdp=True, fsdp_cpu_offload=True)),
    "cfg-parallel": Mode("Tandem, CFG-parallel on {n}",
                         lambda n: dict(gpu_count=n, cfg_degree=2, ulysses_degree=max(1, n // 2))),
}
DEFAULT_MODES = ("comfyui", "tandem1", "usp")
