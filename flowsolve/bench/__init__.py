"""The work-precision bench: declarative problems, exact or cached references, flowsolve's
solvers and peer libraries run on the same start points, metrics, reports."""
