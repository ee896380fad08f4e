"""``phantom:NAME``: medssl's synthetic phantoms, generated on first use into the cache.

The dataset is written by :func:`medssl_utils.data.phantoms.write_phantom` into
``$MEDSSL_CACHE_DIR/phantoms/NAME-nCASES-sSEED-CODEHASH`` and read back with the ACDC or MSD
reader, like any download. The folder name carries a hash of the generator's source, so a
changed generator never serves stale phantoms.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from medssl_utils.cache import cache_root
import medssl_utils.data.phantoms as ph
from medssl_utils.data.phantoms import MAX_CASES, PHANTOMS, write_phantom
from medssl_utils.data.readers.acdc import read_acdc
from medssl_utils.data.readers.base import Option, Reader
from medssl_utils.data.readers.msd import read_msd
from medssl_utils.data.volume import VolumeSet
from medssl_utils.errors import DataError, ParameterError
from medssl_utils.fileio import atomic_folder, discard_folder



def _phantom_code_version() -> str:
    """Hash of the phantom generator's source: cached phantoms go stale when it changes."""
    h = hashlib.sha256()
    for p in sorted(Path(ph.__file__).parent.glob("*.py")):
        h.update(p.read_bytes())
    return h.hexdigest()[:10]


def ensure_phantom(name: str, *, cases: int | None = None, seed: int = 0) -> tuple[Path, str]:
    """Generate phantom ``name`` into the cache on first use; return (dataset root, format).

    Generation happens in a private temporary folder that is renamed into place, so an
    interrupted run or two processes starting at once never leave a half-written dataset.
    """
    if name not in PHANTOMS:
        raise ParameterError(f"phantom:{name}: unknown phantom; expected one of {sorted(PHANTOMS)}")
    info = PHANTOMS[name]
    n = cases if cases is not None else info.default_cases
    if not 1 <= n <= MAX_CASES:
        raise ParameterError(f"phantom:{name}: cases={n}; expected 1..{MAX_CASES}")
    final = cache_root() / "phantoms" / f"{name}-n{n}-s{seed}-{_phantom_code_version()}"
    marker = final / ".medssl-phantom.json"
    if marker.is_file():
        problem = _cache_problem(final, marker)
        if problem:
            print(f"phantom cache {final}: {problem}; regenerating it", file=sys.stderr)
            discard_folder(final)
    if not marker.is_file():
        final.parent.mkdir(parents=True, exist_ok=True)
        with atomic_folder(final) as tmp:  # another process finished first: theirs is kept
            root = write_phantom(name, tmp, cases=n, seed=seed)
            files = {str(p.relative_to(tmp)): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}
            (tmp / ".medssl-phantom.json").write_text(json.dumps(
                {"name": name, "cases": n, "seed": seed, "root": str(Path(root).relative_to(tmp)), "files": files}))
        if not marker.is_file():
            raise DataError(f"{final}: could not place the generated phantom")
    rel = json.loads(marker.read_text())["root"]
    return final / rel, info.format


def _cache_problem(final: Path, marker: Path) -> str | None:
    """Why a cached phantom cannot be served (None when every file its marker lists has the size written)."""
    try:
        files = json.loads(marker.read_text()).get("files")
    except (OSError, ValueError, AttributeError):
        return "its marker file is unreadable"
    for rel, size in (files or {}).items():  # markers written before sizes were recorded: trusted
        path = final / rel
        if not path.is_file():
            return f"{rel} is missing"
        if path.stat().st_size != size:
            return f"{rel} is {path.stat().st_size} bytes, expected {size}"
    return None


def _read(target: str, opts: dict, spec: str) -> VolumeSet:
    root, fmt = ensure_phantom(target, cases=opts["cases"], seed=opts["seed"])
    vs = read_acdc(root, spec=spec) if fmt == "acdc" else read_msd(root, spec=spec)
    vs.domain = target
    return vs


def _names() -> list[str]:
    return list(PHANTOMS)


READER = Reader(
    kind="phantom", target="name", read=_read, names=_names, example="cardiac",
    doc="synthetic phantoms, generated on first use into $MEDSSL_CACHE_DIR/phantoms",
    options=(
        Option("cases", "int", min=1, max=MAX_CASES, doc="number of training cases (default: the phantom's own)"),
        Option("seed", "int", default=0, min=0, doc="generator seed"),
    ),
)
