"""feast-bytewax: real-time windowed features from Feast definitions, computed with Bytewax."""
