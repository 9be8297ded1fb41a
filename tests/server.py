"""A real ComfyUI server on loopback with this checkout installed as a custom node, for end-to-end tests.

The server gets its own ``--base-directory`` so it sees only our ``custom_nodes`` and ``models`` folders, never the
ones inside the ComfyUI tree (setup.sh links Tandem there too; loading it twice would hide bugs). Tandem is linked
as ``custom_nodes/ComfyUI-Tandem`` to prove that any clone name works; test-only node packages are linked beside it.
"""
from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable
from pathlib import Path

import aiohttp

STARTUP_TIMEOUT_S = 120.0
CLONE_NAME = "ComfyUI-Tandem"
REPO_ROOT = Path(__file__).resolve().parent.parent
TEST_NODES = REPO_ROOT / "tests" / "comfy_nodes" / "tandem_test_nodes"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerError(RuntimeError):
    """An HTTP error answer; ``body`` is its JSON (for /prompt: ComfyUI's validation ``node_errors``)."""

    def __init__(self, path: str, code: int, text: str) -> None:
        super().__init__(f"{path} answered {code}: {text}")
        self.code = code
        try:
            self.body = json.loads(text)
        except json.JSONDecodeError:
            self.body = None


class ComfyServer:
    """One ComfyUI process: start it, talk to its HTTP API, read its log, stop it."""

    def __init__(self, comfyui_path: Path, repo_root: Path, base_dir: Path, python: str = sys.executable,
                 extra_nodes: Iterable[Path] = (), cpu: bool = True, env: dict[str, str] | None = None) -> None:
        self.base_dir = Path(base_dir)
        self.custom_nodes_dir = self.base_dir / "custom_nodes"
        self.diffusion_models_dir = self.base_dir / "models" / "diffusion_models"
        self.loras_dir = self.base_dir / "models" / "loras"
        self.output_dir = self.base_dir / "output"
        self.log_path = self.base_dir / "comfyui.log"
        self.custom_nodes_dir.mkdir(parents=True, exist_ok=True)
        self.diffusion_models_dir.mkdir(parents=True, exist_ok=True)
        self.loras_dir.mkdir(parents=True, exist_ok=True)
        (self.custom_nodes_dir / CLONE_NAME).symlink_to(Path(repo_root).resolve(), target_is_directory=True)
        for package in extra_nodes:
            (self.custom_nodes_dir / Path(package).name).symlink_to(Path(package).resolve(), target_is_directory=True)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [python, "main.py", *(["--cpu"] if cpu else []), "--listen", "127.0.0.1",
                        "--port", str(self.port), "--base-directory", str(self.base_dir), "--disable-auto-launch",
                        "--database-url", "sqlite:///:memory:", "--preview-method", "latent2rgb"]
        self.comfyui_path = Path(comfyui_path)
        self.env = env or {}
        self.process: subprocess.Popen | None = None
        self.startup_s: float | None = None

    def start(self, timeout: float = STARTUP_TIMEOUT_S) -> None:
        """Launch ComfyUI and block until ``/object_info`` answers (it does only after custom nodes loaded)."""
        env = {**os.environ, "COMFYUI_PATH": str(self.comfyui_path), "PYTHONUNBUFFERED": "1", **self.env}
        started = time.monotonic()
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(self.command, cwd=self.comfyui_path, env=env, stdout=log,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        while time.monotonic() - started < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                self.object_info()
                self.startup_s = time.monotonic() - started
                return
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"ComfyUI did not answer within {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        """Terminate, then kill if ComfyUI ignores SIGTERM for 10 s."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def _request(self, path: str, body: dict | None = None, timeout: float = 30.0) -> dict:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as e:
            raise ServerError(path, e.code, e.read().decode(errors="replace")) from None

    def fetch(self, path: str) -> tuple[bytes, str]:
        """A plain GET (static files such as templates): the body and its content type."""
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            return response.read(), response.headers.get_content_type()

    def object_info(self) -> dict:
        return self._request("/object_info")

    def history(self) -> dict:
        """Every finished prompt's history entry, by prompt id (prompts queued elsewhere, e.g. from a browser, too)."""
        return self._request("/history")

    def post_prompt(self, workflow: dict, client_id: str | None = None) -> str:
        """Queue an API-format workflow (for the websocket client ``client_id``, if given); a validation error raises
        with ComfyUI's node_errors."""
        body = {"prompt": workflow, "client_id": client_id or uuid.uuid4().hex}
        return self._request("/prompt", body)["prompt_id"]

    def cancel_at(self, workflow: dict, node_id: str, step: int, timeout: float = 300.0) -> str:
        """Queue ``workflow`` and press Cancel (POST /interrupt for this prompt, as ComfyUI's frontend does) once
        node ``node_id`` reports ``step`` finished steps over the websocket, as a user watching its progress bar
        would; return the prompt id."""
        return asyncio.run(self._cancel_at(workflow, node_id, step, timeout))

    async def _cancel_at(self, workflow: dict, node_id: str, step: int, timeout: float) -> str:
        client_id = uuid.uuid4().hex
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"ws://127.0.0.1:{self.port}/ws?clientId={client_id}") as ws:
                prompt_id = await asyncio.to_thread(self.post_prompt, workflow, client_id)
                async with asyncio.timeout(timeout):
                    async for message in ws:
                        if message.type != aiohttp.WSMsgType.TEXT:
                            continue
                        event = json.loads(message.data)
                        data = event["data"]
                        if event["type"] == "progress" and data["node"] == node_id and data["value"] >= step:
                            async with session.post(self.url + "/interrupt", json={"prompt_id": prompt_id}) as answer:
                                answer.raise_for_status()
                            return prompt_id
        raise AssertionError(f"the websocket closed before node {node_id} reached step {step}:\n{self.log_tail()}")

    def finished(self, prompt_id: str, timeout: float = 300.0) -> dict:
        """Poll ``/history/<id>`` until the prompt finished, successfully or not; return its history entry."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self._request(f"/history/{prompt_id}").get(prompt_id)
            if entry is not None:  # ComfyUI adds the entry only once the prompt has finished
                return entry
            time.sleep(0.5)
        raise TimeoutError(f"prompt {prompt_id} not done after {timeout:.0f} s\n--- server log ---\n{self.log_tail()}")

    def wait(self, prompt_id: str, timeout: float = 300.0) -> dict:
        """The history entry of a prompt that must succeed; raise with its messages and the log otherwise."""
        entry = self.finished(prompt_id, timeout)
        status = entry.get("status") or {}
        if status.get("status_str") != "success":
            messages = json.dumps(status.get("messages"), indent=1)
            raise RuntimeError(f"prompt {prompt_id} failed: {messages}\n--- server log ---\n{self.log_tail()}")
        return entry

    def wait_error(self, prompt_id: str, timeout: float = 300.0) -> dict:
        """The ``execution_error`` message (node_type, exception_message, ...) of a prompt that must fail."""
        entry = self.finished(prompt_id, timeout)
        errors = [data for event, data in entry["status"]["messages"] if event == "execution_error"]
        if not errors:
            raise AssertionError(f"prompt {prompt_id} did not fail: {json.dumps(entry['status'], indent=1)}")
        return errors[0]


def tandem_server(base_dir: Path, env: dict[str, str] | None = None) -> ComfyServer:
    """A started ComfyUI server with this checkout as a custom node, and ``tests/comfy_nodes/tandem_test_nodes``
    beside it (a stand-in text encoder for CI); ``env``: variables set for it."""
    server = ComfyServer(Path(os.environ["COMFYUI_PATH"]), REPO_ROOT, base_dir, extra_nodes=[TEST_NODES], env=env)
    server.start()
    print(f"ComfyUI answered after {server.startup_s:.1f} s at {server.url}, log: {server.log_path}")
    return server
