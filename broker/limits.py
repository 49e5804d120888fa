"""Limits of a broker process as a whole, beside the per-connection ones in protocol.py.
Process-wide, so set by `ddcl broker serve` only: a broker inside a test or a benchmark
leaves its host process alone."""

from __future__ import annotations

import resource

from .protocol import MAX_OPEN_FILES


def cap_open_files(cap: int = MAX_OPEN_FILES) -> int:
    """Lowers this process's open-file limit to `cap` (never raises it); the limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = cap if hard == resource.RLIM_INFINITY else min(cap, hard)
    if soft == resource.RLIM_INFINITY or soft > limit:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
        return limit
    return soft
