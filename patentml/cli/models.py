"""Subcommands about models: train, evaluate, report, promote, predict and the model store."""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any

from patentml.cli.common import engine_for as _engine
from patentml.cli.common import settings_for as _settings

log = logging.getLogger("patentml")


def _overrides(pairs: list[str]) -> dict[str, Any]:
    """``key=value`` pairs; values are parsed as JSON when they can be (numbers, lists, true/false/null)."""
    from patentml.exceptions import ConfigError

    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects key=value, got {pair!r}")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def cmd_train(args: argparse.Namespace) -> int:
    from patentml.train import resume, train

    settings = _settings(args)
    if args.threads:
        settings = settings.replace(threads=args.threads)
    if args.device:
        settings = settings.replace(device=args.device)
    if not args.resume and not args.variant:
        from patentml.exceptions import ConfigError

        raise ConfigError("give --variant (e.g. glove-wbce-full) or --resume RUN")
    engine = _engine(args)
    if args.resume:
        run_id = resume(args.resume, settings, progress=not args.quiet, engine=engine)
    else:
        run_id = train(
            args.variant, settings, epochs=args.epochs, batch_size=args.batch_size, alpha=args.alpha, lr=args.lr,
            seed=args.seed, overrides=_overrides(args.set), snapshot_id=args.snapshot, progress=not args.quiet,
            engine=engine,
        )
    print(f"run {run_id} succeeded")
    if args.evaluate:
        return _evaluate(engine, run_id, settings)
    return 0


def _evaluate(engine: Any, run_id: int, settings: Any, snapshot_id: int | None = None) -> int:
    from patentml.evaluate import evaluate_run

    summary = evaluate_run(engine, run_id, settings, snapshot_id=snapshot_id)
    print(f"run {run_id} ({summary['variant']}) on {summary['n_patents']} test patents, "
          f"{summary['patents_per_second']:,.0f} patents/s:")
    for rule, m in summary["rules"].items():
        print(f"  {rule:>9}: P {m['precision']:.4f}  R {m['recall']:.4f}  F1 {m['f1']:.4f}  "
              f"P@1 {m['p_at_1']:.4f}  R@5 {m['r_at_5']:.4f}  empty {m['empty_share']:.3f}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    settings = _settings(args)
    engine = _engine(args)
    for run_id in args.runs:
        _evaluate(engine, run_id, settings, args.snapshot)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    if args.compare:
        from patentml.report import compare_runs

        print(compare_runs(_engine(args), args.compare[0], args.compare[1], n=args.bootstrap))
        return 0
    from patentml.report import full_report

    print(full_report(_engine(args), label=args.label, snapshot_id=args.snapshot))
    return 0


# --- promote, models -------------------------------------------------------------------


def cmd_promote(args: argparse.Namespace) -> int:
    from patentml.promote import decision_as_text, promote, rollback

    settings = _settings(args)
    engine = _engine(args)
    if args.rollback:
        if args.runs or args.margin is not None or args.metric:
            from patentml.exceptions import ConfigError

            raise ConfigError("--rollback takes no runs, --margin or --metric")
        result = rollback(settings, engine=engine)
    else:
        result = promote(settings, run_ids=args.runs or None, margin=args.margin, metric=args.metric, engine=engine)
    if args.json:
        print(json.dumps(result, default=str, indent=2))
    else:
        print(decision_as_text(result))
    return 0


def cmd_models_list(args: argparse.Namespace) -> int:
    from patentml.promote import list_models

    settings = _settings(args)
    engine = None
    if not args.no_db:
        engine = _engine(args)
    models = list_models(settings, engine=engine)
    if args.json:
        print(json.dumps(models, default=str, indent=2))
        return 0
    from patentml.store import open_store

    print(f"models in {open_store(settings).uri}:")
    if not models:
        print("  (none)")
        return 0

    def num(value: Any) -> str:
        return "-" if value is None else f"{value:.4f}"

    header = f"  {'':1} {'model id':<40} {'variant':<18} {'run':>5} {'snap':>5} {'F1':>7} {'P@1':>7}  note"
    print(header)
    for m in models:
        note = "champion" if m["champion"] else ("" if m["registered"] or engine is None else
                                                 "not registered (no models row)")
        if not m["complete"]:
            note = "interrupted upload (no manifest): `patentml models remove ID`"
        print(f"  {'*' if m['champion'] else ' ':1} {m['model_id']:<40} {str(m.get('variant') or '-'):<18} "
              f"{str(m.get('run_id') or '-'):>5} {str(m.get('snapshot_id') or '-'):>5} "
              f"{num(m.get('f1')):>7} {num(m.get('p_at_1')):>7}  {note}".rstrip())
    return 0


def cmd_models_remove(args: argparse.Namespace) -> int:
    from patentml.promote.listing import remove_model

    print(remove_model(_settings(args), args.model_id, _engine(args), candidate=args.candidate))
    return 0


def cmd_variants(args: argparse.Namespace) -> int:
    from patentml import variants as registry

    header = ("encoder", "variants", "torch", "fine-tunes", "explains", "caches", "built from runs")
    rows = [(str(d["encoder"]), ", ".join(d["variants"]),  # type: ignore[arg-type]
             *("yes" if d[k] else "no" for k in ("needs_torch", "can_fine_tune", "explains")),
             ", ".join(d["caches"]) or "-", "yes" if d["built_from_runs"] else "no")  # type: ignore[arg-type]
            for d in registry.describe()]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    return 0
