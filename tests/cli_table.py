"""Every option of the `dinofeat` parser as plain rows, to compare the command line across refactors."""

from __future__ import annotations

import argparse


def _subparsers(parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices
    return {}


def _row(parser, group: str, action) -> dict:
    fmt = parser._get_formatter()
    typ = action.type
    return {"flags": list(action.option_strings), "dest": action.dest, "action": type(action).__name__,
            "group": group, "default": action.default if not callable(action.default) else repr(action.default),
            "choices": list(action.choices) if action.choices is not None else None, "nargs": action.nargs,
            "type": getattr(typ, "__name__", None) if typ is not None else None, "required": action.required,
            "metavar": list(action.metavar) if isinstance(action.metavar, tuple) else action.metavar,
            "help": fmt._expand_help(action) if action.help else None}


def flag_table(parser, path: str = "dinofeat") -> dict:
    """{"dinofeat match": [row per option, in help order], ...} for every command and sub-command."""
    out = {}
    rows = []
    for group in parser._action_groups:
        for action in group._group_actions:
            if isinstance(action, (argparse._SubParsersAction, argparse._HelpAction, argparse._VersionAction)):
                continue
            rows.append(_row(parser, group.title or "", action))
    out[path] = rows
    for name, sub in _subparsers(parser).items():
        out.update(flag_table(sub, f"{path} {name}"))
    return out
