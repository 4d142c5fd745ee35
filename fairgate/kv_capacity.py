"""Backend budgets from KV-cache memory: how many tokens an engine can hold, and so what to admit.

Guessing ``max_inflight_tokens`` is how a pool runs out of KV cache (and starts preempting)
before it serves a single real user. An engine's KV capacity follows from arithmetic that vLLM
itself does at start-up (``gpu_worker.determine_available_memory`` and ``kv_cache_utils``):

    usable per GPU   = GPU memory x gpu_memory_utilization
    KV memory / GPU  = usable - weights / TP - activations, CUDA graphs, non-torch (reserve)
    KV bytes / token = 2 (K and V) x layers x KV heads per GPU x head dim x bytes per element
    KV blocks        = floor(KV memory / (block size x KV bytes per token))
    KV tokens        = blocks x block size

Everything here is pure and deterministic so that ``fairgate plan`` can print each step and
settings can derive budgets at start-up. An engine that reports its real capacity (vLLM's
``vllm:cache_config_info``, SGLang's ``max_total_num_tokens``) overrides the derivation at run
time: see :func:`backends.engine_load.effective_budget`.
"""

from __future__ import annotations

import math
from functools import cache
from importlib import resources
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    field_validator,
    model_validator,
)

from fairgate.strict_model import StrictModel

#: GPUs and model shapes by name: package data, found wherever fairgate is installed.
PRESETS = resources.files("fairgate").joinpath("presets.yaml")

GiB = 1024**3

_T = TypeVar("_T")

#: Number formats of weights and KV cache entries.
Dtype = Literal["fp32", "fp16", "bf16", "fp8", "int8", "int4"]


class ModelShape(StrictModel):
    """A transformer's shape, as far as its KV cache and weights go (from its config.json)."""

    layers: PositiveInt = Field(description="num_hidden_layers.")
    kv_heads: PositiveInt = Field(description="num_key_value_heads (grouped-query attention).")
    head_dim: PositiveInt = Field(description="head_dim, or hidden_size / num_attention_heads.")
    params_b: PositiveFloat = Field(description="Parameters, in billions (all experts of a MoE).")
    unquantized_params_b: NonNegativeFloat = Field(
        0.0,
        description="Parameters that stay 16-bit when the weights are quantized (embeddings "
        "and lm_head in FP8/INT checkpoints), in billions.",
    )
    context_length: PositiveInt = Field(
        131_072, description="max_position_embeddings: the longest sequence it serves."
    )


class CapacityConfig(StrictModel):
    """The hardware and model behind a backend, to derive its budgets from KV-cache memory.

    Name a GPU preset (``gpu``) or give ``gpu_memory_gib``, and a model preset (``model``) or
    its ``shape``; presets live in fairgate/presets.yaml. The arithmetic is in
    this module and ``fairgate plan`` prints it step by step.
    """

    gpu: str | None = Field(None, description="GPU preset, e.g. h100-80gb (see fairgate plan).")
    gpu_memory_gib: PositiveFloat | None = Field(
        None, description="Memory per GPU as CUDA reports it, in GiB (overrides the preset)."
    )
    tensor_parallel_size: PositiveInt = Field(1, description="GPUs one engine spans (TP).")
    model: str | None = Field(None, description="Model preset, e.g. llama-3-70b.")
    shape: ModelShape | None = Field(None, description="The model's shape (overrides the preset).")
    weight_dtype: Dtype = Field("bf16", description="Format of the weights.")
    kv_cache_dtype: Dtype | Literal["auto"] = Field(
        "auto", description="Format of KV entries; auto: 16-bit (vLLM's --kv-cache-dtype auto)."
    )
    gpu_memory_utilization: Annotated[float, Field(gt=0, le=1)] = Field(
        0.9, description="Share of each GPU's memory the engine may use (vLLM's default 0.9)."
    )
    reserve_gib: NonNegativeFloat = Field(
        2.5,
        description="Per GPU, for activations, CUDA graphs and non-torch memory (vLLM measures "
        "about 2.4-2.5 GiB for 8B models).",
    )
    block_size: PositiveInt = Field(16, description="Tokens per KV block (vLLM's default 16).")
    max_num_seqs: PositiveInt | None = Field(
        None,
        description="The engine's running-sequence limit; vLLM's default for the GPU if unset.",
    )
    context_length: PositiveInt | None = Field(
        None, description="Context for the concurrency figure; the model's if unset."
    )
    headroom: Annotated[float, Field(gt=0, le=1)] = Field(
        0.9, description="Share of the KV capacity given to max_inflight_tokens."
    )

    @field_validator("gpu", "model")
    @classmethod
    def _known_preset(cls, name: str | None, info: Any) -> str | None:
        presets = load_presets()
        known = presets.gpus if info.field_name == "gpu" else presets.models
        if name is not None and name not in known:
            raise ValueError(
                f"unknown {info.field_name} preset {name!r} (known: {', '.join(known)})"
            )
        return name

    @model_validator(mode="after")
    def _named_or_given(self) -> CapacityConfig:
        if self.gpu is None and self.gpu_memory_gib is None:
            raise ValueError("name a gpu preset or give gpu_memory_gib")
        if self.model is None and self.shape is None:
            raise ValueError("name a model preset or give its shape")
        return self


#: Bytes per element of each number format.
DTYPE_BYTES: dict[str, float] = {
    "fp32": 4.0,
    "fp16": 2.0,
    "bf16": 2.0,
    "fp8": 1.0,
    "int8": 1.0,
    "int4": 0.5,
}

#: vLLM's default --max-num-seqs when no GPU preset says otherwise (arg_utils.py: 1024 on GPUs
#: with >= 70 GiB other than A100, 256 otherwise; a bare memory figure cannot tell an A100).
_LARGE_GPU_GIB = 70.0


class CapacityError(ValueError):
    """The declared hardware cannot serve the declared model (or names an unknown preset)."""


class GpuSpec(StrictModel):
    """One GPU model: its memory as CUDA reports it, and vLLM's defaults on it."""

    description: str = ""
    memory_gib: PositiveFloat
    vllm_max_num_seqs: PositiveInt


class Presets(StrictModel):
    """fairgate/presets.yaml: GPUs and model shapes by name."""

    gpus: dict[str, GpuSpec]
    models: dict[str, ModelShape]


@cache
def load_presets() -> Presets:
    """The presets file, read once per process."""
    return Presets.model_validate(yaml.safe_load(PRESETS.read_text(encoding="utf-8")))


def kv_heads_per_gpu(kv_heads: int, tensor_parallel_size: int) -> int:
    """KV heads each GPU holds: split across TP, replicated when there are fewer than GPUs.

    vLLM gives each rank ``max(1, kv_heads // tp)`` heads, so TP beyond the KV head count no
    longer shrinks the per-GPU KV footprint (and capacity stops growing with more GPUs).
    """
    return max(1, kv_heads // tensor_parallel_size)


def kv_bytes_per_token(shape: ModelShape, kv_dtype: Dtype, tensor_parallel_size: int = 1) -> float:
    """Bytes of K and V one token occupies on each GPU: 2 x layers x heads x head dim x dtype."""
    heads = kv_heads_per_gpu(shape.kv_heads, tensor_parallel_size)
    return 2 * shape.layers * heads * shape.head_dim * DTYPE_BYTES[kv_dtype]


def weight_bytes(shape: ModelShape, weight_dtype: Dtype) -> float:
    """Bytes of all weights; quantized checkpoints keep embeddings and lm_head in 16 bits."""
    per_param = DTYPE_BYTES[weight_dtype]
    if per_param >= 2:
        return shape.params_b * 1e9 * per_param
    quantized = shape.params_b - shape.unquantized_params_b
    return (quantized * per_param + shape.unquantized_params_b * 2) * 1e9


class KvCapacity(BaseModel):
    """The derivation for one engine, every intermediate kept so it can be printed and checked."""

    model_config = ConfigDict(frozen=True)

    gpu: str
    gpu_memory_gib: float
    tensor_parallel_size: int
    model: str
    shape: ModelShape
    weight_dtype: Dtype
    kv_cache_dtype: Dtype
    gpu_memory_utilization: float
    reserve_gib: float
    block_size: int
    context_length: int
    headroom: float
    max_num_seqs: int

    usable_gib: float = Field(description="Per GPU: memory x utilisation.")
    weight_gib: float = Field(description="Per GPU: weights / TP.")
    kv_gib: float = Field(description="Per GPU: usable - weights - reserve.")
    kv_bytes_per_token: float = Field(description="Per GPU (K and V, every layer).")
    kv_bytes_per_token_model: float = Field(description="Whole model, all GPUs together.")
    num_blocks: int
    kv_tokens: int = Field(description="num_blocks x block_size: what the engine can hold.")
    blocks_per_sequence: int = Field(description="Blocks one full-context sequence needs.")
    concurrency_at_context: int = Field(description="Full-context sequences that fit at once.")
    max_inflight_tokens: int = Field(description="Budget: kv_tokens x headroom.")
    max_concurrency: int = Field(description="Budget: the engine's max_num_seqs.")

    @property
    def fits_one_context(self) -> bool:
        """vLLM refuses to start when one max-length sequence does not fit in KV."""
        return self.concurrency_at_context >= 1

    def steps(self) -> list[tuple[str, str, str]]:
        """The derivation as (quantity, arithmetic, value) rows, in the order it is computed."""
        tp = self.tensor_parallel_size
        shape = self.shape
        heads = kv_heads_per_gpu(shape.kv_heads, tp)
        kv_b = DTYPE_BYTES[self.kv_cache_dtype]
        return [
            (
                "usable memory / GPU",
                f"{self.gpu_memory_gib:g} GiB x {self.gpu_memory_utilization:g}",
                f"{self.usable_gib:.2f} GiB",
            ),
            (
                "weights / GPU",
                f"{shape.params_b:g}B params, {self.weight_dtype} / TP {tp}",
                f"{self.weight_gib:.2f} GiB",
            ),
            (
                "KV memory / GPU",
                f"{self.usable_gib:.2f} - {self.weight_gib:.2f} - {self.reserve_gib:g} reserve",
                f"{self.kv_gib:.2f} GiB",
            ),
            (
                "KV bytes / token",
                f"2 x {shape.layers} layers x {shape.kv_heads} KV heads x {shape.head_dim} "
                f"x {kv_b:g} B",
                f"{self.kv_bytes_per_token_model:,.0f} B "
                f"({self.kv_bytes_per_token_model / 1024:g} KiB)",
            ),
            (
                "KV bytes / token / GPU",
                f"2 x {shape.layers} layers x {heads} KV heads x {shape.head_dim} x {kv_b:g} B",
                f"{self.kv_bytes_per_token:,.0f} B ({self.kv_bytes_per_token / 1024:g} KiB)",
            ),
            (
                "KV blocks",
                f"floor({self.kv_gib:.2f} GiB / ({self.block_size} x "
                f"{self.kv_bytes_per_token:,.0f} B))",
                f"{self.num_blocks:,}",
            ),
            (
                "KV capacity",
                f"{self.num_blocks:,} blocks x {self.block_size}",
                f"{self.kv_tokens:,} tokens",
            ),
            (
                f"concurrency at {self.context_length:,}",
                f"floor({self.num_blocks:,} / {self.blocks_per_sequence:,} blocks per sequence)",
                f"{self.concurrency_at_context:,} sequences",
            ),
            (
                "max_inflight_tokens",
                f"floor({self.kv_tokens:,} x {self.headroom:g} headroom)",
                f"{self.max_inflight_tokens:,}",
            ),
            (
                "max_concurrency",
                "the engine's max_num_seqs",
                f"{self.max_concurrency:,}",
            ),
        ]

    def render(self) -> str:
        """A readable table of :meth:`steps`, headed by what was assumed."""
        kv = self.kv_cache_dtype
        head = (
            f"{self.model} on {self.tensor_parallel_size} x {self.gpu} "
            f"(weights {self.weight_dtype}, KV {kv}, block {self.block_size}, "
            f"utilisation {self.gpu_memory_utilization:g})"
        )
        rows = self.steps()
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        lines = [head]
        for name, how, value in rows:
            lines.append(f"  {name:<{widths[0]}}  {how:<{widths[1]}}  = {value}")
        if not self.fits_one_context:
            lines.append(
                f"  warning: one {self.context_length:,}-token sequence does not fit; vLLM will "
                "refuse to start (lower --max-model-len, add GPUs or use FP8 KV)"
            )
        return "\n".join(lines)


def plan_capacity(spec: CapacityConfig, presets: Presets | None = None) -> KvCapacity:
    """Derive an engine's KV capacity and fairgate's budgets from its hardware and model.

    Raises :class:`CapacityError` when a preset is unknown or the weights leave no room for KV.
    """
    presets = presets or load_presets()
    gpu_spec = _preset(presets.gpus, spec.gpu, "gpu") if spec.gpu else None
    shape = spec.shape or _preset(presets.models, spec.model, "model")
    memory_gib = spec.gpu_memory_gib or (gpu_spec.memory_gib if gpu_spec else 0.0)
    gpu_name = spec.gpu or f"{memory_gib:g} GiB GPU"
    model_name = spec.model or "custom model"
    tp = spec.tensor_parallel_size
    kv_dtype: Dtype = "bf16" if spec.kv_cache_dtype == "auto" else spec.kv_cache_dtype
    if spec.max_num_seqs is not None:
        max_num_seqs = spec.max_num_seqs
    elif gpu_spec is not None:
        max_num_seqs = gpu_spec.vllm_max_num_seqs
    else:
        max_num_seqs = 1024 if memory_gib >= _LARGE_GPU_GIB else 256

    usable_gib = memory_gib * spec.gpu_memory_utilization
    weight_gib = weight_bytes(shape, spec.weight_dtype) / tp / GiB
    kv_gib = usable_gib - weight_gib - spec.reserve_gib
    if kv_gib <= 0:
        raise CapacityError(
            f"{model_name} weights ({weight_gib:.1f} GiB per GPU at TP {tp}, "
            f"{spec.weight_dtype}) plus the {spec.reserve_gib:g} GiB reserve exceed the "
            f"{usable_gib:.1f} GiB usable per GPU; raise tensor_parallel_size or quantize"
        )
    per_token = kv_bytes_per_token(shape, kv_dtype, tp)
    num_blocks = math.floor(kv_gib * GiB / (spec.block_size * per_token))
    kv_tokens = num_blocks * spec.block_size
    context = spec.context_length or shape.context_length
    blocks_per_sequence = math.ceil(context / spec.block_size)
    return KvCapacity(
        gpu=gpu_name,
        gpu_memory_gib=memory_gib,
        tensor_parallel_size=tp,
        model=model_name,
        shape=shape,
        weight_dtype=spec.weight_dtype,
        kv_cache_dtype=kv_dtype,
        gpu_memory_utilization=spec.gpu_memory_utilization,
        reserve_gib=spec.reserve_gib,
        block_size=spec.block_size,
        context_length=context,
        headroom=spec.headroom,
        max_num_seqs=max_num_seqs,
        usable_gib=usable_gib,
        weight_gib=weight_gib,
        kv_gib=kv_gib,
        kv_bytes_per_token=per_token,
        kv_bytes_per_token_model=kv_bytes_per_token(shape, kv_dtype, 1),
        num_blocks=num_blocks,
        kv_tokens=kv_tokens,
        blocks_per_sequence=blocks_per_sequence,
        concurrency_at_context=num_blocks // blocks_per_sequence,
        max_inflight_tokens=max(1, math.floor(kv_tokens * spec.headroom)),
        max_concurrency=max_num_seqs,
    )


def _preset(table: dict[str, _T], name: str | None, what: str) -> _T:
    if name is None or name not in table:
        raise CapacityError(f"unknown {what} preset {name!r} (known: {', '.join(table)})")
    return table[name]


def render_matrix(presets: Presets | None = None, utilization: float = 0.9) -> str:
    """Every model preset on every GPU preset, BF16 and FP8: KV tokens at TP 1, 2, 4 and 8.

    For sizing a pool before buying hardware. "-" means the weights leave no room for KV;
    a trailing "!" that one full-context sequence does not fit (vLLM would refuse to start).
    """
    presets = presets or load_presets()
    tps = (1, 2, 4, 8)
    header = ("model", "context", "gpu", "weights/KV", *(f"TP {tp}" for tp in tps))
    rows: list[tuple[str, ...]] = []
    for model, shape in presets.models.items():
        for gpu in presets.gpus:
            for dtype in ("bf16", "fp8"):
                cells = []
                for tp in tps:
                    spec = CapacityConfig(
                        gpu=gpu,
                        model=model,
                        tensor_parallel_size=tp,
                        weight_dtype=dtype,
                        kv_cache_dtype=dtype,
                        gpu_memory_utilization=utilization,
                    )
                    try:
                        plan = plan_capacity(spec, presets)
                    except CapacityError:
                        cells.append("-")
                        continue
                    cells.append(f"{plan.kv_tokens:,}" + ("" if plan.fits_one_context else "!"))
                context = f"{shape.context_length // 1024}k"
                rows.append((model, context, gpu, f"{dtype}/{dtype}", *cells))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        aligned = zip(row, widths, strict=True)
        lines.append(
            "  ".join(f"{c:<{w}}" if i < 4 else f"{c:>{w}}" for i, (c, w) in enumerate(aligned))
        )
    return "\n".join(lines)
