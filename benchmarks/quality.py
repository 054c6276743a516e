"""Quality levers of issue 15, chosen on validation and read on the CPC-labelled part of the test split.

Unseen CPC patents look like the CPC-labelled test patents (the IPC-labelled ones read several points
higher), so every lever is *chosen* on validation and *reported* on test-CPC, which no choice saw.
It loads the finished runs of one snapshot (the latest succeeded run of each variant in --variants) and
scores validation and test once per run; the rest is arithmetic on those scores:

* blend: members and weights picked greedily (``select_members``, as ensemble-full does) on all of
  validation or on its CPC-labelled part only;
* rule: the global threshold with the top label kept, chosen on all or on CPC validation; and a
  per-patent rule that also keeps every label scoring at least ``r`` times the patent's top score;
* IPC weighting in the kNN vote: the votes of IPC-labelled neighbours multiplied by ``w`` (0 = CPC
  neighbours only, 1 = today's vote);
* ``--runs``: finished runs (a blend with and without its re-ranker, say) as they were trained, each
  under its own decision rule.

    PATENTML_HOME=/tmp/after/home PYTHONPATH=$PWD .venv/bin/python benchmarks/quality.py --runs 5,6
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from patentml.decision import TOP_RATIOS, describe_rule

VARIANTS = "tfidf-svm-full,embed-linear-full,embed-knn-full,glove-wbce-full"
IPC_WEIGHTS = (0.0, 0.25, 0.5, 1.0)


def relative_rule(threshold: float, ratio: float) -> Any:
    """Labels at or above ``threshold`` or ``ratio`` x the patent's top score, the top label always."""
    from patentml.decision import DecisionRule

    return DecisionRule(threshold=threshold, keep_top=True, top_ratio=ratio)


def choose(truth: np.ndarray, scores: np.ndarray, ratios: tuple[float, ...]) -> tuple[float, float, float]:
    """(threshold, ratio, F1) of the best relative rule on these rows (ties: the earlier ratio)."""
    from patentml.decision import TIE_EPS
    from patentml.metrics import choose_threshold

    best = (0.5, 0.0, -1.0)
    for r in ratios:
        t, f1 = choose_threshold(truth, scores, keep_top=True, top_ratio=r)
        if f1 > best[2] + TIE_EPS:
            best = (t, r, f1)
    return best


def f1_of(truth: np.ndarray, scores: np.ndarray, rule: Any) -> float:
    from patentml.metrics import example_prf

    return example_prf(truth, rule.apply(scores))["f1"]


def report(truth: np.ndarray, scores: np.ndarray, rule: Any) -> str:
    """F1 under ``rule`` (a DecisionRule), P@1 and R@5 (which no rule changes)."""
    from patentml.metrics import at_k

    ranked = at_k(truth, scores, ks=(1, 5))
    return f"{100 * f1_of(truth, scores, rule):5.1f} | {100 * ranked['p@1']:5.1f} | {100 * ranked['r@5']:5.1f}"


def knn_ipc_scores(backend: Any, texts: list[str], ipc_rows: np.ndarray, weight: float) -> np.ndarray:
    """The kNN's label scores with IPC-labelled memory rows' votes multiplied by ``weight``."""
    from patentml.ann import nearest_rows
    from patentml.knn import vote

    tw = float(backend.setting("text_weight"))
    idx, sims = nearest_rows(backend._vectors(texts), backend._index(), int(backend.setting("k")),
                             backend.features.transform(texts) if tw > 0 else None, backend.text_memory, tw)
    return vote(idx, sims, backend.memory_labels, float(backend.setting("power")), np.where(ipc_rows, weight, 1.0))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default=VARIANTS)
    ap.add_argument("--runs", default="", help="comma-separated run ids to report as trained, under their own rule")
    args = ap.parse_args(argv)

    from sqlalchemy import text

    from patentml.db.engine import get_engine
    from patentml.embedcache import PgEmbeddingCache
    from patentml.labels import multi_hot
    from patentml.runstore import run_artifact
    from patentml.settings import get_settings
    from patentml.splits import iter_split, latest_snapshot
    from patentml.variants.base import load_backend
    from patentml.variants.ensemble import select_members

    engine = get_engine(get_settings())
    sid = latest_snapshot(engine)
    with engine.connect() as conn:
        scheme = dict(conn.execute(text("SELECT patent_id, label_scheme FROM snapshot_members WHERE snapshot_id = :s"),
                                   {"s": sid}).all())
        runs = {}
        for variant in args.variants.split(","):
            run_id = conn.execute(text("SELECT max(run_id) FROM runs WHERE variant = :v AND status = 'succeeded' "
                                       "AND snapshot_id = :s"), {"v": variant, "s": sid}).scalar()
            if run_id is not None:
                runs[variant] = int(run_id)
    backends = {v: load_backend(run_artifact(engine, r)) for v, r in runs.items()}
    as_trained = {f"run {r}": load_backend(run_artifact(engine, int(r))) for r in args.runs.split(",") if r}
    for backend in [*backends.values(), *as_trained.values()]:
        backend.embedding_cache = PgEmbeddingCache(engine)  # the vectors the runs encoded
    labels = next(iter(backends.values())).labels
    data = {}
    for split in ("valid", "test"):
        rows = list(iter_split(engine, sid, "full", split))
        truth = multi_hot([ls for _, _, ls in rows], labels) > 0
        cpc = np.array([scheme[pid] == "CPC" for pid, _, _ in rows])
        texts = [t for _, t, _ in rows]
        scores = {v: b.predict_scores(texts) for v, b in {**backends, **as_trained}.items()}
        data[split] = (truth, cpc, texts, scores)
        print(f"{split}: {len(rows):,} patents, {cpc.sum():,} CPC-labelled")
    (tv, cv, textv, sv), (tt, ct, textt, st) = data["valid"], data["test"]

    print("\n| lever | chosen on | choice | test-CPC F1 | P@1 | R@5 | test-all F1 |")
    print("|---|---|---|---:|---:|---:|---:|")

    def row(name: str, on: str, choice: str, s_test: np.ndarray, rule: Any) -> None:
        print(f"| {name} | {on} | {choice} | {report(tt[ct], s_test[ct], rule)} | "
              f"{100 * f1_of(tt, s_test, rule):5.1f} |", flush=True)

    for name, backend in as_trained.items():
        row(f"{name} ({backend.name}{', re-ranked' if getattr(backend, 'trees', None) else ''})", "all",
            describe_rule(backend.decision), st[name], backend.decision)
    for v in backends:
        for on, mask in (("all", slice(None)), ("CPC", cv)):
            t, _, _ = choose(tv[mask], sv[v][mask], (0.0,))
            row(v, on, f"t={t:.2f}", st[v], relative_rule(t, 0.0))
    names = list(backends)
    for on, mask in (("all", slice(None)), ("CPC", cv)):
        chosen, weights, _ = select_members(tv[mask], [sv[n][mask] for n in names], 0.1, 4, 0.001)
        blend_v = sum(w * sv[names[i]] for i, w in zip(chosen, weights))
        blend_t = sum(w * st[names[i]] for i, w in zip(chosen, weights))
        desc = " + ".join(f"{w:.1f} {names[i]}" for i, w in zip(chosen, weights))
        for ratios, what in (((0.0,), "threshold"), (TOP_RATIOS, "threshold or r x top")):
            t, r, _ = choose(tv[mask], blend_v[mask], ratios)
            row(f"blend, {what}", on, f"{desc}; t={t:.2f} r={r:.1f}", blend_t, relative_rule(t, r))
    if "embed-knn-full" in backends:
        knn = backends["embed-knn-full"]
        ipc_rows = np.array([scheme.get(pid) == "IPC" for pid in knn.memory_ids])
        for w in IPC_WEIGHTS:
            kv, kt = knn_ipc_scores(knn, textv, ipc_rows, w), knn_ipc_scores(knn, textt, ipc_rows, w)
            t, _, _ = choose(tv[cv], kv[cv], (0.0,))
            row("kNN, IPC votes x w", "CPC", f"w={w:.2f}; t={t:.2f}", kt, relative_rule(t, 0.0))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
