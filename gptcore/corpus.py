"""The shipped corpus (*Dorothy and the Wizard in Oz*), the default `--data` of every command: defined here once.

A checkout keeps it at data/wizard_of_oz.txt, where the README's commands name it. A wheel (and `pip install .`)
carries it inside the package, at gptcore/shipped/wizard_of_oz.txt (setup.py copies it there at build time), so an
installed copy runs from any folder. Its preparation is cached under ~/.cache/gptcore ($GPTCORE_CACHE), never next to
the file: an installed package may be read-only or shared.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

CORPUS_NAME = "wizard_of_oz.txt"  # setup.py ships data/CORPUS_NAME as PACKAGED_FOLDER/CORPUS_NAME
PACKAGED_FOLDER = "shipped"  # not "corpus": a folder named as this module would read as its package


def shipped_corpus() -> Path:
    """The shipped corpus's file: the installed copy's, else the checkout's (a source tree or an editable install)."""
    packaged = resources.files(__package__) / PACKAGED_FOLDER / CORPUS_NAME
    if packaged.is_file():
        return Path(str(packaged))  # an installed wheel lives on the file system (pip never runs one zipped)
    return Path(__file__).resolve().parent.parent / "data" / CORPUS_NAME


DEFAULT_CORPUS = shipped_corpus()
