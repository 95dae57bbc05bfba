"""Safe arithmetic expressions of time, for the schedules of a composed process written in a
problem file (``[process] kind = "Diffusion"``, ``scale = "..."``, ``sigma = "..."``).

An expression is parsed with Python's :mod:`ast` and checked node by node against a short list;
nothing is ever passed to ``eval``. Allowed:

* numbers (``0.008``, ``1e-3``), the constants ``pi`` and ``e``;
* the variables the caller names (``t``; in ``sigma`` also ``scale``, the value of the scale
  schedule at the same times);
* ``+ - * / **`` and unary ``-``/``+``;
* calls, with one positional argument, of ``sqrt exp log log1p expm1 sin cos tan arcsin arccos
  arctan sinh cosh tanh`` (the torch functions of those names; ``arc*`` are ``torch.asin``...).

Anything else (attributes such as ``t.__class__``, subscripts, other names or functions, keyword
arguments, comparisons, lambdas, strings) is refused with :class:`ExpressionError`, which says
what was found and what is allowed. Every leaf is a float64 tensor, so the value is a float64
tensor of t's shape and autograd differentiates it (the process's ``scale'``/``sigma'``); an
overflow is ``inf``, never a hang (``9**9**9`` is ``inf`` in float64).

Example: the cosine schedule of Nichol & Dhariwal (2021, eq. 17), ``alpha(t) = cos(pi/2
(t + s)/(1 + s)) / cos(pi/2 s/(1 + s))`` with ``s = 0.008``, as a VP process
(``sigma = sqrt(1 - alpha^2)/alpha``)::

    scale = "cos(pi/2 * (t + 0.008)/1.008) / cos(pi/2 * 0.008/1.008)"
    sigma = "sqrt(1 - scale**2) / scale"
"""

from __future__ import annotations

import ast
import math

import torch

from ..processes.base import ValueObject

FUNCTIONS = {
    "sqrt": torch.sqrt, "exp": torch.exp, "log": torch.log, "log1p": torch.log1p, "expm1": torch.expm1,
    "sin": torch.sin, "cos": torch.cos, "tan": torch.tan, "arcsin": torch.asin, "arccos": torch.acos,
    "arctan": torch.atan, "sinh": torch.sinh, "cosh": torch.cosh, "tanh": torch.tanh,
}
CONSTANTS = {"pi": math.pi, "e": math.e}
_BINARY = {ast.Add: torch.add, ast.Sub: torch.sub, ast.Mult: torch.mul, ast.Div: torch.div, ast.Pow: torch.pow}
_UNARY = {ast.USub: torch.neg, ast.UAdd: lambda v: v}
#: Longest expression text accepted (a schedule is a line, not a program; this also keeps the
#: parser's recursion far from its limit).
MAX_LENGTH = 2000


class ExpressionError(ValueError):
    """An expression that is not valid or not allowed; ``what`` says why, in a few words."""

    def __init__(self, text: str, what: str):
        shown = text if len(text) <= 80 else text[:77] + "..."
        super().__init__(f"expression {shown!r}: {what}")
        self.text, self.what = text, what


def allowed_description(variables) -> str:
    """What an expression may contain, in one line (for error messages)."""
    return (f"an expression of {', '.join(variables)} with numbers, {', '.join(CONSTANTS)}, + - * / ** and "
            f"{' '.join(FUNCTIONS)}")


def _describe(node: ast.AST) -> str:
    try:
        return f"{type(node).__name__.lower()} {ast.unparse(node)!r}"
    except Exception:  # noqa: BLE001 -- unparse of an odd node: name its type only
        return type(node).__name__.lower()


class Expression(ValueObject):
    """A checked arithmetic expression in ``variables``, evaluated on float64 tensors.

    ``bindings`` maps further names to expressions of the same variables, evaluated first (so
    ``sigma`` may use ``scale``). Compares and hashes by its text, variables and bindings, so two
    processes built from the same text are equal. ``repr`` is the quoted text.
    """

    def __init__(self, text: str, variables=("t",), bindings: dict | None = None):
        if not isinstance(text, str):
            raise ExpressionError(repr(text), f"must be a string, got {type(text).__name__}")
        self.text, self.variables = text, tuple(variables)
        self.bindings = dict(bindings or {})
        self._cache_tree = self._parse()

    def _parse(self) -> ast.Expression:
        text = self.text
        if not text.strip():
            raise ExpressionError(text, "is empty")
        if len(text) > MAX_LENGTH:
            raise ExpressionError(text[:40] + "...", f"is longer than {MAX_LENGTH} characters")
        try:
            tree = ast.parse(text.strip(), mode="eval")
        except (SyntaxError, ValueError, RecursionError, MemoryError) as err:
            message = getattr(err, "msg", None) or type(err).__name__
            raise ExpressionError(text, f"is not a valid expression ({message})") from None
        names = set(self.variables) | set(self.bindings) | set(CONSTANTS)
        try:
            self._check(tree.body, names)
        except RecursionError:
            raise ExpressionError(text, "is nested too deeply") from None
        return tree

    def _check(self, node: ast.AST, names: set) -> None:
        """Refuse every node that is not a number, an allowed name, + - * / ** or an allowed call."""
        text = self.text
        allowed = f"allowed: {allowed_description(tuple(self.variables) + tuple(self.bindings))}"
        if isinstance(node, ast.Constant):
            if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
                raise ExpressionError(text, f"constant {node.value!r} is not a real number; {allowed}")
        elif isinstance(node, ast.Name):
            if node.id in FUNCTIONS:
                raise ExpressionError(text, f"function {node.id!r} must be called, as {node.id}(...)")
            if node.id not in names:
                raise ExpressionError(text, f"unknown name {node.id!r}; {allowed}")
        elif isinstance(node, ast.BinOp):
            if type(node.op) not in _BINARY:
                raise ExpressionError(text, f"operator in {ast.unparse(node)!r} is not allowed; {allowed}")
            self._check(node.left, names)
            self._check(node.right, names)
        elif isinstance(node, ast.UnaryOp):
            if type(node.op) not in _UNARY:
                raise ExpressionError(text, f"operator in {ast.unparse(node)!r} is not allowed; {allowed}")
            self._check(node.operand, names)
        elif isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
                raise ExpressionError(text, f"call {ast.unparse(node.func)!r}(...) is not allowed; {allowed}")
            if len(node.args) != 1 or node.keywords or isinstance(node.args[0], ast.Starred):
                raise ExpressionError(text, f"{node.func.id}() takes exactly one positional argument, got "
                                            f"{ast.unparse(node)!r}")
            self._check(node.args[0], names)
        else:
            raise ExpressionError(text, f"{_describe(node)} is not allowed; {allowed}")

    def __call__(self, t: torch.Tensor | None = None, **values) -> torch.Tensor:
        """The value at ``t`` (a float64 tensor; other variables by keyword), a float64 tensor of
        t's shape (a constant expression is broadcast, and stays differentiable in t)."""
        if t is not None:
            values["t"] = t
        missing = [v for v in self.variables if v not in values]
        if missing:
            raise ValueError(f"expression {self.text!r} needs values for {missing}")
        env = {k: torch.as_tensor(v, dtype=torch.float64) for k, v in values.items()}
        for name, bound in self.bindings.items():
            env[name] = bound(**{v: values[v] for v in bound.variables})
        out = self._eval(self._cache_tree.body, env)
        like = env.get("t", next(iter(env.values()), None))
        # 0 * t joins a constant to t's autograd graph (its derivative is then 0, not an error)
        return out if like is None else out + 0.0 * like

    def _eval(self, node: ast.AST, env: dict) -> torch.Tensor:
        if isinstance(node, ast.Constant):
            return torch.tensor(float(node.value), dtype=torch.float64)
        if isinstance(node, ast.Name):
            return env[node.id] if node.id in env else torch.tensor(CONSTANTS[node.id], dtype=torch.float64)
        if isinstance(node, ast.BinOp):
            return _BINARY[type(node.op)](self._eval(node.left, env), self._eval(node.right, env))
        if isinstance(node, ast.UnaryOp):
            return _UNARY[type(node.op)](self._eval(node.operand, env))
        if isinstance(node, ast.Call):
            return FUNCTIONS[node.func.id](self._eval(node.args[0], env))
        raise ExpressionError(self.text, f"{_describe(node)} is not allowed")  # unreachable: checked at parse

    def __repr__(self):
        return repr(self.text)
