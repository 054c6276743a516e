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
4. `blend` (default pool and queue, once all variants are done): for each dataset with two or more
   evaluated variants, trains and evaluates `ensemble-<dataset>` of exactly those runs (members and
   weights chosen on validation). A failed blend never blocks promotion; the `blend` Param turns it off.
5. `promote` runs once the variants and the blend are done and at least one variant succeeded: it
   compares the best challenger (blends included) with the champion on the same test split and
   promotes it only when it wins by the margin; the decision and its reason land in `promotions`,
   and failed variants and blends are named. With the `approve_promotion` Param on, a winner is
   uploaded and verified but held: `approve_promotion` waits for a person (Required actions in
   the UI), `apply_promotion` moves the pointer if the decision still holds.
6. `publish_champion` updates the `patentml_champion` Asset when the pointer moved (the event's
   extra names the model); `report`: the leaderboard in the task log; the run is marked failed when
   a variant or a blend failed (after promotion), unless `fail_on_variant_failure` is off.

Artifacts travel through the model store only: a training task uploads its run's candidate
artifact and per-epoch checkpoints; evaluation, blend and promotion fetch by id, on any worker. A
failed training task is retried (`PATENTML_TRAIN_RETRIES`) and resumes the same run from its last
stored epoch; bad settings fail at once. A failed run e-mails `PATENTML_ALERT_EMAILS` (or the `to`
of the `patentml_smtp` Connection), as does a run still going `PATENTML_RETRAIN_DEADLINE_HOURS`
after it was queued. The nightly schedule skips training when the corpus is unchanged; a manual
trigger trains (the `only_if_changed` Param decides when set).

Trigger it by hand from the UI for another matrix: the form validates every Param."""

from __future__ import annotations

import datetime as dt

from airflow.sdk import (Asset, AssetOrTimeSchedule, CronTriggerTimetable, TriggerRule, dag, get_current_context, task,
                         task_group)

from patentml_airflow.alerts import PatentMLAlert, retrain_deadline
from patentml_airflow.config import (CHAMPION_ASSET_NAME, CHAMPION_ASSET_URI, PATENTS_ASSET_NAME, PATENTS_ASSET_URI,
                                     DagConfig)
from patentml_airflow.params import retrain_params
from patentml_airflow.promotion import APPROVE_TASK, PromotionApproval

CONFIG = DagConfig.from_env()
PATENTS = Asset(name=PATENTS_ASSET_NAME, uri=PATENTS_ASSET_URI)
CHAMPION = Asset(name=CHAMPION_ASSET_NAME, uri=CHAMPION_ASSET_URI)
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
    default_args=CONFIG.default_args(retry_minutes=2, backoff=False),
    params=retrain_params(CONFIG),
    on_failure_callback=PatentMLAlert(),
    deadline=retrain_deadline(CONFIG.retrain_deadline_hours),
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
    def plan_variants(snapshot: dict, params: dict, dag_run=None) -> list[dict]:
        """The training specs of this run, one per variant (validated again here, with clear errors)."""
        from patentml_airflow.config import build_variants, skips_unchanged

        if not snapshot.get("changed", True) and skips_unchanged(params.get("only_if_changed"), dag_run.run_type):
            print(f"snapshot {snapshot.get('snapshot_id')} is unchanged and this {dag_run.run_type} run skips an "
                  "unchanged corpus (Param only_if_changed): nothing to train")
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
        retry_delay=dt.timedelta(seconds=CONFIG.train_retry_delay_seconds),
        execution_timeout=dt.timedelta(hours=CONFIG.train_timeout_hours),
        map_index_template="{{ variant }}",
    )
    def train(spec: dict) -> dict:
        """Train one variant on the snapshot; a retry resumes the same run from its last stored epoch."""
        from patentml_airflow.training import run_training

        context = get_current_context()
        context["variant"] = spec["variant"]  # type: ignore[index]
        return run_training(spec, context)

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
        decision = jsonable(decide(settings, run_ids=run_ids, margin=params.get("promotion_margin"),
                                   hold=bool(params.get("approve_promotion"))))
        decision["evaluated_variants"] = [e["variant"] for e in evaluated] + [b["variant"] for b in blends]
        decision["failed_variants"] = failed
        decision["failed_blends"] = [str(b.get("variant")) for b in failed_blends]
        verdict = "HELD for approval" if decision.get("pending") else (
            "PROMOTED" if decision.get("promoted") else "kept champion")
        print(f"promotion: {verdict}: {decision.get('reason')}")
        return decision

    @task(trigger_rule=TriggerRule.NONE_FAILED)
    def apply_promotion(params: dict, ti=None) -> dict | None:
        """Move the pointer for an approved promotion; without one, hand on promote's decision."""
        from patentml_airflow.promotion import apply

        return apply(params, ti)

    @task(outlets=[CHAMPION], trigger_rule=TriggerRule.NONE_FAILED)
    def publish_champion(outlet_events=None, ti=None) -> dict:
        """Update the champion Asset when the pointer moved (the event's extra names the model); else skip."""
        from patentml_airflow.promotion import publish

        return publish(outlet_events, CHAMPION, ti)

    @task(trigger_rule=TriggerRule.ALL_DONE)
    def report(params: dict, ti=None) -> str:
        """Print the leaderboard and what this run did; fail the run if any step, variant or blend failed."""
        from airflow.sdk.exceptions import AirflowFailException

        from patentml_airflow.hook import PatentMLHook
        from patentml_airflow.promotion import final_decision
        from patentml_airflow.xcom import run_outcome

        text, problem = run_outcome(
            ti.xcom_pull(task_ids="plan_variants"),
            ti.xcom_pull(task_ids=[EVALUATE_TASK]),
            final_decision(ti),
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
    approval = PromotionApproval(task_id=APPROVE_TASK,
                                 response_timeout=dt.timedelta(hours=CONFIG.approval_timeout_hours))
    variants >> blend() >> decided >> approval >> apply_promotion() >> publish_champion() >> report()
    variants >> decided  # also straight from the variants: a crashed blend task cannot hold promotion back


patent_retrain()
