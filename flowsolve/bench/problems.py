"""Benchmark problems: declarative TOML files that name a process, a data law, the start points,
the reference, the metrics and the default sweep of ``flowsolve bench``.

The builtin problems live in ``problems/*.toml`` at the repository root, installed as the
package ``flowsolve.problems`` (:func:`builtin_problems`); any other ``.toml`` file loads the
same way (:func:`load_problem`). The schema, with its defaults::

    description = "8 sharp modes on a ring under EDM"   # required, one line

    [process]      # required; kind: VE | VP | SubVP | EDM | PFGMPP | Poisson | Diffusion
    kind = "EDM"   # the other keys are the constructor's parameters (defaults: the constructor's)
    sigma_min = 0.002
    sigma_max = 80.0
    # kind = "Diffusion": scale = "<expression in t>" (optional, default s = 1),
    # sigma = "<expression in t, may use scale>", t_min, t_max (flowsolve.bench.expressions)

    [data]         # required; kind: gaussian (mean, cov) | mixture (means, stds or covs, weights)
    kind = "ring"  # | ring | grid | random_mixture | bimodal_1d | standard_gaussian | empirical;
    n_modes = 8    # the other keys are the law's parameters (named laws: fs.toy's defaults),
    radius = 4.0   # and event_shape (optional, any kind: the shape of one draw)
    std = 0.05
    # random_mixture also takes diagonal = true (default false): each covariance replaced by its
    # diagonal, so that the exact field costs O(K N), not O(K N^2), per point (image sizes)
    # kind = "empirical": points = [[...], ...], or n_points, seed (default 0) and an inline
    # table law = { kind = "ring", ... } that the points are drawn from; weights optional

    [start]        # the start points: n prior draws at t_max
    n = 256
    seed = 0

    [reference]    # method: "auto" | "exact" | "adaptive"; solver: "dopri5" | "tsit5"
    method = "auto"
    solver = "dopri5"
    rtol = 1e-10
    atol = 1e-10

    [metrics]
    endpoint = ["rmse", "max_error", "rel_error"]
    distribution = ["sliced_wasserstein", "energy_distance"]
    data_samples = 2048

    [bench]        # what `flowsolve bench PROBLEM` runs when the command line names nothing
    solvers = ["euler", "heun", "dpmpp_2m", "dpmpp_3m", "dopri5", "torchdiffeq.rk4", "torchdiffeq.dopri5"]
    nfe = [10, 20, 40, 80]
    rtol = [1e-3, 1e-4, 1e-5]

The span of every solve is the process's own ``[t_min, t_max]``, set through its parameters
(``sigma_min``/``sigma_max`` for VE, EDM and PFGM++; ``t_min``/``t_max`` for VP, sub-VP and
Diffusion): the start points are drawn at ``t_max`` and carried to ``t_min``.

``method = "auto"`` takes an exact map where one applies (a single Gaussian under a
Gaussian-kernel process: the closed-form flow map; any 1-D law: the quantile map), else an
adaptive solve; ``"exact"`` where none applies is an error (:mod:`flowsolve.bench.references`).

Every mistake in a file is a :class:`ProblemError` of one line, naming the file and the key:
``"ring8.toml: key 'data.std': found -0.05, expected a finite real number > 0"``. Unknown
sections and keys are refused (with the allowed ones and the closest name).
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.resources
import inspect
import json
import math
import numbers
import os
import pathlib
import re

import numpy as np
import torch

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from .. import processes as _processes
from .. import toy as _toy
from .._validation import check_int
from ..solvers.api import draw_prior
from ..toy.distributions import Empirical, Gaussian, GaussianMixture
from .expressions import Expression, ExpressionError, allowed_description
from .records import DISTRIBUTION_METRICS, ENDPOINT_METRICS
from .references import ADAPTIVE_SOLVERS, REFERENCE_VERSION, Reference, compute_reference, exact_map_kind

__all__ = ["ProblemError", "Problem", "builtin_problems", "load_problem", "parse_problem", "REFERENCE_VERSION",
           "PROCESS_KINDS", "DATA_KINDS", "SECTIONS"]

SECTIONS = ("description", "process", "data", "start", "reference", "metrics", "bench")
PROCESS_KINDS = ("VE", "VP", "SubVP", "EDM", "PFGMPP", "Poisson", "Diffusion")
DATA_KINDS = ("gaussian", "mixture", "ring", "grid", "random_mixture", "bimodal_1d", "standard_gaussian", "empirical")
REFERENCE_METHODS = ("auto", "exact", "adaptive")

DEFAULT_N = 256
DEFAULT_DATA_SAMPLES = 2048
DEFAULT_REFERENCE_TOL = 1e-10
DEFAULT_SOLVERS = ("euler", "heun", "dpmpp_2m", "dpmpp_3m", "dopri5", "torchdiffeq.rk4", "torchdiffeq.dopri5")
DEFAULT_NFE = (10, 20, 40, 80)
DEFAULT_RTOL = (1e-3, 1e-4, 1e-5)
#: First word of the seed of :meth:`Problem.data_sample` ("data" in ASCII): its draws come from
#: ``SeedSequence([DATA_SAMPLE_TAG, seed])`` and a torch generator, apart from the start points'
#: per-sample Philox streams of :class:`flowsolve.NoiseSource`.
DATA_SAMPLE_TAG = 0x64617461

_PROCESS_CLASSES = {"VE": _processes.VE, "VP": _processes.VP, "SubVP": _processes.SubVP, "EDM": _processes.EDM,
                    "PFGMPP": _processes.PFGMPP, "Poisson": _processes.Poisson}
# Named laws of flowsolve.toy: their parameters and each one's type (defaults: the function's).
_NAMED_LAWS = {
    "ring": (_toy.ring, {"n_modes": "integer", "radius": "number", "std": "number"}),
    "grid": (_toy.grid, {"n_per_side": "integer", "spacing": "number", "std": "number"}),
    "random_mixture": (_toy.random_mixture, {"dim": "integer", "n_components": "integer", "seed": "integer",
                                             "spread": "number", "std_range": "pair", "diagonal": "bool"}),
    "bimodal_1d": (_toy.bimodal_1d, {"separation": "number", "std": "number", "weight": "number"}),
    "standard_gaussian": (_toy.standard_gaussian, {"dim": "integer"}),
}
_DATA_KEYS = {
    "gaussian": ("kind", "mean", "cov", "event_shape"),
    "mixture": ("kind", "means", "stds", "covs", "weights", "event_shape"),
    "empirical": ("kind", "points", "n_points", "seed", "law", "weights", "event_shape"),
    **{kind: ("kind", *types, "event_shape") for kind, (_, types) in _NAMED_LAWS.items()},
}
# Options of the loader itself, beside a named law's parameters (name -> default).
_LOADER_OPTIONS = {"random_mixture": {"diagonal": False}}
# Words in a law constructor's error message that name a key of the file.
_DATA_ALIASES = {"covariances": ("covs", "cov"), "covs_or_stds": ("stds", "covs"), "standard deviations": "stds",
                 "isotropic stds": "stds", "variances": "cov", "std_range": "std_range"}


class ProblemError(ValueError):
    """A problem file that cannot be loaded; the message is one line naming the file and the key."""


_MISSING = object()


def _shown(value) -> str:
    """``repr(value)`` on one line, cut to a readable length."""
    if value is _MISSING:
        return "no value"
    text = repr(value).replace("\n", " ")
    return text if len(text) <= 80 else text[:77] + "..."


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


class _Reader:
    """Type checks of a parsed TOML document; every failure names ``source`` and the key."""

    def __init__(self, source: str):
        self.source = source

    def error(self, key: str, value, expected: str) -> ProblemError:
        return ProblemError(_one_line(f"{self.source}: key '{key}': found {_shown(value)}, expected {expected}"))

    def table(self, key: str, value) -> dict:
        if not isinstance(value, dict):
            raise self.error(key, value, f"a table ([{key}] section or inline {{ ... }})")
        return value

    def known_keys(self, section: str, table: dict, allowed, what: str) -> None:
        for key, value in table.items():
            if key not in allowed:
                close = difflib.get_close_matches(key, list(allowed), n=1, cutoff=0.6)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise self.error(f"{section}.{key}", value, f"one of the keys of {what}: {', '.join(allowed)}{hint}")

    def choice(self, key: str, value, choices) -> str:
        if not isinstance(value, str) or value not in choices:
            close = (difflib.get_close_matches(value.lower(), [c.lower() for c in choices], n=1, cutoff=0.6)
                     if isinstance(value, str) else [])
            hint = f"; did you mean {next(c for c in choices if c.lower() == close[0])!r}?" if close else ""
            raise self.error(key, value, f"one of {', '.join(choices)}{hint}")
        return value

    def number(self, key: str, value, minimum: float | None = None, maximum: float | None = None,
               strict: bool = True) -> float:
        ok = _is_number(value) and math.isfinite(value)
        if ok and minimum is not None:
            ok = value > minimum if strict else value >= minimum
        if ok and maximum is not None:
            ok = value < maximum if strict else value <= maximum
        if not ok:
            low = "" if minimum is None else f" {'>' if strict else '>='} {minimum:g}"
            high = "" if maximum is None else f"{' and' if low else ''} {'<' if strict else '<='} {maximum:g}"
            raise self.error(key, value, f"a finite number{low}{high}")
        return float(value)

    def integer(self, key: str, value, minimum: int = 0) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise self.error(key, value, f"an integer >= {minimum}")
        return int(value)

    def boolean(self, key: str, value) -> bool:
        if not isinstance(value, bool):
            raise self.error(key, value, "true or false")
        return value

    def string(self, key: str, value) -> str:
        if not isinstance(value, str):
            raise self.error(key, value, "a string")
        return value

    def number_array(self, key: str, value, scalar_ok: bool = False):
        """A number (if ``scalar_ok``) or a rectangular nested list of numbers, as floats."""
        def convert(v):
            if _is_number(v) and math.isfinite(v):
                return float(v)
            if isinstance(v, list) and v:
                return [convert(u) for u in v]
            raise ValueError
        what = ("a number or " if scalar_ok else "") + "an array of finite numbers ([...] or [[...], ...])"
        if _is_number(value) and not scalar_ok:
            raise self.error(key, value, what)
        try:
            out = convert(value)
            np.asarray(out, dtype=np.float64)  # ragged arrays fail here
        except ValueError:
            raise self.error(key, value, what) from None
        return out

    def int_list(self, key: str, value, minimum: int = 1) -> list:
        if not (isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool)
                                                          and v >= minimum for v in value)):
            raise self.error(key, value, f"a non-empty list of integers >= {minimum}")
        return [int(v) for v in value]

    def string_list(self, key: str, value, choices=None) -> list:
        if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise self.error(key, value, "a list of strings" + (f" among {', '.join(choices)}" if choices else ""))
        if len(set(value)) != len(value):
            raise self.error(key, value, "a list without repeated names")
        for v in value:
            if choices is not None and v not in choices:
                self.choice(key, v, choices)
        return list(value)


def _defaults(fn) -> dict:
    """Parameter name -> default (``_MISSING`` if required) of ``fn``'s signature."""
    return {name: (_MISSING if p.default is inspect.Parameter.empty else p.default)
            for name, p in inspect.signature(fn).parameters.items() if name != "self"}


def _key_from_message(message: str, section: str, keys, aliases: dict | None = None) -> str:
    """The key of ``section`` that a constructor's error message names first (``section.kind``
    when it names none)."""
    found = []
    for word, target in list((aliases or {}).items()) + [(k, k) for k in keys]:
        targets = (target,) if isinstance(target, str) else target
        target = next((t for t in targets if t in keys), None)
        match = re.search(rf"(?<![\w.]){re.escape(word)}(?!\w)", message)
        if target is not None and match:
            found.append((match.start(), -len(word), target))
    return f"{section}.{min(found)[2]}" if found else f"{section}.kind"


def _expected_from_message(message: str) -> str:
    """``"x must be Y, got Z"`` -> ``"Y"``; other messages whole, as what the constructor requires."""
    match = re.match(r"^[\w\[\]() ]+? must be (.+?)(?:, got .*)?$", message)
    if not match:
        return f"valid parameters ({message})"
    return f"a value {match.group(1)}" if match.group(1)[:1] in "<>=" else match.group(1)


# -- [process] ------------------------------------------------------------------------------
def _parse_process(reader: _Reader, table: dict):
    kind = reader.choice("process.kind", table.get("kind", _MISSING), PROCESS_KINDS)
    if kind == "Diffusion":
        return _parse_diffusion(reader, table)
    cls = _PROCESS_CLASSES[kind]
    params = _defaults(cls.__init__)
    reader.known_keys("process", table, ["kind", *params], f"[process] with kind = {kind!r}")
    spec = {"kind": kind}
    for name, default in params.items():
        spec[name] = reader.number(f"process.{name}", table.get(name, default))
    try:
        process = cls(**{k: v for k, v in spec.items() if k != "kind"})
    except ValueError as err:
        key = _key_from_message(str(err), "process", list(params))
        raise reader.error(key, spec.get(key.split(".", 1)[1], kind), _expected_from_message(str(err))) from None
    return spec, process


def _parse_diffusion(reader: _Reader, table: dict):
    """``Diffusion(scale=<expression>, sigma=<expression, may use scale>, t_min, t_max)``."""
    spans = _defaults(_processes.Diffusion.__init__)
    reader.known_keys("process", table, ["kind", "scale", "sigma", "t_min", "t_max"],
                      "[process] with kind = 'Diffusion'")
    spec = {"kind": "Diffusion"}
    expressions = {}
    for name, variables in (("scale", ("t",)), ("sigma", ("t",))):
        value = table.get(name, _MISSING)
        if value is _MISSING:
            if name == "sigma":
                raise reader.error("process.sigma", value, f"a string: {allowed_description(('t', 'scale'))}")
            continue
        text = reader.string(f"process.{name}", value)
        bindings = {"scale": expressions["scale"]} if name == "sigma" and "scale" in expressions else {}
        try:
            expressions[name] = Expression(text, variables, bindings)
        except ExpressionError as err:
            raise reader.error(f"process.{name}", text, f"{allowed_description(variables + tuple(bindings))} "
                                                        f"({err.what.split('; allowed')[0]})") from None
        spec[name] = text
    for name in ("t_min", "t_max"):
        spec[name] = reader.number(f"process.{name}", table.get(name, spans[name]))
    try:
        process = _processes.Diffusion(scale=expressions.get("scale"), sigma=expressions["sigma"],
                                       t_min=spec["t_min"], t_max=spec["t_max"])
    except ValueError as err:
        key = _key_from_message(str(err), "process", [k for k in ("scale", "sigma", "t_min", "t_max") if k in spec])
        raise reader.error(key, spec.get(key.split(".", 1)[1]), _expected_from_message(str(err))) from None
    return spec, process


# -- [data] ---------------------------------------------------------------------------------
def _diagonal(law: GaussianMixture) -> GaussianMixture:
    """``law`` with each covariance replaced by its diagonal (per-coordinate stds). An exact
    field then costs O(K N) per point instead of O(K N^2) (full covariances are rotated into
    their eigenbases): the choice for image-sized dimensions."""
    stds = torch.diagonal(law.covs, dim1=-2, dim2=-1).sqrt()
    return GaussianMixture(law.means, stds, law.weights, law.event_shape)


def _with_event_shape(law, event_shape):
    """``law`` with draws of shape ``event_shape`` (same parameters, flattened event)."""
    if event_shape is None or tuple(event_shape) == tuple(law.event_shape):
        return law
    if isinstance(law, Gaussian):
        return Gaussian(law.means[0], law.covs[0], event_shape)
    spread = law.covs if law.eigvecs is not None else law.eigvals.sqrt()
    return GaussianMixture(law.means, spread, law.weights, event_shape)


def _parse_data(reader: _Reader, table: dict, section: str = "data", nested: bool = False):
    kind = reader.choice(f"{section}.kind", table.get("kind", _MISSING), DATA_KINDS)
    if nested and kind == "empirical":
        raise reader.error(f"{section}.kind", kind, f"a law to draw points from: one of "
                                                    f"{', '.join(k for k in DATA_KINDS if k != 'empirical')}")
    allowed = _DATA_KEYS[kind]
    reader.known_keys(section, table, allowed, f"[{section}] with kind = {kind!r}")
    spec: dict = {"kind": kind}
    event_shape = (reader.int_list(f"{section}.event_shape", table["event_shape"])
                   if "event_shape" in table else None)

    def required(name, scalar_ok=False):
        return reader.number_array(f"{section}.{name}", table.get(name, _MISSING), scalar_ok)

    try:
        if kind == "gaussian":
            spec["mean"], spec["cov"] = required("mean"), required("cov", scalar_ok=True)
            law = Gaussian(spec["mean"], spec["cov"], event_shape)
        elif kind == "mixture":
            spec["means"] = required("means")
            if ("stds" in table) == ("covs" in table):
                raise reader.error(f"{section}.stds", table.get("stds", _MISSING),
                                   "exactly one of stds (isotropic or per-coordinate) or covs (full covariances)")
            spread = "stds" if "stds" in table else "covs"
            spec[spread] = required(spread, scalar_ok=spread == "stds")
            if "weights" in table:
                spec["weights"] = required("weights")
            law = GaussianMixture(spec["means"], spec[spread], spec.get("weights"), event_shape)
            spec.setdefault("weights", law.weights.tolist())
        elif kind == "empirical":
            law = _parse_empirical(reader, table, section, spec, event_shape)
        else:
            fn, types = _NAMED_LAWS[kind]
            defaults = {**_defaults(fn), **_LOADER_OPTIONS.get(kind, {})}
            for name, default in defaults.items():
                if name not in types:
                    continue
                key, value = f"{section}.{name}", table.get(name, default)
                if types[name] == "integer":
                    spec[name] = reader.integer(key, value, minimum=0 if name == "seed" else 1)
                elif types[name] == "bool":
                    spec[name] = reader.boolean(key, value)
                elif types[name] == "pair":
                    value = list(value) if isinstance(value, tuple) else value
                    pair = reader.number_array(key, value)
                    if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(v, float) for v in pair)):
                        raise reader.error(key, value, "a list of two numbers [low, high]")
                    spec[name] = pair
                else:
                    spec[name] = reader.number(key, value, minimum=None, strict=False)
            args = {k: v for k, v in spec.items() if k != "kind" and k not in _LOADER_OPTIONS.get(kind, {})}
            law = fn(**args, event_shape=event_shape) if "event_shape" in _defaults(fn) else fn(**args)
            if spec.get("diagonal"):
                law = _diagonal(law)
            law = _with_event_shape(law, event_shape)
    except ValueError as err:
        if isinstance(err, ProblemError):
            raise
        key = _key_from_message(str(err), section, [k for k in allowed if k != "kind"], _DATA_ALIASES)
        if key.endswith("event_shape") and "event_shape" not in table:
            key = f"{section}.kind"
        name = key.split(".")[-1]
        raise reader.error(key, table.get(name, spec.get(name, kind)), _expected_from_message(str(err))) from None
    spec["event_shape"] = list(law.event_shape)
    return spec, law


def _parse_empirical(reader: _Reader, table: dict, section: str, spec: dict, event_shape):
    """Points given, or ``n_points`` drawn from an inline law with ``torch.Generator().manual_seed(seed)``."""
    given = "points" in table
    drawn = [k for k in ("n_points", "law", "seed") if k in table]
    if given == bool(drawn) or (drawn and not {"n_points", "law"} <= set(drawn)):
        raise reader.error(f"{section}.points", table.get("points", _MISSING),
                           "either points = [[...], ...] or n_points = N with law = { kind = ..., ... } (and seed)")
    if given:
        spec["points"] = reader.number_array(f"{section}.points", table["points"])
        points = spec["points"]
    else:
        spec["n_points"] = reader.integer(f"{section}.n_points", table["n_points"], minimum=1)
        spec["seed"] = reader.integer(f"{section}.seed", table.get("seed", 0), minimum=0)
        law_spec, law = _parse_data(reader, reader.table(f"{section}.law", table["law"]), f"{section}.law",
                                    nested=True)
        spec["law"] = law_spec
        draw = law.sample(spec["n_points"], generator=torch.Generator().manual_seed(spec["seed"]),
                          dtype=torch.float64)
        points = draw.reshape(spec["n_points"], -1)
        if event_shape is None and tuple(law.event_shape) != (law.dim,):
            event_shape = list(law.event_shape)
    if "weights" in table:
        spec["weights"] = reader.number_array(f"{section}.weights", table["weights"])
    law = Empirical(points, spec.get("weights"), event_shape)
    spec.setdefault("weights", law.weights.tolist())
    return law


# -- the other sections ---------------------------------------------------------------------
def _parse_start(reader: _Reader, table: dict) -> dict:
    reader.known_keys("start", table, ("n", "seed"), "[start]")
    return {"n": reader.integer("start.n", table.get("n", DEFAULT_N), minimum=1),
            "seed": reader.integer("start.seed", table.get("seed", 0), minimum=0)}


def _parse_reference(reader: _Reader, table: dict) -> dict:
    reader.known_keys("reference", table, ("method", "solver", "rtol", "atol"), "[reference]")
    return {"method": reader.choice("reference.method", table.get("method", "auto"), REFERENCE_METHODS),
            "solver": reader.choice("reference.solver", table.get("solver", "dopri5"), ADAPTIVE_SOLVERS),
            "rtol": reader.number("reference.rtol", table.get("rtol", DEFAULT_REFERENCE_TOL), 0.0, 1.0),
            "atol": reader.number("reference.atol", table.get("atol", DEFAULT_REFERENCE_TOL), 0.0, 1.0)}


def _parse_metrics(reader: _Reader, table: dict) -> dict:
    reader.known_keys("metrics", table, ("endpoint", "distribution", "data_samples"), "[metrics]")
    metrics = {"endpoint": reader.string_list("metrics.endpoint", table.get("endpoint", list(ENDPOINT_METRICS)),
                                              ENDPOINT_METRICS),
               "distribution": reader.string_list("metrics.distribution",
                                                  table.get("distribution", list(DISTRIBUTION_METRICS)),
                                                  DISTRIBUTION_METRICS),
               "data_samples": reader.integer("metrics.data_samples",
                                              table.get("data_samples", DEFAULT_DATA_SAMPLES), minimum=2)}
    if not metrics["endpoint"] and not metrics["distribution"]:
        raise reader.error("metrics.distribution", [], "at least one metric when metrics.endpoint is empty "
                           f"({', '.join(ENDPOINT_METRICS + DISTRIBUTION_METRICS)})")
    return metrics


def _check_method_name(reader: _Reader, key: str, name: str) -> None:
    from . import methods
    from ..solvers import available_solvers

    try:
        methods.method(name)
    except ImportError:  # the peers table does not import here: check what can be checked
        solver = name.split("@")[0]
        if "." not in solver and solver not in available_solvers():
            raise reader.error(key, name, f"a flowsolve solver ({', '.join(sorted(available_solvers()))}) or a "
                                          "peer as library.solver") from None
    except ValueError as err:
        raise reader.error(key, name, f"a method name ({err})") from None


def _parse_bench(reader: _Reader, table: dict) -> dict:
    reader.known_keys("bench", table, ("solvers", "nfe", "rtol"), "[bench]")
    solvers = reader.string_list("bench.solvers", table.get("solvers", list(DEFAULT_SOLVERS)))
    for name in solvers:
        _check_method_name(reader, "bench.solvers", name)
    nfe = table.get("nfe", list(DEFAULT_NFE))
    if not isinstance(nfe, list) or len(set(map(repr, nfe))) != len(nfe):
        raise reader.error("bench.nfe", nfe, "a list of distinct integers >= 1")
    nfe = sorted(reader.integer("bench.nfe", v, minimum=1) for v in nfe)
    rtol = table.get("rtol", list(DEFAULT_RTOL))
    if not isinstance(rtol, list) or len(set(map(repr, rtol))) != len(rtol):
        raise reader.error("bench.rtol", rtol, "a list of distinct numbers in (0, 1)")
    rtol = sorted((reader.number("bench.rtol", v, 0.0, 1.0) for v in rtol), reverse=True)
    return {"solvers": solvers, "nfe": nfe, "rtol": rtol}


# -- short descriptions ---------------------------------------------------------------------
def _short_value(value) -> str:
    if isinstance(value, list):
        shape = np.shape(value)
        return "x".join(map(str, shape)) if len(value) > 4 or any(isinstance(v, list) for v in value) else \
            "[" + ", ".join(_short_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return _short_data(value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def _short_data(spec: dict) -> str:
    """``ring(n_modes=8, radius=4, std=0.05)``; arrays as their shape (``means=5x1``)."""
    parts = [f"{k}={_short_value(v)}" for k, v in spec.items()
             if k not in ("kind", "event_shape", "weights") or (k == "event_shape" and len(v) > 1)]
    return f"{spec['kind']}({', '.join(parts)})"


def _short_process(spec: dict) -> str:
    if spec["kind"] == "Diffusion":
        return f"Diffusion(t in [{spec['t_min']:g}, {spec['t_max']:g}])"
    return f"{spec['kind']}({', '.join(f'{k}={v:g}' for k, v in spec.items() if k != 'kind')})"


# -- the problem ----------------------------------------------------------------------------
class Problem:
    """One benchmark problem (build it with :func:`load_problem` or :func:`parse_problem`).

    Attributes: ``name``, ``description``, ``source`` (the file, or ``"<string>"``), ``spec`` (the
    normalised document: every section, defaults filled, numbers as floats/ints), ``process``,
    ``data`` (the law), ``field`` (``fs.exact_field(process, data)``, built on first use),
    ``event_shape``, ``dim``, ``n``, ``start_seed``, ``endpoint_metrics``, ``distribution_metrics``,
    ``data_samples``, ``solvers``, ``nfe``, ``rtol`` (tuples), ``reference_method`` ("exact" or
    "adaptive", "auto" resolved) and ``fingerprint``: the sha256 of the canonical JSON of what the
    numbers depend on (the process, data, start and reference sections, and
    ``REFERENCE_VERSION``), not of the description, metrics or sweep.
    """

    def __init__(self, name: str, source: str, spec: dict, process, data, reference_method: str):
        self.name, self.source, self.spec = name, source, spec
        self.description = spec["description"]
        self.process, self.data = process, data
        self.event_shape = tuple(data.event_shape)
        self.dim = int(data.dim)
        self.n, self.start_seed = spec["start"]["n"], spec["start"]["seed"]
        self.endpoint_metrics = tuple(spec["metrics"]["endpoint"])
        self.distribution_metrics = tuple(spec["metrics"]["distribution"])
        self.data_samples = spec["metrics"]["data_samples"]
        self.solvers = tuple(spec["bench"]["solvers"])
        self.nfe = tuple(spec["bench"]["nfe"])
        self.rtol = tuple(spec["bench"]["rtol"])
        self.reference_method = reference_method
        self.fingerprint = _fingerprint(spec, reference_method)
        self._field = None

    @property
    def field(self):
        """The exact field ``fs.exact_field(process, data)`` (built once, on first use)."""
        if self._field is None:
            from ..toy.exact import exact_field
            self._field = exact_field(self.process, self.data)
        return self._field

    def x_init(self, seed: int = 0, n: int | None = None) -> torch.Tensor:
        """The ``n`` (default: the problem's) start points (float64, ``(n, *event_shape)``) of
        start-point set ``seed``: the prior at ``t_max`` drawn exactly as ``fs.sample(process,
        field, n, ..., seed=start_seed + seed)`` draws it (``flowsolve.solvers.api.draw_prior``). Every
        sample has its own stream, so the first k points are the same whatever ``n``."""
        seed = check_int("seed", seed, 0)
        n = self.n if n is None else check_int("n", n, 1)
        return draw_prior(self.process, n, tuple(self.event_shape), torch.float64, None, self.start_seed + seed)

    def data_sample(self, m: int | None = None, seed: int = 0) -> torch.Tensor:
        """``m`` (default ``data_samples``) draws of the data law, float64 ``(m, *event_shape)``,
        from a ``torch.Generator`` seeded by ``SeedSequence([DATA_SAMPLE_TAG, seed])``: fixed for a
        given ``seed``, and independent of the start points (which come from other streams)."""
        m = self.data_samples if m is None else check_int("m", m, 1)
        seed = check_int("seed", seed, 0)
        state = np.random.SeedSequence([DATA_SAMPLE_TAG, seed]).generate_state(2, dtype=np.uint32)
        generator = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
        return self.data.sample(m, generator=generator, dtype=torch.float64)

    def reference(self, seed: int = 0, cache_dir=None) -> Reference:
        """Where the start points ``x_init(seed)`` truly end (:mod:`flowsolve.bench.references`);
        adaptive references are cached in ``cache_dir`` (default ``$FLOWSOLVE_CACHE``, else
        ``~/.cache/flowsolve/references``)."""
        seed = check_int("seed", seed, 0)
        # kept for the life of the problem: a sweep asks for the same reference in every cell, and
        # an exact 1-D map costs up to a second (a disk cache serves only adaptive ones)
        memo = self.__dict__.setdefault("_references", {})
        key = (seed, None if cache_dir is None else str(cache_dir), os.environ.get("FLOWSOLVE_CACHE"))
        if key not in memo:
            memo[key] = compute_reference(self, seed, cache_dir)
        return memo[key]

    def summary(self) -> dict:
        """What the problem is, for reports: description, process, data (short), dim,
        event_shape, n, reference (method)."""
        return {"description": self.description, "process": repr(self.process),
                "data": _short_data(self.spec["data"]), "dim": self.dim, "event_shape": list(self.event_shape),
                "n": self.n, "reference": self.reference_method}

    def __str__(self):
        """One line for ``flowsolve problems``: name, dim, process, data, reference, description."""
        return (f"{self.name:<22} {self.dim:>4}  {_short_process(self.spec['process']):<46} "
                f"{_short_data(self.spec['data']):<46} {self.reference_method:<8}  {self.description}")

    def __repr__(self):
        return f"<Problem {self.name}: {self.description}>"


def _fingerprint(spec: dict, reference_method: str) -> str:
    reference = {"method": reference_method}
    if reference_method == "adaptive":
        reference.update({k: spec["reference"][k] for k in ("solver", "rtol", "atol")})
    payload = {"version": REFERENCE_VERSION, "process": spec["process"], "data": spec["data"],
               "start": spec["start"], "reference": reference}
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def parse_problem(text: str, source: str = "<string>", name: str | None = None) -> Problem:
    """The problem written in the TOML ``text``; ``source`` names it in errors, ``name``
    defaults to the stem of ``source`` (``"problem"`` for ``"<string>"``)."""
    reader = _Reader(source)
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ProblemError(_one_line(f"{source}: not valid TOML: {err}")) from None
    for key, value in document.items():
        if key not in SECTIONS:
            close = difflib.get_close_matches(key, SECTIONS, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise reader.error(key, value, f"one of the sections {', '.join(SECTIONS)}{hint}")
    description = document.get("description", _MISSING)
    if not isinstance(description, str) or not description.strip() or "\n" in description.strip():
        raise reader.error("description", description, "a one-line string saying what the problem is")
    for section in ("process", "data"):
        if section not in document:
            raise reader.error(section, _MISSING, f"a [{section}] section with its kind")
    spec: dict = {"description": description.strip()}
    spec["process"], process = _parse_process(reader, reader.table("process", document["process"]))
    spec["data"], data = _parse_data(reader, reader.table("data", document["data"]))
    spec["start"] = _parse_start(reader, reader.table("start", document.get("start", {})))
    spec["reference"] = _parse_reference(reader, reader.table("reference", document.get("reference", {})))
    spec["metrics"] = _parse_metrics(reader, reader.table("metrics", document.get("metrics", {})))
    spec["bench"] = _parse_bench(reader, reader.table("bench", document.get("bench", {})))
    method = spec["reference"]["method"]
    exact = exact_map_kind(process, data)
    if method == "exact" and exact is None:
        raise reader.error("reference.method", method, f"'auto' or 'adaptive': no exact flow map applies to "
                                                       f"{_short_data(spec['data'])} under {process!r} (only to a "
                                                       "single Gaussian under a Gaussian-kernel process, or a 1-D law)")
    resolved = "adaptive" if method == "adaptive" or exact is None else "exact"
    if name is None:
        name = "problem" if source.startswith("<") else pathlib.PurePath(source).stem
    return Problem(name, source, spec, process, data, resolved)


def builtin_problems() -> dict:
    """Name (file stem) -> file of every builtin problem (``flowsolve.problems``), sorted by name."""
    folder = importlib.resources.files("flowsolve.problems")
    found = {entry.name[:-len(".toml")]: entry for entry in folder.iterdir()
             if entry.name.endswith(".toml") and entry.is_file()}
    return dict(sorted(found.items()))


def load_problem(name_or_path) -> Problem:
    """A builtin problem by name (``"ring8_edm"``), or a ``.toml`` file by path. An unknown name
    is a :class:`ProblemError` listing the closest builtin names."""
    if isinstance(name_or_path, Problem):
        return name_or_path
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise ProblemError(f"a problem is a builtin name or a path to a .toml file, got {_shown(name_or_path)}")
    text = os.fspath(name_or_path)
    path = pathlib.Path(text)
    builtin = builtin_problems()
    if text in builtin and not path.is_file():
        entry = builtin[text]
        return parse_problem(entry.read_text(encoding="utf-8"), str(entry), text)
    if path.suffix == ".toml" or os.sep in text or path.is_file():
        try:
            content = path.read_text(encoding="utf-8")
        except OSError as err:
            hint = (f"; the builtin problem is named {path.stem!r}, without .toml"
                    if path.stem in builtin and not path.exists() else "")
            reason = err.strerror or err
            raise ProblemError(_one_line(f"{text}: cannot read the problem file ({reason}){hint}")) from None
        return parse_problem(content, text, path.stem)
    close = difflib.get_close_matches(text, list(builtin), n=3, cutoff=0.5)
    hint = f"; closest: {', '.join(close)}" if close else ""
    raise ProblemError(f"{text}: not a builtin problem (`flowsolve problems` lists them) nor a .toml file{hint}")
