"""`fairgate up` (what `make run` runs) starts the simulated engines of a config and stops them."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

from tests.conftest import H100_PROFILE


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_up_starts_every_simulated_backend_and_stops_them_on_ctrl_c(tmp_path: Path) -> None:
    ports = [free_port(), free_port()]
    config = tmp_path / "stack.yaml"
    config.write_text(
        f"""
pools:
  interactive:
    backends:
      a:
        url: "http://127.0.0.1:{ports[0]}"
        models: [m-a]
        simulator: {{profile: "{H100_PROFILE}", time_scale: 10}}
  reasoning:
    backends:
      b:
        url: "http://127.0.0.1:{ports[1]}"
        models: [m-b]
        simulator: {{profile: "{H100_PROFILE}"}}
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
        assert sum("ready at" in line for line in lines) == 2
        for port, model in zip(ports, ["m-a", "m-b"], strict=True):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models") as resp:
                assert model in resp.read().decode()
        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=30) == 0
    finally:
        up.kill()
    for port in ports:  # the engines are gone with it
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0


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
