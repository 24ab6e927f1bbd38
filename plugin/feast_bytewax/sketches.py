"""Approximate aggregators backed by Apache DataSketches, with the aggregator contract.

Placeholder module: `approx_count_distinct` (HLL) is registered here.
"""
