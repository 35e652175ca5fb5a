"""Evaluation and calibration text: the Lee news corpus shipped in gensim's test data.

Both texts are read from an installed ``gensim`` package (only located, never
imported, so ``pip install --no-deps gensim`` is enough):

- evaluation: ``lee_background.cor``, the 300 documents of the Lee background
  corpus (ABC news, 2001), one per line;
- calibration: ``lee.cor``, the 50 other documents of the Lee corpus (the ones
  of the human similarity study); no document or sentence is shared with the
  evaluation text.
"""

from __future__ import annotations

import importlib.util
import pathlib

from ..errors import MissingPackageError, ModelError

#: PyPI requirement that ships the corpus files.
GENSIM_REQUIREMENT = "gensim==4.4.0"
#: Folder of the corpus files inside the gensim package.
_TEST_DATA = ("test", "test_data")
#: Evaluation text file (ASCII).
EVALUATION_FILE = "lee_background.cor"
#: Calibration text file (Latin-1: it holds a few pound signs).
CALIBRATION_FILE = "lee.cor"


def lee_corpus_text() -> str:
    """The Lee background corpus, the evaluation text.

    Returns
    -------
    str
        The file as it is: 300 documents, one per line (about 360 kB).

    Raises
    ------
    MissingPackageError
        If gensim (with its test data) is not installed.
    """
    return gensim_test_data(EVALUATION_FILE).read_text(encoding="utf-8")


def calibration_text() -> str:
    """The 50 Lee corpus test documents, a calibration text disjoint from :func:`lee_corpus_text`.

    Returns
    -------
    str
        The file decoded as Latin-1: 50 documents, one per line (about 25 kB).

    Raises
    ------
    MissingPackageError
        If gensim (with its test data) is not installed.
    """
    return gensim_test_data(CALIBRATION_FILE).read_text(encoding="latin-1")


def gensim_test_data(name: str) -> pathlib.Path:
    """Path of a file in the installed gensim package's ``test/test_data``.

    Parameters
    ----------
    name : str
        File name, e.g. ``"lee_background.cor"``.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    MissingPackageError
        If gensim is not installed.
    ModelError
        If gensim is installed but the file is not in its test data.
    """
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackageError(
            f"the evaluation and calibration texts ({EVALUATION_FILE}, {CALIBRATION_FILE}) "
            f"come from gensim's test data, and gensim is not installed; install it with: "
            f"pip install --no-deps {GENSIM_REQUIREMENT}"
        )
    for folder in spec.submodule_search_locations:
        candidate = pathlib.Path(folder).joinpath(*_TEST_DATA, name)
        if candidate.is_file():
            return candidate
    raise ModelError(
        f"gensim is installed ({list(spec.submodule_search_locations)}) but its test data "
        f"lacks {name!r}; reinstall it with: pip install --no-deps --force-reinstall "
        f"{GENSIM_REQUIREMENT}"
    )
