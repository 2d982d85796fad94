"""What the benchmarks' charts share."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def save(figure: Any, path: Path) -> None:
    """Lay out a matplotlib figure and write it to ``path`` as PNG, making its folder if need be."""
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
