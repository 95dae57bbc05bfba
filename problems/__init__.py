"""The benchmark problem files (TOML), installed as ``flowsolve.problems``: ``flowsolve problems``
lists them, ``flowsolve bench NAME`` runs one. See docs/bench.md."""
