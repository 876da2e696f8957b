"""The proxy suite's ``proxy_stack`` fixture for the chart/operator adversarial tests.

``tests/proxy/conftest.py`` is loaded under another module name (two ``conftest`` modules
cannot share one) and its fixture re-exported; a test module imports it by name.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_PROXY_TESTS = Path(__file__).resolve().parent.parent / "proxy"
if str(_PROXY_TESTS) not in sys.path:
    sys.path.insert(0, str(_PROXY_TESTS))  # for its `proxy_helpers` import

_spec = importlib.util.spec_from_file_location("proxy_tests_conftest_for_chart", _PROXY_TESTS / "conftest.py")
assert _spec is not None and _spec.loader is not None
_conftest = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = _conftest  # dataclasses look their module up there
_spec.loader.exec_module(_conftest)

proxy_stack = _conftest.proxy_stack

__all__ = ["proxy_stack"]
