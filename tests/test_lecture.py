"""study.lecture is the lecture's code verbatim: every class and init function appears, line for
line, in the lecture's text, so comparisons against it mean something. The text is vendored in
tests/data/lecture/ (the suite runs from any clone); where the project's shared copy is present
beside the repository, the vendored one must equal it."""

from __future__ import annotations

import inspect
import re

import pytest

from study import lecture
from tests.conftest import REPO

REFERENCE = REPO / "tests" / "data" / "lecture" / "000_c7bc7edbb134d796.txt"
SHARED = REPO.parent / "shared" / "reference" / REFERENCE.name


def test_the_vendored_lecture_text_is_the_shared_one():
    text = REFERENCE.read_text()
    assert "class ManualAdam" in text and "class CNNWithBN" in text
    if SHARED.is_file():  # on the project's machines; a clone elsewhere has only the vendored copy
        assert SHARED.read_text() == text


def _lines(text: str) -> list[str]:
    out = []
    for line in text.splitlines():
        line = re.sub(r"\s+#\s*noqa.*$", "", line).strip()
        if line:
            out.append(line)
    return out


@pytest.mark.parametrize("obj", [lecture.ManualSGD, lecture.ManualAdam, lecture.CNN, lecture.CNNWithBN,
                                 lecture.init_weights_kaiming, lecture.init_weights_xavier])
def test_copied_verbatim_from_the_lecture(obj):
    text = _lines(REFERENCE.read_text())
    src = _lines(inspect.getsource(obj))
    # the lecture's comments inside CNNWithBN are dropped in the copy; every code line must be there in order
    pos = 0
    for line in src:
        assert line in text[pos:], f"{obj.__name__}: {line!r} is not in the lecture (after line {pos})"
        pos = text.index(line, pos) + 1
