"""The adapter contract, checked in seconds without Ray: every adapter's declared hooks exist on ComfyUI's own model
(built on ``meta`` from each tiny test family's config) and really get hooks; classes are matched exactly; the
README's family table is the registry's.
"""
import re
from pathlib import Path

import pytest
import torch

from tandem.models import ADAPTERS, NO_SEQUENCE, adapter_for, class_path, hook_targets, loaded_adapters
from tandem.parallel.attention import resolve_backend
from tandem.parallel.degrees import TandemConfigError
from tandem.parallel.sequence import SequenceShard
from tandem.tests.checkpoints import FAMILIES

README = Path(__file__).resolve().parents[1] / "README.md"


def meta_model(config_class: type, unet_config: dict) -> torch.nn.Module:
    """ComfyUI's diffusion model built on ``meta`` as Tandem's loader builds it (``device="meta"``, no default-device
    context: PixArt computes with ``.item()`` while it is built)."""
    model_config = config_class(unet_config)
    model_config.set_inference_dtype(torch.float32, None)
    return model_config.get_model({}, "", device="meta").diffusion_model


def fixtures() -> dict[str, torch.nn.Module]:
    """One meta model per test family, by family name."""
    return {name: meta_model(spec.config_class, spec.unet_config) for name, spec in FAMILIES.items()}


ADAPTER_MODULES = {name: module for name, module in loaded_adapters().items()}


def test_every_adapter_imports_and_every_served_class_has_a_test_family():
    assert all(not isinstance(module, str) for module in ADAPTER_MODULES.values()), ADAPTER_MODULES
    covered = {class_path(type(model)) for model in fixtures().values()}
    for module in ADAPTER_MODULES.values():
        missing = set(module.MODEL_CLASSES) - covered
        assert not missing, f"{module.FAMILY}: no tiny test family builds {missing}"


UNSERVED = ("pixart_sigma",)     # the test families whose class has no adapter (checked below)


@pytest.mark.parametrize("family", [f for f in FAMILIES if not f.endswith("_min") and f not in UNSERVED])
def test_declared_hooks_exist_and_are_installed(family):
    model = meta_model(FAMILIES[family].config_class, FAMILIES[family].unet_config)
    adapter = adapter_for(model)
    targets = hook_targets(adapter, model)
    adapter.install_sequence_parallel(model, SequenceShard(group=None), resolve_backend("sdpa", torch.device("cpu"))[0])
    modules = dict(model.named_modules())
    for role, names in targets.items():
        assert names, f"{adapter.FAMILY}: nothing to hook for {role}"
        unhooked = [n for n in names if not (modules[n]._forward_pre_hooks or modules[n]._forward_hooks)
                    and role != "replicated"]
        assert not unhooked, f"{adapter.FAMILY}: {role} targets without a hook: {unhooked}"
    blocks = sum(len(getattr(model, name, None) or []) for name in adapter.FSDP_BLOCKS)
    # every block's attention goes through Ulysses / Ring, but blocks over replicated (text) tokens only
    assert len(targets["attention"]) + len(targets.get("replicated", [])) == blocks


@pytest.mark.parametrize("family", UNSERVED)
def test_the_unserved_families_have_no_adapter(family):
    with pytest.raises(TandemConfigError, match="does not support"):
        adapter_for(meta_model(FAMILIES[family].config_class, FAMILIES[family].unet_config))


def test_a_moved_module_fails_the_contract():
    model = meta_model(FAMILIES["wan21_t2v"].config_class, FAMILIES["wan21_t2v"].unet_config)
    model.final_head = model.head
    del model.head
    with pytest.raises(LookupError, match="Wan adapter: WanModel has no head"):
        hook_targets(adapter_for(model), model)


def test_a_subclass_is_not_claimed_by_its_parents_adapter():
    """A subclass with its own forward (as a custom node might define one) is refused, not run through hooks never
    tested on it: ComfyUI's Wan subclasses are each listed by the adapter that serves them."""
    import comfy.ldm.wan.model

    model = meta_model(FAMILIES["wan21_t2v"].config_class, FAMILIES["wan21_t2v"].unet_config)
    model.__class__ = type("OwnForwardWanModel", (comfy.ldm.wan.model.WanModel,), {"forward_orig": lambda *a: None})
    with pytest.raises(TandemConfigError, match=r"does not support OwnForwardWanModel models yet"):
        adapter_for(model)


def test_a_unet_is_refused_with_what_runs_it():
    import comfy.supported_models

    unet = dict(comfy.supported_models.SD15.unet_config, image_size=32, in_channels=4, out_channels=4,
                model_channels=32, num_res_blocks=[1], channel_mult=[1], transformer_depth=[1],
                transformer_depth_output=[1, 1], transformer_depth_middle=1, context_dim=64,
                use_spatial_transformer=True)
    model = meta_model(comfy.supported_models.SD15, unet)
    assert class_path(type(model)) in NO_SEQUENCE
    with pytest.raises(TandemConfigError, match="no attention over one token sequence.*CFG-parallel, FSDP"):
        adapter_for(model)


def test_readme_family_table_is_the_registry():
    """README's table of families lists exactly the registry's adapters with the classes they serve."""
    text = README.read_text()
    table = text[text.index("| family | ComfyUI classes |"):].split("\n\n")[0].splitlines()[2:]
    rows = {cells[1].strip(): set(re.findall(r"`([\w.]+)`", cells[2])) for cells in (r.split("|") for r in table)}
    registry = {m.FAMILY: {c.rsplit(".", 1)[1] for c in m.MODEL_CLASSES} for m in ADAPTER_MODULES.values()}
    assert {k: v for k, v in rows.items() if k in registry} == registry
    assert set(rows) - set(registry) == {"every other DiT", "UNets (SD1.5, SDXL)"}
    assert len(ADAPTERS) == len(registry)
