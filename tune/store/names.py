"""The one rule for study names: a study's name is also its results folder (RESULTS/NAME) and, with a colon and a
suffix, the name of its companion studies (NAME:references, NAME:confirm; tune.store.storage)."""

from __future__ import annotations

import re

from gptcore.errors import UserError

MAX_STUDY_NAME = 128  # the default name, <device>-<corpus>, is at most 121 characters
_STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
STUDY_NAME_RULE = (f"1 to {MAX_STUDY_NAME} letters, digits, '.', '_' or '-', starting with a letter or digit "
                   f"(it names a folder under --results; ':' marks a study's companions)")


def check_study_name(name: str) -> str:
    """The name, if it follows the rule (so it can never leave --results nor pass for a companion study)."""
    if not isinstance(name, str) or len(name) > MAX_STUDY_NAME or not _STUDY_NAME.fullmatch(name):
        raise UserError(f"--study-name {name!r}: expected {STUDY_NAME_RULE}")
    return name
