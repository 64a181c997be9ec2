"""What every benchmark prints: the CPU it ran on, and its table of cases against goals."""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def print_rows(rows: list[tuple[str, str, str, str, bool]]) -> int:
    """A markdown table of (case, measured, baseline, goal, met) rows; returns the exit code (1 on a miss)."""
    print("| case | measured | baseline (same run) | goal | met |")
    print("|---|---|---|---|---|")
    for name, got, baseline, goal, ok in rows:
        print(f"| {name} | {got} | {baseline} | {goal} | {'yes' if ok else 'NO'} |")
    return 0 if all(r[-1] for r in rows) else 1
