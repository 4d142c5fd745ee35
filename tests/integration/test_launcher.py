"""`fairgate up` (what `make run` runs): Redis, simulated engines and the gateway, then stop."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

from loadtest.services import free_port
from tests.conftest import H100_PROFILE


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_up_starts_the_stack_and_stops_all_of_it_on_ctrl_c(tmp_path: Path) -> None:
    engine_a, engine_b, redis, gateway = (free_port() for _ in range(4))
    config = tmp_path / "stack.yaml"
    config.write_text(
        f"""
server: {{port: {gateway}}}
redis: {{url: "redis://127.0.0.1:{redis}/0"}}
pools:
  interactive:
    backends:
      a:
        url: "http://127.0.0.1:{engine_a}"
        models: [m-a]
        simulator: {{profile: "{H100_PROFILE}", time_scale: 10}}
  reasoning:
    backends:
      b:
        url: "http://127.0.0.1:{engine_b}"
        models: [m-b]
        simulator: {{profile: "{H100_PROFILE}"}}
tenants:
  t: {{api_keys: [key-t]}}
"""
    )
    up = subprocess.Popen(
        [sys.executable, "-m", "fairgate.cli", "up", "--config", str(config)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        lines = []
        while "Press Ctrl-C" not in (line := up.stdout.readline()):
            assert line, f"fairgate up ended early: {lines}"
            lines.append(line)
        output = "".join(lines)
        assert "redis started" in output and output.count("ready at") == 2
        assert "key-t" in output  # the copy-paste examples use a real demo key
        request = urllib.request.Request(
            f"http://127.0.0.1:{gateway}/v1/models", headers={"Authorization": "Bearer key-t"}
        )
        with urllib.request.urlopen(request) as resp:
            assert [m["id"] for m in json.load(resp)["data"]] == ["m-a", "m-b"]
        with urllib.request.urlopen(f"http://127.0.0.1:{gateway}/readyz") as resp:
            assert json.load(resp)["status"] == "ready"
        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=30) == 0
    finally:
        up.kill()
    assert not any(listening(p) for p in (engine_a, engine_b, redis, gateway))


def test_up_refuses_a_bad_config_naming_the_field(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(
        "pools:\n  p:\n    backends:\n      a: {url: 'http://127.0.0.1:1', models: []}\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "fairgate.cli", "up", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "pools.p.backends.a.models" in result.stderr
