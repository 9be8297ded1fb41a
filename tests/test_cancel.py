"""ComfyUI's Cancel reaches every worker within a step, and a worker that dies mid-job fails the prompt fast
(no hang in a collective) while the next run gets a working group."""
import time

import comfy.model_management
import pytest
import ray

from tandem.parallel.degrees import GroupConfig
from tandem.tests.test_wan_usp import request
from tandem.workers import group as groups

CONFIG = GroupConfig(gpu_count=2, ulysses_degree=2, timeout_s=60)


def long_request(steps: int = 400):
    req = request("wan21_t2v", (3, 8, 8), "euler")
    req.steps = steps
    return req


def test_cancel_stops_every_worker_and_the_group_keeps_working(_tandem_session, checkpoint):
    group = groups.start(CONFIG)
    key = group.call("load", str(checkpoint("wan21_t2v")), "default")[0]["key"]
    asked_at = []

    def poll():                    # what XFuser KSampler does when ComfyUI's Cancel is pressed
        step, _ = group.progress()
        if step >= 2 and not asked_at:
            asked_at.append(step)
            group.interrupt()

    with pytest.raises(comfy.model_management.InterruptProcessingException):
        group.call("sample", key, long_request(), on_poll=poll)
    stopped = [ray.get(actor.progress.remote())[0] for actor in group.actors]
    print(f"cancel asked at step {asked_at[0]}, workers stopped at steps {stopped}")
    assert stopped[0] == stopped[1] < 400                    # both stopped, at the same step, long before the end
    assert groups.start(CONFIG) is group                     # nothing was lost: same group, same model
    (latent, _), _ = group.call("sample", key, request("wan21_t2v", (3, 8, 8), "euler"))
    assert latent is not None


def test_worker_dying_mid_job_fails_fast_and_next_run_restarts(_tandem_session, checkpoint):
    group = groups.start(CONFIG)
    path = str(checkpoint("wan21_t2v"))
    key = group.call("load", path, "default")[0]["key"]
    before = groups.fingerprint(CONFIG)
    killed = []

    def poll():
        if group.progress()[0] >= 2 and not killed:
            killed.append(time.monotonic())
            ray.kill(group.actors[1])

    with pytest.raises(groups.TandemError) as error:
        group.call("sample", key, long_request(), on_poll=poll)
    waited = time.monotonic() - killed[0]
    print(f"error {waited:.1f} s after the kill: {error.value}")
    assert waited < CONFIG.timeout_s and "\n" not in str(error.value)
    assert groups.fingerprint(CONFIG) != before              # Tandem Init runs again on the next prompt ...
    fresh = groups.start(CONFIG)                             # ... and gets a working group
    key = fresh.call("load", path, "default")[0]["key"]
    (latent, _), _ = fresh.call("sample", key, request("wan21_t2v", (3, 8, 8), "euler"))
    assert latent is not None
