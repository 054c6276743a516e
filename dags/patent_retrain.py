"""
### patent_retrain: rebuild splits, train the variant matrix, evaluate, promote the best

Runs nightly and/or when `patent_ingest` updates the `patentml_patents` Asset
(`PATENTML_RETRAIN_SCHEDULE` = `nightly` | `asset` | `both` | `none`; cron `PATENTML_RETRAIN_CRON`).

1. `rebuild_splits`: the `full`/`subset` snapshot with its stable 80/20 train/test split.
2. `plan_variants`: the variant matrix from the Params (`encoders` x `losses` x `datasets`, or an
   explicit `variants` list), with epochs, batch size, alpha and `model_overrides`.
3. `variant` (mapped task group, one per variant): `train` runs in the **`gpu` pool and queue**
   (`PATENTML_TRAIN_POOL` / `PATENTML_TRAIN_QUEUE`), then `evaluate` stores run, section and label
   metrics. A variant that fails does not stop the others.
4. `promote` runs once every variant is done and at least one succeeded: it compares the best
   challenger with the champion on the same test split and promotes it only when it wins by the
   margin; the decision and its reason land in `promotions`, and failed variants are named.
5. `report`: the leaderboard in the task log; the run is marked failed when a variant failed
   (after promotion), unless `fail_on_variant_failure` is off.

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
            {}, type="object", title="Model overrides",
            description='Extra model settings passed to training, e.g. {"num_filters": 128, "dropout": 0.3}.',
        ),
        "promotion_margin": Param(
            None, type=["null", "number"], minimum=0, exclusiveMaximum=1, title="Promotion margin",
            description="Example-F1 points (0-1) a challenger must win by; empty: PATENTML_PROMOTION_MARGIN.",
        ),
        "only_if_changed": Param(
            CONFIG.only_if_changed, type="boolean", title="Only if the corpus changed",
            description="Skip training when the rebuilt snapshot equals the previous one.",
        ),
        "fail_on_variant_failure": Param(
            True, type="boolean", title="Mark the run failed when a variant failed",
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
    def promote(params: dict, ti=None) -> dict:
        """Promote the best evaluated variant if it beats the champion by the margin; name the failed ones."""
        from airflow.sdk.exceptions import AirflowFailException

        from patentml_airflow.hook import PatentMLHook
        from patentml_airflow.xcom import jsonable, split_outcomes

        specs = ti.xcom_pull(task_ids="plan_variants") or []
        evaluated, failed = split_outcomes(specs, ti.xcom_pull(task_ids=[EVALUATE_TASK]))
        if not evaluated:
            raise AirflowFailException(f"no variant was evaluated (failed: {', '.join(failed) or 'none'})")
        if failed:
            print(f"promoting among {len(evaluated)} of {len(specs)} variants; failed: {', '.join(failed)}")
        settings = PatentMLHook(promotion_margin=params.get("promotion_margin")).get_settings()
        from patentml.promote import promote as decide

        decision = jsonable(
            decide(settings, run_ids=[e["run_id"] for e in evaluated], margin=params.get("promotion_margin"))
        )
        decision["evaluated_variants"] = [e["variant"] for e in evaluated]
        decision["failed_variants"] = failed
        print(f"promotion: {'PROMOTED' if decision.get('promoted') else 'kept champion'}: {decision.get('reason')}")
        return decision

    @task(trigger_rule=TriggerRule.ALL_DONE)
    def report(params: dict, ti=None) -> str:
        """Print the leaderboard and what this run did; fail the run if any step or variant failed."""
        from airflow.sdk.exceptions import AirflowFailException

        from patentml_airflow.hook import PatentMLHook
        from patentml_airflow.xcom import run_outcome

        text, problem = run_outcome(
            ti.xcom_pull(task_ids="plan_variants"),
            ti.xcom_pull(task_ids=[EVALUATE_TASK]),
            ti.xcom_pull(task_ids="promote"),
            fail_on_variant_failure=bool(params.get("fail_on_variant_failure", True)),
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
    decided = promote()
    variant.expand(spec=specs) >> decided >> report()


patent_retrain()
