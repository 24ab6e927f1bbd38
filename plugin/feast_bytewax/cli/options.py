"""Click options derived from the pydantic settings models (`feast_bytewax.config`).

A field is written once, in its model: its type, default, bounds and help text become the
option (`watermark_delay` -> ``--watermark-delay``, ``[default: 5.0]``; a bool field is an
on/off flag pair, `stop_at_end` -> ``--stop-at-end/--no-stop-at-end``). The command body
gets only what was given on the command line (`given`); the model fills the rest from the
environment and its defaults, and validates it all (`feast_bytewax.config.load`).
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import click
from click.core import ParameterSource
from pydantic_settings import BaseSettings

from feast_bytewax.config import ENV_PREFIX, option_name


class AwareDateTime(click.ParamType):
    """ISO-8601 with an offset (or Z): naive times are refused, as everywhere."""

    name = "ISO-8601"

    def convert(self, value: Any, param: Any, ctx: Any) -> datetime:
        if isinstance(value, datetime):
            return value
        try:
            dt = datetime.fromisoformat(value)
        except ValueError:
            self.fail(f"{value!r} is not an ISO-8601 time", param, ctx)
        if dt.tzinfo is None:
            self.fail(f"{value!r} has no UTC offset (add Z or +00:00)", param, ctx)
        return dt


def _inner(annotation: Any) -> Any:
    """`X | None` -> X."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _click_type(annotation: Any) -> tuple[Any, bool]:
    """(click type, multiple)."""
    ann = _inner(annotation)
    origin = typing.get_origin(ann)
    if origin is Literal:
        return click.Choice([str(a) for a in typing.get_args(ann)]), False
    if origin is tuple:
        return _click_type(typing.get_args(ann)[0])[0], True
    if ann is Path:
        return click.Path(path_type=Path), False
    if ann is datetime:
        return AwareDateTime(), False
    if ann in (int, float, str):
        return ann, False
    raise TypeError(f"no click type for {annotation!r}")


def model_options(model: type[BaseSettings], *, exclude: Iterable[str] = (),
                  required: Iterable[str] = ()) -> Callable:
    """Decorator adding one click option per field of `model` (minus `exclude`)."""
    exclude, required = set(exclude), set(required)

    def decorate(f: Callable) -> Callable:
        for name, field in reversed(list(model.model_fields.items())):
            if name in exclude:
                continue
            flag = option_name(name)
            help_text = (field.description or "") + f"  [env: {ENV_PREFIX}{name.upper()}]"
            default = None if field.is_required() else field.default
            if _inner(field.annotation) is bool:
                # an on/off flag pair whatever the default (`--stop-at-end/--no-stop-at-end`,
                # like `--online/--no-online`): a bool option never takes a value
                opt = click.option(f"{flag}/--no-{flag[2:]}", name, is_flag=True,
                                   default=bool(default), show_default=True, help=help_text)
            else:
                ctype, multiple = _click_type(field.annotation)
                opt = click.option(flag, name, type=ctype, multiple=multiple,
                                   default=default if not multiple else (),
                                   show_default=default is not None and not multiple,
                                   required=name in required, help=help_text)
            f = opt(f)
        return f

    return decorate


def given(ctx: click.Context, model: type[BaseSettings]) -> dict[str, Any]:
    """The option values typed on the command line (not click's defaults), for `model`."""
    return {name: value for name, value in ctx.params.items()
            if name in model.model_fields
            and ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE}
