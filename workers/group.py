"""The worker group behind Tandem Init: the Ray connection, a placement group, N actors, one process group.

At most one group runs per ComfyUI process. ``fingerprint`` feeds Tandem Init's IS_CHANGED, so ComfyUI's
cache reuses a healthy group with the same settings and re-runs the graph after a change or a lost worker.
"""
import atexit
import logging
import os
import re
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import comfy.model_management
import psutil
import ray
import torch
from ray.util.placement_group import placement_group, placement_group_table, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from ..parallel import layout
from ..parallel.degrees import GroupConfig, TandemConfigError, TandemError, validate, validate_available
from . import transport
from .actor import Worker
from .comfyui import comfyui_path

log = logging.getLogger("tandem")

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DIRS = ("nodes", "workers", "parallel", "models")
FORWARDED_ENV = ("NCCL_", "TORCH_", "PYTORCH_", "CUDA_LAUNCH_BLOCKING", "NVSHMEM_")
ERROR_GRACE_S = 10.0
CONNECT_TIMEOUT_S = 10.0     # a cluster address must answer within this (or the collective timeout, if shorter)
HUNG_S = 30.0                # a worker that answers no ping for this long (or half the collective timeout) is hung
CPU_WORKER_GB = 1.0          # host memory one CPU worker may need (~0.5 GB private, plus its share of a model)


_current: "Group | None" = None
_epoch = 0                 # bumped whenever a group is lost or stopped, so IS_CHANGED changes
_ray_address: str | None = None   # the address Tandem itself initialized Ray with, if it did


def stage_package() -> str:
    """Copy Tandem's Python files into a folder named ``tandem`` for Ray's ``py_modules``.

    The checkout may be named anything (``ComfyUI-Tandem``, ...); workers on every host import it as ``tandem``.
    The folder is new and private to this process (``mkdtemp``: mode 0700, owned by us), never a path another local
    user could have prepared with code of their own; Ray uploads it by content hash, so staging it again costs
    nothing there. ``_connect`` removes it once ``ray.init`` has uploaded it (a driver that Ray ends abruptly,
    with its raylet, would leave it behind); what is left is removed at exit.
    """
    files = [PACKAGE_ROOT / "__init__.py"] + sorted(
        p for d in PACKAGE_DIRS for p in (PACKAGE_ROOT / d).glob("*.py"))
    staging = Path(tempfile.mkdtemp(prefix="tandem-pkg-"))
    atexit.register(shutil.rmtree, staging, True)
    target = staging / "tandem"
    for f in files:
        (target / f.relative_to(PACKAGE_ROOT)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, target / f.relative_to(PACKAGE_ROOT))
    return str(target)


STOPPED = ("this Tandem group was stopped (Tandem Shutdown, or a lost worker): run the prompt again to start a new "
           "one, and put Tandem Shutdown in a prompt of its own")
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
ONE_LINE_CHARS = 300           # Ray's errors carry whole tracebacks and actor descriptions; the node shows one line


def one_line(error: BaseException) -> str:
    cause = getattr(error, "cause", None) or error
    if isinstance(cause, (TandemConfigError, TandemError)):
        return str(cause)
    text = " ".join(line.strip() for line in ANSI_ESCAPE.sub("", str(cause)).splitlines() if line.strip())
    text = f"{type(cause).__name__}: {text}".rstrip(": ")
    return text if len(text) <= ONE_LINE_CHARS else text[:ONE_LINE_CHARS - 1] + "…"


def _cpu_slots(workers: int) -> int | None:
    """Logical CPUs for a private head on a machine without GPUs: CPU workers are for trying Tandem out, so a
    2-core machine may still run 4 of them (slowly). None (Ray's own count) where GPUs do the work."""
    return None if torch.cuda.is_available() else max(os.cpu_count() or 1, workers)


def _check_reachable(address: str, timeout_s: float) -> None:
    """A cluster address whose port does not answer is one line within ``timeout_s``: ``ray.init`` itself retries
    such an address for ever, and ComfyUI's queue would wait behind it."""
    if address == "auto":
        return
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except (OSError, ValueError) as e:
        raise TandemError(f"cannot reach a Ray cluster at {address!r} ({type(e).__name__}: {e}): check the Ray "
                          "address in Tandem Init (host:port of the Ray head, e.g. 10.0.0.5:6379), or use "
                          "'local'") from None


def _connect(address: str, workers: int, timeout_s: float) -> str:
    """Connect to Ray (starting a private head on this machine for ``local``); return the resource unit."""
    global _ray_address
    if address != "local" and _ray_address != address:
        _check_reachable(address, min(timeout_s, CONNECT_TIMEOUT_S))
    if address == "local" and os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        raise TandemError("RAY_AUTH_MODE=disabled is set: Tandem's private Ray head would accept any process that "
                          "reaches its ports (they listen on every interface); unset it and restart ComfyUI")
    if ray.is_initialized() and _ray_address not in (None, address):
        shutdown_ray()
    slots = _cpu_slots(workers) if address == "local" else None
    if ray.is_initialized() and _ray_address == "local" and slots and ray.cluster_resources().get("CPU", 0) < slots:
        shutdown_ray()             # our private CPU head is too small for this many workers: start a larger one
    if not ray.is_initialized():
        # Ray ships local code only with the job's runtime_env, so Tandem's package rides on ray.init.
        env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV)}
        env["COMFYUI_PATH"] = comfyui_path()
        package = stage_package()
        runtime_env = {"py_modules": [package], "env_vars": env}
        try:
            if address == "local":
                ray.init(address="local", include_dashboard=False, num_cpus=slots,
                         logging_level=logging.WARNING, runtime_env=runtime_env)
            else:
                ray.init(address=address, logging_level=logging.WARNING, runtime_env=runtime_env)
        except Exception as e:
            raise TandemError(f"cannot start or reach Ray at {address!r} ({one_line(e)}): "
                              "check the Ray address in Tandem Init, or use 'local'") from None
        finally:
            shutil.rmtree(Path(package).parent, ignore_errors=True)    # ray.init uploaded it: Ray has its own copy
        _ray_address = address
    return "GPUs" if ray.cluster_resources().get("GPU", 0) >= 1 else "CPUs"


class _Pings:
    """Keeps one ping in flight to every worker while a call runs. A busy worker answers on another of its threads;
    one whose ping stays unanswered for ``limit`` seconds is stopped or wedged, and its peers wait on it in a
    collective: without this the call would only end at the collective timeout, with no word on which worker."""

    def __init__(self, actors: list, limit: float):
        self.actors, self.limit = actors, limit
        self.sent: dict[int, tuple] = {}         # rank -> (ping ref, when sent)

    def hung(self) -> int | None:
        now = time.monotonic()
        for rank, actor in enumerate(self.actors):
            ref, sent_at = self.sent.get(rank, (None, now))
            if ref is not None and not ray.wait([ref], timeout=0)[0]:
                if now - sent_at > self.limit:
                    return rank
                continue
            if ref is None or now - sent_at > 1.0:
                self.sent[rank] = actor.ping.remote(), now
        return None


def host_name(node_id: str) -> str:
    """A host as the layout and its messages name it: a Ray node, by its IP and the start of its node id (two raylets
    on one machine, as in a simulated cluster, are two hosts)."""
    ips = {node["NodeID"]: node["NodeManagerAddress"] for node in ray.nodes()}
    return f"{ips.get(node_id, '?')} (node {node_id[:6]})"


def _reserve(count: int, on_gpu: bool, timeout_s: float):
    """A placement group of ``count`` GPUs (or CPU slots), reserved within ``timeout_s``."""
    bundle = {"CPU": 1, "GPU": 1} if on_gpu else {"CPU": 1}
    pg = placement_group([bundle] * count, strategy="PACK")
    try:
        ray.get(pg.ready(), timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        remove_placement_group(pg)
        raise TandemError(f"Ray could not reserve {count} {'GPUs' if on_gpu else 'CPUs'} within {timeout_s} s: "
                          "free them (another job holds them?) or lower GPU count") from None
    return pg


def _spawn(pg, bundle: int, on_gpu: bool):
    """A worker process on one bundle. It takes the job's runtime environment (Tandem's package, the forwarded
    variables) and no environment of its own, which would make Ray start it through its runtime-env agent
    (measured ~2.5 s more per start on an H200 machine); its threads are set when it joins."""
    return ray.remote(Worker).options(
        num_cpus=1, num_gpus=1 if on_gpu else 0, max_concurrency=4,
        scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=bundle)).remote()


def _release(actors: list, pg=None) -> None:
    for actor in actors:
        ray.kill(actor)
    if pg is not None:
        remove_placement_group(pg)


@dataclass
class _Pool:
    """Workers started before any Tandem Init asked for them (``warm``): the first group on the private head takes
    them instead of waiting for its workers to start and import torch and ComfyUI (~13 s on an H200 machine)."""
    pg: object
    actors: list
    on_gpu: bool


_pool: _Pool | None = None


def _take_pool(config: GroupConfig, on_gpu: bool) -> _Pool | None:
    """The started workers if this group can use them (the private head, enough of them, the same kind); else they
    are stopped, freeing their GPUs for the group."""
    global _pool
    pool, _pool = _pool, None
    if pool and config.ray_address == "local" and pool.on_gpu == on_gpu and len(pool.actors) >= config.gpu_count:
        return pool
    if pool:
        _release(pool.actors, pool.pg)
    return None


class Group:
    """N actors on one placement group, numbered host by host (``layout.host_order``), in one torch.distributed
    group."""

    def __init__(self, config: GroupConfig):
        self.config = config
        self.stopped = False
        self.last_stats: list[dict] = []      # every rank's statistics of the last job (tests, benchmarks)
        self.phases: dict[str, float] = {}    # where the start's seconds went (Tandem Init logs them)
        began = time.monotonic()
        self.unit = _connect(config.ray_address, config.gpu_count, config.timeout_s)
        self.phases["Ray"] = time.monotonic() - began
        available = int(ray.cluster_resources().get(self.unit[:-1], 0))
        validate_available(config, available, self.unit)
        on_gpu = self.unit == "GPUs"
        if not on_gpu:
            log.warning("Tandem: Ray sees no GPU; starting %d CPU workers on gloo", config.gpu_count)
        mark = time.monotonic()
        pool = _take_pool(config, on_gpu)
        self.pg = pool.pg if pool else _reserve(config.gpu_count, on_gpu, config.timeout_s)
        self.phases["reserve"] = time.monotonic() - mark
        # Ranks go host by host, so that each Ulysses group (consecutive ranks) stays on one host; a placement that
        # cannot do that is refused before any actor starts.
        nodes = placement_group_table(self.pg)["bundles_to_node_id"]
        nodes = [nodes[i] for i in range(config.gpu_count)]
        self.node = ray.get_runtime_context().get_node_id()         # the driver's: ComfyUI's host
        bundles = layout.host_order(nodes, self.node)
        self.hosts = [host_name(nodes[b]) for b in bundles]
        try:
            layout.check_hosts(config, self.hosts)
        except TandemConfigError:
            _release(pool.actors if pool else [], self.pg)
            raise
        self.actors = [pool.actors[b] if pool else _spawn(self.pg, b, on_gpu) for b in bundles]
        if pool:
            _release(pool.actors[config.gpu_count:])     # the started workers this group does not need
        try:
            mark = time.monotonic()
            host, port = self.get([self.actors[0].address.remote()], watch=False)[0]
            self.get([a.ping.remote() for a in self.actors], watch=False)
            started = "worker processes (started with ComfyUI)" if pool else "worker processes"
            self.phases[started] = time.monotonic() - mark
            mark = time.monotonic()
            host = "127.0.0.1" if config.ray_address == "local" else host   # one machine: rendezvous on loopback
            self.workers = self.get([a.join.remote(rank, config.as_dict(), host, port, self.hosts)
                                     for rank, a in enumerate(self.actors)], watch=False)
            self.phases["process group"] = time.monotonic() - mark
        except Exception:
            self.stop()
            raise
        self.on_this_host = all(info["node"] == self.node for info in self.workers)
        log.info("Tandem: %s", self.workers[0]["layout"])
        for warning in sorted({w for info in self.workers for w in info["warnings"]}):
            log.warning("Tandem: %s", warning)

    def get(self, refs: list, on_poll: Callable[[], None] | None = None, watch: bool = True) -> list:
        """Results of one call on several actors, as one-line errors; never waits past the timeout.

        When one rank fails while others keep running, those others are stuck in a collective: the group
        is stopped (the next prompt starts a new one) instead of leaving them hanging. So it is when a worker stops
        answering (``_Pings``; ``watch`` is off while the workers start, as one still importing cannot answer).
        """
        deadline = time.monotonic() + self.config.timeout_s
        pending, errors, first_error_at = list(refs), [], None
        pings = _Pings(self.actors if watch else [], min(HUNG_S, self.config.timeout_s / 2))
        while pending:
            done, pending = ray.wait(pending, num_returns=len(pending), timeout=0.2)
            for ref in done:
                try:
                    ray.get(ref)
                except Exception as e:
                    errors.append(e)
                    first_error_at = first_error_at or time.monotonic()
            if errors and pending and time.monotonic() - first_error_at > ERROR_GRACE_S:
                self.lose()
                raise TandemError(f"{one_line(errors[0])} (a worker failed mid-job; "
                                  "the group was stopped and restarts on the next run)") from None
            hung = pings.hung() if pending else None
            if hung is not None:
                self.lose()
                raise TandemError(f"Tandem worker {hung} stopped responding (no answer for {pings.limit:.0f} s: "
                                  "stopped, swapping or wedged); the group was stopped and restarts on the next run")
            if pending and time.monotonic() > deadline:
                self.lose()
                raise TandemError(f"Tandem workers did not finish within {self.config.timeout_s} s; the group was "
                                  "stopped: raise the collective timeout in Tandem Init or check the workers' log")
            if pending and on_poll:
                try:
                    on_poll()
                except BaseException:       # ComfyUI's callback raised (Cancel): stop the workers before leaving
                    self.interrupt()
                    self._settle(pending)
                    raise
        if errors:
            self._raise(errors)
        return ray.get(refs)

    def _settle(self, refs: list) -> None:
        """Let running calls end (they stop at their next step once interrupted); a group still busy after the
        timeout is stopped, so the next job never runs beside a stale one."""
        _, pending = ray.wait(refs, num_returns=len(refs), timeout=self.config.timeout_s)
        if pending:
            self.lose()

    def _raise(self, errors: list[Exception]) -> None:
        """One error for the node: a dead worker first (its peers only saw a broken connection), then a setting
        to change, then Cancel, then whatever the first worker raised."""
        died = [e for e in errors if isinstance(e, ray.exceptions.RayActorError)]
        if died:
            self.lose()
            raise TandemError(f"a Tandem worker died ({one_line(died[0])}): run again to restart the group")
        causes = [getattr(e, "cause", None) for e in errors]
        for cause in causes:
            if isinstance(cause, TandemConfigError) or type(cause).__name__ == "InterruptProcessingException":
                raise cause
        raise TandemError(one_line(errors[0])) from None

    def call(self, method: str, *args, on_poll: Callable[[], None] | None = None) -> list:
        """Call ``method`` on every actor with the same arguments (put once in the object store). A stopped group
        refuses: a Ray call after ``ray.shutdown`` would start a cluster without Tandem's package."""
        if self.stopped:
            raise TandemError(STOPPED)
        refs = [ray.put(a) if not isinstance(a, (int, str, float, bool, tuple)) else a for a in args]
        return self.get([getattr(actor, method).remote(*refs) for actor in self.actors], on_poll=on_poll)

    def sample(self, key: tuple, job: bytes, on_step: Callable | None = None) -> list:
        """Run a packed job (``workers.job``) on every actor; hand each step rank 0 finished to ``on_step`` (ComfyUI's
        callback: progress bar and preview), in order and all of them, the last ones after the job ended. Cancel in
        ComfyUI reaches every worker."""
        def poll():
            if comfy.model_management.processing_interrupted():
                self.interrupt()
            for step, x0, x, total in self.steps() if on_step else ():
                on_step(step, x0, x, total)

        try:
            results = self.call("sample", key, job, on_poll=poll)
            poll()
        except comfy.model_management.InterruptProcessingException:
            log.info(self._cancelled())
            raise
        self.last_stats = [stats for _, stats in results]
        return results

    def _cancelled(self) -> str:
        """The one log line a Cancel leaves (ComfyUI adds its own "Processing interrupted"): where the workers
        stopped, so a user sees that all of them did, and no Ray traceback."""
        if self.stopped:
            return "Tandem: cancelled; the workers did not stop within the timeout, so the group was stopped"
        step, total = ray.get(self.actors[0].progress.remote(), timeout=10)
        return f"Tandem: cancelled at step {step}/{total}"

    def steps(self) -> list[tuple]:
        """The steps rank 0 finished since the last call: (step, x0, x, total) each. A worker too busy to answer
        within a second leaves them for the next poll; a hung or dead one is the job's own call's to report (the
        hung-worker pings, the worker's death in one line), never the poll's."""
        try:
            return ray.get(self.actors[0].steps.remote(), timeout=1)
        except ray.exceptions.RayError:
            return []

    def interrupt(self) -> None:
        """Ask every worker to stop; they all stop at the same step (see Worker._stop_requested)."""
        for actor in self.actors:
            actor.interrupt.remote()

    def alive(self) -> bool:
        try:
            ray.get([a.ping.remote() for a in self.actors], timeout=30)
            return True
        except Exception:
            return False

    def stop(self) -> None:
        self.stopped = True
        _release(getattr(self, "actors", []), self.pg)

    def lose(self) -> None:
        """Stop this group and make the next IS_CHANGED differ, so ComfyUI re-runs Tandem Init."""
        global _current, _epoch
        self.stop()
        if _current is self:
            _current = None
        _epoch += 1


def fingerprint(config: GroupConfig) -> str:
    """Tandem Init's IS_CHANGED: equal while the group for ``config`` is (or can be) the one running."""
    if _current is not None and _current.config == config and not _current.alive():
        log.warning("Tandem: a worker of the running group died; restarting the group")
        _current.lose()
    return f"{config}#{_epoch}"


def check(config: GroupConfig) -> None:
    """Refuse, before anything starts, settings that cannot work: degrees that do not fit together, and without
    GPUs (every worker a CPU process of its own) more workers than this host can hold (four per core, one per GB
    of free memory)."""
    validate(config)
    if config.ray_address.startswith("ray://"):
        raise TandemConfigError(f"Ray Client addresses ({config.ray_address}) are not supported: Tandem's driver must "
                                "run on a node of the cluster (rank 0 and the job's shared files live on ComfyUI's "
                                "node; Ray Client would proxy every job and step through the head): run `ray start "
                                "--address <head>:6379` on this machine and give Tandem Init that address, or 'auto'")
    if config.ray_address != "local" or torch.cuda.is_available():
        return
    cores, free_gb = os.cpu_count() or 1, psutil.virtual_memory().available / 2**30
    limit = max(1, min(4 * cores, int(free_gb / CPU_WORKER_GB)))
    if config.gpu_count > limit:
        raise TandemConfigError(f"GPU count {config.gpu_count} would start {config.gpu_count} CPU workers on this "
                                f"machine without GPUs, which holds at most {limit} ({cores} cores, {free_gb:.0f} GB "
                                f"free): set GPU count to {limit} or fewer")


def warm(workers: int | None = None) -> None:
    """Start the private Ray head and ``workers`` worker processes (None: one per GPU) before any Tandem Init asks
    for them (``workers.driver.prestart``). The workers import in the background; the first group takes them."""
    global _pool
    on_gpu = _connect("local", workers or 1, CONNECT_TIMEOUT_S) == "GPUs"
    count = int(ray.cluster_resources().get("GPU", 0)) if workers is None and on_gpu else workers or 0
    if count and _pool is None and _current is None:
        pg = _reserve(count, on_gpu, CONNECT_TIMEOUT_S)
        _pool = _Pool(pg, [_spawn(pg, bundle, on_gpu) for bundle in range(count)], on_gpu)


def start(config: GroupConfig) -> Group:
    """The running group if it has these settings and every actor answers, else a fresh one."""
    global _current
    check(config)
    if _current is not None:
        if _current.config == config and _current.alive():
            return _current
        _current.stop()        # IS_CHANGED already differs: new settings, or fingerprint() saw a dead worker
        _current = None
    _current = Group(config)
    return _current


def shutdown_ray() -> None:
    """Disconnect from Ray (stopping the head if Tandem started it); never touch a Ray someone else started."""
    global _ray_address, _pool
    if _ray_address is not None and ray.is_initialized():
        ray.shutdown()
    _ray_address, _pool = None, None


def shutdown() -> None:
    """Tandem Shutdown: stop the group, and the Ray head if Tandem started it."""
    global _current, _epoch
    if _current is not None:
        _current.stop()
        _current = None
    _epoch += 1
    shutdown_ray()
    transport.clear()


def current() -> "Group | None":
    return _current
