"""KV-cache capacity and budgets (fairgate/kv_capacity.py), `capacity:` settings, `fairgate plan`.

The arithmetic is checked against numbers vLLM itself produced: the BLIS / simulator profile
for Llama-3-8B on an H100 (29,205 blocks) and capacities vLLM logged on other GPUs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from fairgate.kv_capacity import (
    CapacityConfig,
    CapacityError,
    GiB,
    kv_bytes_per_token,
    load_presets,
    plan_capacity,
    render_matrix,
    weight_bytes,
)
from fairgate.settings import ConfigError, Settings, load_settings
from loadtest.simulator.profile import DEFAULT_PROFILE, profile_path

REPO = Path(__file__).resolve().parents[2]
H100_PROFILE = profile_path(DEFAULT_PROFILE)


def plan(**spec: Any):  # noqa: ANN201 - KvCapacity
    return plan_capacity(CapacityConfig(**spec))


# --------------------------------------------------------------------------- the arithmetic


def test_kv_bytes_per_token_follow_the_model_shape() -> None:
    presets = load_presets()
    llama8, llama70, qwen = (presets.models[m] for m in ("llama-3-8b", "llama-3-70b", "qwen2.5-7b"))
    # 2 x 32 x 8 x 128 x 2 bytes = 128 KiB (docs/REFERENCES: "KV per token = 128 KiB")
    assert kv_bytes_per_token(llama8, "bf16") == 131_072
    assert kv_bytes_per_token(llama8, "fp8") == 65_536
    # 70B: 2 x 80 x 8 x 128 x 2 = 320 KiB for the model, a quarter on each of 4 GPUs
    assert kv_bytes_per_token(llama70, "bf16") == 327_680
    assert kv_bytes_per_token(llama70, "bf16", tensor_parallel_size=4) == 81_920
    # more GPUs than KV heads: each GPU keeps one head (vLLM replicates), no further split
    assert kv_bytes_per_token(llama70, "bf16", 16) == kv_bytes_per_token(llama70, "bf16", 8)
    assert kv_bytes_per_token(qwen, "bf16") == 2 * 28 * 4 * 128 * 2


def test_quantized_weights_keep_embeddings_in_16_bit() -> None:
    llama70 = load_presets().models["llama-3-70b"]
    assert weight_bytes(llama70, "bf16") == pytest.approx(70.554e9 * 2)
    assert weight_bytes(llama70, "fp8") == pytest.approx((70.554 - 2.101) * 1e9 + 2.101e9 * 2)


def test_the_simulator_profile_is_reproduced_exactly_from_nominal_memory() -> None:
    """BLIS's 29,205 blocks are 80 GiB x 0.9 minus the bf16 weights, with nothing reserved."""
    profile = yaml.safe_load(H100_PROFILE.read_text())["kv_cache"]
    result = plan(gpu_memory_gib=80, model="llama-3-8b", reserve_gib=0)
    assert result.num_blocks == profile["num_blocks"] == 29_205
    assert result.kv_tokens == profile["num_blocks"] * profile["block_size"] == 467_280


def test_h100_preset_lands_below_the_profile_by_what_the_engine_really_has() -> None:
    """CUDA reports 79.10 GiB on an H100, and vLLM keeps ~2.5 GiB for activations and graphs."""
    result = plan(gpu="h100-80gb", model="llama-3-8b")
    assert result.usable_gib == pytest.approx(79.10 * 0.9)
    assert result.weight_gib == pytest.approx(8.03e9 * 2 / GiB)
    assert result.kv_gib == pytest.approx(79.10 * 0.9 - 8.03e9 * 2 / GiB - 2.5)
    assert result.num_blocks == int(result.kv_gib * GiB // (16 * 131_072)) == 27_511
    assert result.kv_tokens == 440_176
    assert 0.93 < result.kv_tokens / 467_280 < 0.95


def test_h100_nvl_preset_matches_what_vllm_measured() -> None:
    """vLLM on an H100 NVL reported 543,440 KV tokens for Meta-Llama-3-8B-Instruct at 0.9."""
    result = plan(gpu="h100-nvl", model="llama-3-8b")
    assert result.kv_tokens == pytest.approx(543_440, rel=0.01)


def test_tensor_parallel_70b_and_budgets() -> None:
    result = plan(gpu="h100-80gb", model="llama-3-70b", tensor_parallel_size=4, context_length=8192)
    assert result.weight_gib == pytest.approx(70.554e9 * 2 / 4 / GiB)
    assert result.kv_bytes_per_token == 81_920
    assert result.kv_tokens == 469_696
    assert result.blocks_per_sequence == 512
    assert result.concurrency_at_context == 469_696 // 8192 == 57
    assert result.max_inflight_tokens == int(469_696 * 0.9)
    assert result.max_concurrency == 1024  # vLLM's default max_num_seqs on an H100
    assert plan(gpu="a100-80gb", model="llama-3-70b", tensor_parallel_size=4).max_concurrency == 256


def test_fp8_kv_doubles_the_tokens_for_the_same_memory() -> None:
    bf16 = plan(gpu="h100-80gb", model="llama-3-8b")
    fp8_kv = plan(gpu="h100-80gb", model="llama-3-8b", kv_cache_dtype="fp8")
    assert fp8_kv.kv_gib == bf16.kv_gib
    assert fp8_kv.num_blocks == int(bf16.kv_gib * GiB // (16 * 65_536))
    assert fp8_kv.kv_tokens == pytest.approx(2 * bf16.kv_tokens, abs=16)


def test_weights_that_leave_no_room_are_refused() -> None:
    with pytest.raises(CapacityError, match=r"131\.4 GiB per GPU at TP 1.*raise tensor_parallel"):
        plan(gpu="h100-80gb", model="llama-3-70b")


def test_a_context_that_does_not_fit_is_flagged() -> None:
    result = plan(gpu="h100-80gb", model="llama-3-70b", tensor_parallel_size=2)
    assert result.kv_tokens == 19_536
    assert result.concurrency_at_context == 2  # 8k context
    long = plan(
        gpu="h100-80gb", model="llama-3-70b", tensor_parallel_size=2, context_length=131_072
    )
    assert not long.fits_one_context
    assert "does not fit" in long.render()


def test_render_shows_each_step() -> None:
    text = plan(gpu="h100-80gb", model="llama-3-8b").render()
    for expected in (
        "79.1 GiB x 0.9",
        "= 71.19 GiB",
        "71.19 - 14.96 - 2.5 reserve",
        "2 x 32 layers x 8 KV heads x 128 x 2 B",
        "= 131,072 B (128 KiB)",
        "= 27,511",
        "27,511 blocks x 16",
        "= 440,176 tokens",
        "floor(440,176 x 0.9 headroom)",
        "= 396,158",
    ):
        assert expected in text, expected


def test_matrix_covers_every_preset() -> None:
    presets = load_presets()
    lines = render_matrix().splitlines()
    assert len(lines) == 1 + len(presets.models) * len(presets.gpus) * 2
    row = next(x for x in lines if x.startswith("llama-3-70b ") and "h100-80gb  bf16" in x)
    assert row.split()[-4:] == ["-", "19,536", "469,696", "1,370,032"]


# --------------------------------------------------------------------------- settings


def config_with(backend: dict[str, Any]) -> dict[str, Any]:
    base = {"url": "http://127.0.0.1:9001", "models": ["m"]}
    return {"pools": {"interactive": {"backends": {"x": {**base, **backend}}}}}


def test_a_backend_with_capacity_gets_derived_budgets() -> None:
    capacity = {"gpu": "h100-80gb", "model": "llama-3-70b", "tensor_parallel_size": 4}
    backend = Settings(**config_with({"capacity": capacity})).backends()["x"][1]
    assert backend.max_inflight_tokens == 422_726
    assert backend.max_concurrency == 1024
    assert backend.derived_budgets == {"max_inflight_tokens", "max_concurrency"}


def test_explicit_budgets_win_over_derived_ones() -> None:
    capacity = {"gpu": "a100-40gb", "model": "llama-3-8b", "headroom": 0.5}
    backend = Settings(
        **config_with({"capacity": capacity, "max_inflight_tokens": 50_000})
    ).backends()["x"][1]
    assert backend.max_inflight_tokens == 50_000
    assert backend.max_concurrency == 256
    assert backend.derived_budgets == {"max_concurrency"}


def test_without_capacity_nothing_is_derived() -> None:
    backend = Settings(**config_with({})).backends()["x"][1]
    assert (backend.max_concurrency, backend.max_inflight_tokens) == (64, 200_000)
    assert backend.derived_budgets == frozenset()


@pytest.mark.parametrize(
    ("capacity", "message"),
    [
        (
            {"gpu": "h200", "model": "llama-3-8b"},
            "backends.x.capacity.gpu: unknown gpu preset 'h200' (known: h100-80gb",
        ),
        (
            {"gpu": "l40s", "model": "llama-4"},
            "pools.interactive.backends.x.capacity.model: unknown model preset 'llama-4'",
        ),
        (
            {"model": "llama-3-8b"},
            "pools.interactive.backends.x.capacity: name a gpu preset or give gpu_memory_gib",
        ),
        (
            {"gpu": "l40s", "model": "llama-3-8b", "tp": 2},
            "pools.interactive.backends.x.capacity.tp: Extra inputs are not permitted",
        ),
        (
            {"gpu": "l40s", "shape": {"layers": 32, "kv_heads": 8}},
            "pools.interactive.backends.x.capacity.shape.head_dim: Field required",
        ),
        (
            {"gpu": "l40s", "model": "llama-3-70b"},
            "pools.interactive.backends.x: capacity: llama-3-70b weights (131.4 GiB per GPU",
        ),
        (
            {"gpu": "l40s", "model": "llama-3-8b", "gpu_memory_utilization": 1.5},
            "pools.interactive.backends.x.capacity.gpu_memory_utilization: Input should be less",
        ),
    ],
)
def test_bad_capacity_is_an_error_naming_the_field(
    tmp_path: Path, capacity: dict[str, Any], message: str
) -> None:
    path = tmp_path / "fairgate.yaml"
    path.write_text(yaml.safe_dump(config_with({"capacity": capacity})))
    with pytest.raises(ConfigError) as excinfo:
        load_settings(path)
    assert message in str(excinfo.value)


def test_capacity_with_an_inline_shape(tmp_path: Path) -> None:
    shape = {"layers": 32, "kv_heads": 8, "head_dim": 128, "params_b": 8.03}
    path = tmp_path / "fairgate.yaml"
    capacity = {"gpu_memory_gib": 80, "shape": shape, "reserve_gib": 0}
    path.write_text(yaml.safe_dump(config_with({"capacity": capacity})))
    backend = load_settings(path).backends()["x"][1]
    assert backend.max_inflight_tokens == int(467_280 * 0.9)
    assert backend.max_concurrency == 1024  # >= 70 GiB and not known to be an A100


# --------------------------------------------------------------------------- fairgate plan


def fairgate(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAIRGATE_")}
    return subprocess.run(
        [sys.executable, "-m", "fairgate.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=60,
    )


def test_plan_for_a_preset() -> None:
    done = fairgate("plan", "--preset", "llama-3-70b", "--gpu", "h100-80gb", "--tp", "4")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("llama-3-70b on 4 x h100-80gb (weights bf16, KV bf16")
    assert any("KV bytes / token / GPU" in x and "= 81,920 B (80 KiB)" in x for x in lines)
    assert any("KV capacity" in x and "= 469,696 tokens" in x for x in lines)
    assert any("concurrency at 8,192" in x and "= 57 sequences" in x for x in lines)


def test_plan_with_fp8_and_a_longer_context() -> None:
    done = fairgate(
        "plan",
        *("--preset", "llama-3.1-70b", "--gpu", "h100-80gb", "--tp", "2"),
        *("--weight-dtype", "fp8", "--kv-dtype", "fp8", "--context", "32768"),
    )
    assert done.returncode == 0, done.stderr
    expected = plan(
        gpu="h100-80gb",
        model="llama-3.1-70b",
        tensor_parallel_size=2,
        weight_dtype="fp8",
        kv_cache_dtype="fp8",
        context_length=32768,
    )
    assert done.stdout.strip() == expected.render()
    assert expected.concurrency_at_context == expected.kv_tokens // 32768


def test_plan_rejects_an_unknown_gpu() -> None:
    done = fairgate("plan", "--preset", "llama-3-8b", "--gpu", "h200")
    assert done.returncode == 2
    assert "gpu: unknown gpu preset 'h200'" in done.stderr


def test_plan_for_a_config_file(tmp_path: Path) -> None:
    config = {
        "pools": {
            "interactive": {
                "backends": {
                    "big": {
                        "url": "http://127.0.0.1:9001",
                        "models": ["m"],
                        "capacity": {"gpu": "h100-80gb", "model": "llama-3-8b"},
                    },
                    "small": {
                        "url": "http://127.0.0.1:9002",
                        "models": ["m"],
                        "max_concurrency": 8,
                    },
                }
            }
        }
    }
    path = tmp_path / "fairgate.yaml"
    path.write_text(yaml.safe_dump(config))
    done = fairgate("plan", "--config", str(path))
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "backend big (pool interactive, vllm, http://127.0.0.1:9001/)" in out
    assert "= 440,176 tokens" in out
    assert "budget max_inflight_tokens: 396,158 (derived)" in out
    assert "budget max_concurrency: 1,024 (derived)" in out
    assert "backend small" in out and "no capacity declared" in out
    assert "budget max_concurrency: 8 (configured)" in out
    assert "budget max_inflight_tokens: 200,000 (default)" in out
