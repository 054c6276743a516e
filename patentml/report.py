"""The paper's tables from the database, as markdown: Table 1 (P/R/F1), 2 (P@1, R@5), 3 (sections), 4 (co-occurrence)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from patentml.decision import PAPER, describe_rule
from patentml.exceptions import DataError

if TYPE_CHECKING:
    import numpy as np
    from sqlalchemy.engine import Engine

#: The paper's own numbers (Tables 1 and 2), shown beside ours.
PAPER_TABLE1 = {
    ("glove", "bce", "full"): (74.6, 45.1, 56.2),
    ("glove", "wbce", "full"): (62.4, 56.3, 59.2),
    ("bert", "bce", "full"): (76.1, 40.1, 52.5),
    ("bert", "wbce", "full"): (63.9, 52.6, 57.8),
    ("glove", "bce", "subset"): (73.3, 41.1, 52.7),
    ("glove", "wbce", "subset"): (67.3, 50.6, 56.2),
    ("bert", "bce", "subset"): (74.4, 41.4, 53.2),
    ("bert", "wbce", "subset"): (58.9, 54.8, 56.8),
}
PAPER_TABLE2 = {
    ("glove", "bce", "full"): (66.6, 83.2),
    ("glove", "wbce", "full"): (66.1, 83.3),
    ("bert", "bce", "full"): (63.9, 80.3),
    ("bert", "wbce", "full"): (63.9, 80.7),
    ("glove", "bce", "subset"): (67.6, 77.5),
    ("glove", "wbce", "subset"): (67.3, 77.8),
    ("bert", "bce", "subset"): (68.6, 77.7),
    ("bert", "wbce", "subset"): (68.1, 77.4),
}
PAPER_TABLE3 = {"A": (59, 71, 65), "B": (31, 61, 41), "C": (43, 58, 50), "D": (25, 64, 36), "E": (32, 69, 43),
                "F": (38, 58, 46), "G": (56, 69, 62), "H": (55, 62, 58)}

def _pct(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.1f}"


def _rows(engine: "Engine", snapshot_id: int, rule: str | None = None) -> list[dict[str, Any]]:
    """The latest evaluated run of each variant on a snapshot with its score (``rule``: another rule's rows)."""
    from patentml.db import results
    from patentml.splits import snapshot_stats

    n_labels = {s["dataset"]: s["n_labels"] for s in snapshot_stats(engine, snapshot_id) if s["split"] == "train"}
    with engine.connect() as conn:
        rows = results.run_scores(conn, snapshot_id=snapshot_id, latest_per_variant=True, rule=rule)
    order = {"full": 0, "subset": 1}
    for r in rows:
        r["n_labels"] = n_labels.get(r["dataset"])
    return sorted(rows, key=lambda r: (order.get(r["dataset"], 2), r["encoder"], r["loss"] or ""))


def _paper(table: dict[tuple[str, str, str], tuple[float, ...]], row: dict[str, Any]) -> tuple[float, ...] | None:
    return table.get((row["encoder"], row["loss"] or "", row["dataset"]))


def table1(engine: "Engine", snapshot_id: int) -> str:
    lines = [
        "| Model | Loss | Corpus | Labels | P (%) | R (%) | F1 | run's rule | P | R | F1 | paper P | paper R | paper F1 |",
        "|---|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    own = {r["variant"]: r for r in _rows(engine, snapshot_id)}
    for r in _rows(engine, snapshot_id, PAPER):
        t = own.get(r["variant"], {})
        paper = _paper(PAPER_TABLE1, r) or ("", "", "")
        lines.append(
            f"| {r['encoder']} | {r['loss'] or '-'} | {r['dataset']} | {r['n_labels']} | {_pct(r['precision'])} | "
            f"{_pct(r['recall'])} | {_pct(r['f1'])} | {t.get('rule', '')} | {_pct(t.get('precision'))} | "
            f"{_pct(t.get('recall'))} | {_pct(t.get('f1'))} | {paper[0]} | {paper[1]} | {paper[2]} |"
        )
    return "\n".join(lines)


def table2(engine: "Engine", snapshot_id: int) -> str:
    lines = ["| Model | Loss | Corpus | P@1 (%) | R@5 (%) | paper P@1 | paper R@5 |", "|---|---|---|---:|---:|---:|---:|"]
    for r in _rows(engine, snapshot_id):
        paper = _paper(PAPER_TABLE2, r) or ("", "")
        lines.append(
            f"| {r['encoder']} | {r['loss'] or '-'} | {r['dataset']} | {_pct(r['p_at_1'])} | {_pct(r['r_at_5'])} | "
            f"{paper[0]} | {paper[1]} |"
        )
    return "\n".join(lines)


def best_run(engine: "Engine", snapshot_id: int) -> dict[str, Any] | None:
    """The best run by its score, on the full corpus when there is one."""
    rows = _rows(engine, snapshot_id)
    rows = [r for r in rows if r["dataset"] == "full"] or rows
    return min(rows, key=lambda r: (-r["f1"], -r["p_at_1"], r["run_id"]), default=None)


def table3(engine: "Engine", snapshot_id: int, run_id: int | None = None) -> str:
    from patentml.db import results

    if run_id is None:
        best = best_run(engine, snapshot_id)
        if best is None:
            return "_no evaluated run_"
        run_id = best["run_id"]
    with engine.connect() as conn:
        rows = results.section_scores(conn, run_id)
    lines = [f"Run {run_id}, under its own decision rule.", "",
             "| Section | Recall | Precision | F1 | Patents | paper R | paper P | paper F1 |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        paper = PAPER_TABLE3.get(r["section"], ("", "", ""))
        lines.append(f"| {r['section']} | {r['recall']:.2f} | {r['precision']:.2f} | {r['f1']:.2f} | "
                     f"{r['n_patents']:,} | {paper[0]} | {paper[1]} | {paper[2]} |")
    return "\n".join(lines)


def table4(engine: "Engine", label: str, run_id: int) -> str:
    """Labels co-occurring with ``label`` in truth and in predictions (paper Table 4), from stored predictions."""
    from patentml.db import results

    titles = {"truth": f"y-test with {label}", "predicted": f"y-pred with {label} predicted",
              "correct": f"{label} predicted correctly", "incorrect": f"{label} predicted incorrectly",
              "missed": f"{label} missed (true, not predicted)"}
    out = [f"Run {run_id}: labels co-occurring with {label} (counts of patents).", ""]
    with engine.connect() as conn:
        for group, title in titles.items():
            rows = results.cooccurring(conn, run_id, label, group)
            out.append(f"| {title} | " + " | ".join(f"{l} {n}" for l, n in rows) + " |")
            if len(out) == 3:
                out.append("|---|" + "---|" * 10)
    return "\n".join(out)


def leaderboard_markdown(engine: "Engine", limit: int = 20, snapshot_id: int | None = None) -> str:
    """Evaluated runs, best first by their score (each run's own decision rule)."""
    from patentml.db import results

    with engine.connect() as conn:
        rows = results.run_scores(conn, snapshot_id=snapshot_id, limit=limit)
    lines = ["| Run | Variant | Snapshot | P | R | F1 | P@1 | R@5 | empty | rule | train s |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        rule = describe_rule(r)
        lines.append(
            f"| {r['run_id']} | {r['variant']} | {r['snapshot_id']} | {_pct(r['precision'])} | {_pct(r['recall'])} | "
            f"{_pct(r['f1'])} | {_pct(r['p_at_1'])} | {_pct(r['r_at_5'])} | {_pct(r['empty_share'])} | {rule} | "
            f"{(r['train_seconds'] or 0):.0f} |"
        )
    return "\n".join(lines)


def full_report(engine: "Engine", label: str | None = None, snapshot_id: int | None = None) -> str:
    from patentml.splits import format_stats, latest_snapshot, snapshot_stats

    snapshot_id = snapshot_id or latest_snapshot(engine)
    parts = [
        f"# PatentML report (snapshot {snapshot_id})", "", "## Data", "", format_stats(snapshot_stats(engine, snapshot_id)),
        "", "## Table 1: models and example-based metrics (threshold 0.5, and each run's own rule)", "",
        table1(engine, snapshot_id), "", "## Table 2: ranked metrics", "", table2(engine, snapshot_id), "",
        "## Table 3: by CPC section (best full-corpus run)", "", table3(engine, snapshot_id),
    ]
    if label:
        best = best_run(engine, snapshot_id)
        if best is not None:
            parts += ["", f"## Table 4: co-occurrence for {label}", "", table4(engine, label.upper(), best["run_id"])]
    return "\n".join(parts)


# --- is a difference real? ----------------------------------------------------------------------


def per_patent_scores(engine: "Engine", run_id: int) -> dict[str, tuple[float, float]]:
    """Per test patent: (example F1 of the stored decisions, P@1 of the top stored score), from ``predictions``."""
    from patentml.db import results

    with engine.connect() as conn:
        rows = results.stored_predictions(conn, run_id)
    if not rows:
        raise DataError(f"run {run_id} has no stored predictions: evaluate it first (patentml evaluate {run_id})")
    out = {}
    for pid, truth, pred, top in rows:
        t, p = set(truth), set(pred)
        denom = len(t) + len(p)
        f1 = 2 * len(t & p) / denom if denom and t else 0.0
        best = max(top.items(), key=lambda kv: kv[1])[0] if top else None
        out[pid] = (f1, 1.0 if best in t else 0.0)
    return out


def paired_bootstrap(a: "np.ndarray", b: "np.ndarray", n: int = 2000, seed: int = 0) -> dict[str, float]:
    """Mean of ``a - b`` over patents and its 95 % interval from ``n`` bootstrap resamples of the patents."""
    import numpy as np

    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(n, len(diff)))].mean(axis=1)
    return {"diff": float(diff.mean()), "low": float(np.percentile(means, 2.5)),
            "high": float(np.percentile(means, 97.5)), "sd": float(means.std())}


def compare_runs(engine: "Engine", run_a: int, run_b: int, n: int = 2000) -> str:
    """Markdown: how much run A beats run B on the test patents both scored, with bootstrap intervals."""
    import numpy as np

    a, b = per_patent_scores(engine, run_a), per_patent_scores(engine, run_b)
    common = sorted(set(a) & set(b))
    if not common:
        raise DataError(f"runs {run_a} and {run_b} share no test patents")
    lines = [f"Run {run_a} minus run {run_b} on {len(common):,} test patents ({n:,} paired bootstrap resamples):", "",
             "| metric | A | B | A - B | 95 % interval | sd |", "|---|---:|---:|---:|---|---:|"]
    for k, name in ((0, "example F1"), (1, "P@1")):
        xa = np.asarray([a[p][k] for p in common])
        xb = np.asarray([b[p][k] for p in common])
        s = paired_bootstrap(xa, xb, n)
        lines.append(f"| {name} | {_pct(xa.mean())} | {_pct(xb.mean())} | {100 * s['diff']:+.1f} | "
                     f"{100 * s['low']:+.1f} .. {100 * s['high']:+.1f} | {100 * s['sd']:.1f} |")
    return "\n".join(lines)
