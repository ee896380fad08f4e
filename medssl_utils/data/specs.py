"""Dataset spec strings: one line that names any data source medssl can read.

Grammar: ``KIND[:PATH_OR_NAME][?key=value&key=value]``

===========  ==========================  ===============================================
kind         target                      options
===========  ==========================  ===============================================
``acdc``     ACDC folder (either layout) ``cine`` (1/0, read 4D cine frames; default 1),
                                         ``subsets`` (``training,testing``)
``msd``      Decathlon task folder       ``channel`` (index or modality name), ``test`` (1/0)
``folder``   folder with images/ labels/ ``modality`` (MR or CT)
``phantom``  cardiac | abdomen-ct |      ``cases``, ``seed`` — generated on first use into
             brain-mr | prostate-mr      ``$MEDSSL_CACHE_DIR/phantoms`` and reused after
``mni``      —                           —
``natural``  —                           ``quadrants`` (1/0)
===========  ==========================  ===============================================

Every kind also takes ``domain``, ``task`` and ``group`` to override the tags that
multi-domain studies attach to each slice (defaults come from the dataset).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl

from medssl_utils.config import cache_root
from medssl_utils.data.volume import VolumeSet
from medssl_utils.errors import DataError, ParameterError

TAG_OPTIONS = ("domain", "task", "group")
KIND_OPTIONS = {
    "acdc": ("cine", "subsets"),
    "msd": ("channel", "test"),
    "folder": ("modality",),
    "phantom": ("cases", "seed"),
    "mni": (),
    "natural": ("quadrants",),
}
KINDS = tuple(KIND_OPTIONS)
NEEDS_TARGET = ("acdc", "msd", "folder", "phantom")


@dataclass(frozen=True)
class DatasetSpec:
    kind: str
    target: str | None = None
    options: tuple[tuple[str, str], ...] = ()

    @property
    def opts(self) -> dict[str, str]:
        return dict(self.options)

    def __str__(self) -> str:
        s = self.kind + (f":{self.target}" if self.target else "")
        if self.options:
            s += "?" + "&".join(f"{k}={v}" for k, v in self.options)
        return s


def parse_spec(text: str | DatasetSpec) -> DatasetSpec:
    """Parse and validate a spec string; raises ParameterError naming what is wrong."""
    if isinstance(text, DatasetSpec):
        return text
    if not isinstance(text, str) or not text.strip():
        raise ParameterError(f"dataset spec {text!r}: expected 'kind[:path_or_name]' with kind in {list(KINDS)}")
    text = text.strip()
    query = ""
    if "?" in text:
        text, query = text.rsplit("?", 1)
    kind, _, target = text.partition(":")
    kind = kind.strip().lower()
    if kind not in KIND_OPTIONS:
        raise ParameterError(f"dataset spec {text!r}: unknown kind {kind!r}; expected one of {list(KINDS)}")
    target = target.strip() or None
    if kind in NEEDS_TARGET and not target:
        what = "a phantom name" if kind == "phantom" else "a path"
        raise ParameterError(f"dataset spec {text!r}: '{kind}' needs {what}, e.g. '{kind}:{_example(kind)}'")
    if kind in ("mni", "natural") and target:
        raise ParameterError(f"dataset spec {text!r}: '{kind}' takes no path")
    options = tuple(parse_qsl(query, keep_blank_values=True, strict_parsing=False)) if query else ()
    allowed = KIND_OPTIONS[kind] + TAG_OPTIONS
    for key, _ in options:
        if key not in allowed:
            raise ParameterError(f"dataset spec {text!r}: unknown option {key!r} for '{kind}'; allowed: {list(allowed)}")
    return DatasetSpec(kind, target, options)


def _example(kind: str) -> str:
    return {"phantom": "cardiac", "acdc": "/data/ACDC", "msd": "/data/Task05_Prostate"}.get(kind, "/data/x")


def _flag(spec: DatasetSpec, key: str, default: bool) -> bool:
    value = spec.opts.get(key)
    if value is None:
        return default
    if value.lower() in ("1", "true", "yes"):
        return True
    if value.lower() in ("0", "false", "no"):
        return False
    raise ParameterError(f"dataset spec '{spec}': option {key}={value!r}; expected 1 or 0")


def _int(spec: DatasetSpec, key: str, default):
    value = spec.opts.get(key)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ParameterError(f"dataset spec '{spec}': option {key}={value!r}; expected an integer") from None


def load_dataset(spec: str | DatasetSpec) -> VolumeSet:
    """Read the dataset a spec names (volumes are listed, not decoded)."""
    from medssl_utils.data.acdc import read_acdc
    from medssl_utils.data.decathlon import read_folder, read_msd
    from medssl_utils.data.offline import read_mni, read_natural

    spec = parse_spec(spec)
    s = str(spec)
    if spec.kind == "acdc":
        subsets = tuple(x.strip() for x in spec.opts.get("subsets", "training,testing").split(","))
        bad = [x for x in subsets if x not in ("training", "testing")]
        if bad:
            raise ParameterError(f"dataset spec '{s}': subsets {bad}; expected training and/or testing")
        vs = read_acdc(Path(spec.target).expanduser(), cine=_flag(spec, "cine", True), subsets=subsets, spec=s)
    elif spec.kind == "msd":
        vs = read_msd(Path(spec.target).expanduser(), channel=spec.opts.get("channel"),
                      include_test=_flag(spec, "test", True), spec=s)
    elif spec.kind == "folder":
        modality = spec.opts.get("modality", "MR")
        if modality not in ("MR", "CT"):
            raise ParameterError(f"dataset spec '{s}': modality={modality!r}; expected MR or CT")
        vs = read_folder(Path(spec.target).expanduser(), modality=modality, spec=s)
    elif spec.kind == "phantom":
        root, fmt = ensure_phantom(spec.target, cases=_int(spec, "cases", None), seed=_int(spec, "seed", 0))
        vs = read_acdc(root, spec=s) if fmt == "acdc" else read_msd(root, spec=s)
        vs.domain = spec.target
    elif spec.kind == "mni":
        vs = read_mni(s)
    else:
        vs = read_natural(s, quadrants=_flag(spec, "quadrants", True))
    for key in TAG_OPTIONS:
        if key in spec.opts:
            setattr(vs, key, spec.opts[key])
    return vs


def _phantom_code_version() -> str:
    """Hash of the phantom generator's source: cached phantoms go stale when it changes."""
    import medssl_utils.data.phantoms as ph

    h = hashlib.sha256()
    for p in sorted(Path(ph.__file__).parent.glob("*.py")):
        h.update(p.read_bytes())
    return h.hexdigest()[:10]


def ensure_phantom(name: str, *, cases: int | None = None, seed: int = 0) -> tuple[Path, str]:
    """Generate phantom ``name`` into the cache on first use; return (dataset root, format).

    Generation happens in a private temporary folder that is renamed into place, so an
    interrupted run or two processes starting at once never leave a half-written dataset.
    """
    from medssl_utils.data.phantoms import PHANTOMS, write_phantom

    if name not in PHANTOMS:
        raise ParameterError(f"phantom:{name}: unknown phantom; expected one of {sorted(PHANTOMS)}")
    info = PHANTOMS[name]
    n = cases if cases is not None else info.default_cases
    if n < 1:
        raise ParameterError(f"phantom:{name}: cases={n}; expected at least 1")
    final = cache_root() / "phantoms" / f"{name}-n{n}-s{seed}-{_phantom_code_version()}"
    marker = final / ".medssl-phantom.json"
    if not marker.is_file():
        tmp = final.with_name(f".tmp-{final.name}-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        root = write_phantom(name, tmp, cases=n, seed=seed)
        (tmp / ".medssl-phantom.json").write_text(json.dumps(
            {"name": name, "cases": n, "seed": seed, "root": str(Path(root).relative_to(tmp))}))
        try:
            os.replace(tmp, final)
        except OSError:  # another process finished first: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
            if not marker.is_file():
                raise DataError(f"{final}: could not place the generated phantom") from None
    rel = json.loads(marker.read_text())["root"]
    return final / rel, info.format
