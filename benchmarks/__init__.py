"""``make bench``: iris measured end to end against a FastStream pipeline and a naive loop.

``benchmarks/run.py`` is the command; see its docstring and docs/performance.md.
"""
