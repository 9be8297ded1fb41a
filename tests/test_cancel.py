"""ComfyUI's Cancel reaches every worker within a step, and a worker that dies mid-job fails the prompt fast
(no hang in a collective) while the next run gets a working group."""
import threading
import time
from collections.abc import Callable

import comfy.model_management
import pytest
import ray

from tandem.nodes.loader import load
from tandem.parallel.degrees import GroupConfig
from tandem.tests import fault_table
from tandem.tests.test_wan_usp import ksampler, request
from tandem.workers import group as groups

CONFIG = GroupConfig(gpu_count=2, ulysses_degree=2, timeout_s=60)


def long_request(steps: int = 400):
    req = request("wan21_t2v", (3, 8, 8), "euler")
    req.steps = steps
    return req


def once_at_step(group: groups.Group, step: int, action: Callable[[], None]
                 ) -> tuple[threading.Thread, list, threading.Event]:
    """A thread that runs ``action`` once rank 0 reports ``step`` finished steps (asking rank 0 itself, as a user
    watching the progress bar would); it gives up when ``done`` is set. Returns (thread, [(step, time)], done)."""
    acted, done = [], threading.Event()

    def watch():
        while not done.is_set():
            reached = ray.get(group.actors[0].progress.remote())[0]
            if reached >= step:
                acted.append((reached, time.monotonic()))
                action()
                return
            time.sleep(0.05)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread, acted, done


def test_cancel_stops_every_worker_and_the_group_keeps_working(_tandem_session, checkpoint):
    group = groups.start(CONFIG)
    path = str(checkpoint("wan21_t2v"))
    model = load(group, path)
    assert not comfy.model_management.processing_interrupted()
    # ComfyUI's Cancel button (POST /interrupt) sets this flag
    thread, asked_at, done = once_at_step(group, 2, lambda: comfy.model_management.interrupt_current_processing(True))
    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            ksampler(model, long_request())
    finally:
        done.set()
        thread.join()
        comfy.model_management.interrupt_current_processing(False)
    stopped = [ray.get(actor.progress.remote())[0] for actor in group.actors]
    print(f"cancel asked at step {asked_at[0][0]}, workers stopped at steps {stopped}")
    assert stopped[0] == stopped[1] < 400                    # both stopped, at the same step, long before the end
    assert groups.start(CONFIG) is group                     # nothing was lost: same group, same model
    assert ksampler(load(group, path), request("wan21_t2v", (3, 8, 8), "euler")) is not None


@pytest.mark.parametrize("rank", [1, 0], ids=["rank-1", "rank-0-whose-steps-the-host-polls"])
def test_worker_dying_mid_job_fails_fast_and_next_run_restarts(_tandem_session, checkpoint, rank):
    group = groups.start(CONFIG)
    path = str(checkpoint("wan21_t2v"))
    model = load(group, path)
    before = groups.fingerprint(CONFIG)
    thread, killed, done = once_at_step(group, 2, lambda: ray.kill(group.actors[rank]))
    try:
        with pytest.raises(groups.TandemError) as error:
            ksampler(model, long_request())
    finally:
        done.set()
        thread.join()
    failed_at = time.monotonic()
    assert "\n" not in str(error.value)
    assert "\x1b" not in str(error.value) and len(str(error.value)) < 500     # no ANSI colours, no Ray traceback
    assert groups.fingerprint(CONFIG) != before              # Tandem Init runs again on the next prompt ...
    fresh = groups.start(CONFIG)                             # ... and gets a working group
    assert ksampler(load(fresh, path), request("wan21_t2v", (3, 8, 8), "euler")) is not None
    fault_table.check("a worker dies mid-job", str(error.value), seen_s=failed_at - killed[0][1],
                      recovery_s=time.monotonic() - failed_at)
