"""Feast objects only: the single source of every feature's name, window and aggregation."""
