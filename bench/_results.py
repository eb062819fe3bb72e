"""What every benchmark's JSON records beside its figures, and how it is written."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from facenas import __version__


def save_results(path: Path, payload: dict[str, Any]) -> None:
    """Write `payload` with the machine, facenas's version and the time as JSON to `path`, and say where."""
    out = {**payload, "machine": {"python": platform.python_version(), "platform": platform.platform(),
                                  "cpus": os.cpu_count()},
           "facenas_version": __version__, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")
