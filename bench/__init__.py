"""Benchmarks: feast-bytewax's feature step and dataflow against Bytewax's built-in windowing
operators on the same generated events (see RESULTS.md)."""
