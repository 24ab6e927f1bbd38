"""`feast-bytewax`: what Feast lacks around a stream feature pipeline.

One module per command (`feast_bytewax.cli.<command>`), loaded only when that command runs
(`import feast` takes seconds; `feast-bytewax --help` does not need it). Commands parse and
delegate; every problem a user can fix (`FeastBytewaxError`) ends as one line on stderr and a
non-zero exit, never a traceback.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import traceback
import warnings
from importlib.metadata import version
from typing import Any

import click

from feast_bytewax.errors import FeastBytewaxError

COMMANDS = {
    "generate": ("feast_bytewax.cli.generate", "write realistic demo events (parquet or "
                                               "JSON lines)"),
    "apply": ("feast_bytewax.cli.apply", "compile the definitions, then feast apply"),
    "replay": ("feast_bytewax.cli.replay", "run the dataflow over an event file into Feast"),
    "demo": ("feast_bytewax.cli.demo", "generate, apply, replay, then read features back"),
    "run": ("feast_bytewax.cli.run", "run the live dataflow from a Kafka topic"),
    "skew": ("feast_bytewax.cli.skew", "recompute features in batch and compare with what "
                                       "was written"),
    "redrive": ("feast_bytewax.cli.redrive", "write dead letters back out as events, to fix "
                                             "and replay"),
    "compact": ("feast_bytewax.cli.compact", "rewrite the offline parts into few, without "
                                             "superseded rows"),
}


class LazyGroup(click.Group):
    """Click's lazily loaded subcommands: a command's module is imported when it runs."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        return importlib.import_module(COMMANDS[name][0]).command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(n, h) for n, (_, h) in COMMANDS.items()])

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FeastBytewaxError as e:
            raise click.ClickException(str(e)) from None
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise
        except Exception as e:  # not expected: still one line (and the trace on demand)
            if os.environ.get("FEAST_BYTEWAX_DEBUG", "") not in ("", "0"):
                traceback.print_exc()
            text = " ".join(str(e).split())[:400]
            raise click.ClickException(f"{type(e).__name__}: {text} (FEAST_BYTEWAX_DEBUG=1 "
                                       "shows the traceback)") from None


@click.group(cls=LazyGroup, help=__doc__.split("\n\n")[0],
             context_settings={"help_option_names": ["-h", "--help"],
                               "show_default": True, "max_content_width": 100})
@click.version_option(version("feast-bytewax"), prog_name="feast-bytewax")
@click.option("-v", "--verbose", is_flag=True, help="log at INFO level")
def cli(verbose: bool) -> None:
    warnings.filterwarnings("ignore", message="Stream feature views are experimental")
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                            stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main(argv: list[str] | None = None) -> int:
    """Console entry point (exit code as int; click's own usage errors exit 2)."""
    try:
        rv = cli.main(args=argv, prog_name="feast-bytewax", standalone_mode=False)
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.exceptions.Exit as e:
        return e.exit_code
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":
    sys.exit(main())
