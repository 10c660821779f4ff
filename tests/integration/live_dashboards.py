#!/usr/bin/env python3
"""Proves the dashboards and alerts against a live Prometheus.

Starts a Prometheus of its own on loopback (1 s scrapes, Conveyor's rules loaded) scraping a worker, a scheduler and
RabbitMQ (/metrics and /metrics/per-object); runs a workload that produces every outcome (success, retry,
dead_letter, duplicate, invalid payload, a payment declined and retried, delayed jobs through the relay, cron fires,
an archived and replayed dead letter); then evaluates every panel query of every dashboard in dashboards/grafana,
with its variables resolved the way Grafana would (label_values() through Prometheus' API, "All" for multi-value
variables), and fails on a query that errors or returns no series. Every rule the rules file defines must be loaded,
healthy, and every alert expression must evaluate. Every metric name the dashboards, the rules and the Kubernetes
autoscaling manifests name must exist in what Prometheus scraped.

Needs the local stack (RabbitMQ with rabbitmq_prometheus on 127.0.0.1:15692, PostgreSQL) and the built binaries.
Usage: tests/integration/live_dashboards.py --bin-dir build/bin [--keep-going-seconds 120]
"""
import argparse
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
RULES = ROOT / "dashboards/prometheus/conveyor.rules.yml"
DASHBOARDS = sorted((ROOT / "dashboards/grafana").glob("*.json"))
MANIFEST_CHECK = ROOT / "tests/manifests/check_manifests.py"
RABBITMQ_METRICS = "127.0.0.1:15692"
SCRAPE_INTERVAL_S = 1
# What Grafana substitutes for $__rate_interval: at least four scrape intervals.
RATE_INTERVAL = "20s"
METRIC_NAME = re.compile(r"\b(?:conveyor|rabbitmq)_[a-z0-9_]+\b|\b[a-z_]+:[a-z0-9_:]+\b")


def log(message):
    print(f"live-dashboards: {message}", flush=True)


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def http(url, data=None, timeout=10):
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    with urllib.request.urlopen(url, data=body, timeout=timeout) as response:
        return response.status, response.read().decode()


def wait_for(description, condition, timeout_s, processes=()):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for process in processes:
            if process.poll() is not None:
                raise SystemExit(f"live-dashboards: {process.args[0]} exited ({process.returncode}) while waiting "
                                 f"for {description}")
        try:
            if condition():
                return
        except (OSError, urllib.error.URLError, ValueError):
            pass
        time.sleep(0.25)
    raise SystemExit(f"live-dashboards: timed out after {timeout_s} s waiting for {description}")


class Stack:
    """The processes this test starts; each is stopped by its pid, whatever happens."""

    def __init__(self, scratch):
        self.scratch = scratch
        self.processes = []

    def start(self, name, argv, env=None):
        log_file = open(self.scratch / f"{name}.log", "wb")
        process = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                                   start_new_session=True)
        process.log_path = self.scratch / f"{name}.log"
        self.processes.append(process)
        return process

    def stop_all(self):
        for process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in reversed(self.processes):
            try:
                process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def run(argv, **kwargs):
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, **kwargs)
    if result.returncode != 0:
        raise SystemExit(f"live-dashboards: {' '.join(map(str, argv))} failed ({result.returncode}):\n"
                         f"{result.stdout}{result.stderr}")
    return result.stdout


def read_port(path, process):
    wait_for(f"{path.name}", lambda: path.exists() and path.read_text().strip() != "", 30, [process])
    return int(path.read_text())


class Prometheus:
    def __init__(self, port):
        self.base = f"http://127.0.0.1:{port}"

    def api(self, path, data=None):
        try:
            status, text = http(f"{self.base}/api/v1/{path}", data)
        except urllib.error.HTTPError as error:
            status, text = error.code, error.read().decode()
        reply = json.loads(text)
        if status != 200 or reply.get("status") != "success":
            raise ValueError(reply.get("error", text))
        return reply["data"]

    def query(self, expr):
        return self.api("query", {"query": expr})["result"]

    def label_values(self, label, selector):
        return self.api(f"label/{label}/values?" + urllib.parse.urlencode({"match[]": selector}))


def prometheus_config(scratch, worker_port, scheduler_port):
    config = {
        "global": {"scrape_interval": f"{SCRAPE_INTERVAL_S}s", "evaluation_interval": f"{SCRAPE_INTERVAL_S}s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {"job_name": "conveyor-worker", "static_configs": [{"targets": [f"127.0.0.1:{worker_port}"]}]},
            {"job_name": "conveyor-scheduler", "static_configs": [{"targets": [f"127.0.0.1:{scheduler_port}"]}]},
            {"job_name": "rabbitmq", "static_configs": [{"targets": [RABBITMQ_METRICS]}]},
            {"job_name": "rabbitmq-per-object", "metrics_path": "/metrics/per-object",
             "static_configs": [{"targets": [RABBITMQ_METRICS]}]},
        ],
    }
    path = scratch / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def order(order_id, customer, product="live-widget"):
    return json.dumps({"order_id": order_id, "customer": {"id": customer, "email": f"{customer}@example.com",
                                                          "name": "Live customer"},
                       "items": [{"product_id": product, "quantity": 1}], "currency": "EUR"})


def run_workload(cli, run_id, gateway_control_port, pg_url):
    """Every outcome the dashboards show, each at least once."""
    def enqueue(job_type, payload, *extra):
        run([*cli, "enqueue", job_type, "--payload", payload, "--no-progress", *extra])

    flow = pathlib.Path(tempfile.mkdtemp(prefix="conveyor-live-flow-")) / "flow.yaml"
    flow.write_text("jobs:\n  diag.ledger:\n    rate: {per_second: 10, burst: 1}\n")
    run([*cli, "flow", "apply", str(flow), "--pg-url", pg_url])
    shutil.rmtree(flow.parent)
    run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", pg_url, "-c",
         "INSERT INTO shop.products (id, name, price_cents) VALUES ('live-widget', 'Widget', 1250) "
         "ON CONFLICT (id) DO NOTHING; INSERT INTO inventory.stock (product_id, available) "
         "VALUES ('live-widget', 1000000) ON CONFLICT (product_id) DO UPDATE SET available = 1000000"])
    # The gateway answers the next three charges with 503: those payments retry, then succeed.
    request = urllib.request.Request(f"http://127.0.0.1:{gateway_control_port}/control",
                                     data=json.dumps({"fail_next": 3, "fail_status": 503}).encode(),
                                     headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=10).read()
    enqueue("orders.place", order(f"live-{run_id}-{{{{seq}}}}", f"c-{run_id}"), "--count", "20")
    enqueue("orders.place", '{"order_id": 7}')  # invalid payload: dead-lettered with its reason
    enqueue("diag.noop", "{}", "--count", "200")
    enqueue("diag.noop", "{}", "--job-id", f"live-{run_id}-duplicate")
    enqueue("diag.noop", "{}", "--job-id", f"live-{run_id}-duplicate")
    enqueue("diag.fail", '{"times": 1}', "--count", "10")  # retried once, then succeed
    enqueue("diag.fail", '{"times": 1, "permanent": true}', "--count", "5")  # dead letters
    enqueue("diag.sleep", '{"ms": 4000}', "--count", "5")  # in flight while Prometheus scrapes
    # Rate-limited: 30 jobs at 10 a second, most of them waiting in line for a token a while.
    enqueue("diag.ledger", "{}", "--count", "30")
    enqueue("diag.noop", "{}", "--count", "20", "--in", "2s", "--pg-url", pg_url)  # through the relay


def panel_queries(board):
    for item in board["panels"]:
        for target in item.get("targets", []):
            yield item["title"], target["refId"], target["expr"]


def substitute(expr, values):
    expr = expr.replace("$__rate_interval", RATE_INTERVAL)
    for name in sorted(values, key=len, reverse=True):
        expr = expr.replace(f"${{{name}}}", values[name]).replace(f"${name}", values[name])
    return expr


def resolve_variables(prometheus, board):
    """Values as Grafana picks them: "All" (its allValue) for multi-value variables, else the first value."""
    values = {}
    for variable in board["templating"]["list"]:
        if variable["type"] != "query":
            continue
        match = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", substitute(variable["definition"], values))
        if not match:
            raise ValueError(f"variable {variable['name']}: unsupported query {variable['definition']}")
        found = prometheus.label_values(match.group(2), match.group(1))
        if "regex" in variable:
            pattern = re.compile(variable["regex"].strip("/"))
            found = sorted({m.group(1) for m in map(pattern.fullmatch, found) if m})
        if not found:
            raise ValueError(f"variable {variable['name']}: {variable['definition']} has no values")
        values[variable["name"]] = variable["allValue"] if variable.get("multi") else found[0]
    return values


def check_panels(prometheus):
    """Evaluates every panel query; returns the failures and the lines of the report."""
    failures, report = [], []
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        try:
            values = resolve_variables(prometheus, board)
        except ValueError as error:
            failures.append(f"{path.name}: {error}")
            continue
        report.append(f"{path.name} ({', '.join(f'{k}={v}' for k, v in values.items())})")
        for title, ref, expr in panel_queries(board):
            query = substitute(expr, values)
            try:
                series = prometheus.query(query)
            except ValueError as error:
                failures.append(f"{path.name} / {title} / {ref}: query fails: {error}\n    {query}")
                continue
            if not series:
                failures.append(f"{path.name} / {title} / {ref}: no series\n    {query}")
            report.append(f"  {len(series):3d} series  {title} / {ref}")
    return failures, report


def check_rules(prometheus):
    """Every rule of the file loaded, evaluated without error; every alert expression evaluates."""
    failures, report = [], []
    defined = [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]
    loaded = [rule for group in prometheus.api("rules")["groups"] for rule in group["rules"]]
    if len(loaded) != len(defined):
        failures.append(f"{len(defined)} rules in {RULES.name}, {len(loaded)} loaded by Prometheus")
    for rule in loaded:
        name = rule["name"]
        if rule.get("health") != "ok":
            failures.append(f"rule {name}: health {rule.get('health')} {rule.get('lastError', '')}")
        if rule["type"] == "alerting":
            try:
                firing = prometheus.query(rule["query"])
            except ValueError as error:
                failures.append(f"alert {name}: expression fails: {error}")
                continue
            report.append(f"  alert {name}: evaluates ({len(firing)} series now, state {rule.get('state')})")
    report.insert(0, f"{len(loaded)} rules loaded and healthy "
                     f"({sum(r['type'] == 'alerting' for r in loaded)} alerts)")
    return failures, report


def referenced_metric_names(bin_dir):
    """Metric names in dashboards, rules and the autoscaling manifests, minus the rules' own recorded names."""
    recorded = {rule["record"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]
                if "record" in rule}
    texts = [expr for path in DASHBOARDS for _, _, expr in panel_queries(json.loads(path.read_text()))]
    texts += [variable.get("definition", "") for path in DASHBOARDS
              for variable in json.loads(path.read_text())["templating"]["list"]]
    texts += [rule["expr"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]
    names = {name for text in texts for name in METRIC_NAME.findall(text)}
    names |= set(run([sys.executable, str(MANIFEST_CHECK), "--bin-dir", str(bin_dir), "--metric-names"]).split())
    return names, recorded


def check_metric_names(prometheus, bin_dir):
    failures = []
    names, recorded = referenced_metric_names(bin_dir)
    scraped = set(prometheus.api("label/__name__/values"))
    for name in sorted(names):
        if name in recorded and name not in scraped:
            failures.append(f"recording rule {name} has produced no series")
        elif name not in recorded and name not in scraped:
            failures.append(f"metric {name} is named in dashboards/rules/manifests but no target exports it")
    return failures, [f"{len(names)} metric names referenced, all exported or recorded"] if not failures else []


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bin-dir", type=pathlib.Path, required=True)
    parser.add_argument("--timeout", type=int, default=120,
                        help="seconds to wait for every query to return series (default 120)")
    options = parser.parse_args()
    bin_dir = options.bin_dir.resolve()
    amqp_url = os.environ.get("CONVEYOR_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
    pg_url = os.environ.get("CONVEYOR_PG_URL", "postgresql://postgres@127.0.0.1:5432/conveyor")
    owner_url = os.environ.get("CONVEYOR_PG_OWNER_URL", pg_url)  # the schema's owner runs the migrations
    prometheus_binary = shutil.which("prometheus")
    if prometheus_binary is None:
        raise SystemExit("live-dashboards: no prometheus binary (deploy/local/install-deps installs it)")
    scratch = pathlib.Path(tempfile.mkdtemp(prefix="conveyor-live-dashboards-"))
    stack = Stack(scratch)
    run_id = f"{int(time.time())}-{os.getpid()}"
    cli = [str(bin_dir / "conveyor"), "--amqp-url", amqp_url]
    try:
        run([*cli, "migrate", "--pg-url", owner_url])
        run([*cli, "topology", "declare"])
        gateway = stack.start("gateway", [sys.executable, str(ROOT / "deploy/local/payment_gateway.py"),
                                          "--port-file", str(scratch / "gateway.port"),
                                          "--control-port-file", str(scratch / "gateway-control.port")])
        mail = stack.start("smtp", [sys.executable, str(ROOT / "deploy/local/smtp_sink.py"),
                                    "--port-file", str(scratch / "smtp.port"),
                                    "--mailbox", str(scratch / "mailbox.jsonl")])
        gateway_port = read_port(scratch / "gateway.port", gateway)
        gateway_control_port = read_port(scratch / "gateway-control.port", gateway)
        smtp_port = read_port(scratch / "smtp.port", mail)

        worker_port, scheduler_port, prometheus_port = free_port(), free_port(), free_port()
        common = ["--amqp-url", amqp_url, "--pg-url", pg_url, "--http-address", "127.0.0.1"]
        worker = stack.start("worker", [str(bin_dir / "conveyor-worker"), *common, "--http-port", str(worker_port),
                                         "--payment-gateway-url", f"http://127.0.0.1:{gateway_port}",
                                         "--smtp-url", f"smtp://127.0.0.1:{smtp_port}",
                                         "--retry", "diag.*=attempts:3,base:200ms,cap:200ms",
                                         "--retry", "payments.*=attempts:5,base:200ms,cap:200ms"])
        schedules = scratch / "schedules.yaml"
        schedules.write_text("schedules:\n  - name: live-heartbeat\n    cron: '* * * * * *'\n"
                             "    type: diag.noop\n    payload: {}\n")
        scheduler = stack.start("scheduler", [str(bin_dir / "conveyor-scheduler"), *common,
                                               "--http-port", str(scheduler_port), "--schedules", str(schedules)])
        for name, port, process in (("worker", worker_port, worker), ("scheduler", scheduler_port, scheduler)):
            wait_for(f"{name} /readyz", lambda p=port: http(f"http://127.0.0.1:{p}/readyz")[0] == 200, 30, [process])
        prometheus = stack.start("prometheus", [
            prometheus_binary, f"--config.file={prometheus_config(scratch, worker_port, scheduler_port)}",
            f"--storage.tsdb.path={scratch / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prometheus_port}"])
        wait_for("prometheus /-/ready", lambda: http(f"http://127.0.0.1:{prometheus_port}/-/ready")[0] == 200, 30,
                 [prometheus])
        api = Prometheus(prometheus_port)
        log(f"worker :{worker_port}, scheduler :{scheduler_port}, prometheus :{prometheus_port}, logs in {scratch}")

        started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 1))
        run_workload(cli, run_id, gateway_control_port, pg_url)
        # Dead letters archived by the scheduler, two of them replayed: the replay counter and the gauges move.
        dead_letters = [*cli, "dlq", "--pg-url", pg_url, "list", "--type", "diag.fail", "--since", started, "--json"]
        wait_for("5 diag.fail dead letters archived", lambda: len(run(dead_letters).splitlines()) == 5, 60,
                 [worker, scheduler])
        run([*cli, "dlq", "--pg-url", pg_url, "replay", "--type", "diag.fail", "--since", started, "--limit", "2",
             "--no-progress"])

        deadline = time.monotonic() + options.timeout
        while True:
            panel_failures, panel_report = check_panels(api)
            rule_failures, rule_report = check_rules(api)
            name_failures, name_report = check_metric_names(api, bin_dir)
            failures = panel_failures + rule_failures + name_failures
            if not failures or time.monotonic() >= deadline:
                break
            time.sleep(2)
        for line in panel_report + rule_report + name_report:
            print(line)
        if failures:
            print(f"live-dashboards: {len(failures)} problem(s):", *failures, sep="\n  ", file=sys.stderr)
            for process in stack.processes:
                print(f"--- {process.log_path.name} (last lines)", file=sys.stderr)
                print("\n".join(process.log_path.read_text(errors="replace").splitlines()[-15:]), file=sys.stderr)
            return 1
        queries = sum(1 for path in DASHBOARDS for _ in panel_queries(json.loads(path.read_text())))
        log(f"ok: {queries} panel queries of {len(DASHBOARDS)} dashboards returned series; every rule healthy")
        return 0
    finally:
        stack.stop_all()
        # Best effort: a failure here must not hide the test's own result.
        subprocess.run(["psql", "-X", "-q", "-d", pg_url, "-c",
                        "DELETE FROM conveyor.schedules WHERE name = 'live-heartbeat'", "-c",
                        "TRUNCATE conveyor.flow_config, conveyor.rate_buckets, conveyor.rate_waiting, "
                        "conveyor.rate_passes"], capture_output=True, timeout=30, check=False)
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
