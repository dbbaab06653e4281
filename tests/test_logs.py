"""The structured log: one JSON object a line, the same line to stderr and to the log file."""

from __future__ import annotations

import json
import logging

from scepd import logs


def test_each_record_is_formatted_once_and_written_alike_to_both(tmp_path, capsys, monkeypatch):
    made = []
    line_of = logs.JsonLineFormatter._line
    monkeypatch.setattr(logs.JsonLineFormatter, "_line", lambda self, record: made.append(record) or line_of(self, record))
    root = logging.getLogger("scepd")
    kept = (list(root.handlers), root.level, root.propagate)
    logs.configure(tmp_path / "scepd.log")
    try:
        logging.getLogger("scepd.request").warning("scep request", extra={"fields": {"transaction_id": "T-1", "code": None}})
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
            handler.close()
        root.handlers[:], root.level, root.propagate = kept
    written = (tmp_path / "scepd.log").read_text().splitlines()
    assert written == capsys.readouterr().err.splitlines()
    entry = json.loads(written[0])
    assert (entry["msg"], entry["level"], entry["transaction_id"]) == ("scep request", "warning", "T-1")
    assert "code" not in entry  # fields that are None are left out
    assert len(made) == 1
    # Nothing is gathered that no line prints: the caller's place (a walk up the stack) and thread.
    assert (made[0].funcName, made[0].threadName) == ("(unknown function)", None)
