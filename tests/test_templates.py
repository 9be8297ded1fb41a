"""Bundled workflows: ComfyUI's template browser lists and serves them under Tandem's folder (titled by their file
names), each one wires Tandem in as a drop-in, and uses only node types, inputs and widget values that this ComfyUI
with Tandem offers, every link from an output to an input of its type (so it opens and queues without red nodes).
"""
import json
from collections import defaultdict
from pathlib import Path
from urllib.parse import quote

import folder_paths
import pytest

from tandem.tests.server import CLONE_NAME, ComfyServer

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))
TITLES = ["Tandem demo (CPU)", "Wan 2.1 T2V (Tandem)", "Wan 2.1 T2V Ulysses 4 GPUs 720p (Tandem)",
          "Wan 2.1 T2V CFG-parallel (Tandem)", "Wan 2.1 T2V FSDP low VRAM (Tandem)", "Wan 2.1 I2V (Tandem)",
          "Wan 2.2 T2V two models (Tandem)", "Flux.1 dev (Tandem)", "Qwen-Image (Tandem)", "HunyuanVideo T2V (Tandem)",
          "Chroma1-HD CFG-parallel (Tandem)", "Z-Image Turbo (Tandem)", "SD3.5 Large CFG-parallel (Tandem)",
          "LTXV T2V (Tandem)", "Cosmos Predict 2 Video2World (Tandem)", "HiDream-I1 Full FSDP (Tandem)",
          "Omnigen 2 image edit Ring 2 (Tandem)", "Flux.2 dev FSDP (Tandem)", "HunyuanVideo 1.5 720p T2V 4 GPUs (Tandem)",
          "Wan 2.2 Animate (Tandem)", "Chroma Radiance CFG-parallel (Tandem)", "Lumina Image 2.0 CFG-parallel (Tandem)",
          "Wan 2.2 Fun Camera (Tandem)"]
SAMPLERS = {"KSampler", "KSamplerAdvanced", "SamplerCustom", "SamplerCustomAdvanced"}
MODEL_STEPS = {"LoraLoaderModelOnly", "TandemLoraLoader",   # between a loader and its ModelSampling node
               "ChromaRadianceOptions"}
LATENT_STEPS = {"TrimVideoLatent"}     # between a sampler and Tandem VAE Decode (Wan Animate's reference frames)
IMAGE_STEPS = {"ImageFromBatch"}       # between Tandem VAE Decode and the video (Wan Animate's reference frames)
UPLOADS = ("image_upload", "video_upload", "audio_upload")
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
SEED_CONTROLS = {"fixed", "increment", "decrement", "randomize"}
FRONTEND_ONLY = {"control_after_generate", "upload"}   # widgets the frontend adds and saves, never queued


def test_templates_bundled_and_in_the_readme():
    assert sorted(TITLES) == [path.stem for path in WORKFLOWS]
    readme = (ROOT / "README.md").read_text()
    assert [title for title in TITLES if f"*{title}*" not in readme] == []


@pytest.mark.parametrize("path", WORKFLOWS, ids=[path.stem for path in WORKFLOWS])
def test_template_uses_drop_in_wiring(path: Path):
    """Tandem Init → Tandem Model Loader → (LoRA →) ComfyUI's ModelSampling node → ComfyUI's own sampler → Tandem VAE
    Decode → a save node, as ComfyUI's one-GPU template would be after swapping Load Diffusion Model and VAE Decode: no
    Tandem-only sampler. Where ComfyUI's template has no ModelSampling node (SD3.5, LTXV, Cosmos Predict 2, Omnigen 2,
    Flux 2: the model's own shift or scheduler), the loader's MODEL goes to the sampler's nodes directly."""
    workflow = json.loads(path.read_text())
    types = {node["id"]: node["type"] for node in workflow["nodes"]}
    after, before = defaultdict(set), defaultdict(set)
    for _, src, _, dst, _, _ in workflow["links"]:
        after[src].add(dst)
        before[dst].add(src)

    def downstream(node: int) -> set[str]:
        return {types[n] for n in after[node]}.union(*(downstream(n) for n in after[node]))

    loaders = [node for node, kind in types.items() if kind == "TandemModelLoader"]
    assert loaders and all({types[n] for n in before[node]} == {"TandemInit"} for node in loaders)
    for loader in loaders:
        assert SAMPLERS & downstream(loader)
        model = loader
        while lora := [node for node in after[model] if types[node] in MODEL_STEPS]:
            (model,) = lora
        sampling = [node for node in after[model] if types[node].startswith("ModelSampling")]
        assert not sampling or len(after[model]) == 1, "a ModelSampling node takes the loader's whole MODEL"
    decoders = [node for node, kind in types.items() if kind == "TandemVAEDecode"]

    def sampled(node: int) -> bool:
        return any(types[n] in SAMPLERS or types[n] in LATENT_STEPS and sampled(n) for n in before[node])

    assert decoders and all(sampled(node) for node in decoders)
    for node in decoders:
        saves = {types[n] for n in after[node] if types[n] not in IMAGE_STEPS}
        saves |= {types[m] for n in after[node] if types[n] in IMAGE_STEPS for m in after[n]}
        assert saves <= {"SaveImage", "CreateVideo"}, saves
    assert not {"XFuserKSamplerAdvanced", "VAEDecode", "UNETLoader"} & set(types.values())


def test_templates_listed_and_served(comfy_server: ComfyServer):
    listed = json.loads(comfy_server.fetch("/workflow_templates")[0])
    assert sorted(listed.get(CLONE_NAME, [])) == [path.stem for path in WORKFLOWS], listed
    for path in WORKFLOWS:
        served, _ = comfy_server.fetch(f"/api/workflow_templates/{CLONE_NAME}/{quote(path.name)}")   # as a browser does
        assert json.loads(served) == json.loads(path.read_text())
        preview, kind = comfy_server.fetch(f"/api/workflow_templates/{CLONE_NAME}/{quote(path.stem)}.jpg")
        assert kind == "image/jpeg" and preview[:3] == b"\xff\xd8\xff" and len(preview) < 100_000


def widgets(node_info: dict) -> list[tuple[str, list]]:
    """(name, spec) of a node type's widgets in the order the frontend stores widgets_values."""
    found = []
    for section in ("required", "optional"):
        for name in node_info["input_order"].get(section, []):
            spec = node_info["input"][section][name]
            if isinstance(spec[0], list) or spec[0] in WIDGET_TYPES:
                found.append((name, spec))
                if len(spec) > 1 and spec[1].get("control_after_generate"):
                    found.append(("control_after_generate", [sorted(SEED_CONTROLS)]))
                if len(spec) > 1 and any(spec[1].get(kind) for kind in UPLOADS):
                    found.append(("upload", [["image"]]))
    return found


def api_prompt(workflow: dict, info: dict) -> dict:
    """The prompt the frontend queues for a saved workflow: each node's widget values by name, links as [node, slot]."""
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        inputs = {name: value for (name, _), value in zip(widgets(info[node["type"]]), node["widgets_values"])
                  if name not in FRONTEND_ONLY}
        for slot in node["inputs"]:
            if slot["link"] is not None:
                _, src, src_slot, *_ = links[slot["link"]]
                inputs[slot["name"]] = [str(src), src_slot]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


def declared_inputs(node_info: dict) -> dict:
    return {**node_info["input"].get("required", {}), **node_info["input"].get("optional", {})}


@pytest.mark.parametrize("path", WORKFLOWS, ids=[path.stem for path in WORKFLOWS])
def test_template_matches_object_info(comfy_server: ComfyServer, path: Path):
    workflow = json.loads(path.read_text())
    info = comfy_server.object_info()
    nodes = {node["id"]: node for node in workflow["nodes"]}
    unknown = sorted({node["type"] for node in nodes.values()} - set(info))
    assert not unknown, f"node types not in /object_info: {unknown}"

    for node in nodes.values():
        where = f"node {node['id']} ({node['type']})"
        expected = widgets(info[node["type"]])
        assert len(node["widgets_values"]) == len(expected), f"{where}: widgets {[n for n, _ in expected]}"
        for (name, spec), value in zip(expected, node["widgets_values"]):
            options = spec[0] if isinstance(spec[0], list) else spec[1].get("options") if spec[0] == "COMBO" else None
            model_file = isinstance(value, str) and value.endswith(tuple(folder_paths.supported_pt_extensions))
            user_image = len(spec) > 1 and any(spec[1].get(kind) for kind in UPLOADS)
            if options is not None and not model_file and not user_image:   # the user's to download or upload
                assert value in options, f"{where}: {name}={value!r} not in {options}"
        for slot in node["inputs"]:
            assert slot["name"] in declared_inputs(info[node["type"]]), f"{where}: no input {slot['name']!r}"
        linked = {slot["name"] for slot in node["inputs"] if slot["link"] is not None}
        required = {name for name, spec in info[node["type"]]["input"]["required"].items()
                    if not isinstance(spec[0], list) and spec[0] not in WIDGET_TYPES}
        assert required <= linked, f"{where}: required inputs not connected: {required - linked}"

    for link_id, src, src_slot, dst, dst_slot, kind in workflow["links"]:
        target = nodes[dst]["inputs"][dst_slot]
        assert target["link"] == link_id and link_id in nodes[src]["outputs"][src_slot]["links"]
        assert info[nodes[src]["type"]]["output"][src_slot] == kind, f"link {link_id}: output is not {kind}"
        assert declared_inputs(info[nodes[dst]["type"]])[target["name"]][0] == kind, f"link {link_id}: input not {kind}"
