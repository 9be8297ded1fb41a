"""What Tandem's loading (models built on ``meta``, filled from the file) cannot do is refused in one line, before
anything is allocated. Checked on models built on ``meta`` from ComfyUI's own configs (no Ray, no files)."""
import pytest
import torch

from tandem.parallel.degrees import TandemConfigError
from tandem.parallel.weights import refuse_computed_buffers
from tandem.tests.checkpoints import FAMILIES
from tandem.tests.test_adapters import meta_model

COSMOS_PREDICT2 = dict(image_model="cosmos_predict2", max_img_h=240, max_img_w=240, max_frames=128, in_channels=16,
                       out_channels=16, patch_spatial=2, patch_temporal=1, model_channels=128,
                       concat_padding_mask=True, crossattn_emb_channels=1024, pos_emb_cls="rope3d",
                       pos_emb_learnable=True, pos_emb_interpolation="crop", min_fps=1, max_fps=30,
                       use_adaln_lora=True, adaln_lora_dim=32, num_blocks=1, num_heads=2,
                       extra_per_block_abs_pos_emb=False, rope_h_extrapolation_ratio=1.0,
                       rope_w_extrapolation_ratio=1.0, rope_t_extrapolation_ratio=1.0)


def test_a_model_with_buffers_it_computes_when_built_is_refused():
    """Cosmos Predict2 computes its RoPE ranges at construction and saves none: on ``meta`` they are lost, and
    under FSDP ``to_empty`` would leave them uninitialised (a silently wrong result)."""
    import comfy.supported_models

    model = meta_model(comfy.supported_models.CosmosT2IPredict2, COSMOS_PREDICT2)
    sd = dict(model.state_dict(keep_vars=True))
    with pytest.raises(TandemConfigError, match=r"^MiniTrainDIT computes 2 buffers when it is built \(e\.g\. "
                                                r"pos_embedder\.\w+\).*Load Diffusion Model$"):
        refuse_computed_buffers(model, sd)


@pytest.mark.parametrize("family", ["wan21_t2v", "flux", "hunyuan_video", "qwen_image"])
def test_the_supported_families_have_no_such_buffers(family):
    model = meta_model(FAMILIES[family].config_class, FAMILIES[family].unet_config)
    refuse_computed_buffers(model, dict(model.state_dict(keep_vars=True)))
