"""The build's one step that pyproject.toml cannot declare: the wheel carries the shipped corpus inside the package.

The checkout keeps the corpus at data/wizard_of_oz.txt (the README's commands, the benchmarks and the tests name it
there); setuptools packages only files under a package's folder, so build_py copies it to gptcore/shipped/ in the
build, where gptcore.corpus looks first. An editable install reads the checkout's copy and copies nothing.
MANIFEST.in puts the file in the sdist, so a wheel built from the sdist (`python -m build`) has it too.
Everything else is configured in pyproject.toml.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

# gptcore.corpus's CORPUS_NAME and PACKAGED_FOLDER (not imported: the build must not import the package).
CORPUS = Path("data") / "wizard_of_oz.txt"
PACKAGED = Path("gptcore") / "shipped"


class BuildPyWithCorpus(build_py):
    """build_py, plus the shipped corpus copied into the built package."""

    def run(self) -> None:
        super().run()
        if not self.editable_mode:
            self.mkpath(str(Path(self.build_lib) / PACKAGED))
            self.copy_file(str(CORPUS), str(Path(self.build_lib) / PACKAGED / CORPUS.name))


setup(cmdclass={"build_py": BuildPyWithCorpus})
