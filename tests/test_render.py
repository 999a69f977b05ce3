"""What the CLI prints for progress when stderr is a log file rather than a terminal."""

from __future__ import annotations

from ppar_cli import render
from ppar_cli.options import err_console


def test_progress_in_a_log_file_is_a_plain_line_every_ten_seconds_then_the_end(monkeypatch) -> None:
    clock = iter([0.0, 4.0, 10.5, 15.0, 21.0, 25.0, 100.0, 100.5])  # perf_counter at each update
    monkeypatch.setattr(render.time, "perf_counter", lambda: next(clock))
    update = render._plain_progress()
    with err_console.capture() as captured:
        for done in (1, 2, 3, 4, 5, 6):  # at 0, 4, 10.5, 15, 21, 25 s
            update("pretrain", done, 6)
        update("eval", 1, 2)  # a short task that ends quickly prints nothing
        update("eval", 2, 2)
    assert captured.get().splitlines() == [
        "pretrain: 3/6 (50%), elapsed 0:00:10",  # 10 s after the start
        "pretrain: 5/6 (83%), elapsed 0:00:21",  # 10 s after the last line
        "pretrain: 6/6 (100%), elapsed 0:00:25",  # the end of a task that printed before
    ]
