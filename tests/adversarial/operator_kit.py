"""The operator suite's fixtures for the adversarial tests (``crds``, ``start_operator``, ``ns``).

They live in ``tests/operator/conftest.py``; two ``conftest`` modules cannot share one name, so
that file is loaded here under another module name and its fixtures re-exported. A test module
imports them by name (``from operator_kit import crds, ns, start_operator``), which registers them.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_OPERATOR_TESTS = Path(__file__).resolve().parent.parent / "operator"
if str(_OPERATOR_TESTS) not in sys.path:
    sys.path.insert(0, str(_OPERATOR_TESTS))  # for its `opkit` import

_spec = importlib.util.spec_from_file_location("operator_tests_conftest", _OPERATOR_TESTS / "conftest.py")
assert _spec is not None and _spec.loader is not None
_conftest = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = _conftest  # dataclasses look their module up there
_spec.loader.exec_module(_conftest)

crds = _conftest.crds
ns = _conftest.ns
start_operator = _conftest.start_operator

__all__ = ["crds", "ns", "start_operator"]
