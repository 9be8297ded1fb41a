"""The worker group behind Tandem Init: 2 real Ray actors on gloo, started, reused, restarted, stopped."""
import time

import ray

from tandem.parallel.degrees import GroupConfig
from tandem.workers import group as groups

CONFIG = GroupConfig(gpu_count=2, ulysses_degree=2, timeout_s=60)


def pids(group: groups.Group) -> list[int]:
    return [info["pid"] for info in group.workers]


def wait_until_dead(actor, timeout_s: float = 30) -> None:
    """ray.kill only asks; a ping can still be answered until the process is gone."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            ray.get(actor.ping.remote(), timeout=5)
        except ray.exceptions.RayActorError:
            return
        time.sleep(0.2)
    raise AssertionError("the killed worker still answers")


def test_group_starts_reuses_and_restarts(tandem_group):
    group = groups.start(CONFIG)
    assert [info["rank"] for info in group.workers] == [0, 1]          # both joined and passed the all-reduce
    assert all(info["device"] == "cpu" for info in group.workers)
    first = pids(group)
    assert len(set(first)) == 2

    same = groups.start(CONFIG)                                        # identical settings: the same workers
    assert same is group and pids(same) == first
    assert groups.fingerprint(CONFIG) == groups.fingerprint(CONFIG)

    changed = GroupConfig(gpu_count=2, ulysses_degree=2, timeout_s=61)  # any setting changed: a new group
    before = groups.fingerprint(changed)
    restarted = groups.start(changed)
    assert restarted is not group and not set(pids(restarted)) & set(first)
    assert groups.fingerprint(changed) == before                       # ComfyUI caches the new group's output

    ray.kill(restarted.actors[1])                                      # a worker dies between prompts
    wait_until_dead(restarted.actors[1])
    assert groups.fingerprint(changed) != before                       # so Tandem Init runs again ...
    healed = groups.start(changed)                                     # ... and gets a working group
    assert healed is not restarted and healed.alive()
    assert groups.start(CONFIG) is not healed                          # back to the session's settings


def test_shutdown_stops_workers_and_ray(tandem_group):
    groups.start(CONFIG)
    before = groups.fingerprint(CONFIG)
    groups.shutdown()
    assert groups.current() is None and not ray.is_initialized()
    assert groups.fingerprint(CONFIG) != before                        # Tandem Init runs again next time
