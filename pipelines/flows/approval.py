"""A person approves or rejects a promotion the gate decided (``require_approval``).

* ``approval_body``: the evidence, in Markdown, shown on the Airflow "Required Actions" page and
  printed by the CLI: both macro-recalls with the CI, the categories that gain and lose most, the data
  and its validation, the behavioural checks, the shadow agreement when there is one, and links to
  the model card and the gate decision.
* ``approval_operator``: the Airflow task that waits for the answer (``ApprovalOperator`` of the
  standard provider, Airflow >= 3.1). Its answer is applied by ``registry.respond`` (the same function
  ``python -m pipelines registry approve|reject`` calls): Approve moves ``champion``; Reject, or no
  answer within ``MELI_APPROVAL_TIMEOUT_H`` hours, keeps the champion.

Who may answer (``MELI_APPROVERS``, ``hitl_assignees``): the listed Airflow users are the task's
``assigned_users``; the user who triggered the run is left out when another approver remains (four
eyes; a lone approver answers their own run, with a warning); with no list, any user allowed on the DAG
answers (a warning in the task log). The CLI answers as the OS login of its effective uid
(``os_identity``), which must be in the list when there is one (``check_approver``).
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta
from urllib.parse import quote

from pipelines.settings import Settings

SUBJECT = "Promote {name} v{version} to champion?"

log = logging.getLogger(__name__)


def os_identity() -> str:
    """Who the CLI runs as: the login name of the effective uid (never $USER/$LOGNAME, which anyone
    sets); ``uid:N`` when the uid has no passwd entry (a container's arbitrary uid)."""
    try:
        import pwd
    except ImportError:  # not POSIX
        import getpass

        return getpass.getuser()
    uid = os.geteuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid:{uid}"


def hitl_assignees(settings: Settings, triggered_by: str | None) -> tuple[list[dict] | None, str]:
    """The approval task's ``assigned_users`` (HITLUser dicts, id = name: the simple auth manager's user
    id is its user name) and why, in a line for the task log. ``None``: no list, anyone allowed on the DAG.

    The user who triggered the run is left out when another approver remains, so a manual run (say a
    forced promotion) is approved by a second person; a lone approver keeps answering their own runs."""
    approvers = list(settings.approvers)
    if not approvers:
        return None, (
            "MELI_APPROVERS is empty: any user allowed on this DAG may answer, the one who triggered the run "
            "included; set MELI_APPROVERS to name the approvers"
        )
    why = f"approvers (MELI_APPROVERS): {', '.join(approvers)}"
    if triggered_by and triggered_by in approvers:
        others = [a for a in approvers if a != triggered_by]
        if others:
            approvers = others
            why = f"{triggered_by} triggered this run: the other approvers answer (four eyes): {', '.join(others)}"
        else:
            why = (
                f"{triggered_by} triggered this run and is the only approver (MELI_APPROVERS): they answer "
                "their own run; name a second approver for four eyes"
            )
    return [{"id": a, "name": a} for a in approvers], why


def card_url(base_url: str, version: str) -> str:
    return f"{base_url.rstrip('/')}/meli/cards/{quote(str(version), safe='')}"


def decision_url(base_url: str, dag_id: str, run_id: str) -> str:
    return f"{base_url.rstrip('/')}/meli/runs/{quote(dag_id, safe='')}/{quote(run_id, safe='')}/decision"


def _md_link(text: str, url: str) -> str:
    """A Markdown link whose text and address cannot turn into other markup."""
    from pipelines.core.render import md_text

    dest = "".join(ch if ch not in "<>\\ \n\r\t" else quote(ch) for ch in str(url))
    return f"[{md_text(text)}](<{dest}>)"


def approval_body(settings: Settings, decision: dict, links: dict[str, str] | None = None) -> str:
    """The evidence for a pending promotion, as Markdown (from the records the model card reads).
    Airflow's Required Actions page renders it: every value from data (a reason, a category, a tag)
    is escaped with ``md_text`` so it is shown as text, never as markup or a link."""
    from pipelines.core.render import md_text
    from pipelines.registry.card import f4, gather, share

    version = md_text(decision["challenger_version"])
    ctx = gather(settings, decision["challenger_version"])
    kind = md_text(ctx["tags"].get("meli.model_type", "?"))
    if ctx["tags"].get("meli.members"):
        kind = f"{kind} of {md_text(ctx['tags']['meli.members'])}"
    champ = md_text(decision["champion_version"]) if decision.get("champion_version") else None
    b = decision.get("bootstrap") or {}
    lines = [
        f"**v{version}** ({kind}) would replace champion **{('v' + champ) if champ else 'none'}**: "
        f"rule {md_text(decision['rule'])}, {md_text(decision['reason'])}.",
        "",
        "| | version | test macro-recall | accuracy |",
        "|---|---|---|---|",
        f"| challenger | {version} | {f4(decision['challenger_macro_recall'])} | "
        f"{f4(decision['challenger_accuracy'])} |",
    ]
    if champ:
        lines.append(
            f"| champion | {champ} | {f4(decision['champion_macro_recall'])} | {f4(decision['champion_accuracy'])} |"
        )
    lines += [
        "",
        f"Delta {f4(decision.get('delta'))}, 95% paired-bootstrap CI [{f4(b.get('ci_low'))}, "
        f"{f4(b.get('ci_high'))}], on {decision['test_rows']} frozen test rows."
        if champ
        else f"No champion to compare with: {decision['test_rows']} frozen test rows.",
    ]
    pc = ctx.get("per_class") or {}
    if pc.get("champion"):
        ch, cp = pc["challenger"], pc["champion"]
        diffs = sorted((ch[c] - cp.get(c, 0.0), c) for c in ch)
        gain = [f"{md_text(c)} ({d:+.2f})" for d, c in diffs[::-1][:5] if d > 0]
        loss = [f"{md_text(c)} ({d:+.2f})" for d, c in diffs[:5] if d < 0]
        lines += [
            "",
            f"**Gain most:** {', '.join(gain) or 'none'}",
            "",
            f"**Lose most:** {', '.join(loss) or 'none'}",
        ]
    ds = ctx.get("dataset") or {}
    if ds:
        dates = [p["ingest_date"] for p in ds.get("lineage", [])]
        window = f"{md_text(dates[0])} .. {md_text(dates[-1])} ({len(dates)} partitions)" if dates else "n/a"
        counts = ds.get("counts", {})
        lines += [
            "",
            f"**Data:** {window}; {counts.get('train')} train / {counts.get('validation')} validation / "
            f"{counts.get('test')} test rows, {ds.get('num_categories')} categories; data version "
            f"{md_text(ds.get('data_version', 'n/a'))}",
        ]
    v = ctx.get("validation")
    if v:
        lines += [
            "",
            f"**Validation:** {v.get('passed')}/{v.get('evaluated')} expectations passed, "
            f"{len(v.get('warnings') or [])} warnings",
        ]
    beh = ((ctx.get("evaluation") or {}).get("behaviour") or {}).get("challenger")
    if beh:
        mf = beh.get("min_function") or {}
        mf_text = (
            f"{mf.get('passed')}/{mf.get('applicable')} minimum-function cases"
            if mf.get("pass_share") is not None
            else "no applicable minimum-function case"
        )
        lines += [
            "",
            f"**Behaviour:** {share((beh.get('invariance') or {}).get('pass_share'))} of test titles invariant to "
            f"case/accents/spaces/punctuation; {mf_text}",
        ]
    s = ctx.get("shadow")
    if s:
        lines += [
            "",
            f"**Shadow scoring** ({md_text(s.get('run_date'))}): agrees with v{md_text(s.get('champion_version'))} on "
            f"{share(s.get('agreement'))} of {s.get('rows')} rows; confidence shift "
            f"{f4((s.get('confidence') or {}).get('shift'))}",
        ]
    links = links or {}
    if links:
        lines += ["", " · ".join(_md_link(k, u) for k, u in links.items())]
    lines += [
        "",
        f"**Approve** moves the alias `champion` to v{version}. **Reject**, or no answer within "
        f"{settings.approval_timeout_h:g} h, keeps {('v' + champ) if champ else 'no champion'}. "
        "Say why in *Reason*: it is recorded on the version and in the promotion history.",
    ]
    return "\n".join(lines)


def approval_operator(task_id: str, gate_task_id: str, timeout_h: float, **kwargs):
    """The Airflow task that waits for a person's answer to the gate's pending promotion."""
    from airflow.providers.standard.operators.hitl import ApprovalOperator
    from airflow.sdk import Param

    class PromotionApproval(ApprovalOperator):
        """Approve / Reject with a reason; the answer (or the timeout's Reject) is applied to the
        registry before the downstream tasks are released or skipped."""

        def _assignees(self, context) -> tuple[list[dict] | None, str, str]:
            """Who may answer this run (read at run time, on the worker: MELI_APPROVERS and the user
            who triggered the run), why, and that user."""
            from pipelines.settings import get_settings

            triggered_by = str(getattr(context.get("dag_run"), "triggering_user_name", None) or "")
            return (*hitl_assignees(get_settings(), triggered_by), triggered_by)

        def execute(self, context):
            from airflow.sdk.exceptions import AirflowSkipException

            decision = context["ti"].xcom_pull(task_ids=gate_task_id)
            if decision["decision"] != "pending_approval":  # the gate decided alone: nobody is asked
                raise AirflowSkipException(f"no approval needed: the gate decided {decision['decision']}")
            self.assigned_users, why, _ = self._assignees(context)
            (log.warning if self.assigned_users is None or "only approver" in why else log.info)("%s", why)
            return super().execute(context)

        def execute_complete(self, context, event):
            if "error" not in event:
                self.validate_chosen_options(event["chosen_options"])
                decision = context["ti"].xcom_pull(task_ids=gate_task_id)
                user = event.get("responded_by_user") or {}
                timed_out = bool(event.get("timedout")) or not user
                by = str(user.get("name") or user.get("id") or "")
                assignees, _, triggered_by = self._assignees(context)
                if (
                    not timed_out
                    and assignees
                    and not {user.get("id"), user.get("name")} & {a["id"] for a in assignees}
                ):
                    # Airflow checks assigned_users itself, except where an auth manager lets everyone
                    # answer (the simple auth manager's all_admins): the answer is not applied
                    raise PermissionError(
                        f"the answer of {by} was not applied: not an assigned approver of this run "
                        f"({', '.join(a['id'] for a in assignees)}); v{decision['challenger_version']} stays "
                        "pending (answer with `meli registry approve|reject`)"
                    )
                apply_answer(
                    decision["challenger_version"],
                    approve=event["chosen_options"][0] == self.APPROVE,
                    reason=str((event.get("params_input") or {}).get("reason") or ""),
                    by=by,
                    timed_out=timed_out,
                    triggered_by=triggered_by,
                )
                from pipelines.flows.airflow_ui import post_run_note

                dag_run = context["dag_run"]
                post_run_note(dag_run.dag_id, dag_run.run_id)  # the run's note: the answer
            return super().execute_complete(context, event)

    pulled = "{{ ti.xcom_pull(task_ids='" + gate_task_id + "')['%s'] }}"
    return PromotionApproval(
        task_id=task_id,
        subject=SUBJECT.format(name=pulled % "model_name", version=pulled % "challenger_version"),
        body="{{ ti.xcom_pull(task_ids='" + gate_task_id + "', key='approval_body') }}",
        defaults="Reject",  # no answer in time = rejected (the champion stays)
        response_timeout=timedelta(hours=timeout_h),
        params={
            "reason": Param(
                "",
                type="string",
                title="Reason",
                description="Why you approve or reject (recorded on the model version and in the history)",
            )
        },
        **kwargs,
    )


def apply_answer(version: str, approve: bool, reason: str, by: str, timed_out: bool, triggered_by: str = "") -> dict:
    from pipelines.registry.card import try_write_card
    from pipelines.registry.gate import respond
    from pipelines.settings import get_settings

    settings = get_settings()
    d = respond(
        settings,
        version,
        approve,
        reason,
        by,
        via="airflow",
        timed_out=timed_out and not approve,
        triggered_by=triggered_by,
    )
    try_write_card(settings, version)
    print(f"{d['decision'].upper()} v{version}: {d['reason']}")
    return d
