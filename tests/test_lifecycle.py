"""Tandem's life inside a ComfyUI server of this module's own (its tests disturb the server): Cancel leaves one log
line and no Ray traceback."""
import itertools
import re
from collections.abc import Iterator

import pytest

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
    after = comfy_server.wait(comfy_server.post_prompt(sampling_prompt(init_node, install)))
    assert "init" in cached_nodes(after)
    gained = comfy_server.log_text()[before:].splitlines()
    print("\n".join(gained))
    assert not [line for line in gained if RAY_NOISE.search(line)]
    (line,) = [line for line in gained if "Tandem" in line]
    step = int(re.fullmatch(r"Tandem: cancelled at step (\d+)/400", line).group(1))
    assert 3 <= step < 400
