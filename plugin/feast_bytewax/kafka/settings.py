"""librdkafka settings for the live flow (command line and environment), their redaction
for logs, and the start offsets. The ``kafka://`` URL itself is a run setting
(`feast_bytewax.config.parse_kafka_url`). See `feast_bytewax.kafka.source`."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END

START_OFFSETS = {"earliest": OFFSET_BEGINNING, "latest": OFFSET_END}
ENV_OPTION_PREFIX = "FEAST_BYTEWAX_KAFKA_OPT_"


def parse_option(text: str) -> tuple[str, str]:
    """``key=value`` -> (key, value); the value may itself contain '='."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ValueError(f"Kafka option {text!r} is not key=value")
    return key, value


def kafka_options(
    cli: Sequence[str] = (), environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """librdkafka settings for every client (consumers, dead-letter producer, admin).

    From the environment first: ``FEAST_BYTEWAX_KAFKA_OPT_<NAME>``, NAME upper-case with dots
    as underscores (``FEAST_BYTEWAX_KAFKA_OPT_SASL_PASSWORD`` -> ``sasl.password``): keep
    secrets there rather than on the command line. Then ``key=value`` items (the repeated
    ``--kafka-option``), which win.
    """
    environ = os.environ if environ is None else environ
    out: dict[str, str] = {}
    for name, value in environ.items():
        if name.startswith(ENV_OPTION_PREFIX) and len(name) > len(ENV_OPTION_PREFIX):
            out[name[len(ENV_OPTION_PREFIX):].lower().replace("_", ".")] = value
    for item in cli:
        key, value = parse_option(item)
        out[key] = value
    return out


def redact(options: Mapping[str, str]) -> dict[str, str]:
    """Options for logs: secret values masked."""
    secret = ("password", "secret", "key", "token", "jaas")
    return {k: ("***" if any(s in k.lower() for s in secret) else v) for k, v in options.items()}
