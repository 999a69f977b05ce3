"""The one progress-callback signature of every long loop in the library.

`progress(task, done, total)`: `task` names what is running (e.g. "eval synth-real", "visual prototypes"), `done`
of `total` units are finished. It is called after each unit; the library draws nothing, the CLI draws one bar per
task name (`ppar_cli.render.progress_bars` yields exactly such a function).
"""

from __future__ import annotations

from collections.abc import Callable

ProgressFn = Callable[[str, int, int], None]
