#!/usr/bin/env python3
"""Writes Conveyor's Grafana dashboards (dashboards/grafana/*.json) from the panel lists below, the panel and
alert tables of dashboards/README.md, and the rules as a Kubernetes PrometheusRule (deploy/k8s/base).

The JSON files are committed, so that Grafana can import or provision them as they are; this script is their one
source, and `build.py --check` (run by the tests) fails when a committed file differs from what it would write.
Usage: dashboards/grafana/build.py [--check]
"""
import json
import pathlib
import sys

import yaml

HERE = pathlib.Path(__file__).resolve().parent
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def target(expr, legend, ref):
    return {"datasource": DATASOURCE, "expr": expr, "legendFormat": legend, "refId": ref, "range": True}


def panel(title, description, exprs, unit="short", kind="timeseries", width=12, height=8, thresholds=None):
    """A panel; `exprs` is a list of (PromQL, legend)."""
    refs = "ABCDEFGHIJ"
    fieldconfig = {"defaults": {"unit": unit}, "overrides": []}
    if thresholds:
        fieldconfig["defaults"]["thresholds"] = {
            "mode": "absolute",
            "steps": [{"color": color, "value": value} for value, color in thresholds],
        }
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "targets": [target(expr, legend, refs[i]) for i, (expr, legend) in enumerate(exprs)],
        "fieldConfig": fieldconfig,
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}} if kind == "timeseries" else {},
        "gridPos": {"w": width, "h": height},
    }


def row(title):
    return {"type": "row", "title": title, "collapsed": False, "panels": [], "gridPos": {"w": 24, "h": 1}}


def variable(name, label, query, multi=True):
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "query": {"query": query, "refId": name},
        "definition": query,
        "refresh": 2,
        "includeAll": multi,
        "multi": multi,
        "allValue": ".*" if multi else None,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]} if multi else {},
        "sort": 1,
    }


def dashboard(uid, title, description, variables, panels):
    x = y = 0
    placed = []
    for number, item in enumerate(panels, start=1):
        position = dict(item["gridPos"])
        if item["type"] == "row" or x + position["w"] > 24:
            x, y = 0, y + (max((p["gridPos"]["h"] for p in placed if p["gridPos"]["y"] == y), default=0))
        position.update({"x": x, "y": y})
        x += position["w"]
        placed.append(dict(item, id=number, gridPos=position))
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["conveyor"],
        "timezone": "utc",
        "schemaVersion": 38,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Prometheus",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                },
                *variables,
            ]
        },
        "annotations": {"list": []},
        "panels": placed,
    }


SELECT = 'queue=~"$queue",type=~"$type"'

OVERVIEW = dashboard(
    "conveyor-overview",
    "Conveyor: overview",
    "Jobs, latency, backlog, dead letters and the scheduler across every queue.",
    [
        variable("queue", "Queue", "label_values(conveyor_jobs_completed_total, queue)"),
        variable("type", "Job type", 'label_values(conveyor_jobs_completed_total{queue=~"$queue"}, type)'),
    ],
    [
        row("Throughput and errors"),
        panel("Jobs per second by outcome",
              "Completed jobs by outcome: success, retry (an attempt failed and the job waits in the delay ladder), "
              "dead_letter, duplicate (already done, absorbed by the inbox).",
              [(f'sum by (outcome) (rate(conveyor_jobs_completed_total{{{SELECT}}}[$__rate_interval]))',
                "{{outcome}}")], unit="ops"),
        panel("Error ratio",
              "Retries and dead letters over all completions, per queue (recording rule). The alert fires above 5 % "
              "for 10 minutes.",
              [('queue:conveyor_job_error_ratio:rate5m{queue=~"$queue"}', "{{queue}}")], unit="percentunit",
              thresholds=[(None, "green"), (0.05, "red")]),
        panel("Retries per second by type", "Attempts that failed and were scheduled again, by job type.",
              [(f'sum by (type) (rate(conveyor_jobs_completed_total{{{SELECT},outcome="retry"}}[$__rate_interval]))',
                "{{type}}")], unit="ops", width=8),
        panel("Jobs in flight", "Jobs running right now in the workers, per queue.",
              [('sum by (queue) (conveyor_jobs_in_flight{queue=~"$queue"})', "{{queue}}")], width=8),
        panel("Payment gateway circuit", "0 closed, 1 half-open (one trial call), 2 open (payments wait).",
              [('max by (circuit) (conveyor_circuit_breaker_state)', "{{circuit}}")], width=8,
              thresholds=[(None, "green"), (1, "orange"), (2, "red")]),
        row("Latency"),
        panel("Job duration p50 / p95 / p99",
              "Handler time, from the histogram conveyor_job_duration_seconds.",
              [(f'histogram_quantile({q}, sum by (le) (rate(conveyor_job_duration_seconds_bucket{{{SELECT}}}'
                f'[$__rate_interval])))', f"p{int(q * 100)}") for q in (0.5, 0.95, 0.99)], unit="s"),
        panel("Queue wait p50 / p95 / p99",
              "From enqueue to handler start. The SLO alert fires when p95 is over 30 s for 10 minutes.",
              [(f'histogram_quantile({q}, sum by (le) (rate(conveyor_job_queue_wait_seconds_bucket{{{SELECT}}}'
                f'[$__rate_interval])))', f"p{int(q * 100)}") for q in (0.5, 0.95, 0.99)], unit="s"),
        row("Backlog"),
        panel("Queue depth", "Ready messages per job queue, each priority band its own series: conveyor.<family> is "
              "the normal band, .high and .low the others (RabbitMQ, per-object metrics).",
              [('sum by (queue) (rabbitmq_queue_messages_ready{queue=~"conveyor\\\\.[a-z_]+(\\\\.high|\\\\.low)?"})',
                "{{queue}}")]),
        panel("Consumers per queue", "Worker consumers subscribed to each job queue and band; 0 with messages "
              "waiting alerts.",
              [('sum by (queue) (rabbitmq_queue_consumers{queue=~"conveyor\\\\.[a-z_]+(\\\\.high|\\\\.low)?"})',
                "{{queue}}")]),
        panel("Workers needed and running",
              "The workers' own estimate of the pods the backlog needs (conveyor_workers_needed: arrivals x p95 "
              "duration plus the backlog drained within a minute, over per-pod concurrency; KEDA and the HPA scale "
              "on it), next to the workers running (each exports the gauge).",
              [("max(conveyor_workers_needed)", "needed"), ("count(conveyor_workers_needed)", "running")],
              width=8),
        panel("Outbox backlog",
              "Emitted jobs committed but not yet published: the whole conveyor.outbox table, which every worker "
              "counts alike.",
              [("max(conveyor_outbox_pending)", "pending")], width=8),
        panel("Scheduled jobs pending / overdue",
              "Delayed and transactionally enqueued jobs waiting in conveyor.scheduled_jobs, and those past due.",
              [("max(conveyor_scheduled_jobs_pending)", "pending"), ("max(conveyor_scheduled_jobs_overdue)",
                                                                     "overdue")], width=8),
        panel("Broker connections", "1 while a process's broker connection is up.",
              [("min by (job) (conveyor_broker_connected)", "{{job}}")], width=8),
        row("Flow control"),
        panel("Jobs held back by reason",
              "Jobs that went without running or using an attempt: paused (their queue or type is paused), shutdown "
              "(taken but not started when their worker stopped), concurrency_limit (their key was full: into its "
              "waiting line), rate_limit (their bucket had no token: into its waiting line).",
              [(f'sum by (reason) (rate(conveyor_jobs_parked_total{{{SELECT}}}[$__rate_interval]))', "{{reason}}")],
              unit="ops", width=8),
        panel("Jobs in waiting lines",
              "Jobs waiting in PostgreSQL for a place under a per-key concurrency limit or for a rate limit's token, "
              "and the keys (or rate buckets) they wait for. Fleet-wide values every worker reports alike.",
              [("max by (limit) (conveyor_flow_waiting_jobs)", "{{limit}} jobs"),
               ("max by (limit) (conveyor_flow_waiting_keys)", "{{limit}} keys")], width=8),
        panel("Rate-limit tokens",
              "Tokens each rate-limited type's buckets hold now: near 0 while jobs wait for them, the burst when "
              "idle. The version of the flow limits each worker enforces beside it (conveyor flow apply).",
              [("max by (type) (conveyor_flow_rate_tokens)", "{{type}} tokens"),
               ("max(conveyor_flow_version)", "flow version")], width=8),
        panel("Unfinished batches",
              "Batches open (taking members) and sealed (waiting for their members to end), and the members they "
              "still wait for. A sealed batch whose waiting members stay flat has members that will never end: "
              "published to no queue, or sealed with an --expect above what was published (conveyor batches show).",
              [("max by (state) (conveyor_batches_unfinished)", "{{state}}"),
               ("max(conveyor_batch_members_unended)", "members not ended")], width=12),
        panel("Oldest unfinished batch", "Age of the oldest batch that has not finished (its callback not yet "
              "enqueued), from the scheduler's count of conveyor.batches.",
              [("max(conveyor_batch_oldest_unfinished_age_seconds)", "oldest")], unit="s", width=12),
        row("Dead letters"),
        panel("Dead letters stored by family", "Dead letters in conveyor.dead_letters waiting for an operator.",
              [("family:conveyor_dead_letters_stored:max", "{{family}}")], width=8),
        panel("Oldest dead letter", "Age of the oldest stored dead letter of each family.",
              [("family:conveyor_dead_letter_oldest_age_seconds:max", "{{family}}")], unit="s", width=8),
        panel("Dead-letter queue depth and replays",
              "Messages not yet archived from each DLQ, and dead letters replayed per second.",
              [('sum by (queue) (rabbitmq_queue_messages_ready{queue=~"conveyor\\\\.[a-z_]+\\\\.dlq"})',
                "{{queue}} waiting"), ("queue:conveyor_dlq_replayed:rate5m", "{{queue}} replayed/s")], width=8),
        row("Scheduler"),
        panel("Scheduler leader", "1 on the replica that fires the cron schedules; exactly one should lead.",
              [("conveyor_scheduler_leader", "{{instance}}")], width=6),
        panel("Schedule fires and misfires", "Fire times enqueued and missed, per schedule.",
              [("sum by (schedule) (increase(conveyor_schedule_fired_total[$__rate_interval]))", "{{schedule}} fired"),
               ("sum by (schedule) (increase(conveyor_schedule_misfired_total[$__rate_interval]))",
                "{{schedule}} missed")], width=6),
        panel("Time to each schedule's next fire",
              "Seconds until each active schedule fires next; below zero it is late (the leader advances it with "
              "every fire). Two minutes late alerts (ConveyorScheduleNotFiring).",
              [("max by (schedule) (conveyor_schedule_next_fire_timestamp_seconds > 0) - time()", "{{schedule}}")],
              unit="s", width=6, thresholds=[(None, "red"), (-120, "green")]),
        panel("Relay latency p99", "From a scheduled job's due time to the broker's confirm.",
              [("histogram_quantile(0.99, sum by (le) (rate(conveyor_relay_latency_seconds_bucket"
                "[$__rate_interval])))", "p99")], unit="s", width=6),
        row("HTTP"),
        panel("HTTP connections", "Connections open on each process's HTTP port, against --http-max-connections.",
              [("sum by (job, instance) (conveyor_http_connections)", "{{job}} {{instance}}")], width=12),
        panel("HTTP refusals by reason",
              "Connections and requests a server limit refused: connection_limit, client_rate_limit (per address, "
              "before authentication), header_too_large, body_too_large, unsupported_version, malformed, "
              "accept_failed (out of file descriptors), tls_handshake (a scheduler serving HTTPS dropped a client "
              "that could not complete the handshake).",
              [("sum by (reason) (rate(conveyor_http_refused_total[$__rate_interval]))", "{{reason}}")],
              unit="reqps", width=12),
    ],
)

FAMILY_SELECT = 'queue="conveyor.$family",type=~"$type"'

FAMILY = dashboard(
    "conveyor-family",
    "Conveyor: job family",
    "One family's queue and its job types: throughput, failures, latency and dead letters.",
    [
        variable("family", "Family", 'label_values(conveyor_jobs_completed_total, queue)', multi=False)
        | {"regex": "/conveyor\\.(.*)/"},
        variable("type", "Job type", 'label_values(conveyor_jobs_completed_total{queue="conveyor.$family"}, type)'),
    ],
    [
        panel("Jobs per second by type and outcome", "Completions of this family's job types.",
              [(f'sum by (type, outcome) (rate(conveyor_jobs_completed_total{{{FAMILY_SELECT}}}[$__rate_interval]))',
                "{{type}} {{outcome}}")], unit="ops", width=24),
        panel("Duration p95 by type", "Handler time at the 95th percentile (recording rule).",
              [('queue_type:conveyor_job_duration_seconds:p95_5m{queue="conveyor.$family",type=~"$type"}',
                "{{type}}")], unit="s"),
        panel("Queue wait p95", "From enqueue to handler start at the 95th percentile.",
              [('queue:conveyor_job_queue_wait_seconds:p95_5m{queue="conveyor.$family"}', "p95")], unit="s"),
        panel("Retry delays", "The delays chosen for retries (the policy's backoff with jitter), p50 and p95.",
              [(f'histogram_quantile({q}, sum by (le) (rate(conveyor_job_retry_delay_seconds_bucket'
                f'{{{FAMILY_SELECT}}}[$__rate_interval])))', f"p{int(q * 100)}") for q in (0.5, 0.95)],
              unit="s", width=8),
        panel("In flight", "Jobs of this family running now.",
              [('sum(conveyor_jobs_in_flight{queue="conveyor.$family"})', "in flight")], width=8),
        panel("Queue depth and consumers", "Ready messages of the family's three priority bands, the high band's "
              "alone, and the consumers of its normal band (one per worker).",
              [('sum(rabbitmq_queue_messages_ready{queue=~"conveyor\\\\.$family(\\\\.high|\\\\.low)?"})', "ready, all bands"),
               ('sum(rabbitmq_queue_messages_ready{queue="conveyor.$family.high"})', "ready, high"),
               ('sum(rabbitmq_queue_consumers{queue="conveyor.$family"})', "consumers")], width=8),
        panel("Dead letters stored by reason", "This family's stored dead letters by reason.",
              [('max by (reason) (conveyor_dead_letters_stored{family="$family"})', "{{reason}}")]),
        panel("Dead letters per second by type", "Jobs of this family dead-lettered, by type.",
              [(f'sum by (type) (rate(conveyor_jobs_completed_total{{{FAMILY_SELECT},outcome="dead_letter"}}'
                f'[$__rate_interval]))', "{{type}}")], unit="ops"),
    ],
)


def cell(text):
    return text.replace("|", "\\|").replace("\n", " ")


def panel_table(board):
    """Markdown: each panel's title, what it shows and its queries, row by row."""
    lines = [f"### {board['title']}", "", board["description"], ""]
    for item in board["panels"]:
        if item["type"] == "row":
            lines += ([""] if lines[-1] else []) + [f"**{item['title']}**", "", "| Panel | Shows | Queries |",
                                                    "|---|---|---|"]
            continue
        if lines[-1] == "":
            lines += ["| Panel | Shows | Queries |", "|---|---|---|"]
        queries = "<br>".join(f"`{cell(target['expr'])}`" for target in item["targets"])
        lines.append(f"| {cell(item['title'])} | {cell(item['description'])} | {queries} |")
    return "\n".join(lines + [""])


def alert_table():
    """Markdown: every alert of the rules file, its condition, severity and runbook."""
    rules = yaml.safe_load((HERE.parent / "prometheus" / "conveyor.rules.yml").read_text())
    lines = ["| Alert | Fires when (for) | Severity | Runbook |", "|---|---|---|---|"]
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                condition = f"`{cell(' '.join(rule['expr'].split()))}`" + (f" ({rule['for']})" if "for" in rule else "")
                lines.append(f"| {rule['alert']} | {condition} | {rule['labels']['severity']} | "
                             f"{cell(rule['annotations']['runbook'].strip())} |")
    return "\n".join(lines + [""])


def fill(text, start, content):
    """Replaces what lies between the marker line starting with `start` and the next end marker."""
    head, marker, rest = text.partition(start)
    marker_line, newline, rest = rest.partition("\n")
    _, end, tail = rest.partition("<!-- end of ")
    return f"{head}{marker}{marker_line}{newline}\n{content}\n{end}{tail}"


class _BlockStrings(yaml.SafeDumper):
    """Dumps multi-line strings (the runbooks) as | blocks, as they are written in the rules file."""


_BlockStrings.add_representer(
    str, lambda dumper, text: dumper.represent_scalar("tag:yaml.org,2002:str", text, style="|" if "\n" in text else None))


def prometheus_rule():
    """deploy/k8s/base/prometheusrule.yaml: the rules file as the Prometheus Operator's PrometheusRule."""
    rules = yaml.safe_load((HERE.parent / "prometheus" / "conveyor.rules.yml").read_text())
    resource = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "conveyor", "labels": {"app.kubernetes.io/name": "conveyor"}},
        "spec": rules,
    }
    header = ("# Written by dashboards/grafana/build.py from dashboards/prometheus/conveyor.rules.yml: edit that file\n"
              "# and run the script. The Prometheus Operator loads it like a rules file.\n")
    path = HERE.parent.parent / "deploy" / "k8s" / "base" / "prometheusrule.yaml"
    return path, header + yaml.dump(resource, Dumper=_BlockStrings, sort_keys=False, width=120)


def readme():
    path = HERE.parent / "README.md"
    text = path.read_text()
    text = fill(text, "<!-- panels: conveyor-overview", panel_table(OVERVIEW))
    text = fill(text, "<!-- panels: conveyor-family", panel_table(FAMILY))
    text = fill(text, "<!-- alerts", alert_table())
    return path, text


def main():
    check = "--check" in sys.argv[1:]
    outputs = [(HERE / f"conveyor-{name}.json", json.dumps(board, indent=2) + "\n")
               for name, board in (("overview", OVERVIEW), ("family", FAMILY))]
    outputs.append(readme())
    outputs.append(prometheus_rule())
    stale = []
    for path, text in outputs:
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(path.name)
        else:
            path.write_text(text)
    if stale:
        sys.exit(f"dashboards/grafana: {', '.join(stale)} differ from build.py; run dashboards/grafana/build.py")


if __name__ == "__main__":
    main()
