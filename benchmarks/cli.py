"""The bench command: ``python -m numpyro_hjb bench ...`` (from a checkout) or
``python -m benchmarks.cli ...``.

Examples::

    python -m numpyro_hjb bench --engine dds --target gmm9 --set num_iterations=2000
    python -m numpyro_hjb bench --engine smc --target all --seeds 3
"""

from __future__ import annotations

import argparse
import os
import sys

__all__ = ["main", "build_parser", "parse_value", "parse_settings", "ALL_TARGETS"]

#: ``--target all`` runs these
ALL_TARGETS = ("gmm9", "manywell5", "funnel10", "manywell50")


def parse_value(text: str):
    """'3' -> 3, '0.1' -> 0.1, 'true'/'false' -> bool, 'none' -> None, '64,64' or '(64, 64)'
    -> (64, 64), anything else stays a string."""
    text = text.strip()
    if len(text) > 1 and text[0] + text[-1] in ("()", "[]"):
        text = text[1:-1] + ","
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    if "," in text:
        return tuple(parse_value(t) for t in text.split(",") if t.strip())
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_settings(items) -> dict:
    """['key=value', ...] -> {key: parsed value}; ValueError naming ``--set`` otherwise."""
    out = {}
    for item in items or ():
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        if not key.strip():
            raise ValueError(f"--set expects key=value, got {item!r}")
        out[key.strip()] = parse_value(value)
    return out


def build_parser() -> argparse.ArgumentParser:
    bench = argparse.ArgumentParser(
        prog="python -m numpyro_hjb bench",
        description="run a sampler on benchmark targets and publish a row",
    )
    bench.add_argument("--engine", required=True,
                       help="a numpyro_hjb engine (dis, dds, pis, tt, ...) or a peer (nuts, smc)")
    bench.add_argument("--loss", default=None, help="kl or lv (learned engines dis/dds/pis)")
    bench.add_argument("--target", required=True,
                       help="a target of benchmarks.targets, or 'all' "
                            f"({', '.join(ALL_TARGETS)})")
    bench.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    bench.add_argument("--seeds", type=int, default=1,
                       help="number of seeds, seed..seed+n-1, averaged into one row")
    bench.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                       help="engine setting passed to numpyro_hjb.fit (repeatable)")
    bench.add_argument("--num-samples", type=int, default=10_000,
                       help="proposals for the timing and log Z (default 10000)")
    bench.add_argument("--no-progress", action="store_true", help="no progress bar")
    bench.add_argument("--out", default="docs/lab/benchmarks.md",
                       help="markdown table to update (JSON kept next to it); figures go to "
                            "<dir of out>/img/")
    bench.add_argument("--no-write", action="store_true", help="print the rows only")
    return bench


def _bench(args) -> int:
    from .runner import LEARNED_ENGINES, markdown_table, run_seeds, write_results

    if args.seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
    config = parse_settings(args.settings)
    if args.loss is not None:
        if args.engine not in LEARNED_ENGINES:
            raise ValueError(
                f"--loss applies to the learned engines {LEARNED_ENGINES}, not {args.engine!r}"
            )
        config["loss"] = args.loss
    targets = ALL_TARGETS if args.target == "all" else (args.target,)
    fig_dir = os.path.join(os.path.dirname(os.path.abspath(args.out)), "img")
    seeds = range(args.seed, args.seed + args.seeds)
    rows = []
    for name in targets:
        row = run_seeds(name, args.engine, seeds, num_samples=args.num_samples,
                        progress_bar=not args.no_progress,
                        figure_dir=None if args.no_write else fig_dir, **config)
        rows.append(row)
        print(markdown_table([row]).splitlines()[-1], flush=True)
        if not args.no_write:
            write_results([row], args.out)
    print()
    print(markdown_table(rows))
    if not args.no_write:
        print(f"\nwritten to {args.out} (and {os.path.splitext(args.out)[0]}.json)")
    return 0


def main(argv=None) -> int:
    argv = list(argv) if argv is not None else sys.argv[1:]
    if argv[:1] == ["headline"]:
        from .headline import main as headline

        return headline(argv[1:])
    return _bench(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
