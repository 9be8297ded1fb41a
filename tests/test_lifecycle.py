"""Tandem's life inside a ComfyUI server of this module's own (its tests disturb the server): Cancel leaves one log
line and no Ray traceback; a Ray head whose raylet or GCS dies fails a prompt in one line and ComfyUI keeps running;
nothing of Tandem's outlives ComfyUI by more than a few seconds."""
import itertools
import re
import time
from collections.abc import Iterator

import psutil
import pytest

from tandem.tests import fault_table
from tandem.tests.server import ComfyServer, tandem_server
from tandem.tests.test_workflows import cached_nodes, init_node, install, tandem_prompt  # noqa: F401 (fixtures)

RAY_NOISE = re.compile(r"Traceback|ray\.exceptions|Unhandled error")
_seeds = itertools.count(7000)


@pytest.fixture(scope="module")
def comfy_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComfyServer]:
    """This module's server, not the session's: its tests kill its Ray head and stop it."""
    server = tandem_server(tmp_path_factory.mktemp("lifecycle"))
    try:
        yield server
    finally:
        server.stop()


def sampling_prompt(init_node: dict, install, steps: int = 4) -> dict:
    prompt = tandem_prompt(init_node, install("wan21_t2v"), (32, 32, 9), next(_seeds), "lifecycle")
    prompt["tandem"]["inputs"]["steps"] = steps
    return prompt


def test_cancel_logs_one_line_and_no_traceback(comfy_server, install, init_node):
    """Cancel at step 3 of 400: ComfyUI's log gains ComfyUI's own lines and one of Tandem's naming the step every
    worker stopped at; no Ray traceback (Ray prints one per worker for a failed call whose result nobody read).
    The next prompt samples on the same group."""
    comfy_server.wait(comfy_server.post_prompt(sampling_prompt(init_node, install)))
    before = len(comfy_server.log_text())
    entry = comfy_server.finished(comfy_server.cancel_at(sampling_prompt(init_node, install, steps=400), "tandem", 3))
    assert [event for event, _ in entry["status"]["messages"]][-1] == "execution_interrupted"
    cancelled_at = time.monotonic()
    after = comfy_server.wait(comfy_server.post_prompt(sampling_prompt(init_node, install)))
    assert "init" in cached_nodes(after)
    recovery = time.monotonic() - cancelled_at
    gained = comfy_server.log_text()[before:].splitlines()
    print("\n".join(gained))
    assert not [line for line in gained if RAY_NOISE.search(line)]
    (line,) = [line for line in gained if "Tandem" in line]
    step = int(re.fullmatch(r"Tandem: cancelled at step (\d+)/400", line).group(1))
    assert 3 <= step < 400
    fault_table.check("Cancel", line, recovery_s=recovery)


def descendants(server: ComfyServer) -> dict[int, tuple[float, str]]:
    """Every process under ComfyUI's (Tandem's Ray driver, its head, the workers): pid -> (start time, name)."""
    found = {}
    for process in psutil.Process(server.process.pid).children(recursive=True):
        try:
            found[process.pid] = process.create_time(), process.name()
        except psutil.NoSuchProcess:
            pass
    return found


def still_running(processes: dict[int, tuple[float, str]]) -> list[str]:
    """Those of ``processes`` still running (a zombie waiting for its parent to read its exit status has ended)."""
    running = []
    for pid, (started, name) in processes.items():
        try:
            process = psutil.Process(pid)
            if process.create_time() == started and process.status() != psutil.STATUS_ZOMBIE:
                running.append(name)
        except psutil.NoSuchProcess:
            pass
    return running


def gone_within(processes: dict[int, tuple[float, str]], seconds: float) -> float:
    """Seconds until none of ``processes`` runs; fails after ``seconds``."""
    started = time.monotonic()
    while still_running(processes):
        assert time.monotonic() - started < seconds, f"still running after {seconds} s: {still_running(processes)}"
        time.sleep(0.1)
    return time.monotonic() - started


@pytest.mark.parametrize("part", ["raylet", "gcs_server"])
def test_a_dead_raylet_or_gcs_fails_the_prompt_in_one_line_and_comfyui_keeps_running(comfy_server, install,
                                                                                     init_node, part):
    """Ray's core worker ends its process when its raylet or GCS dies; Tandem's driver is a child of ComfyUI, so only
    the child ends: the prompt sampling at the time fails in one line, the next starts a new head."""
    comfy_server.wait(comfy_server.post_prompt(sampling_prompt(init_node, install)))
    head = descendants(comfy_server)
    (victim,) = [pid for pid, (_, name) in head.items() if name == part]
    prompt_id = comfy_server.post_prompt(sampling_prompt(init_node, install, steps=5000))
    time.sleep(2)
    killed_at = time.monotonic()
    psutil.Process(victim).kill()
    error = comfy_server.wait_error(prompt_id, timeout=120)
    failed_at = time.monotonic()
    message = error["exception_message"].strip()
    print(f"{part} killed: {error['node_type']}: {message}")
    assert "\n" not in message and comfy_server.process.poll() is None
    comfy_server.wait(comfy_server.post_prompt(sampling_prompt(init_node, install)))
    fault_table.check("raylet or GCS dies", message, seen_s=failed_at - killed_at,
                      recovery_s=time.monotonic() - failed_at)
    assert victim not in descendants(comfy_server)
    gone_within(head, 10)


def test_nothing_of_tandem_outlives_comfyui(comfy_server, install, init_node):
    """Runs last (it stops this module's server). Before, Ray's agents outlived ComfyUI by about 60 s: their raylet
    died with ComfyUI, and they tried to tell the GCS, dead too, for 60 s. Now the driver process stops its head
    when ComfyUI's end of its pipe closes, however ComfyUI ends (SIGTERM here)."""
    comfy_server.wait(comfy_server.post_prompt(sampling_prompt(init_node, install)))
    processes = descendants(comfy_server)
    assert {"raylet", "gcs_server"} <= {name for _, name in processes.values()}
    comfy_server.stop()
    fault_table.check("ComfyUI stops", seen_s=gone_within(processes, 10))
