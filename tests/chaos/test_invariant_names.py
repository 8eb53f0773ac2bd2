"""The invariant names the metrics pre-create are the names the judge reports."""

import re
from pathlib import Path

from chaos import judge
def test_invariant_names_cover_every_reported_violation():
    source = Path(judge.__file__).read_text()
    reported = set(re.findall(r'Violation\("([a-z-]+)"', source)) - {"runner"}  # "runner": the run itself failed
    assert reported == set(judge.INVARIANT_NAMES)
