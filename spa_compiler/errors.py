"""Errors users see, each with the exit code the CLI returns for it.

Exit codes (documented in docs/guarantees.md):
    0  success
    1  compile failure (the compiler could not do what was asked)
    2  usage or bad input (missing file, not ONNX, bad option, nothing to prune)
    3  verification failed (the pruned model did not run or changed its interface)
  130  interrupted (Ctrl-C or SIGTERM; handled in cli.py, no output written)
"""
from __future__ import annotations


class SpacError(Exception):
    """Base class: a one-line, user-facing message plus an exit code."""

    exit_code = 1


class UsageError(SpacError):
    """Bad options or bad input files."""

    exit_code = 2


class ModelLoadError(UsageError):
    """The input is missing, unreadable or not a valid ONNX model."""


class NothingToPruneError(UsageError):
    """Every dependency group is frozen or excluded, so no channel can be removed."""


class CompileError(SpacError):
    """A pass failed on a model it accepted."""

    exit_code = 1


class VerificationError(SpacError):
    """The pruned model does not pass the checker or onnxruntime, or its outputs changed shape."""

    exit_code = 3


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first non-blank line of *exc*'s message, at most *limit* characters ("" for an empty message).

    Runtime and library errors carry multi-line messages (onnxruntime dumps its
    graph); the user sees one line.
    """
    lines = str(exc).strip().splitlines()
    return lines[0][:limit] if lines else ""
