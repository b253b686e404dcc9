"""Command line: ``python -m numpyro_hjb {demo,bench,validate} ...``.

* ``demo``: fit the default engine to a bundled model with a closed-form posterior and
  evidence, print the posterior summary and log Z against the truth (:mod:`numpyro_hjb.demo`).
* ``bench``: the benchmark runner. It lives in the top-level ``benchmarks/`` folder of a
  checkout, which is not installed with the package; run it from the checkout.
* ``validate``: coverage of log Z +- 2 SE, simulation-based calibration and two-sample tests
  of the MCMC draws (``benchmarks/validate.py``, from a checkout), into docs/validation.md.
"""

from __future__ import annotations

import argparse
import os
import sys

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m numpyro_hjb", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="a short demonstration (numpyro_hjb.demo)")
    demo.add_argument("--engine", default=None, help="engine to demonstrate (default: the default engine)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--no-progress", action="store_true", help="no progress bar")
    demo.add_argument("--out", default="demo.png", help="plot path (default demo.png)")
    demo.add_argument("--time-budget", type=float, default=None,
                      help="seconds of the sequential engine's fit (default: its default)")
    sub.add_parser("bench", help="benchmarks (from a checkout; see python -m numpyro_hjb bench -h)",
                   add_help=False)
    sub.add_parser("validate", help="calibration of error bars and draws (from a checkout; "
                   "see python -m numpyro_hjb validate -h)", add_help=False)
    return parser


def _benchmarks_cli():
    """``benchmarks.cli`` of the checkout this package was installed from (editable)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if not os.path.isfile(os.path.join(root, "benchmarks", "cli.py")):
        raise SystemExit(
            "python -m numpyro_hjb bench needs a checkout of the repository: the benchmarks/ "
            "folder is not installed with the package (pip install -e . from the checkout)"
        )
    if root not in sys.path:
        sys.path.insert(0, root)
    from benchmarks import cli

    return cli


def main(argv=None) -> int:
    """Entry point of ``python -m numpyro_hjb`` and the ``numpyro-hjb`` script."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:
        return _benchmarks_cli().main(argv[1:])
    if argv[:1] == ["validate"]:
        _benchmarks_cli()  # puts the checkout's benchmarks/ on the path
        from benchmarks.validate import main as validate

        return validate(argv[1:])
    args = build_parser().parse_args(argv)
    from . import demo

    demo.main(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
