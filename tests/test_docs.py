"""The documentation generated from code is current."""

from pathlib import Path

from scepd.protocol import errors

DOCS = Path(__file__).parent.parent / "docs"


def test_error_table_is_generated_from_the_error_codes():
    assert (DOCS / "errors.md").read_text() == errors.markdown(), "run: python -m scepd.protocol.errors > docs/errors.md"


def test_every_error_code_has_a_remedy():
    assert set(errors.ERRORS) == set(errors.ErrorCode)
    assert all(info.remedy.endswith(".") for info in errors.ERRORS.values())
