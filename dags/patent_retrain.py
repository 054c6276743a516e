"""
### patent_retrain: rebuild splits, train the variant matrix, evaluate, blend, promote the best

Runs nightly and/or when `patent_ingest` updates the `patentml_patents` Asset
(`PATENTML_RETRAIN_SCHEDULE` = `nightly` | `asset` | `both` | `none`; cron `PATENTML_RETRAIN_CRON`).

1. `rebuild_splits`: the `full`/`subset` snapshot with its stable 80/20 train/test split.
2. `plan_variants`: the variant matrix from the Params (`encoders` x `losses` x `datasets`, or an
   explicit `variants` list), with epochs, batch size, alpha and `model_overrides`.
3. `variant` (mapped task group, one per variant): `train` runs in the **`gpu` pool and queue**
   (`PATENTML_TRAIN_POOL` / `PATENTML_TRAIN_QUEUE`), then `evaluate` stores run, section and label
   metrics. A variant that fails does not stop the others.
4. `blend` (default pool and queue) runs once every variant is done and at least one succeeded:
   for each dataset with at least two evaluated variants it trains `ensemble-<dataset>`, a
   score-level blend of exactly those runs (the ensemble chooses its members and weights on the
   validation split), and evaluates it. A blend that fails is reported, never blocks promotion.
   The `blend` Param (default `PATENTML_RETRAIN_BLEND`, true) turns it off.
5. `promote` runs once the variants and the blend are done and at least one variant succeeded: it
   compares the best challenger (blends included) with the champion on the same test split and
   promotes it only when it wins by the margin; the decision and its reason land in `promotions`,
   and failed variants and blends are named.
6. `report`: the leaderboard in the task log; the run is marked failed when a variant or a blend
   failed (after promotion), unless `fail_on_variant_failure` is off.

Trigger it by hand from the UI for another matrix: the form validates every Param.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import (
    Asset,
    AssetOrTimeSchedule,
    CronTriggerTimetable,
    Param,
    TriggerRule,
    dag,
    get_current_context,
    task,
    task_group,
)

from patentml_airflow.config import (
    DATASETS,
    ENCODERS,
    LOSSES,
    PATENTS_ASSET_NAME,
    PATENTS_ASSET_URI,
    VARIANT_PATTERN,
    DagConfig,
    overrides_for,
)

CONFIG = DagConfig.from_env()
PATENTS = Asset(name=PATENTS_ASSET_NAME, uri=PATENTS_ASSET_URI)
NIGHTLY = CronTriggerTimetable(CONFIG.retrain_cron, timezone=CONFIG.timezone)
SCHEDULE = {
    "nightly": NIGHTLY,
    "asset": [PATENTS],
    "both": AssetOrTimeSchedule(timetable=NIGHTLY, assets=[PATENTS]),
    "none": None,
}[CONFIG.retrain_schedule]
EVALUATE_TASK = "variant.evaluate"
BLEND_TASK = "blend"


def _array(default: list[str], allowed: tuple[str, ...], title: str, description: str) -> Param:
    return Param(
        default,
        type="array",
        items={"type": "string", "enum": list(allowed)},
        uniqueItems=True,
        title=title,
        description=description,
    )


@dag(
    dag_id="patent_retrain",
    schedule=SCHEDULE,
    # No start_date: unpausing does not start a (long, GPU-hungry) run for the last missed 02:00;
    # the first scheduled run is the next one. Trigger by hand to train right away.
    catchup=False,
    max_active_runs=1,
    tags=["patentml", "training"],
    doc_md=__doc__,
    default_args={
        "owner": "patentml",
        "retries": CONFIG.task_retries,
        "retry_delay": dt.timedelta(minutes=2),
    },
    params={
        "variants": Param(
            CONFIG.default_variants,
            type="array",
            items={"type": "string", "pattern": VARIANT_PATTERN},
            uniqueItems=True,
            title="Variants",
            description="Exact variants to train, e.g. glove-wbce-full, bert-bce-subset, tfidf-full. "
            "Empty: the matrix of encoders x losses x datasets below.",
        ),
        "encoders": _array(["glove", "bert"], ENCODERS, "Encoders", "Used when 'variants' is empty."),
        "losses": _array(["bce", "wbce"], LOSSES, "Losses", "bce or weighted bce (wbce); tfidf takes none."),
        "datasets": _array(["full"], DATASETS, "Datasets", "full (USPTO-2M-like) and/or the 15 % subset."),
        "epochs": Param(
            None, type=["null", "integer"], minimum=1, maximum=500, title="Epochs",
            description="Empty: the library default (paper: 20, with early stopping).",
        ),
        "batch_size": Param(
            None, type=["null", "integer"], minimum=1, maximum=65536, title="Batch size",
            description="Empty: the library default.",
        ),
        "alpha": Param(
            2.0, type="number", exclusiveMinimum=0, maximum=100, title="Alpha (weighted BCE)",
            description="Weight of the positive term for the wbce loss (paper: 2).",
        ),
        "seed": Param(0, type="integer", minimum=0, title="Seed"),
        "device": Param(
            None, type=["null", "string"], enum=[None, "auto", "cpu", "cuda"], title="Device",
            description="Empty: PATENTML_DEVICE (auto uses CUDA when present).",
        ),
        "model_overrides": Param(
            CONFIG.default_overrides, type="object", title="Model overrides",
            description='Extra model settings passed to training, e.g. {"num_filters": 128, "dropout": 0.3}; '
            'a key naming an encoder or variant scopes its settings, e.g. {"glove": {"trainable_embeddings": true}}.',
        ),
        "promotion_margin": Param(
            None, type=["null", "number"], minimum=0, exclusiveMaximum=1, title="Promotion margin",
            description="Example-F1 points (0-1) a challenger must win by; empty: PATENTML_PROMOTION_MARGIN.",
        ),
        "only_if_changed": Param(
            CONFIG.only_if_changed, type="boolean", title="Only if the corpus changed",
            description="Skip training when the rebuilt snapshot equals the previous one.",
        ),
        "blend": Param(
            CONFIG.blend, type="boolean", title="Blend the variants",
            description="After evaluation, train and evaluate ensemble-<dataset>, a score-level blend of the "
            "runs evaluated in this run (for each dataset with at least two), and let it compete for promotion. "
            "Default: PATENTML_RETRAIN_BLEND.",
        ),
        "fail_on_variant_failure": Param(
            True, type="boolean", title="Mark the run failed when a variant or the blend failed",
            description="Promotion still runs on the variants that finished.",
        ),
    },
)
def patent_retrain() -> None:
    @task
    def rebuild_splits() -> dict:
        """Rebuild the dataset snapshot (a no-op when the corpus is unchanged)."""
        from patentml_airflow.hook import PatentMLHook
        from patentml_airflow.xcom import jsonable

        hook = PatentMLHook()
        from patentml.splits import rebuild_splits as rebuild

        result = jsonable(rebuild(hook.get_engine(), hook.get_settings()))
        print(f"snapshot: {result}")
        return result

    @task
    def plan_variants(snapshot: dict, params: dict) -> list[dict]:
        """The training specs of this run, one per variant (validated again here, with clear errors)."""
        from patentml_airflow.config import build_variants

        if params.get("only_if_changed") and not snapshot.get("changed", True):
            print(f"snapshot {snapshot.get('snapshot_id')} is unchanged and only_if_changed is set: nothing to train")
            return []
        specs = build_variants(params)
        for spec in specs:
            spec["snapshot_id"] = snapshot.get("snapshot_id")
        print("variants: " + ", ".join(s["variant"] for s in specs))
        return specs

    @task(
        pool=CONFIG.train_pool,
        queue=CONFIG.train_queue,
        retries=CONFIG.train_retries,
        retry_delay=dt.timedelta(minutes=10),
        execution_timeout=dt.timedelta(hours=CONFIG.train_timeout_hours),
        map_index_template="{{ variant }}",
    )
    def train(spec: dict) -> dict:
        """Train one variant on the snapshot; the run row says how it went, also when it fails."""
        import inspect
        import socket

        from patentml_airflow.hook import PatentMLHook
        from patentml_airflow.training import training_arguments

        get_current_context()["variant"] = spec["variant"]  # type: ignore[index]
        settings = PatentMLHook(device=spec.get("device")).get_settings()
        kwargs, ignored = training_arguments(spec)
        if ignored:
            print(f"{spec['variant']}: not used by this model, left out: {', '.join(ignored)}")
        from patentml.train import train as train_variant

        if spec.get("snapshot_id") is not None and "snapshot_id" in inspect.signature(train_variant).parameters:
            kwargs["snapshot_id"] = spec["snapshot_id"]  # the snapshot this run rebuilt, not a newer one
        run_id = train_variant(spec["variant"], settings, **kwargs)
        print(f"{spec['variant']}: run {run_id} trained on {socket.gethostname()}")
        return {"variant": spec["variant"], "run_id": int(run_id), "host": socket.gethostname()}

    @task(map_index_template="{{ variant }}")
    def evaluate(trained: dict) -> dict:
        """Score the run on the test split; stores run, section and label metrics."""
        from patentml_airflow.hook import PatentMLHook
        from patentml_airflow.xcom import headline

        get_current_context()["variant"] = trained["variant"]  # type: ignore[index]
        hook = PatentMLHook()
        from patentml.evaluate import evaluate_run

        metrics = evaluate_run(hook.get_engine(), trained["run_id"], hook.get_settings())
        result = {**trained, "metrics": headline(metrics)}
        print(f"{trained['variant']} (run {trained['run_id']}): {result['metrics']}")
        return result

    @task_group(group_id="variant")
    def variant(spec: dict) -> None:
        evaluate(train(spec))

    @task(trigger_rule=TriggerRule.ALL_DONE_MIN_ONE_SUCCESS)
    def blend(params: dict, ti=None) -> list[dict]:
        """Blend each dataset's evaluated runs into ensemble-<dataset>, train and evaluate it.

        Returns one outcome per blend, shaped like evaluate's (plus ``members``); a blend that fails
        carries an ``error`` instead of metrics, and the task still succeeds so promotion runs.
        """
        if not params.get("blend", True):
            print("blend: skipped (the 'blend' Param is off)")
            return []
        import socket
        import traceback

        from patentml_airflow.hook import PatentMLHook
        from patentml_airflow.xcom import BLEND_PREFIX, blend_groups, headline, split_outcomes

        specs = ti.xcom_pull(task_ids="plan_variants") or []
        evaluated, _ = split_outcomes(specs, ti.xcom_pull(task_ids=[EVALUATE_TASK]))
        groups = blend_groups(evaluated)
        if not groups:
            print("blend: nothing to blend, no dataset has two evaluated variants (evaluated: "
                  f"{', '.join(e['variant'] for e in evaluated) or 'none'})")
            return []
        snapshot_id = next((s["snapshot_id"] for s in specs if s.get("snapshot_id") is not None), None)
        hook = PatentMLHook(device=params.get("device"))
        settings, engine = hook.get_settings(), hook.get_engine()
        from patentml.evaluate import evaluate_run
        from patentml.train import train as train_variant
        from patentml.variants import parse_variant

        outcomes = []
        for dataset, members in groups.items():
            name = BLEND_PREFIX + dataset
            member_runs = [int(m["run_id"]) for m in members]
            outcome: dict = {"variant": name, "members": member_runs, "host": socket.gethostname()}
            try:
                # Ensemble settings from model_overrides (weight_step, max_members, ...); not the members.
                known = set(parse_variant(name).backend_class().DEFAULTS) - {"members", "member_runs"}
                extra = {k: v for k, v in overrides_for(params.get("model_overrides") or {}, name).items()
                         if k in known}
                print(f"{name}: blending runs {', '.join(map(str, member_runs))} "
                      f"({', '.join(m['variant'] for m in members)})"
                      + (f" with {extra}" if extra else ""))
                run_id = train_variant(name, settings, overrides={**extra, "member_runs": member_runs},
                                       seed=int(params.get("seed") or 0), snapshot_id=snapshot_id)
                outcome["run_id"] = int(run_id)
                outcome["metrics"] = headline(evaluate_run(engine, run_id, settings))
                print(f"{name} (run {run_id}): {outcome['metrics']}")
            except Exception as exc:  # noqa: BLE001 - a failed blend is reported; promotion goes on without it
                outcome["error"] = f"{type(exc).__name__}: {exc}"
                print(f"BLEND FAILED: {name} of runs {', '.join(map(str, member_runs))}: {outcome['error']}\n"
                      f"{traceback.format_exc()}"
                      "promotion goes on among the single variants; report will mark the run failed")
            outcomes.append(outcome)
        return outcomes

    @task(trigger_rule=TriggerRule.ALL_DONE_MIN_ONE_SUCCESS)
    def promote(params: dict, ti=None) -> dict:
        """Promote the best evaluated variant or blend if it beats the champion by the margin; name the failed ones."""
        from airflow.sdk.exceptions import AirflowFailException

        from patentml_airflow.hook import PatentMLHook
        from patentml_airflow.xcom import jsonable, split_blends, split_outcomes

        specs = ti.xcom_pull(task_ids="plan_variants") or []
        evaluated, failed = split_outcomes(specs, ti.xcom_pull(task_ids=[EVALUATE_TASK]))
        if not evaluated:
            raise AirflowFailException(f"no variant was evaluated (failed: {', '.join(failed) or 'none'})")
        if failed:
            print(f"promoting among {len(evaluated)} of {len(specs)} variants; failed: {', '.join(failed)}")
        blends, failed_blends = split_blends(ti.xcom_pull(task_ids=BLEND_TASK))
        if blends:
            print("blends among the candidates: " + ", ".join(f"{b['variant']} (run {b['run_id']})" for b in blends))
        if failed_blends:
            print("blends that failed, left out: " + ", ".join(str(b.get("variant")) for b in failed_blends))
        settings = PatentMLHook(promotion_margin=params.get("promotion_margin")).get_settings()
        from patentml.promote import promote as decide

        run_ids = [e["run_id"] for e in evaluated] + [b["run_id"] for b in blends]
        decision = jsonable(decide(settings, run_ids=run_ids, margin=params.get("promotion_margin")))
        decision["evaluated_variants"] = [e["variant"] for e in evaluated] + [b["variant"] for b in blends]
        decision["failed_variants"] = failed
        decision["failed_blends"] = [str(b.get("variant")) for b in failed_blends]
        print(f"promotion: {'PROMOTED' if decision.get('promoted') else 'kept champion'}: {decision.get('reason')}")
        return decision

    @task(trigger_rule=TriggerRule.ALL_DONE)
    def report(params: dict, ti=None) -> str:
        """Print the leaderboard and what this run did; fail the run if any step, variant or blend failed."""
        from airflow.sdk.exceptions import AirflowFailException

        from patentml_airflow.hook import PatentMLHook
        from patentml_airflow.xcom import run_outcome

        text, problem = run_outcome(
            ti.xcom_pull(task_ids="plan_variants"),
            ti.xcom_pull(task_ids=[EVALUATE_TASK]),
            ti.xcom_pull(task_ids="promote"),
            fail_on_variant_failure=bool(params.get("fail_on_variant_failure", True)),
            blends=ti.xcom_pull(task_ids=BLEND_TASK),
            blend=bool(params.get("blend", True)),
        )
        try:
            hook = PatentMLHook()
            from patentml.report import leaderboard_markdown

            text = leaderboard_markdown(hook.get_engine(), limit=20) + "\n\n" + text
        except Exception as exc:  # noqa: BLE001 - the verdict below matters more than the table
            text += f"\n(leaderboard unavailable: {exc})"
        print(text)
        if problem:
            raise AirflowFailException(problem)
        return text

    specs = plan_variants(rebuild_splits())
    variants = variant.expand(spec=specs)
    decided = promote()
    variants >> blend() >> decided >> report()
    # Also straight from the variants: if the blend task itself crashes, promotion still runs on them.
    variants >> decided


patent_retrain()
