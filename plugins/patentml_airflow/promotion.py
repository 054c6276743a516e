"""The retrain DAG's promotion steps: decide (held for approval when asked), a person approves, apply, and
publish the champion Asset when the pointer moved.

``promote`` decides and, with the ``approve_promotion`` Param on, uploads and verifies the winner
without moving the pointer. :class:`PromotionApproval` (the standard provider's human-in-the-loop
``ApprovalOperator``) then waits for a person; it skips itself when nothing is held. ``apply``
applies the approved promotion only if the same decision still holds. Imported by the DAG file
at parse time: nothing heavy at module level.
"""

from __future__ import annotations

from typing import Any

from airflow.providers.standard.operators.hitl import ApprovalOperator

PROMOTE_TASK = "promote"
APPROVE_TASK = "approve_promotion"
APPLY_TASK = "apply_promotion"


def final_decision(ti: Any) -> dict[str, Any] | None:
    """What promotion ended with: the applied decision when approval ran, else the first one."""
    return ti.xcom_pull(task_ids=APPLY_TASK) or ti.xcom_pull(task_ids=PROMOTE_TASK)


class PromotionApproval(ApprovalOperator):
    """Approve or reject a held promotion in the UI (Required actions); skipped when nothing is held.

    A rejection is recorded in ``promotions`` (a ``keep`` naming who refused) and skips ``apply``;
    with no answer before ``response_timeout`` the default, Reject, applies.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(
            subject="PatentML: promote {{ ti.xcom_pull(task_ids='promote')['challenger_model_id'] }}?",
            body="{{ ti.xcom_pull(task_ids='promote')['reason'] }}\n\nChampion now: "
                 "{{ ti.xcom_pull(task_ids='promote')['champion_before'] or '(none)' }}",
            defaults="Reject", **kwargs)

    def execute(self, context: Any) -> Any:
        from airflow.sdk.exceptions import AirflowSkipException

        held = context["ti"].xcom_pull(task_ids=PROMOTE_TASK) or {}
        if not held.get("pending"):
            raise AirflowSkipException("no promotion waits for approval (the Param is off, or nothing won)")
        return super().execute(context)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        answer = super().execute_complete(context, event)
        if answer["chosen_options"] != [self.APPROVE]:
            from patentml.promote import reject

            from patentml_airflow.hook import PatentMLHook

            user = answer.get("responded_by_user")
            if isinstance(user, dict):
                user = user.get("name") or user.get("id")
            who = user or "the response timeout"
            held = context["ti"].xcom_pull(task_ids=PROMOTE_TASK)
            hook = PatentMLHook()
            decision = reject(hook.get_settings(), held, str(who), hook.get_engine())
            print(f"promotion rejected by {who}: recorded as promotion {decision['promotion_id']}")
        return answer


def apply(params: dict[str, Any], ti: Any) -> dict[str, Any] | None:
    """Apply an approved held promotion (the same decision must still hold); without one, pass on promote's."""
    held = ti.xcom_pull(task_ids=PROMOTE_TASK)
    if not held or not held.get("pending"):
        return held
    from patentml.promote import promote

    from patentml_airflow.hook import PatentMLHook
    from patentml_airflow.xcom import jsonable

    settings = PatentMLHook(promotion_margin=params.get("promotion_margin")).get_settings()
    run_ids = [c["run_id"] for c in held["candidates"]]
    expect = {"champion_before": held["champion_before"], "challenger_model_id": held["challenger_model_id"]}
    decision = jsonable(promote(settings, run_ids=run_ids, margin=params.get("promotion_margin"), expect=expect))
    for key in ("evaluated_variants", "failed_variants", "failed_blends"):
        decision[key] = held.get(key, [])
    print(f"approved promotion: {'PROMOTED' if decision['promoted'] else 'not applied'}: {decision['reason']}")
    return decision


def publish(outlet_events: Any, asset: Any, ti: Any) -> dict[str, Any]:
    """An event on the champion Asset when the pointer moved (its extra names the model); else skip."""
    from airflow.sdk.exceptions import AirflowSkipException

    decision = final_decision(ti) or {}
    if not decision.get("promoted") or decision.get("champion_after") == decision.get("champion_before"):
        raise AirflowSkipException(f"the champion did not change ({decision.get('champion_after') or 'none'})")
    challenger = decision.get("challenger") or {}
    extra = {"model_id": decision["champion_after"], "previous": decision.get("champion_before"),
             "run_id": decision.get("challenger_run_id"), "variant": challenger.get("variant"),
             "store_uri": decision.get("store_uri"), "promotion_id": decision.get("promotion_id"),
             "snapshot_id": decision.get("snapshot_id")}
    outlet_events[asset].extra = extra
    print(f"champion Asset updated: {extra}")
    return extra
