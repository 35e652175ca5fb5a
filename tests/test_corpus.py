"""The calibration texts: Wikipedia prose from gensim's test data, disjoint from the evaluation text."""
import sys

import pytest

from lowbit_tvm.errors import MissingPackageError
from lowbit_tvm.models import corpus

pytest.importorskip("mwparserfromhell")


def test_wiki_text_is_plain_prose_of_the_size_asked():
    text = corpus.wiki_calibration_text(max_chars=3000)
    assert 3000 <= len(text) < 200_000  # stops after the article that reaches max_chars
    lines = [line for line in text.split("\n") if line]
    assert all(len(line) >= 40 for line in lines)
    for markup in ("[[", "]]", "{{", "}}", "'''", "=="):  # (a few <ref> nested in other markup do remain)
        assert markup not in text, markup
    assert text.startswith("Anarchism is a political philosophy")
    longer = corpus.wiki_calibration_text(max_chars=len(text) + 1)
    assert longer.startswith(text) and len(longer) > len(text)


def test_wiki_text_shares_no_sentence_with_the_evaluation_text():
    wiki = corpus.wiki_calibration_text(max_chars=20_000)
    evaluation = corpus.lee_corpus_text()
    sentences = {s.strip() for s in evaluation.replace("\n", " ").split(". ") if len(s.strip()) > 30}
    assert len(sentences) > 1000
    assert not [s for s in sentences if s in wiki]


def test_missing_parser_is_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "mwparserfromhell", None)  # import now raises ImportError
    with pytest.raises(MissingPackageError, match=r"pip install 'mwparserfromhell>=0.6'"):
        corpus.wiki_calibration_text(max_chars=10)
