"""The one base of every error a user can fix: bad flags, data, models, templates, judges,
rewards, storage. Its message is one sentence; both entry paths (train.py here and a Ray
worker's, re-raised by distributed.launch) print it as `error: <sentence>` and exit with 2.

    from errors import ConfigError, UserError, first_sentence
    raise ConfigError("--beta only applies to --training-type dpo.")

The other user errors live beside the code that raises them (custom_dataset.DataError,
packaged_models.ModelLoadError, judges.JudgeError, ...), each derived from UserError.
This is a leaf: it imports nothing of the project.
"""
from __future__ import annotations

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A problem the user can fix; `str(error)` is one sentence that names what to change."""


class ConfigError(UserError, ValueError):
    """A flag, flag combination, config file or checkpoint is unusable."""


def first_sentence(e: BaseException) -> str:
    """The first sentence of an exception's message, without its full stop (torch's and
    transformers' messages run on for several); the exception's type name when it has none."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text.split(". ", 1)[0].rstrip(".")


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (a library's traceback-like text runs on), or its type name."""
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__
