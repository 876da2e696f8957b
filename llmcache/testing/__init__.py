"""Test doubles and harnesses for llmcache's tests, benchmarks and demos — never imported by a product module.

- :mod:`~llmcache.testing.stub_upstream` — an OpenAI-speaking upstream (deterministic answers, fault injection)
- :mod:`~llmcache.testing.redis_cluster` — ``EmbeddedCluster``: a throwaway Redis Cluster from the Valkey wheel
- :mod:`~llmcache.testing.threaded` — ``serve_in_thread``: an aiohttp app on a free port in a background thread

Like aiohttp's ``test_utils``, they live in one clearly named module so a reader of ``proxy/``,
``model_server/`` or ``operator/`` sees only what runs in production.
"""
