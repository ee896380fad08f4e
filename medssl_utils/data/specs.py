"""Dataset spec strings: one line that names any data source medssl can read.

Grammar: ``KIND[:TARGET][?key=value&key=value]``

``TARGET`` is a path or a name, depending on the kind; everything after the first ``?``
is options. A path that itself contains ``?`` (or any path, if preferred) is given as the
option ``path=`` instead, with ``%`` and ``&`` in it written as ``%25`` and ``%26``:
``acdc:?path=/data/what?/ACDC&cine=0``. Option values are percent-decoded; ``+`` stays ``+``.

The kinds, their targets and their options are declared by the readers in
:mod:`medssl_utils.data.readers` (one module each, one table); this module only parses a
spec and checks it against that table, so every reader's options are validated in one
place: an unknown option, a repeated option, a wrong type or a value outside the allowed
ones is refused with one line naming the spec, the option and what is allowed.

Every kind also takes ``domain``, ``task`` and ``group`` to override the tags that
multi-domain studies attach to each slice (defaults come from the dataset).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote

from medssl_utils.data.readers import KINDS, PATH_KINDS, READERS, TAG_OPTIONS, get_reader  # noqa: F401
from medssl_utils.data.volume import VolumeSet
from medssl_utils.errors import ParameterError

TAG_NAMES = tuple(o.name for o in TAG_OPTIONS)


@dataclass(frozen=True)
class DatasetSpec:
    kind: str
    target: str | None = None
    options: tuple[tuple[str, str], ...] = ()

    @property
    def opts(self) -> dict[str, str]:
        """The options as written (strings)."""
        return dict(self.options)

    @property
    def values(self) -> dict:
        """Every declared option of the kind, typed, with defaults filled in (tags only when given)."""
        reader = get_reader(self.kind)
        out = {o.name: o.default for o in reader.options}
        for key, raw in self.options:
            out[key] = reader.option(key).parse(raw, str(self))
        return out

    def __str__(self) -> str:
        """The spec as one string that parses back to an equal spec."""
        opts = list(self.options)
        s = self.kind
        if self.target and "?" in self.target:
            opts.insert(0, ("path", self.target))
        elif self.target:
            s += f":{self.target}"
        if opts:
            s += "?" + "&".join(f"{k}={_quote(v)}" for k, v in opts)
        return s


def _quote(value: str) -> str:
    return value.replace("%", "%25").replace("&", "%26")


def parse_spec(text: str | DatasetSpec) -> DatasetSpec:
    """Parse and validate a spec string; raises ParameterError naming what is wrong."""
    if isinstance(text, DatasetSpec):
        return text
    if not isinstance(text, str) or not text.strip():
        raise ParameterError(f"dataset spec {text!r}: expected 'kind[:path_or_name]' with kind in {list(KINDS)}")
    original = text
    head, has_query, query = text.strip().partition("?")
    kind, _, target = head.partition(":")
    kind = kind.strip().lower()
    if kind not in READERS:
        raise ParameterError(f"dataset spec {original!r}: unknown kind {kind!r}; expected one of {list(KINDS)}")
    reader = READERS[kind]
    options = _parse_query(query, original, kind) if has_query else []
    target = target.strip() or None
    paths = [v for k, v in options if k == "path"]
    if paths:
        if reader.target is None:
            raise ParameterError(f"dataset spec {original!r}: '{kind}' takes no path")
        if target:
            raise ParameterError(f"dataset spec {original!r}: give the path either before '?' or as path=, not both")
        target = paths[0]
        options = [(k, v) for k, v in options if k != "path"]
    if reader.target and not target:
        what = "a name" if reader.target == "name" else "a path"
        raise ParameterError(f"dataset spec {original!r}: '{kind}' needs {what}, e.g. '{kind}:{reader.example}'")
    if reader.target is None and target:
        raise ParameterError(f"dataset spec {original!r}: '{kind}' takes no path")
    if reader.names is not None and target not in reader.names():
        raise ParameterError(f"dataset spec {original!r}: unknown {kind} name {target!r}; "
                             f"expected one of {sorted(reader.names())}")
    spec = DatasetSpec(kind, target, tuple(options))
    for key, raw in options:
        opt = reader.option(key)
        if opt is None:
            raise ParameterError(f"dataset spec {original!r}: unknown option {key!r} for '{kind}'; "
                                 f"allowed: {reader.option_names}")
        opt.parse(raw, str(spec))
    return spec


def _parse_query(query: str, original: str, kind: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for part in query.split("&"):
        key, eq, value = part.partition("=")
        key = key.strip()
        if not eq or not key:
            raise ParameterError(
                f"dataset spec {original!r}: {part!r} after '?' is not key=value; '?' starts the options. "
                f"A path containing '?' is written as the option path=, e.g. '{kind}:?path=/data/what?/x'")
        if any(key == k for k, _ in out):
            raise ParameterError(f"dataset spec {original!r}: option {key!r} is given twice")
        try:
            value = unquote(value if key == "path" else value.strip(), errors="strict")
        except UnicodeDecodeError:
            raise ParameterError(f"dataset spec {original!r}: option {key}: {value!r} holds a %-escape that is "
                                 "not UTF-8; write % itself as %25") from None
        out.append((key, value))
    return out


def load_dataset(spec: str | DatasetSpec) -> VolumeSet:
    """Read the dataset a spec names (volumes are listed, not decoded)."""
    spec = parse_spec(spec)
    reader = get_reader(spec.kind)
    values = spec.values
    vs = reader.read(spec.target, {k: v for k, v in values.items() if k not in TAG_NAMES}, str(spec))
    for key in TAG_NAMES:
        if key in spec.opts:
            setattr(vs, key, values[key])
    return vs


def check_spec(name: str, value):
    """A dataset spec string (see :mod:`medssl_utils.data.specs`); returns the parsed spec."""
    try:
        return parse_spec(value)
    except ParameterError as exc:
        raise ParameterError(f"{name}: {exc}") from None


def check_specs(name: str, values) -> list:
    if isinstance(values, str) or not isinstance(values, (list, tuple)) or not values:
        raise ParameterError(f"{name}={values!r}: expected a non-empty list of dataset specs")
    return [check_spec(f"{name}[{i}]", v) for i, v in enumerate(values)]
