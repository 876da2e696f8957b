"""The semantic cache: serve a stored answer to a prompt that means the same, and only then.

The proxy calls one object, :class:`SemanticCache` (``lookup`` / ``add`` / ``delete`` /
``stats``), built by :meth:`SemanticCache.create` from
:class:`llmcache.proxy.settings.SemanticSettings`. Behind it::

    cache.py          the facade: embed → KNN within the scope → verify, fail open, counters
    embedder.py       Embedder protocol: local MiniLM (in-process) or a remote /v1/embeddings
    vector_index.py   VectorIndex protocol and the backend choice
    index_search.py   Redis Query Engine backend (HNSW, hybrid policy chosen per scope)
    index_client.py   plain-Redis backend (in-process numpy, kept in sync by a stream)
    verify.py         the verifier: is every difference between two prompts harmless?
    analysis.py       one linear pass over a text (tokens, negation, numbers, roles, …)
    evidence.py       the checks that compare two analyses (refusal reasons, roles)
    explain.py        positive evidence of sameness for every content-word difference
    lexicon.py        word lists the analysis and checks read
    wordnet.py        the WordNet-derived lexicon (lemmas, synonyms, derivations)
    data/             that lexicon's table (derived at build time from Debian's wordnet-base) and licence
"""

from llmcache.proxy.semantic.cache import SemanticCache, SemanticMatch, make_embedder

__all__ = ["SemanticCache", "SemanticMatch", "make_embedder"]
