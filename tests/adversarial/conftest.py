"""The adversarial suite reuses the proxy suite's fixtures: a stub upstream and a real proxy on real Redis.

``proxy_stack`` comes from ``tests/proxy/conftest.py`` (loaded under another module name, as two
``conftest`` modules cannot share one); ``proxy_helpers`` from the same folder.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_PROXY_TESTS = Path(__file__).resolve().parent.parent / "proxy"
if str(_PROXY_TESTS) not in sys.path:
    sys.path.insert(0, str(_PROXY_TESTS))

_spec = importlib.util.spec_from_file_location("proxy_tests_conftest", _PROXY_TESTS / "conftest.py")
assert _spec is not None and _spec.loader is not None
_proxy_conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_proxy_conftest)

proxy_stack = _proxy_conftest.proxy_stack
