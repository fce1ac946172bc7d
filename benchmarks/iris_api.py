"""Everything the benchmark takes from the iris package, in one place.

The benchmark drives iris from outside, as deployed (``python -m iris run -c CONFIG``); these
few helpers are the only iris code it imports. When a module of the package moves, the import
below is the one line to change.
"""

from __future__ import annotations

from iris.compiled import compiled_modules
from iris.config.model import load_config
from iris.core.partitions import inbound_keys, partition_of
from iris.core.payload import aam_date
from iris_demo.localcluster import LocalCluster
from iris_demo.localredis import RedisProcess, free_port
from iris_demo.partner import basic_credentials

__all__ = ["LocalCluster", "RedisProcess", "aam_date", "basic_credentials", "compiled_modules",
           "free_port", "inbound_keys", "load_config", "partition_of"]
