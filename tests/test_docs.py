"""The documentation tables that are generated from code are current."""

from pathlib import Path

from scepd.errors import ERRORS

DOCS = Path(__file__).parent.parent / "docs"


def test_error_table_lists_every_code_with_its_remedy():
    text = (DOCS / "errors.md").read_text()
    for code, info in ERRORS.items():
        assert f"| `{code.value}` | {info.fail_info.rfc_name} | {info.remedy} |" in text, code
