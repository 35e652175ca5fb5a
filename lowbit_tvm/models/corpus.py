"""Evaluation and calibration text: the Lee news corpus shipped in gensim's test data.

Both texts are read from an installed ``gensim`` package (only located, never
imported, so ``pip install --no-deps gensim`` is enough):

- evaluation: ``lee_background.cor``, the 300 documents of the Lee background
  corpus (ABC news, 2001), one per line;
- calibration: ``lee.cor``, the 50 other documents of the Lee corpus (the ones
  of the human similarity study); no document or sentence is shared with the
  evaluation text;
- larger calibration: the shortened English Wikipedia dump of the same test data
  (articles "Anarchism" to "Zoology" of 2017, about 0.8 M characters of prose once the
  wiki markup is stripped by ``mwparserfromhell``), for quantizers that need more
  tokens than ``lee.cor`` holds (GPTQ's Hessians).
"""

from __future__ import annotations

import bz2
import importlib.util
import pathlib
import xml.etree.ElementTree as ElementTree

from ..errors import MissingPackageError, ModelError

#: PyPI requirement that ships the corpus files.
GENSIM_REQUIREMENT = "gensim==4.4.0"
#: Folder of the corpus files inside the gensim package.
_TEST_DATA = ("test", "test_data")
#: Evaluation text file (ASCII).
EVALUATION_FILE = "lee_background.cor"
#: Calibration text file (Latin-1: it holds a few pound signs).
CALIBRATION_FILE = "lee.cor"
#: Wikipedia dump (bz2 MediaWiki XML) in the same test data: the larger calibration text.
WIKI_FILE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
#: PyPI requirement that strips wiki markup.
WIKI_PARSER_REQUIREMENT = "mwparserfromhell>=0.6"


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


def wiki_calibration_text(max_chars: int | None = None) -> str:
    """Plain text of the Wikipedia articles in gensim's test data, a calibration text disjoint from
    :func:`lee_corpus_text` (encyclopedia prose, not news).

    Parameters
    ----------
    max_chars : int, optional
        Stop after the article that brings the text to this many characters (all articles when None).

    Returns
    -------
    str
        Articles in dump order, separated by blank lines; markup, templates, references and tables are
        stripped with the ``<ref>`` footnotes, and lines shorter than 40 characters (headings, list stubs) are dropped.

    Raises
    ------
    MissingPackageError
        If gensim (with its test data) or mwparserfromhell is not installed.
    """
    try:
        import mwparserfromhell  # pylint: disable=import-outside-toplevel
    except ImportError:
        raise MissingPackageError(
            f"the Wikipedia calibration text needs mwparserfromhell; install it with: "
            f"pip install '{WIKI_PARSER_REQUIREMENT}'"
        ) from None
    articles, total = [], 0
    for wikitext in _wiki_pages(gensim_test_data(WIKI_FILE)):
        prose = _prose(_without_references(mwparserfromhell.parse(wikitext)).strip_code())
        if not prose:
            continue
        articles.append(prose)
        total += len(prose)
        if max_chars is not None and total >= max_chars:
            break
    return "\n\n".join(articles)


def _wiki_pages(path: pathlib.Path):
    """Wikitext of each article (namespace 0, not a redirect) of a bz2 MediaWiki XML dump."""
    with bz2.open(path) as stream:
        for _, element in ElementTree.iterparse(stream):
            if not element.tag.endswith("}page"):
                continue
            namespace = element.findtext("{*}ns")
            text = element.findtext("{*}revision/{*}text") or ""
            if namespace == "0" and element.find("{*}redirect") is None:
                yield text
            element.clear()


def _without_references(wikicode):
    """``wikicode`` with its ``<ref>`` footnotes removed (citations, not prose)."""
    for tag in wikicode.filter_tags(recursive=False, matches=lambda node: node.tag == "ref"):
        wikicode.remove(tag)
    return wikicode


def _prose(text: str) -> str:
    """The lines of stripped wikitext that read as sentences (40+ characters)."""
    lines = (line.strip() for line in text.splitlines())
    return "\n".join(line for line in lines if len(line) >= 40)


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
