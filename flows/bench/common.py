"""What every ``layerleak bench`` command does last: run, then print a table or one JSON object."""

from __future__ import annotations

import json
import sys
from typing import Callable


def finish(compute: Callable[[], dict], as_json: bool, table: Callable[[dict], str]) -> int:
    """Run the benchmark; a LayerleakError (e.g. --device cuda without CUDA) is one line and exit 2."""
    from mia_tasks.errors import LayerleakError

    try:
        result = compute()
    except LayerleakError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=1) if as_json else table(result))
    return 0
