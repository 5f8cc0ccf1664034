"""QNN EP profiling output (profiling_level=basic, profiling_file_path=CSV): HTP execute time per run."""

from __future__ import annotations

import csv
from pathlib import Path

EXECUTE_EVENT = "Accelerator (execute) time"


def htp_execute_us(profile_csv: Path) -> list[float]:
    """Microseconds the accelerator spent per execution (host overhead excluded), in run order."""
    with open(profile_csv, newline="") as f:
        return [
            float(row["Time"])
            for row in csv.DictReader(f)
            if row.get("Event Identifier") == EXECUTE_EVENT and row.get("Unit of Measurement") == "US"
        ]
