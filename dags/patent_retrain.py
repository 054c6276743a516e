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
    TriggerRule,
    dag,
    get_current_context,
    task,
    task_group,
)

from patentml_airflow.config import PATENTS_ASSET_NAME, PATENTS_ASSET_URI, DagConfig
from patentml_airflow.params import retrain_params

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
    params=retrain_params(CONFIG),
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
        import socket

        from patentml_airflow.hook import PatentMLHook
        from patentml_airflow.training import training_arguments

        get_current_context()["variant"] = spec["variant"]  # type: ignore[index]
        settings = PatentMLHook(device=spec.get("device")).get_settings()
        kwargs, ignored = training_arguments(spec)
        if ignored:
            print(f"{spec['variant']}: not used by this model, left out: {', '.join(ignored)}")
        from patentml.train import train as train_variant

        # The snapshot this run rebuilt, not a newer one.
        run_id = train_variant(spec["variant"], settings, snapshot_id=spec.get("snapshot_id"), **kwargs)
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
        from patentml_airflow.blend import run_blends
        from patentml_airflow.hook import PatentMLHook
        from patentml_airflow.xcom import split_outcomes

        specs = ti.xcom_pull(task_ids="plan_variants") or []
        evaluated, _ = split_outcomes(specs, ti.xcom_pull(task_ids=[EVALUATE_TASK]))
        hook = PatentMLHook(device=params.get("device"))
        return run_blends(params, specs, evaluated, hook.get_settings(), hook.get_engine())

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
