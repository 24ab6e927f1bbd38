"""Entry points for Bytewax's own runner: `python -m bytewax.run dataflows.<name>` from the
project root (each module exposes a module-level `flow`, configured by environment)."""
