"""The CPU demo (``bash scripts/run.sh --demo``): ``scripts/demo.py`` puts its random-weight files in a real ComfyUI
server's model folders and the template "Tandem demo (CPU)", queued as the frontend queues it, runs on 2 CPU workers
to saved frames, with ComfyUI's progress bar and latent previews on the way. The frames are noise: what the demo
proves is the wiring. The template's preview image in the browser is its first frame."""
import asyncio
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

from tandem.tests.server import ComfyServer
from tandem.tests.test_dropin import _messages
from tandem.tests.test_templates import api_prompt

DEMO = Path(__file__).resolve().parent.parent / "workflows" / "Tandem demo (CPU).json"


def test_demo_template_runs_to_frames(comfy_server: ComfyServer, demo_models):
    workflow = json.loads(DEMO.read_text())
    prompt = api_prompt(workflow, comfy_server.object_info())
    sampler = next(node_id for node_id, node in prompt.items() if node["class_type"] == "KSampler")
    steps = prompt[sampler]["inputs"]["steps"]
    started = time.monotonic()
    messages = asyncio.run(_messages(comfy_server, prompt))
    seconds = time.monotonic() - started
    assert not [data for kind, data in messages if kind in ("execution_error", "execution_interrupted")], \
        f"{messages}\n{comfy_server.log_tail()}"

    progress = [data["value"] for kind, data in messages if kind == "progress" and data["node"] == sampler]
    previews = [data for kind, data in messages if kind == "preview"]
    saved = next(data["output"]["images"] for kind, data in messages
                 if kind == "executed" and prompt[data["node"]]["class_type"] == "SaveImage")
    frames = [Image.open(comfy_server.output_dir / image["subfolder"] / image["filename"]) for image in saved]
    print(f"demo template: {seconds:.1f} s, progress {progress}, {len(previews)} previews, "
          f"{len(frames)} frames of {frames[0].size}")
    assert progress == list(range(1, steps + 1)) and len(previews) == steps
    assert len(frames) == 9 and frames[0].size == (192, 192)

    preview = np.asarray(Image.open(DEMO.with_suffix(".jpg")).convert("RGB"), dtype=np.float32)
    first = np.asarray(frames[0].convert("RGB"), dtype=np.float32)
    print(f"bundled preview vs this run's first frame: mean |difference| {np.abs(preview - first).mean():.1f} / 255")
    assert preview.shape == first.shape and np.abs(preview - first).mean() < 8   # JPEG: ~3; another seed: ~28
