"""Buffers a model computes when ComfyUI builds it and does not save are lost on ``meta``: Tandem's loading computes
them again with a second build of the model without weights (``weights.computed_buffers``), and refuses in one line,
before anything is allocated, what that cannot give. Checked on models built on ``meta`` from ComfyUI's own configs
(no Ray, no files); the family tests load and sample such a model (Cosmos Predict 2) under Ulysses, Ring and FSDP."""
import pytest
import torch

from tandem.parallel.degrees import TandemConfigError
from tandem.parallel.weights import computed_buffers
from tandem.tests.checkpoints import FAMILIES, build_model


def meta_base_model(family: str):
    """ComfyUI's model (``BaseModel``) with its diffusion model on ``meta``, as Tandem's loader builds it."""
    model_config = FAMILIES[family].config_class(FAMILIES[family].unet_config)
    model_config.set_inference_dtype(torch.float32, None)
    return model_config.get_model({}, "", device="meta")


def test_buffers_a_model_computes_when_built_are_computed_again():
    """Cosmos Predict 2 computes its RoPE ranges at construction and saves none: they come back equal to those of
    ComfyUI's own build on the CPU."""
    model = meta_base_model("cosmos_predict2")
    sd = dict(model.diffusion_model.state_dict(keep_vars=True))
    computed = computed_buffers(model, sd)
    assert sorted(computed) == ["pos_embedder.dim_spatial_range", "pos_embedder.dim_temporal_range"]
    built = dict(build_model("cosmos_predict2").model.diffusion_model.named_buffers())
    for name, value in computed.items():
        assert value.device.type == "cpu" and torch.equal(value, built[name]), name
    assert all(p.is_meta for p in model.diffusion_model.parameters())


def test_a_buffer_made_after_construction_is_refused():
    model = meta_base_model("cosmos_predict2")
    model.diffusion_model.blocks[0].register_buffer("late", torch.empty(3, device="meta"), persistent=False)
    sd = dict(model.diffusion_model.state_dict(keep_vars=True))
    with pytest.raises(TandemConfigError, match=r"^MiniTrainDIT computes 1 buffers outside its construction \(e\.g\. "
                                                r"blocks\.0\.late\).*Load Diffusion Model$"):
        computed_buffers(model, sd)


@pytest.mark.parametrize("family", ["wan21_t2v", "flux", "hunyuan_video", "qwen_image"])
def test_the_other_families_are_built_once(family, monkeypatch):
    model = meta_base_model(family)
    monkeypatch.setattr(model.model_config, "get_model", None)      # a second build would fail
    assert computed_buffers(model, dict(model.diffusion_model.state_dict(keep_vars=True))) == {}
