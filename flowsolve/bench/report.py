"""The bench's results for people and for other programs: text tables, CSV, JSON, plots.

Cells with several seeds (records of the same problem, method, budget kind and budget) are
shown as the mean over seeds of each metric; their failed samples and sample counts add up.

JSON: strict JSON (no ``NaN``/``Infinity`` literals). A non-finite float is written as the
string ``"inf"``, ``"-inf"`` or ``"nan"``; :func:`read_json` turns those strings back into
floats in the records' and orders' numeric fields and anywhere in ``problems`` (so a float
field's ``inf`` round-trips). Tuples come back as lists, except ``problems[...]["event_shape"]``
which comes back a tuple.

Plots use matplotlib's object API on the Agg canvas (``Figure`` + ``FigureCanvasAgg``): no
pyplot state, so a user's interactive backend is left alone.
"""

from __future__ import annotations

import csv
import json
import math
import numbers
import pathlib
import re
import textwrap
from collections import defaultdict

from .records import DISTRIBUTION_METRICS, ENDPOINT_METRICS, RECORD_FIELDS, Results

__all__ = ["format_table", "write_csv", "write_json", "read_json", "plot_problem", "plot_samples", "write_all",
           "MAX_WIDTH"]

MAX_WIDTH = 119  # every line of format_table is at most this long (ANSI codes aside)
_BOLD, _RESET = "\x1b[1m", "\x1b[0m"
_SHORT = {"sliced_wasserstein": "SW_2", "energy_distance": "energy"}  # column labels
_STRING_FIELDS = {"problem", "fingerprint", "method", "library", "kind", "budget_kind", "status", "message", "key"}
_NUMERIC_FIELDS = tuple(f for f in RECORD_FIELDS if f not in _STRING_FIELDS)
_ORDER_NUMERIC = ("order", "nfe_lo", "nfe_hi", "points")
_PLOT_MISSING = "plots need matplotlib (pip install 'flowsolve[bench]')"


# ---------------------------------------------------------------------------------- helpers

def _finite(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def _fmt(v) -> str:
    """3 significant digits: 3.14e-03; None -> '-'."""
    if v is None:
        return "-"
    v = float(v)
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:.2e}"


def _fmt_num(v) -> str:
    """A count or NFE: 10, 12.5, 1e+04; None -> '-'."""
    if v is None:
        return "-"
    v = float(v)
    if not math.isfinite(v):
        return _fmt(v)
    return f"{v:.0f}" if v == int(v) and abs(v) < 1e6 else f"{v:.4g}"


def _budget_label(budget, kind) -> str:
    if kind == "rtol" and budget is not None:  # 1e-03, 2.5e-04
        mantissa, _, exponent = f"{float(budget):.2e}".partition("e")
        return mantissa.rstrip("0").rstrip(".") + "e" + exponent
    return _fmt_num(budget)


def _problem_names(results: Results) -> list[str]:
    names = list(results.problems)
    for r in results.records:
        if r.get("problem") not in names:
            names.append(r.get("problem"))
    return names


def _is_peer(rec) -> bool:
    return rec.get("library", "flowsolve") != "flowsolve"


class _Cell:
    """The records of one (method, budget kind, budget) cell of a problem, seeds pooled."""

    def __init__(self, recs):
        self.recs = recs
        first = recs[0]
        self.method, self.library = first.get("method"), first.get("library", "flowsolve")
        self.budget_kind, self.budget = first.get("budget_kind"), first.get("budget")
        statuses = {r.get("status", "ok") for r in recs}
        self.error = "error" in statuses
        self.skipped = statuses == {"skipped"}
        self.failed = sum(int(r.get("failed") or 0) for r in recs)
        self.n = sum(int(r.get("n") or 0) for r in recs)
        self.any_failed = self.failed > 0 or "failed" in statuses

    def value(self, metric):
        """Mean over seeds of the metric (None when no record has it; inf when one is inf)."""
        vals = [r.get(metric) for r in self.recs if r.get(metric) is not None]
        if not vals:
            return None
        vals = [float(v) for v in vals]
        if any(math.isnan(v) for v in vals):
            return math.nan
        return math.fsum(vals) / len(vals)

    def mean(self, field):
        vals = [float(r[field]) for r in self.recs if r.get(field) is not None]
        return math.fsum(vals) / len(vals) if vals else None

    def max(self, field):
        vals = [float(r[field]) for r in self.recs if r.get(field) is not None]
        return max(vals) if vals else None

    def status_text(self) -> str | None:
        """What the cell shows instead of a value: 'error', 'skip', 'fail 12/256'; else None."""
        if self.error:
            return "error"
        if self.skipped:
            return "skip"
        if self.any_failed:
            return f"fail {self.failed}/{self.n}" if self.n else "fail"
        return None

    def comparable(self, metric):
        """The value that competes for the best mark (finite, no failure), else None."""
        if self.status_text() is not None:
            return None
        v = self.value(metric)
        return v if _finite(v) else None


def _cells(records) -> dict:
    """(method, budget_kind, budget) -> _Cell, in order of first appearance."""
    groups = defaultdict(list)
    for r in records:
        groups[(r.get("method"), r.get("budget_kind"), r.get("budget"))].append(r)
    return {k: _Cell(v) for k, v in groups.items()}


def _ordered_unique(seq):
    out = []
    for s in seq:
        if s not in out:
            out.append(s)
    return out


def _sorted_budgets(budgets):
    return sorted(_ordered_unique(budgets), key=lambda b: (b is None, float(b) if b is not None else 0.0))


def _render(headers, rows, marks=None, color=False, keys=1, tail=0, indent="  ") -> list[str]:
    """A text table. ``rows``: lists of strings; ``marks``: set of (row, col) to mark best
    ("*" appended, bold when ``color``). The first ``keys`` columns are left-aligned and repeated
    when the table is split to keep lines within :data:`MAX_WIDTH`; the last ``tail`` columns go
    with the last part."""
    marks = marks or set()
    ncol = len(headers)
    marked_cols = {j for _, j in marks}
    # a marked column keeps one place for the mark, so that its numbers stay aligned
    text = [[(c + "*") if (i, j) in marks else (c + " ") if j in marked_cols and c else c
             for j, c in enumerate(row)] for i, row in enumerate(rows)]
    headers = [h + " " if j in marked_cols else h for j, h in enumerate(headers)]
    widths = [max([len(headers[j])] + [len(r[j]) for r in text]) for j in range(ncol)]
    sep = "  "
    key_cols, body = list(range(keys)), list(range(keys, ncol))
    key_w = sum(widths[j] + len(sep) for j in key_cols) + len(indent)
    parts, current, width = [], [], key_w
    for j in body:
        w = widths[j] + len(sep)
        if current and width + w > MAX_WIDTH and j < ncol - tail:
            parts.append(current)
            current, width = [], key_w
        current.append(j)
        width += w
    if current or not parts:
        parts.append(current)

    def cell(i, j, s):
        pad = widths[j] - len(s)
        shown = s
        if color and i is not None and (i, j) in marks:
            shown = _BOLD + s + _RESET
        return shown + " " * pad if j < keys else " " * pad + shown

    lines = []
    for p, cols in enumerate(parts):
        if p:
            lines.append("")
        all_cols = key_cols + cols
        lines.append((indent + sep.join(cell(None, j, headers[j]) for j in all_cols)).rstrip())
        for i, row in enumerate(text):
            lines.append((indent + sep.join(cell(i, j, row[j]) for j in all_cols)).rstrip())
    return lines


def _wrap(text: str, indent: str = "") -> list[str]:
    return textwrap.wrap(text, MAX_WIDTH, initial_indent=indent, subsequent_indent=indent + "  ") or [indent]


def _order_text(results: Results, problem, method, metric) -> str:
    fits = [o for o in results.orders if o.get("problem") == problem and o.get("method") == method]
    fit = next((o for o in fits if o.get("metric") == metric), fits[0] if fits else None)
    if not fit or fit.get("order") is None or not _finite(fit.get("order")):
        return "-"
    lo, hi = fit.get("nfe_lo"), fit.get("nfe_hi")
    rng = f" ({_fmt_num(lo)}-{_fmt_num(hi)})" if lo is not None and hi is not None else ""
    return f"{float(fit['order']):.2f}{rng}"


def _best_marks(cells, row_keys, col_keys, metric, floor=None) -> set:
    """(i, j) of the smallest comparable value in each column (ties all marked). Values at or
    below ``floor`` count as ``floor``: below the level that the exact answer itself reaches,
    smaller says nothing about the method (a distribution metric's sampling noise), so they tie."""
    marks = set()
    for j, col in enumerate(col_keys):
        vals = {}
        for i, rk in enumerate(row_keys):
            c = cells.get((rk, col))
            v = c.comparable(metric) if c else None
            if v is not None:
                vals[i] = max(v, floor) if _finite(floor) else v
        if vals:
            best = min(vals.values())
            marks |= {(i, j) for i, v in vals.items() if v == best}
    return marks


def _floor(info, metric):
    """The level below which ``metric`` cannot rank methods: the reference's estimated error for
    an endpoint metric (relative to the reference's RMS for rel_error), the distribution floor
    for a distribution metric; None when not known."""
    if metric in ENDPOINT_METRICS:
        level = info.get("reference_error")
        if metric == "rel_error":
            scale = info.get("reference_rms")
            level = level / scale if _finite(level) and _finite(scale) and scale > 0 else None
        return level if _finite(level) else None
    floor = info.get("distribution_floor")
    level = floor.get(metric) if isinstance(floor, dict) else floor
    return level if _finite(level) else None


# ---------------------------------------------------------------------------------- the table

def _header(name, info, records) -> list[str]:
    lines = [f"== {name} " + "=" * max(3, min(MAX_WIDTH, 60) - len(name) - 4)]
    if info.get("description"):
        lines += _wrap(str(info["description"]), "  ")
    n = info.get("n")
    if n is None and records:
        n = records[0].get("n")
    shape = info.get("event_shape")
    dim = info.get("dim")
    dim_text = "?" if dim is None else str(dim)
    if shape is not None and len(tuple(shape)) > 1:
        dim_text += f" (event shape {tuple(shape)})"
    lines += _wrap(f"process: {info.get('process', '?')}   data: {info.get('data', '?')}   dim: {dim_text}"
                   f"   n: {n if n is not None else '?'}", "  ")
    ref = info.get("reference", "?")
    lines += _wrap(f"reference: {ref} (estimated error {_fmt(info.get('reference_error'))})   "
                   f"primary metric: {info.get('metric', 'rmse')}", "  ")
    return lines


def _fixed_table(results, name, metric, cells, color) -> list[str]:
    fixed = {k: c for k, c in cells.items() if k[1] == "nfe"}
    if not fixed:
        return []
    methods = _ordered_unique(k[0] for k in fixed)
    budgets = _sorted_budgets(k[2] for k in fixed)
    # methods whose every cell is ok and has no value for the primary metric (e.g. an SDE
    # sampler where the metric is an end-point error) are listed in one line, not as rows
    absent = [m for m in methods
              if all(c.status_text() is None and c.value(metric) is None for k, c in fixed.items() if k[0] == m)]
    shown = [m for m in methods if m not in absent]
    tie = "below the reference's error: a tie" if metric in ENDPOINT_METRICS else "at or below the floor: a tie"
    lines = _wrap(f"fixed-step: {metric} at each NFE budget (* best per budget; {tie}); order = -slope of log error vs "
                  "log NFE", "  ")
    if shown:
        by = {(k[0], k[2]): c for k, c in fixed.items()}
        headers = ["method"] + [_budget_label(b, "nfe") for b in budgets] + ["order (NFE)", "library"]
        rows = []
        for m in shown:
            row = [m]
            for b in budgets:
                c = by.get((m, b))
                row.append("" if c is None else (c.status_text() or _fmt(c.value(metric))))
            lib = next(c.library for k, c in fixed.items() if k[0] == m)
            rows.append(row + [_order_text(results, name, m, metric), lib])
        marks = {(i, j + 1) for i, j in _best_marks(by, shown, budgets, metric, _floor(results.problems.get(name)
                                                                                           or {}, metric))}
        lines += _render(headers, rows, marks, color, keys=1, tail=2)
    if absent:
        lines += _wrap(f"{metric} does not apply to {', '.join(absent)}: see the distribution metrics", "  ")
    return lines


def _adaptive_table(results, name, metric, cells, color) -> list[str]:
    adaptive = {k: c for k, c in cells.items() if k[1] == "rtol"}
    if not adaptive:
        return []
    err_cols = [metric] + (["max_error"] if metric in ENDPOINT_METRICS and metric != "max_error" else [])
    dist_cols = [d for d in DISTRIBUTION_METRICS
                 if d not in err_cols and any(c.value(d) is not None for c in adaptive.values())]
    keys = sorted(adaptive, key=lambda k: (_ordered_unique(kk[0] for kk in adaptive).index(k[0]),
                                           -float(k[2]) if k[2] is not None else 0.0))
    headers = (["method", "rtol", "NFE mean", "NFE max"] + [_SHORT.get(e, e) for e in err_cols]
               + ["failed", "wall s"] + [_SHORT[d] for d in dist_cols] + ["library"])
    rows, score = [], {}
    floor = _floor(results.problems.get(name) or {}, metric)
    for i, k in enumerate(keys):
        c = adaptive[k]
        status = c.status_text()
        errs = [status if (status and e == metric) else _fmt(c.value(e)) for e in err_cols]
        rows.append([k[0], _budget_label(k[2], "rtol"), _fmt_num(c.mean("nfe_mean")), _fmt_num(c.max("nfe_max"))]
                    + errs + [f"{c.failed}/{c.n}" if c.n else "-", f"{c.mean('wall_s'):.3g}" if c.mean("wall_s")
                              is not None else "-"] + [_fmt(c.value(d)) for d in dist_cols] + [c.library])
        v, nfe = c.comparable(metric), c.mean("nfe_mean")
        if v is not None and _finite(nfe):
            score[i] = (v if floor is None else max(v, floor)) * nfe  # below the reference's error: only NFE
    marks = set()
    if score:
        best = min(score.values())
        marks = {(i, 4) for i, s in score.items() if s == best}
    lines = [f"  adaptive: one row per tolerance (* smallest {metric} x NFE mean)"]
    return lines + _render(headers, rows, marks, color, keys=2, tail=1)


def _distribution_table(results, name, info, cells, color) -> list[str]:
    fixed = {k: c for k, c in cells.items() if k[1] == "nfe"}
    metrics = [d for d in DISTRIBUTION_METRICS if any(c.value(d) is not None for c in fixed.values())]
    if not metrics:
        return []
    methods = _ordered_unique(k[0] for k in fixed
                              if any(fixed[k].value(d) is not None or fixed[k].status_text() for d in metrics))
    budgets = _sorted_budgets(k[2] for k in fixed if k[0] in methods)
    by = {(k[0], k[2]): c for k, c in fixed.items()}
    floor = info.get("distribution_floor")
    if isinstance(floor, dict):
        floor_text = ", ".join(f"{_SHORT.get(d, d)} {_fmt(floor.get(d))}" for d in metrics)
    elif floor is not None:
        floor_text = _fmt(floor)
    else:
        floor_text = "not given"
    headers = ["method", "metric"] + [_budget_label(b, "nfe") for b in budgets]
    rows, marks = [], set()
    for m in methods:
        for k, d in enumerate(metrics):
            row = [m if k == 0 else "", _SHORT.get(d, d)]
            for b in budgets:
                c = by.get((m, b))
                row.append("" if c is None else (c.status_text() or _fmt(c.value(d))))
            rows.append(row)
    for k, d in enumerate(metrics):
        marks |= {(i * len(metrics) + k, j + 2) for i, j in _best_marks(by, methods, budgets, d, _floor(info, d))}
    lines = _wrap(f"distribution metrics at each NFE budget (* best per budget; values at or below the floor tie: "
                  f"there the metric cannot tell the method from the exact flow); floor (the exact flow's end points "
                  f"against the data sample: sampling noise at this n): {floor_text}", "  ")
    return lines + _render(headers, rows, marks, color, keys=2)


def _problem_block(results: Results, name: str, color: bool) -> list[str]:
    info = results.problems.get(name, {}) or {}
    records = results.for_problem(name)
    metric = info.get("metric", "rmse")
    cells = _cells(records)
    lines = _header(name, info, records)
    for part in (_fixed_table(results, name, metric, cells, color),
                 _adaptive_table(results, name, metric, cells, color),
                 _distribution_table(results, name, info, cells, color)):
        if part:
            lines += [""] + part
    # why cells failed, were skipped or stopped with an error (one line per distinct message)
    why = {}
    for r in records:
        if r.get("status") in ("failed", "skipped", "error") and r.get("message"):
            budgets = why.setdefault((r.get("method"), r.get("status"), r.get("message")), [])
            label = _budget_label(r.get("budget"), r.get("budget_kind"))
            if label not in budgets:
                budgets.append(label)
    if why:
        lines.append("")
        for (m, status, message), budgets in why.items():
            lines += _wrap(f"{m} ({', '.join(budgets)}): {status}: {message}", "  ")
    if not records:
        lines += ["", "  no records"]
    return lines


def format_table(results: Results, color: bool = False) -> str:
    """The results as text: per problem a header (description, process, data, dim, n, the
    reference and its estimated error, the primary metric), the fixed-step table (one row per
    method, one column per NFE budget, the primary metric with the best per budget marked
    ``*``, failed cells as ``fail k/n``, the fitted order with its NFE range, the library), the
    adaptive table (one row per method and tolerance; ``*`` marks the smallest primary metric
    x NFE mean), the distribution metrics with their floor; then ``results.notes``. Lines are
    at most :data:`MAX_WIDTH` characters (wide tables are split). ``color``: best marks in bold
    ANSI."""
    if not results.records and not results.problems and not results.notes:
        return "no results\n"
    lines = []
    for name in _problem_names(results):
        if lines:
            lines.append("")
        lines += _problem_block(results, name, color)
    if results.notes:
        lines += ["", "notes:"]
        for note in results.notes:
            lines += _wrap(f"- {note}", "  ")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------- CSV / JSON

def write_csv(results: Results, path) -> pathlib.Path:
    """One row per record, the columns :data:`RECORD_FIELDS` in order (other keys left out;
    None as an empty field, floats in full precision, ``inf``/``nan`` as Python spells them)."""
    path = pathlib.Path(path)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(RECORD_FIELDS), extrasaction="ignore")
        writer.writeheader()
        for r in results.records:
            writer.writerow({f: r.get(f) for f in RECORD_FIELDS})
    return path


def _encode(obj):
    """JSON-ready: non-finite floats as strings, tuples as lists, numpy/torch scalars as numbers."""
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, float):
        if math.isnan(obj):
            return "nan"
        if math.isinf(obj):
            return "inf" if obj > 0 else "-inf"
        return obj
    if isinstance(obj, int):
        return obj
    if isinstance(obj, dict):
        return {str(k): _encode(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_encode(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        try:
            return _encode(obj.item())
        except (ValueError, RuntimeError):
            pass
    if hasattr(obj, "tolist"):
        return _encode(obj.tolist())
    return str(obj)


_TOKENS = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}


def _decode_value(v):
    return _TOKENS[v] if isinstance(v, str) and v in _TOKENS else v


def _decode_tree(obj):
    if isinstance(obj, dict):
        return {k: _decode_tree(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode_tree(v) for v in obj]
    return _decode_value(obj)


def write_json(results: Results, path) -> pathlib.Path:
    """``{"records", "orders", "problems", "environment", "notes"}`` as strict JSON; non-finite
    floats as the strings "inf", "-inf", "nan" (see the module docstring)."""
    path = pathlib.Path(path)
    doc = {"records": results.records, "orders": results.orders, "problems": results.problems,
           "environment": results.environment, "notes": results.notes}
    text = json.dumps(_encode(doc), indent=1, allow_nan=False)
    path.write_text(text + "\n", encoding="utf-8")
    return path


def read_json(path) -> Results:
    """The :class:`Results` that :func:`write_json` wrote."""
    doc = json.loads(pathlib.Path(path).read_text(encoding="utf-8"))
    records = []
    for r in doc.get("records", []):
        records.append({k: (_decode_value(v) if k in _NUMERIC_FIELDS else v) for k, v in r.items()})
    orders = [{k: (_decode_value(v) if k in _ORDER_NUMERIC else v) for k, v in o.items()}
              for o in doc.get("orders", [])]
    problems = {}
    for name, info in (doc.get("problems") or {}).items():
        info = _decode_tree(info)
        if isinstance(info, dict) and isinstance(info.get("event_shape"), list):
            info["event_shape"] = tuple(info["event_shape"])
        problems[name] = info
    return Results(records=records, orders=orders, problems=problems,
                   environment=doc.get("environment") or {}, notes=list(doc.get("notes") or []))


# ---------------------------------------------------------------------------------- plots

def _plot_series(records, metric):
    """method -> (library, adaptive, [(nfe_mean, value)] sorted), skipping failed/None/inf cells."""
    out = {}
    for (method, kind, budget), c in _cells(records).items():
        entry = out.setdefault(method, [c.library, kind == "rtol", []])
        v, nfe = c.comparable(metric), c.mean("nfe_mean")
        if v is not None and v > 0 and _finite(nfe) and nfe > 0:
            entry[2].append((nfe, v))
    return {m: (lib, ad, sorted(pts)) for m, (lib, ad, pts) in out.items()}


def plot_problem(results: Results, name: str, path) -> str | None:
    """A log-log plot of error against NFE (the records' ``nfe_mean``) for problem ``name``,
    written to ``path`` (PNG): one line per method with markers, peers dashed, flowsolve solid,
    adaptive methods with hollow markers (one point per tolerance); a panel for the primary
    metric and, when present and not already the primary, one for the sliced Wasserstein
    distance; the reference's estimated error / the distribution floor as dotted lines. Failed
    cells and None/inf values are left out. Returns the path as a string, or None when
    matplotlib is missing (a note then joins ``results.notes``)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import FuncFormatter
    except ImportError:
        if _PLOT_MISSING not in results.notes:
            results.notes.append(_PLOT_MISSING)
        return None
    if name not in results.problems and not results.for_problem(name):
        raise ValueError(f"no problem {name!r} in these results; problems: {', '.join(_problem_names(results))}")
    info = results.problems.get(name, {}) or {}
    records = results.for_problem(name)
    metric = info.get("metric", "rmse")
    panels = [metric]
    if metric != "sliced_wasserstein" and any(r.get("sliced_wasserstein") is not None for r in records):
        panels.append("sliced_wasserstein")

    fig = Figure(figsize=(5.2 * len(panels) + 2.2, 4.4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    methods = _ordered_unique(r.get("method") for r in records)
    colors = [f"C{i % 10}" for i in range(len(methods))]
    markers = "osD^v<>pPhX*"
    handles = {}
    for ax, m_name in zip(axes, panels):
        series = _plot_series(records, m_name)
        drawn = False
        for i, method in enumerate(methods):
            if method not in series:
                continue
            lib, adaptive, pts = series[method]
            if not pts:
                continue
            xs, ys = zip(*pts)
            style = dict(color=colors[i], marker=markers[i % len(markers)], markersize=5, linewidth=1.3,
                         linestyle="--" if lib != "flowsolve" else "-")
            if adaptive:
                style["markerfacecolor"] = "none"
            (line,) = ax.plot(xs, ys, label=method + (" (adaptive)" if adaptive else ""), **style)
            handles.setdefault(method, line)
            drawn = True
        if m_name in ENDPOINT_METRICS:
            level, label, shade = info.get("reference_error"), "reference error (est.)", "0.15"
        else:
            floor = info.get("distribution_floor")
            level = floor.get(m_name) if isinstance(floor, dict) else floor
            label, shade = "floor: exact flow vs data sample", "0.55"
        if _finite(level) and level > 0:
            line = ax.axhline(level, color=shade, linestyle=":", linewidth=1.4, label=label)
            handles.setdefault(label + m_name, line)
        if drawn:
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:g}"[0] in "25" else ""))
        else:
            ax.text(0.5, 0.5, "no finite values to plot", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("NFE per sample (mean)")
        ax.set_ylabel(m_name)
        ax.grid(True, which="both", alpha=0.25)
    title = name + (f": {info['description']}" if info.get("description") else "")
    fig.suptitle("\n".join(textwrap.wrap(title, 100)), fontsize=10)
    if handles:
        fig.legend(list(handles.values()), [h.get_label() for h in handles.values()], loc="center left",
                   bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    fig.tight_layout()
    path = pathlib.Path(path)
    fig.savefig(path, format="png", dpi=110, bbox_inches="tight")
    return str(path)


def plot_samples(x, problem, path, title: str | None = None) -> str | None:
    """A picture of end points ``x`` (``(n, *event_shape)``, 1 or 2 coordinates per sample) of
    ``problem`` (an object with ``name`` and, optionally, ``data_sample(m, seed)``, drawn beside
    them for comparison): a histogram in 1-D, a scatter plot in 2-D, written to ``path`` (PNG).
    Non-finite samples are left out (their count is in the legend). Returns the path as a string,
    or None when matplotlib is missing. More than 2 coordinates is a ValueError."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    import torch

    pts = torch.as_tensor(x).detach().cpu().to(torch.float64)
    pts = pts.reshape(pts.shape[0], -1) if pts.dim() > 1 else pts.reshape(-1, 1)
    d = pts.shape[1]
    if d not in (1, 2):
        raise ValueError(f"plot_samples draws 1-D or 2-D samples, got {d} coordinates per sample")
    finite = torch.isfinite(pts).all(dim=1)
    shown, dropped = pts[finite].numpy(), int((~finite).sum())
    data = None
    if callable(getattr(problem, "data_sample", None)):
        try:
            data = torch.as_tensor(problem.data_sample(seed=0)).detach().cpu().to(torch.float64)
            data = data.reshape(data.shape[0], -1).numpy()
        except Exception:  # noqa: BLE001 -- the comparison is optional; the samples are the picture
            data = None
    fig = Figure(figsize=(5.0, 4.6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    label = f"samples ({shown.shape[0]}" + (f"; {dropped} non-finite left out)" if dropped else ")")
    if d == 1:
        if data is not None:
            ax.hist(data[:, 0], bins=60, density=True, color="0.75", label="data law (sample)")
        ax.hist(shown[:, 0], bins=60, density=True, histtype="step", color="C0", linewidth=1.4, label=label)
        ax.set_xlabel("x")
        ax.set_ylabel("density")
    else:
        if data is not None:
            ax.scatter(data[:, 0], data[:, 1], s=3, color="0.7", label="data law (sample)", rasterized=True)
        ax.scatter(shown[:, 0], shown[:, 1], s=4, color="C0", label=label, rasterized=True)
        ax.set_xlabel("x[0]")
        ax.set_ylabel("x[1]")
        ax.set_aspect("equal", adjustable="datalim")
    name = getattr(problem, "name", None) or str(problem)
    ax.set_title("\n".join(textwrap.wrap(title or name, 60)), fontsize=10)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    path = pathlib.Path(path)
    fig.savefig(path, format="png", dpi=110)
    return str(path)


def _file_stem(name) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", str(name)) or "problem"


def write_all(results: Results, out_dir, plots: bool = True) -> list[pathlib.Path]:
    """Create ``out_dir`` and write ``results.csv``, ``results.json`` and (``plots``) one
    ``<problem>.png`` per problem (characters other than letters, digits, ``._-`` in the name
    become ``_``; no plots when matplotlib is missing, with a note in the JSON). Returns the
    paths written. A directory that cannot be created or written raises OSError with a one-line
    message naming it."""
    out = pathlib.Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        pngs = []
        for name in _problem_names(results) if plots else ():
            p = plot_problem(results, name, out / f"{_file_stem(name)}.png")
            if p is not None:
                pngs.append(pathlib.Path(p))
        paths = [write_csv(results, out / "results.csv"), write_json(results, out / "results.json")]
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise OSError(f"cannot write the bench results to {out}: {reason}") from exc
    return paths + pngs
