"""The tiny checkpoints are what ComfyUI thinks they are, and ComfyUI's own sampler runs them on the CPU."""
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tandem.tests.checkpoints import FAMILIES, detection_state_dict, load_checkpoint, sample_once

import comfy.model_detection  # noqa: E402  (importable once checkpoints ran import_comfyui)

CLASS_NAMES = {"wan21_t2v": "WAN21_T2V", "wan21_t2v_3heads": "WAN21_T2V", "wan21_t2v_8heads": "WAN21_T2V",
               "wan21_i2v": "WAN21_I2V",
               "hunyuan_video": "HunyuanVideo", "hunyuan_video_i2v": "HunyuanVideoI2V", "flux": "Flux", "qwen_image": "QwenImage",
               "qwen_image_min": "QwenImage", "ltxv": "LTXV", "lumina2": "Lumina2", "z_image": "ZImage",
               "sd35": "SD3", "wan22_camera": "WAN22_Camera",
               "wan21_humo": "WAN21_HuMo", "wan22_s2v": "WAN22_S2V",
               "wan22_animate": "WAN22_Animate", "pixart_sigma": "PixArtSigma", "cosmos_predict2": "CosmosT2IPredict2",
               "hidream": "HiDream", "omnigen2": "Omnigen2"}


@pytest.mark.parametrize("family", CLASS_NAMES)
def test_checkpoint_loads_as_family(family: str, checkpoint: Callable[[str], Path]) -> None:
    path = checkpoint(family)
    patcher = load_checkpoint(path, family)
    assert type(patcher.model.model_config).__name__ == CLASS_NAMES[family]
    if FAMILIES[family].detected:  # build_model() must build what detection builds from the file
        detected = {k: v for k, v in patcher.model.model_config.unet_config.items() if k != "dtype"}
        assert detected == {k: FAMILIES[family].unet_config.get(k) for k in detected}
    on_disk = load_file(str(path))
    loaded = patcher.model.diffusion_model.state_dict()
    assert set(loaded) == set(on_disk), "file keys must be exactly the model's keys (real layout)"
    for key, tensor in on_disk.items():
        torch.testing.assert_close(loaded[key].to(tensor.dtype), tensor, msg=key)


@pytest.mark.parametrize("family", [f for f in CLASS_NAMES if not FAMILIES[f].detected])
def test_layout_detected_at_real_width(family: str, checkpoint: Callable[[str], Path]) -> None:
    """Tiny widths are undetectable here; the same keys at ComfyUI's hard-coded width must be detected."""
    state_dict = detection_state_dict(family)
    model_config = comfy.model_detection.model_config_from_unet(state_dict, "")
    assert type(model_config).__name__ == CLASS_NAMES[family]
    assert set(state_dict) == set(load_file(str(checkpoint(family))))


@pytest.mark.parametrize("family", CLASS_NAMES)
def test_forward_on_cpu(family: str, checkpoint: Callable[[str], Path]) -> None:
    out = sample_once(load_checkpoint(checkpoint(family), family), family)
    assert out.shape == FAMILIES[family].latent_shape
    assert torch.isfinite(out).all()
    assert out.std() > 0.1
