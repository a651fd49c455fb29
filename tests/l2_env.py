"""A real `lmcache server` (LMCache's MP mode) with `GdsL2Adapter` as its L2, for tests.

`LmcacheServer` starts the server on free loopback ports in its own process group, waits for its
health check, and always stops it (SIGTERM, then SIGKILL) on leaving the `with` block, a failing
test included. `bench_server` drives it with LMCache's own `lmcache bench server --mode cpu`.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 90.0
ENV = {"LMCACHE_DISABLE_BANNER": "1", "PYTHONWARNINGS": "ignore", "LMCACHE_TRACK_USAGE": "false",
       "LMCACHE_LOG_LEVEL": "INFO"}
"""The servers' environment: INFO, because the tests read INFO lines of the server log (a benchmark
module imported earlier in the same pytest run lowers the level for its own output)."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def l2_adapter_json(paths: list[str], **params: Any) -> str:
    """The `--l2-adapter` JSON that loads `GdsL2Adapter` through LMCache's plugin factory."""
    return json.dumps({"type": "plugin", "module_path": "lmcache_plugin.l2_adapter",
                       "class_name": "GdsL2Adapter", "adapter_params": {"paths": paths, **params}})


def environment() -> dict[str, str]:
    """The process environment with the repository importable and LMCache quiet."""
    env = dict(os.environ, **ENV)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def server_command(adapter_json: str, port: int, http_port: int) -> list[str]:
    return ["lmcache", "server", "--host", "127.0.0.1", "--port", str(port), "--http-host", "127.0.0.1",
            "--http-port", str(http_port), "--prometheus-port", str(free_port()), "--l1-size-gb", "1",
            "--eviction-policy", "LRU", "--supported-transfer-mode", "auto", "--l2-adapter", adapter_json]


class LmcacheServer:
    """`with LmcacheServer(adapter_json, log_path) as server:` a running server (see module doc)."""

    def __init__(self, adapter_json: str, log_path: str | os.PathLike) -> None:
        self.port, self.http_port = free_port(), free_port()
        self.command = server_command(adapter_json, self.port, self.http_port)
        self.log_path = Path(log_path)
        self.proc: subprocess.Popen | None = None

    @property
    def rpc_url(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> LmcacheServer:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, env=environment(),
                                         cwd=REPO, start_new_session=True)
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"lmcache server exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
                try:
                    if self.get("/healthcheck").get("status") == "healthy":
                        return self
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"lmcache server not healthy after {START_TIMEOUT_S} s:\n{self.log()[-4000:]}")
                time.sleep(0.25)
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """SIGTERM the server's process group, SIGKILL it if it lingers."""
        if self.proc is None or self.proc.poll() is not None:
            return
        for sig, wait_s in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(wait_s)
                return
            except subprocess.TimeoutExpired:
                continue

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(self.http_url + path, timeout=10) as resp:
            return json.loads(resp.read())

    def post(self, path: str, body: dict) -> dict:
        req = urllib.request.Request(self.http_url + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())

    def metrics(self) -> dict[str, float]:
        """`/metrics` as {"name{labels}": value}."""
        with urllib.request.urlopen(self.http_url + "/metrics", timeout=10) as resp:
            text = resp.read().decode()
        out = {}
        for line in text.splitlines():
            found = re.match(r"^([a-zA-Z_:][\w:]*(?:\{[^}]*\})?)\s+(\S+)$", line)
            if found:
                out[found.group(1)] = float(found.group(2))
        return out

    def adapter_status(self) -> dict:
        """Our adapter's `report_status()` as the server's `/status` shows it."""
        return self.get("/status")["storage_manager"]["l2_adapters"][0]


def bench_server(server: LmcacheServer, start: int, end: int, timeout_s: float = 120.0) -> str:
    """Run `lmcache bench server --mode cpu` for requests [start, end); its output."""
    cmd = ["lmcache", "bench", "server", "--rpc-url", server.rpc_url, "--url", server.http_url, "--mode", "cpu",
           "--start", str(start), "--end", str(end), "--interval", "0.05", "--num-tokens", "512"]
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, env=environment(), cwd=REPO, timeout=timeout_s)
    if done.returncode != 0:
        raise RuntimeError(f"lmcache bench server failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stdout


def warm_checksums(bench_output: str) -> dict[int, str]:
    """{request: checksum of the KV data the client retrieved} from `bench_server`'s output."""
    return {int(seq): digest for seq, digest in re.findall(r"\[seq (\d+)/warm\] CHECKSUM: ([0-9a-f]+)", bench_output)}
