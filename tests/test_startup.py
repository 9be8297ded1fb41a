"""Start-up: ComfyUI loading Tandem starts its driver process, Ray head and workers in the background
(``workers.driver.prestart``; on by default where there are GPUs, ``TANDEM_PRESTART=N`` starts N workers, here 2 CPU
workers), and the first Tandem Init takes those workers instead of starting its own: the same processes sample, and
the result equals ComfyUI's own sampler."""
import re
import time

import psutil

from tandem.tests.server import ComfyServer, tandem_server
from tandem.tests.test_workflows import saved_latent, tandem_prompt

INIT = {"ray_address": "local", "gpu_count": 2, "ulysses_degree": 2, "ring_degree": 1, "cfg_degree": 1,
        "fsdp": False, "fsdp_cpu_offload": False, "attention": "sdpa", "timeout_s": 60}


def workers(server: ComfyServer) -> set[int]:
    """Tandem's worker processes under the server (Ray titles an actor's process after its class)."""
    found = set()
    for process in psutil.Process(server.process.pid).children(recursive=True):
        try:
            if process.cmdline() and process.cmdline()[0].startswith("ray::Worker"):
                found.add(process.pid)
        except psutil.NoSuchProcess:
            pass
    return found


def test_comfyui_loading_tandem_starts_the_workers_the_first_group_takes(tmp_path, checkpoint):
    server = tandem_server(tmp_path / "comfyui", env={"TANDEM_PRESTART": "2"})
    try:
        deadline = time.monotonic() + 120
        while len(started := workers(server)) < 2:          # no prompt yet: ComfyUI only loaded Tandem
            assert time.monotonic() < deadline, f"2 workers did not start with ComfyUI:\n{server.log_tail()}"
            time.sleep(0.5)
        (server.diffusion_models_dir / checkpoint("wan21_t2v").name).symlink_to(checkpoint("wan21_t2v"))
        entry = server.wait(server.post_prompt(tandem_prompt(
            {"class_type": "TandemInit", "inputs": INIT}, checkpoint("wan21_t2v").name, (32, 32, 9), 42, "startup",
            single_process=True)))
        tandem, single = saved_latent(server, entry, "save_tandem"), saved_latent(server, entry, "save_single")
        error = ((tandem - single).norm() / single.norm()).item()
        (line,) = re.findall(r"Tandem Init: group started in .*", server.log_text())
        print(f"relative error {error:.2e}; {line}")
        assert tandem.shape == single.shape and error < 1e-4
        assert "worker processes (started with ComfyUI)" in line and "driver process" not in line
        assert workers(server) == started               # the group's workers are the ones ComfyUI's start made
    finally:
        server.stop()
