"""The dashboard's last frame, written to a file or pipe, ends its line (the report path was
printed onto the table's closing border)."""

from __future__ import annotations

import io

from rich.console import Console

from freshrec.demo.dashboard import Dashboard

SAMPLE = {"event_time": 7200.0, "examples_trained": 1234, "tables": {}, "request_errors": 0,
          "event_post_errors": 0, "server_errors": 0.0, "A_version": 41.0}  # fmt: skip


def test_last_frame_to_a_file_is_the_last_update_and_ends_its_line():
    out = io.StringIO()
    console = Console(file=out, width=100)
    with Dashboard(console) as board:
        board.update({**SAMPLE, "A_version": 40.0})
        board.update(SAMPLE)
    console.print("report: x")
    text = out.getvalue()
    assert "\nreport: x\n" in text and "┘report" not in text
    assert "v41" in text and "v40" not in text  # only the final frame reaches a file
