"""Everything the benchmark takes from the iris package, in one place.

The benchmark drives iris from outside, as deployed (``python -m iris run -c CONFIG``); these
few helpers are the only iris code it imports. When a module of the package moves, the import
below is the one line to change.
"""

from __future__ import annotations

from iris.config import load_config
from iris.localredis import RedisProcess, free_port
from iris.payload import aam_date

__all__ = ["RedisProcess", "aam_date", "free_port", "load_config"]
