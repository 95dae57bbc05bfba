"""The work-precision bench: declarative problems, exact or cached references, flowsolve's
solvers and peer libraries run on the same start points, metrics, reports (docs/bench.md).

- problems: :func:`load_problem` (a builtin name or a ``.toml`` path), :func:`parse_problem`,
  :func:`builtin_problems`;
- methods: :func:`method` (``"heun"``, ``"heun@log_sigma"``, ``"torchdiffeq.rk4"``), :data:`PEERS`;
- the sweep: :func:`work_precision` -> :class:`Results`;
- reports: :func:`format_table`, :func:`write_all` (CSV, JSON, PNG), :func:`read_json`.
"""

from .harness import DEFAULT_SUITE, work_precision
from .methods import Method, Run, Task, method, method_names
from .peers import PEERS
from .problems import Problem, ProblemError, builtin_problems, load_problem, parse_problem
from .records import Results
from .report import format_table, read_json, write_all

__all__ = ["work_precision", "DEFAULT_SUITE", "Method", "Task", "Run", "method", "method_names", "PEERS", "Problem",
           "ProblemError", "builtin_problems", "load_problem", "parse_problem", "Results", "format_table", "read_json",
           "write_all"]
