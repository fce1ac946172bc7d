"""The asyncio shell: the worker and its stages (consume, publish, upkeep), health, probes and
metrics. It wires the core to Redis and HTTP and owns every task."""
