"""all-MiniLM-L6-v2 on ONNX Runtime gives the vectors sentence-transformers gives (llmcache/minilm.py)."""

from __future__ import annotations

import numpy as np
import pytest

from llmcache import minilm

pytestmark = pytest.mark.slow  # loads the real model (and exports it once into a temporary cache)

TEXTS = [
    "How do I reverse a list in Python?",
    "How can I reverse a list in Python?",
    "What's the capital of France?",
    "Ünïcödé, emoji 🚀 and CJK 漢字 in one line",
    "",
    " ".join(f"word{i}" for i in range(600)),  # past the 256 word pieces: truncated as the model is
]


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory: pytest.TempPathFactory) -> minilm.OnnxMiniLM:
    return minilm.OnnxMiniLM.load(cache_dir=tmp_path_factory.mktemp("onnx"))


@pytest.fixture(scope="module")
def torch_model():
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm.find_model_dir()), device="cpu", local_files_only=True)


def test_onnx_vectors_match_sentence_transformers(onnx_model: minilm.OnnxMiniLM, torch_model) -> None:
    ref = torch_model.encode(TEXTS, normalize_embeddings=True, convert_to_numpy=True)
    got = onnx_model.encode(TEXTS)  # one batch: padding to the longest must not change any vector
    assert got.shape == (len(TEXTS), 384) and got.dtype == np.float32
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert np.min(np.sum(got * ref, axis=1)) > 0.99999
    alone = np.stack([onnx_model.encode([t])[0] for t in TEXTS])
    assert np.max(np.abs(alone - got)) < 1e-4
    # Tokens as sent (before truncation), as the HF tokenizer counts them.
    assert onnx_model.count_tokens(TEXTS) == sum(len(ids) for ids in torch_model.tokenizer(TEXTS)["input_ids"])
    assert onnx_model.count_tokens(TEXTS[-1:]) > minilm.MAX_TOKENS


def test_the_graph_is_exported_once_per_weights(onnx_model: minilm.OnnxMiniLM, monkeypatch: pytest.MonkeyPatch) -> None:
    path = onnx_model.path
    assert path.exists() and path.name.startswith("minilm-")
    exported: list[object] = []
    monkeypatch.setattr(minilm, "_export", lambda *a: exported.append(a))
    again = minilm.OnnxMiniLM.load(cache_dir=path.parent)
    assert again.path == path and exported == []  # the cached graph, not a second export
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no partial files left behind
