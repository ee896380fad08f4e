"""Where medssl keeps what it can rebuild: generated phantoms and preprocessed slice caches."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "MEDSSL_CACHE_DIR"


def cache_root() -> Path:
    """``$MEDSSL_CACHE_DIR``, else ``$XDG_CACHE_HOME/medssl``, else ``~/.cache/medssl``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "medssl"
