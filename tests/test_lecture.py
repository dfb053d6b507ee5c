"""study.lecture is the lecture's code verbatim: every class and init function appears, line for
line, in the lecture's text (shared/reference), so comparisons against it mean something."""

from __future__ import annotations

import inspect
import re

import pytest

from study import lecture
from tests.conftest import REPO

REFERENCE = REPO.parent / "shared" / "reference" / "000_c7bc7edbb134d796.txt"


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
