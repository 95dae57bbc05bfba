"""The bench's problem files and their loader (flowsolve.bench.problems, flowsolve.bench.expressions)."""

from __future__ import annotations

import functools
import math
import pathlib

import pytest
import torch

import flowsolve as fs
from flowsolve.bench import problems as bp
from flowsolve.bench.expressions import Expression, ExpressionError
from flowsolve.bench.problems import ProblemError, builtin_problems, load_problem, parse_problem

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]
BUILTIN = list(builtin_problems())


@functools.lru_cache(maxsize=None)
def loaded(name):
    """Each builtin problem loaded once for the whole module (the 768-D law takes ~0.5 s)."""
    return load_problem(name)


SMALL = '''description = "a small ring under EDM"
[process]
kind = "EDM"
sigma_min = 0.002
sigma_max = 80.0
[data]
kind = "ring"
n_modes = 8
radius = 4.0
std = 0.05
[start]
n = 16
seed = 0
'''


# -- packaging ------------------------------------------------------------------------------
def test_pyproject_packages_are_the_source_tree():
    """pyproject's explicit package list names every package of the source tree, and problems/
    is installed as flowsolve.problems with its .toml files."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "flowsolve").rglob("__init__.py")}
    assert on_disk | {"flowsolve.problems"} == listed
    assert config["package-dir"]["flowsolve.problems"] == "problems"
    assert "*.toml" in config["package-data"]["flowsolve.problems"]
    assert (ROOT / "problems" / "__init__.py").is_file()
    assert set(BUILTIN) == {p.stem for p in (ROOT / "problems").glob("*.toml")}


# -- every builtin problem ------------------------------------------------------------------
@pytest.mark.parametrize("name", BUILTIN)
def test_builtin_problem_loads_and_summarises(name):
    problem = loaded(name)
    assert problem.name == name and problem.description and "\n" not in problem.description
    summary = problem.summary()
    assert set(summary) == {"description", "process", "data", "dim", "event_shape", "n", "reference"}
    assert summary["dim"] == math.prod(problem.event_shape) == problem.dim
    assert problem.reference_method in ("exact", "adaptive")
    line = str(problem)
    assert "\n" not in line and line.startswith(name) and problem.description in line
    assert len(problem.fingerprint) == 64 and int(problem.fingerprint, 16) >= 0
    x0 = problem.x_init()
    assert x0.dtype == torch.float64 and x0.shape == (problem.n, *problem.event_shape)
    assert bool(torch.isfinite(x0).all())
    data = problem.data_sample(8)
    assert data.dtype == torch.float64 and data.shape == (8, *problem.event_shape)
    assert problem.nfe == tuple(sorted(problem.nfe)) and problem.solvers and problem.rtol
    assert set(problem.endpoint_metrics) <= {"rmse", "max_error", "rel_error"}
    assert problem.spec["process"]["kind"] in bp.PROCESS_KINDS


def test_the_builtin_suite_covers_the_brief():
    """At least 12 problems: Gaussian data under every diffusion with a closed form, PFGM++ with
    D in {1, 128, 2048}, 1-D laws with exact maps (one under PFGM++), a 64-D mixture, an
    image-shaped law, an empirical cloud under PFGM++ and a composed Diffusion."""
    suite = {name: loaded(name) for name in BUILTIN}
    assert len(suite) >= 12

    def having(test):
        return [p for p in suite.values() if test(p)]

    gaussian = having(lambda p: p.spec["data"]["kind"] == "gaussian")
    for kind in ("VE", "VP", "SubVP", "EDM"):
        assert any(p.spec["process"]["kind"] == kind and p.reference_method == "exact" for p in gaussian), kind
    assert any(getattr(p.process, "D", None) == 128 and p.reference_method == "adaptive" for p in gaussian)
    assert {1.0, 128.0, 2048.0} <= {p.process.D for p in having(lambda p: isinstance(p.process, fs.PFGMPP))
                                     if p.spec["data"]["kind"] in ("ring", "grid")}
    one_d = having(lambda p: p.dim == 1)
    assert len(one_d) >= 2 and all(p.reference_method == "exact" for p in one_d)
    assert any(isinstance(p.process, fs.PFGMPP) for p in one_d)
    assert having(lambda p: p.dim == 64)
    assert having(lambda p: p.event_shape == (3, 16, 16))
    assert having(lambda p: p.spec["data"]["kind"] == "empirical" and isinstance(p.process, fs.PFGMPP))
    assert having(lambda p: p.spec["process"]["kind"] == "Diffusion")


# -- the loaded objects ---------------------------------------------------------------------
def test_defaults_are_filled_and_spans_come_from_the_process():
    problem = parse_problem('description = "d"\n[process]\nkind = "VP"\n[data]\nkind = "bimodal_1d"\n')
    spec = problem.spec
    assert spec["process"] == {"kind": "VP", "beta_min": 0.1, "beta_max": 20.0, "t_min": 1e-3, "t_max": 1.0}
    assert spec["data"] == {"kind": "bimodal_1d", "separation": 4.0, "std": 0.5, "weight": 0.5, "event_shape": [1]}
    assert spec["start"] == {"n": bp.DEFAULT_N, "seed": 0}
    assert spec["reference"] == {"method": "auto", "solver": "dopri5", "rtol": 1e-10, "atol": 1e-10}
    assert problem.endpoint_metrics == ("rmse", "max_error", "rel_error")
    assert problem.distribution_metrics == ("sliced_wasserstein", "energy_distance")
    assert problem.data_samples == bp.DEFAULT_DATA_SAMPLES and problem.solvers == bp.DEFAULT_SOLVERS
    assert problem.process == fs.VP() and problem.name == "problem" and problem.reference_method == "exact"
    assert isinstance(problem.field, fs.ExactField) and problem.field is problem.field  # built once


def test_reference_method_auto_resolves():
    def method(process, data):
        return parse_problem(f'description = "d"\n[process]\n{process}\n[data]\n{data}\n').reference_method

    gaussian = 'kind = "gaussian"\nmean = [0.0, 1.0]\ncov = [[1.0, 0.2], [0.2, 0.5]]'
    assert method('kind = "EDM"', gaussian) == "exact"
    assert method('kind = "PFGMPP"\nD = 128', gaussian) == "adaptive"  # no closed form under PFGM++
    assert method('kind = "Poisson"', 'kind = "bimodal_1d"') == "exact"  # 1-D: quantile map, any kernel
    assert method('kind = "EDM"', 'kind = "ring"') == "adaptive"
    assert method('kind = "EDM"', 'kind = "empirical"\npoints = [[0.0], [1.0], [3.0]]') == "exact"


def test_laws_from_the_file_are_the_toy_laws():
    problem = loaded("ring8_edm")
    law = fs.toy.ring(8, 4.0, 0.05)
    assert torch.equal(problem.data.means, law.means) and torch.equal(problem.data.covs, law.covs)
    image = loaded("image3x16x16_vp")
    full = fs.toy.random_mixture(768, 4, seed=0, spread=1.0, std_range=(0.1, 0.5))
    assert image.data.event_shape == (3, 16, 16) and image.data.eigvecs is None  # diagonal = true
    assert torch.allclose(image.data.eigvals, torch.diagonal(full.covs, dim1=-2, dim2=-1), rtol=1e-15, atol=0)
    cloud = loaded("cloud32_pfgmpp_d128")
    drawn = fs.toy.ring(8, 4.0, 0.3).sample(32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert torch.equal(cloud.data.points, drawn)


def test_event_shape_reshapes_any_law():
    text = SMALL.replace("std = 0.05", "std = 0.05\nevent_shape = [1, 2]")
    problem = parse_problem(text)
    assert problem.event_shape == (1, 2) and problem.x_init().shape == (16, 1, 2)
    assert problem.data_sample(4).shape == (4, 1, 2)


@pytest.mark.parametrize("process", ['kind = "EDM"', 'kind = "Poisson"'])
def test_x_init_is_the_prior_that_fs_sample_draws(process):
    """Same seed, same points (per-sample streams: the first rows of n = 16 are those of n = 8);
    start.seed offsets the seed."""
    text = SMALL.replace('kind = "EDM"', process).replace("seed = 0", "seed = 3")
    problem = parse_problem(text)
    for seed in (0, 2):
        sol = fs.sample(problem.process, problem.field, 8, "euler", steps=1, seed=problem.start_seed + seed,
                        dtype=torch.float64, save_at=[problem.process.t_max])
        assert torch.equal(sol.xs[0], problem.x_init(seed)[:8])
        assert torch.equal(sol.xs[0], problem.x_init(seed, n=8))
    assert problem.x_init(0, n=40).shape[0] == 40
    assert not torch.equal(problem.x_init(0), problem.x_init(1))
    with pytest.raises(ValueError, match="n must be"):
        problem.x_init(0, n=0)


def test_data_sample_is_fixed_by_its_seed_and_apart_from_the_start_points():
    problem = parse_problem(SMALL)
    assert torch.equal(problem.data_sample(), problem.data_sample()) and problem.data_sample().shape == (2048, 2)
    assert not torch.equal(problem.data_sample(64, seed=0), problem.data_sample(64, seed=1))
    other_start = parse_problem(SMALL.replace("seed = 0", "seed = 5"))
    assert torch.equal(other_start.data_sample(64), problem.data_sample(64))
    with pytest.raises(ValueError, match="seed"):
        problem.data_sample(4, seed=-1)
    with pytest.raises(ValueError, match="seed"):
        problem.x_init(-1)


# -- fingerprints ---------------------------------------------------------------------------
def test_fingerprint_follows_the_numbers_only():
    base = parse_problem(SMALL).fingerprint
    assert load_problem("ring8_edm").fingerprint == load_problem("ring8_edm").fingerprint
    assert parse_problem(SMALL).fingerprint == base
    same = [SMALL.replace('description = "a small ring under EDM"', 'description = "another text"'),
            SMALL.replace("radius = 4.0", "radius = 4"),                       # 4 and 4.0 are one number
            SMALL.replace("sigma_min = 0.002\n", ""),                         # the default, written or not
            SMALL + '[bench]\nnfe = [5, 10]\n[metrics]\nendpoint = ["rmse"]\n',  # not part of the numbers
            SMALL + '[reference]\nmethod = "adaptive"\n']                   # what "auto" resolves to here
    for text in same:
        assert parse_problem(text).fingerprint == base, text
    changed = [SMALL.replace("std = 0.05", "std = 0.06"), SMALL.replace("n = 16", "n = 17"),
               SMALL.replace("seed = 0", "seed = 1"), SMALL.replace('kind = "EDM"', 'kind = "PFGMPP"'),
               SMALL + "[reference]\nrtol = 1e-9\n", SMALL + '[reference]\nsolver = "tsit5"\n']
    prints = {parse_problem(text).fingerprint for text in changed}
    assert base not in prints and len(prints) == len(changed)


def test_fingerprint_includes_the_reference_version(monkeypatch):
    base = parse_problem(SMALL).fingerprint
    monkeypatch.setattr(bp, "REFERENCE_VERSION", bp.REFERENCE_VERSION + 1)
    assert parse_problem(SMALL).fingerprint != base


# -- errors: one line, naming the file and the key -------------------------------------------
BASE = 'description = "x"\n[process]\nkind = "EDM"\n[data]\nkind = "ring"\n'
DIFFUSION = 'description = "x"\n[process]\nkind = "Diffusion"\nsigma = {}\nt_min = 0.1\n[data]\nkind = "ring"\n'
ERRORS = {
    "bad TOML": ('description = "x"\n[process\nkind = "EDM"', "not valid TOML", None),
    "unknown section": (BASE + "[sampler]\nn = 3\n", "key 'sampler'", "process, data"),
    "unknown key": (BASE.replace('"EDM"', '"EDM"\nsgima_max = 3.0'), "key 'process.sgima_max'", "'sigma_max'"),
    "unknown data key": (BASE.replace('"ring"', '"ring"\nradious = 3.0'), "key 'data.radious'", "'radius'"),
    "wrong type": (BASE + '[start]\nn = "256"\n', "key 'start.n': found '256'", "integer"),
    "negative n": (BASE + "[start]\nn = -4\n", "key 'start.n': found -4", ">= 1"),
    "unknown process kind": (BASE.replace('"EDM"', '"EMD"'), "key 'process.kind': found 'EMD'", "'EDM'"),
    "unknown data kind": (BASE.replace('"ring"', '"rings"'), "key 'data.kind'", "'ring'"),
    "unsafe import": (DIFFUSION.format('"__import__(\'os\')"'), "key 'process.sigma'", "__import__"),
    "unsafe attribute": (DIFFUSION.format('"t.__class__"'), "key 'process.sigma'", "attribute"),
    "unknown name": (DIFFUSION.format('"t + scale"'), "key 'process.sigma'", "unknown name 'scale'"),
    "bad schedule": (DIFFUSION.format('"1/t"'), "key 'process.sigma'", "increasing"),
    "missing description": (BASE.replace('description = "x"', ""), "key 'description'", "one-line"),
    "missing data": ('description = "x"\n[process]\nkind = "EDM"\n', "key 'data'", "[data]"),
    "process check": (BASE.replace('"EDM"', '"EDM"\nsigma_min = -1.0'), "key 'process.sigma_min'", "> 0"),
    "D out of range": (BASE.replace('"EDM"', '"PFGMPP"\nD = 0'), "key 'process.D'", "> 0"),
    "law check": (BASE.replace('"ring"', '"ring"\nstd = -0.05'), "key 'data.std'", "> 0"),
    "weights": ('description = "x"\n[process]\nkind = "EDM"\n[data]\nkind = "mixture"\nmeans = [[0.0], [1.0]]\n'
                "stds = 0.1\nweights = [0.3, 0.3]\n", "key 'data.weights'", "sum to 1"),
    "covariance": ('description = "x"\n[process]\nkind = "EDM"\n[data]\nkind = "gaussian"\nmean = [0.0, 1.0]\n'
                   "cov = [[1.0, 2.0], [2.0, 1.0]]\n", "key 'data.cov'", "positive definite"),
    "ragged array": ('description = "x"\n[process]\nkind = "EDM"\n[data]\nkind = "mixture"\n'
                     "means = [[0.0], [1.0, 2.0]]\nstds = 0.1\n", "key 'data.means'", "array"),
    "nested law": ('description = "x"\n[process]\nkind = "EDM"\n[data]\nkind = "empirical"\nn_points = 3\n'
                   'law = { kind = "ring", std = -1.0 }\n', "key 'data.law.std'", "> 0"),
    "no exact map": (BASE + '[reference]\nmethod = "exact"\n', "key 'reference.method'", "no exact flow map"),
    "unknown solver": (BASE + '[bench]\nsolvers = ["huen"]\n', "key 'bench.solvers': found 'huen'", "'heun'"),
    "unknown metric": (BASE + '[metrics]\nendpoint = ["rmsee"]\n', "key 'metrics.endpoint'", "'rmse'"),
    "nfe below one": (BASE + "[bench]\nnfe = [0, 10]\n", "key 'bench.nfe'", ">= 1"),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_errors_are_one_line_naming_file_and_key(case):
    text, key_part, hint = ERRORS[case]
    with pytest.raises(ProblemError) as info:
        parse_problem(text, "bad.toml")
    message = str(info.value)
    assert "\n" not in message and message.startswith("bad.toml: ")
    assert key_part in message
    if hint is not None:
        assert hint in message


def test_load_problem_by_path_and_unknown_names(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text(SMALL)
    problem = load_problem(path)
    assert problem.name == "mine" and problem.source == str(path)
    assert load_problem(str(path)).fingerprint == problem.fingerprint
    with pytest.raises(ProblemError, match=r"^ring8_edn: .*closest: ring8_edm") as info:
        load_problem("ring8_edn")
    assert "\n" not in str(info.value)
    with pytest.raises(ProblemError, match="cannot read"):
        load_problem(tmp_path / "missing.toml")
    path.write_text(SMALL.replace("n = 16", "n = 0"))
    with pytest.raises(ProblemError, match=rf"^{path}: key 'start.n'"):
        load_problem(path)


# -- expressions ----------------------------------------------------------------------------
COSINE_SCALE = "cos(pi/2 * (t + 0.008)/1.008) / cos(pi/2 * 0.008/1.008)"


class Cosine(fs.Diffusion):
    """The cosine VP (Nichol & Dhariwal 2021, eq. 17), by hand, with closed-form derivatives:
    ``alpha = cos(c (t + s)) / cos(c s)``, ``c = pi / (2 (1 + s))``; ``sigma = sqrt(1 - alpha^2) / alpha``,
    ``sigma' = -alpha' / (alpha^2 sqrt(1 - alpha^2))``."""

    def __init__(self, s=0.008):
        self.s = s
        super().__init__(t_min=1e-3, t_max=0.999)

    def _alpha(self, t):
        c = 0.5 * math.pi / (1 + self.s)
        return torch.cos(c * (t + self.s)) / math.cos(c * self.s)

    def _scale(self, t):
        return self._alpha(t)

    def _sigma(self, t):
        a = self._alpha(t)
        return torch.sqrt(1 - a**2) / a

    def _scale_derivative(self, t):
        c = 0.5 * math.pi / (1 + self.s)
        return -c * torch.sin(c * (t + self.s)) / math.cos(c * self.s)

    def _sigma_derivative(self, t):
        a = self._alpha(t)
        return -self._scale_derivative(t) / (a**2 * torch.sqrt(1 - a**2))


def test_cosine_vp_expressions_match_a_hand_written_subclass():
    problem = load_problem("cosine_vp_ring8")
    assert problem.spec["process"]["scale"] == COSINE_SCALE
    process, by_hand = problem.process, Cosine()
    assert (process.t_min, process.t_max) == (by_hand.t_min, by_hand.t_max)
    t = torch.linspace(process.t_min, process.t_max, 401, dtype=torch.float64)
    for name in ("scale", "sigma", "scale_derivative", "sigma_derivative"):
        ours, theirs = getattr(process, name)(t), getattr(by_hand, name)(t)
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=0, msg=name)
    assert process.prior_std == pytest.approx(by_hand.prior_std, rel=1e-12)
    assert process == load_problem("cosine_vp_ring8").process  # expressions compare by text


def test_expressions_are_safe_and_differentiable():
    t = torch.tensor([0.25, 0.5], dtype=torch.float64, requires_grad=True)
    value = Expression("exp(-t) + 2**t - log1p(t) * pi / e")(t)
    expected = torch.exp(-t) + 2**t - torch.log1p(t) * math.pi / math.e
    torch.testing.assert_close(value, expected, rtol=1e-15, atol=0)
    (grad,) = torch.autograd.grad(Expression("3")(t).sum(), t)  # a constant: derivative 0, not an error
    assert torch.equal(grad, torch.zeros(2, dtype=torch.float64))
    for text in ("__import__('os')", "t.__class__", "t[0]", "lambda: t", "open('x')", "sqrt", "t if t else 1",
                 "'s'", "t // 2", "sqrt(t, t)", "exp(x=t)", "(" * 300 + "t" + ")" * 300, "", "t < 1"):
        with pytest.raises(ExpressionError):
            Expression(text)


def test_a_problem_with_no_metric_is_refused():
    text = SMALL + "\n[metrics]\nendpoint = []\ndistribution = []\n" if "[metrics]" not in SMALL else None
    with pytest.raises(ProblemError, match=r"key 'metrics.distribution': found \[\], expected at least one metric"):
        parse_problem(text, source="none.toml")
