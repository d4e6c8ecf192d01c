"""The ``typer.Typer`` every ``tegrid`` command group is built from: option labels in ``--help``.

Typer labels every option with its Python type (``<bool>``, ``<str>``, ``<int range>``). Here
flags (``--json``, ``--dev/--no-dev``, ``--help``) carry no label, and a value option without a
``metavar`` of its own gets one from its type: ``N`` (integer), ``NUMBER`` (float), ``PATH``,
``TEXT``. Options whose value has a unit or a format name it in their own ``metavar``
(``SECONDS``, ``URL``, ``FILE``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup, TyperOption

_FALLBACK_LABELS: dict[object, str] = {int: "N", float: "NUMBER", Path: "PATH", str: "TEXT"}


def _label(params: list[Any]) -> list[Any]:
    for param in params:
        if not isinstance(param, TyperOption) or param.metavar is not None:
            continue
        if param.is_flag:
            param.metavar = ""
        else:
            annotation = param.type_descriptor.annotation
            param.metavar = _FALLBACK_LABELS.get(annotation, "VALUE")
    return params


class LabelledCommand(TyperCommand):
    """A command whose ``--help`` shows the labels described in this module."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _label(super().get_params(ctx))


class LabelledGroup(TyperGroup):
    """A command group (its own options and ``--help``) labelled like :class:`LabelledCommand`."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _label(super().get_params(ctx))


class App(typer.Typer):
    """``typer.Typer`` whose commands and groups label their options as this module says."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("cls", LabelledGroup)
        super().__init__(**kwargs)

    def command(self, name: str | None = None, **kwargs: Any) -> Any:
        kwargs.setdefault("cls", LabelledCommand)
        return super().command(name, **kwargs)
