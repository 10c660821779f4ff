#!/usr/bin/env python3
"""Hostile-input security tests for conveyor-scheduler's HTTP API, its SQL entry points and the CLI.

Run from the repository root, with the local stack up (deploy/local/services start):

    python3 tests/security/security_test.py --bin-dir build/bin [unittest options, e.g. -v or -k Depth]

CONVEYOR_PG_URL and CONVEYOR_AMQP_URL come from the environment (default: the local stack). The suite runs
`conveyor migrate` and `conveyor topology declare`, starts its own conveyor-scheduler processes on free ports of
127.0.0.1 with a tokens file of its own, and stops every one of them by pid (SIGTERM, SIGKILL after 15 s). Every
payload marker, idempotency key and schedule name carries a per-run id, so reruns against the same database do
not meet; the rows a run stored are deleted at its end. It takes about 90 seconds.

What it covers, by TestCase (one class of attack each), from the point of view of a client holding an
enqueue-only token (and, where stated, an admin token or database access):
  TestJsonDepth               payloads nest at most 32 levels (API, conveyor.enqueue(), the table's CHECK);
                              bodies 1,024+ deep are refused quickly; deep jobs stay listable
  TestDuplicateKeys           a repeated key anywhere in a body is a 400 naming it (API, CLI)
  TestIdempotencyNamespaces   idempotency keys are namespaced by source (token, schedule, CLI, SQL)
  TestNulBytes                NUL in any text bound for PostgreSQL is a 400 before any effect, with no
                              PostgreSQL internals in the answer
  TestSecretsStayOutOfOutput  database and broker passwords never reach logs, /readyz, /metrics or --help
  TestConnectionLimit         --http-max-connections: 503 + Retry-After + close beyond the limit, metrics
  TestDescriptorExhaustion    running out of file descriptors neither spins nor floods the log
  TestClientRateLimit         --http-client-rate: per-address limit before authentication, 429 + close
  TestTrustedProxies          --http-trusted-proxies: X-Forwarded-For is honoured only from trusted peers
  TestClientRateDisabled      --http-client-rate 0 disables the per-address limit
  TestTimeAndLimits           run_at / delay bounds and impossible dates, listing limits, sizes, numbers
  TestHttpProtocolAbuse       431, 505, garbage and smuggling-shaped requests, pipelining, slow headers
  TestRoutingAndAuthorization path tricks, ids, scopes and Authorization header abuse
Where the contract does not fix an answer, a test asserts only a 4xx (never a 5xx) and that the server keeps
serving.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import itertools
import json
import re
import secrets
import shutil
import signal
import sys
import time
import unittest
from typing import Optional

sys.dont_write_bytecode = True  # no __pycache__ beside the tests

import conveyor_harness as harness  # noqa: E402
from conveyor_harness import (RUN_ID, HttpConnection, Response, Scheduler, Token, batch_json, job_json,  # noqa: E402
                              metric_type, metric_value, nested_arrays, nested_mixed, nested_objects, psql,
                              psql_value, raw_verdict, rows_with_marker, sql_literal, wait_until)

APP = Token.new("app", "enqueue")
APP2 = Token.new("app2", "enqueue")
OPS = Token.new("ops", "admin", "enqueue")
BAD_TOKEN = Token("app", "not-the-secret", ("enqueue",))

MAX_DEPTH = 32
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
PG_INTERNALS = re.compile(
    r"SQLSTATE|\b(?:22P02|22P05|22021|22007|22008|22003|23514|42601|42804|XX000)\b|invalid input syntax|"
    r"malformed array literal|invalid byte sequence|unsupported Unicode escape|date/time field value out of range|"
    r"time zone displacement|violates check constraint|\bERROR:\s|\bDETAIL:|\bCONTEXT:",
    re.IGNORECASE)
_markers = itertools.count(1)


def utc_text(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def utc_from_epoch(seconds: int) -> str:
    return utc_text(datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc))


YEAR_AHEAD = utc_text(datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=365))


def mentions_key(error: str, key: str) -> bool:
    """Whether an error message names `key` as a token of its own (not as part of a longer word)."""
    return re.search(rf"(?<![\w]){re.escape(key)}(?![\w])", error) is not None


# ----------------------------------------------------------------------------------------------------------------
# The shared scheduler (default flags) and the module's set-up


class _Shared:
    scheduler: Optional[Scheduler] = None


def shared_scheduler() -> Scheduler:
    """The scheduler most classes share; started on first use, and again if a hostile input killed it."""
    current = _Shared.scheduler
    if current is not None and current.running():
        return current
    if current is not None:
        current.stop()
    # The per-address limit would throttle the suite's own quick requests; its own classes turn it on.
    args = ["--http-client-rate", "0"]
    tokens = harness.write_tokens_file([APP, APP2, OPS])
    _Shared.scheduler = Scheduler("shared", tokens, args).start_ready()
    return _Shared.scheduler


def setUpModule() -> None:
    for step in (["migrate"], ["topology", "declare"]):
        done = harness.cli(*step)
        if done.returncode != 0:
            raise RuntimeError(f"conveyor {' '.join(step)} failed: {done.stdout}{done.stderr}")


def tearDownModule() -> None:
    harness.stop_all()
    harness.delete_run_rows()


class ConveyorCase(unittest.TestCase):
    """Assertions and requests shared by every class; `scheduler` is the shared one unless a class overrides it."""

    maxDiff = 2000

    @property
    def scheduler(self) -> Scheduler:
        return shared_scheduler()

    def marker(self) -> str:
        return f"sec-{RUN_ID}-{self._testMethodName[5:30]}-{next(_markers)}"

    def post_jobs(self, body, token: Token = APP, scheduler: Optional[Scheduler] = None) -> Response:
        return (scheduler or self.scheduler).api("POST", "/v1/jobs", body=body, token=token)

    def assert_status(self, response: Response, expected: int, expectation: str) -> None:
        self.assertEqual(response.status, expected, f"{expectation}: expected HTTP {expected}, got {response}")

    def assert_no_database_internals(self, response: Response, expectation: str) -> None:
        found = PG_INTERNALS.search(response.text)
        self.assertIsNone(found, f"{expectation}: expected no PostgreSQL internals in the answer, found "
                                 f"{found.group(0) if found else ''!r} in {response}")

    def assert_refused(self, response: Response, status: int, expectation: str, mentions=()) -> None:
        """`status`, an error mentioning every string of `mentions`, and no PostgreSQL internals."""
        self.assert_status(response, status, expectation)
        for word in mentions:
            self.assertIn(word, response.error, f"{expectation}: expected the error to mention {word!r}")
        self.assert_no_database_internals(response, expectation)

    def assert_client_error(self, response: Response, expectation: str) -> None:
        self.assertTrue(400 <= response.status < 500, f"{expectation}: expected a 4xx (never a 5xx), got {response}")
        self.assert_no_database_internals(response, expectation)

    def assert_still_serving(self, scheduler: Optional[Scheduler] = None) -> None:
        scheduler = scheduler or _Shared.scheduler
        self.assertTrue(scheduler.running(), f"expected the scheduler to survive hostile input; it exited with "
                                             f"{scheduler.process.returncode}; log tail:\n{scheduler.log_tail()}")
        try:
            response = scheduler.api("GET", "/healthz", timeout=5)
        except OSError as error:
            self.fail(f"expected the scheduler to keep serving /healthz after hostile input, got {error!r}")
        self.assert_status(response, 200, "the server keeps serving /healthz after hostile input")

    def assert_nothing_stored(self, marker: str, expectation: str) -> None:
        self.assertEqual(rows_with_marker(marker), 0,
                         f"{expectation}: expected no row of conveyor.scheduled_jobs to carry {marker}")

    def job_source(self, job_id: str) -> str:
        self.assertRegex(job_id, UUID, "expected a job id (a UUID)")
        return psql_value(f"SELECT source FROM conveyor.scheduled_jobs WHERE id = '{job_id}'")


# ----------------------------------------------------------------------------------------------------------------
# 1. JSON depth


def sql_in_rollback(*statements: str):
    """Runs statements in a transaction that is always rolled back, so a refused-but-accepted row never stays."""
    return psql("BEGIN; " + " ".join(statements) + " ROLLBACK;")


def sql_enqueue_payload(payload: str) -> str:
    return f"SELECT conveyor.enqueue('diag.noop', {sql_literal(payload)}::jsonb, now() + interval '1 year');"


def sql_insert_payload(payload: str) -> str:
    return ("INSERT INTO conveyor.scheduled_jobs (id, type, payload, run_at, source) VALUES "
            f"(gen_random_uuid(), 'diag.noop', {sql_literal(payload)}::jsonb, now() + interval '1 year', 'sql');")


class TestJsonDepth(ConveyorCase):
    """Payloads nest at most 32 levels everywhere a job comes in; far deeper bodies are refused, never a 500."""

    def enqueue_payload(self, payload: str) -> Response:
        return self.post_jobs(job_json("diag.noop", payload, run_at=YEAR_AHEAD))

    def check_limit(self, builder, what: str) -> None:
        accepted_marker, refused_marker = self.marker(), self.marker()
        accepted = self.enqueue_payload(builder(MAX_DEPTH, accepted_marker))
        self.assert_status(accepted, 202, f"a payload of {what} exactly {MAX_DEPTH} levels deep is allowed")
        refused = self.enqueue_payload(builder(MAX_DEPTH + 1, refused_marker))
        self.assert_refused(refused, 400, f"a payload of {what} {MAX_DEPTH + 1} levels deep is refused",
                            mentions=[str(MAX_DEPTH)])
        self.assert_nothing_stored(refused_marker, "a refused deep payload")

    def test_objects_32_levels_deep_are_accepted_and_33_refused(self):
        self.check_limit(nested_objects, "objects")

    def test_arrays_count_as_levels_like_objects(self):
        self.check_limit(nested_arrays, "arrays")

    def test_alternating_arrays_and_objects_count_alike(self):
        self.check_limit(nested_mixed, "arrays and objects")

    def test_a_deep_element_refuses_the_whole_batch(self):
        shallow, deep = self.marker(), self.marker()
        body = batch_json(job_json("diag.noop", nested_objects(2, shallow), run_at=YEAR_AHEAD),
                          job_json("diag.noop", nested_objects(MAX_DEPTH + 1, deep), run_at=YEAR_AHEAD))
        self.assert_refused(self.post_jobs(body), 400, "a batch with a 33-level payload in jobs[1] is refused",
                            mentions=[str(MAX_DEPTH)])
        self.assert_nothing_stored(shallow, "the shallow job of a refused batch")
        self.assert_nothing_stored(deep, "the deep job of a refused batch")

    def test_deep_payload_of_an_other_job_type_is_refused(self):
        marker = self.marker()
        payload = '{"ms":1,"x":' + nested_objects(MAX_DEPTH, marker) + "}"
        body = job_json("diag.sleep", payload, run_at=YEAR_AHEAD)
        self.assert_refused(self.post_jobs(body), 400, "a valid diag.sleep payload 33 levels deep is refused",
                            mentions=[str(MAX_DEPTH)])
        self.assert_nothing_stored(marker, "a deep diag.sleep payload")

    def test_bodies_1024_or_more_levels_deep_are_refused_quickly(self):
        marker = self.marker()
        bodies = {
            "1,024 nested arrays": "[" * 1024 + "]" * 1024,
            "1,025 nested arrays": "[" * 1025 + "]" * 1025,
            "1,024 nested objects": '{"a":' * 1024 + "1" + "}" * 1024,
            "payload of 1,100 objects": job_json("diag.noop", nested_objects(1100, marker)),
            "payload of 5,000 arrays": job_json("diag.noop", nested_arrays(5000, marker)),
            "batch element of 2,000 levels": batch_json(job_json("diag.noop", nested_mixed(2001, marker))),
            "100,000 nested arrays": "[" * 100_000 + "]" * 100_000,
            "100,000 unclosed objects": '{"a":' * 100_000,
            "idempotency_key nested 3,000 deep": '{"type":"diag.noop","idempotency_key":' + "[" * 3000 +
                                                 "]" * 3000 + "}",
        }
        for label, body in bodies.items():
            with self.subTest(body=label):
                started = time.monotonic()
                response = self.post_jobs(body)
                elapsed = time.monotonic() - started
                self.assert_refused(response, 400, f"a body with {label} is refused")
                self.assertLess(elapsed, 5, f"a body with {label}: expected an answer within 5 s")
                self.assert_still_serving()
        self.assert_nothing_stored(marker, "bodies nested 1,024+ deep")

    def test_a_32_level_job_is_listed_by_the_admin_api(self):
        marker = self.marker()
        accepted = self.enqueue_payload(nested_objects(MAX_DEPTH, marker))
        self.assert_status(accepted, 202, "a 32-level payload due in a year is accepted")
        job_id = accepted.json()["id"]
        for state in ("pending", "all"):
            listing = self.scheduler.api("GET", f"/v1/scheduled?state={state}&type=diag.noop&limit=1000", token=OPS)
            self.assert_status(listing, 200, f"GET /v1/scheduled?state={state} lists a 32-level payload")
            ids = [job["id"] for job in listing.json()["jobs"]]
            self.assertIn(job_id, ids, f"expected the 32-level job {job_id} in GET /v1/scheduled?state={state}")

    def test_sql_enqueue_refuses_33_levels_and_accepts_32(self):
        refused = sql_in_rollback(sql_enqueue_payload(nested_objects(MAX_DEPTH + 1, self.marker())))
        self.assertNotEqual(refused.returncode, 0, "conveyor.enqueue() of a 33-level payload: expected an error")
        self.assertIn(str(MAX_DEPTH), refused.stderr, "conveyor.enqueue() 33 levels: expected the error to say 32")
        accepted = sql_in_rollback(sql_enqueue_payload(nested_objects(MAX_DEPTH, self.marker())))
        self.assertEqual(accepted.returncode, 0, f"conveyor.enqueue() of 32 levels: expected success, got "
                                                 f"{accepted.stderr}")

    def test_sql_enqueue_refuses_33_levels_of_arrays(self):
        refused = sql_in_rollback(sql_enqueue_payload(nested_arrays(MAX_DEPTH + 1, self.marker())))
        self.assertNotEqual(refused.returncode, 0, "conveyor.enqueue() of 33 array levels: expected an error")
        self.assertIn(str(MAX_DEPTH), refused.stderr, "conveyor.enqueue() 33 array levels: expected '32' in it")

    def test_direct_insert_of_33_levels_violates_a_check_constraint(self):
        refused = sql_in_rollback(sql_insert_payload(nested_objects(MAX_DEPTH + 1, self.marker())))
        self.assertNotEqual(refused.returncode, 0, "INSERT of a 33-level payload: expected a CHECK violation")
        self.assertIn("check constraint", refused.stderr, "INSERT of 33 levels: expected a CHECK constraint error")
        accepted = sql_in_rollback(sql_insert_payload(nested_objects(MAX_DEPTH, self.marker())))
        self.assertEqual(accepted.returncode, 0, f"INSERT of 32 levels: expected success, got {accepted.stderr}")

    def test_update_to_33_levels_violates_the_check_constraint(self):
        marker = self.marker()
        deeper = sql_literal(nested_objects(MAX_DEPTH + 1, marker))
        refused = sql_in_rollback(
            sql_insert_payload(nested_objects(2, marker)),
            f"UPDATE conveyor.scheduled_jobs SET payload = {deeper}::jsonb WHERE payload->>'marker' = "
            f"{sql_literal(marker)};")
        self.assertNotEqual(refused.returncode, 0, "UPDATE to a 33-level payload: expected a CHECK violation")
        self.assertIn("check constraint", refused.stderr, "UPDATE to 33 levels: expected a CHECK constraint error")


# ----------------------------------------------------------------------------------------------------------------
# 2. Duplicate keys


class TestDuplicateKeys(ConveyorCase):
    """A repeated key in any object of a request body is a 400 naming the key, and nothing is stored."""

    def check_duplicate(self, body_of_marker, key: Optional[str], label: str, token: Token = APP,
                        path: str = "/v1/jobs") -> None:
        marker = self.marker()
        response = self.scheduler.api("POST", path, body=body_of_marker(marker), token=token)
        self.assert_refused(response, 400, f"{label}: a repeated key is refused")
        if key is not None:
            self.assertTrue(mentions_key(response.error, key),
                            f"{label}: expected the error to name the repeated key {key!r}, got {response.error!r}")
        self.assert_nothing_stored(marker, label)

    def test_repeated_payload_key(self):
        self.check_duplicate(lambda m: '{"type":"diag.sleep","payload":{"marker":"%s","ms":1,"ms":"x"},"run_at":'
                                       '"%s"}' % (m, YEAR_AHEAD), "ms", "payload {ms:1, ms:'x'}")

    def test_repeated_type_field(self):
        self.check_duplicate(lambda m: '{"type":"a","type":"diag.noop","payload":{"marker":"%s"}}' % m, "type",
                             "job with type given twice")

    def test_repeated_key_in_a_batch_element(self):
        def body(m):
            return batch_json(job_json("diag.noop", '{"marker":"%s"}' % m, run_at=YEAR_AHEAD),
                              job_json("diag.noop", '{"marker":"%s","dupkey":1,"dupkey":2}' % m, run_at=YEAR_AHEAD))
        self.check_duplicate(body, "dupkey", "batch whose jobs[1] repeats a key")

    def test_repeated_key_inside_payload_arrays(self):
        self.check_duplicate(
            lambda m: job_json("diag.noop", '{"marker":"%s","list":[1,[{"inner":1,"inner":1}]]}' % m),
            "inner", "object in an array in the payload repeating a key with the same value")

    def test_repeated_key_written_with_an_escape(self):
        self.check_duplicate(lambda m: job_json("diag.noop", r'{"marker":"%s","alpha":1,"\u0061lpha":2}' % m),
                             "alpha", r'payload {"alpha":1,"\u0061lpha":2}')

    def test_repeated_single_letter_key_with_an_escape(self):
        self.check_duplicate(lambda m: job_json("diag.noop", r'{"marker":"%s","a":1,"\u0061":2}' % m), None,
                             r'payload {"a":1,"\u0061":2}')

    def test_repeated_key_spelled_entirely_in_escapes(self):
        self.check_duplicate(lambda m: r'{"type":"diag.sleep","payload":{"marker":"%s","ms":1,"\u006d\u0073":2}}'
                             % m, "ms", r'payload {"ms":1,"\u006d\u0073":2}')

    def test_repeated_non_ascii_key_with_an_escape(self):
        self.check_duplicate(lambda m: job_json("diag.noop", '{"marker":"%s","clé":1,"cl\\u00e9":2}' % m), None,
                             "payload repeating a non-ASCII key through an escape")

    def test_repeated_emoji_key_with_surrogate_escapes(self):
        self.check_duplicate(lambda m: job_json("diag.noop", '{"marker":"%s","😀":1,"\\ud83d\\ude00":2}' % m),
                             None, "payload repeating an astral-plane key through surrogate escapes")

    def test_repeated_empty_key(self):
        self.check_duplicate(lambda m: job_json("diag.noop", '{"marker":"%s","":1,"":2}' % m), None,
                             "payload repeating the empty key")

    def test_repeated_key_20_levels_deep(self):
        def body(m):
            inner = '{"d":' * 18 + '{"deepkey":1,"deepkey":2}' + "}" * 18
            return job_json("diag.noop", '{"marker":"%s","n":%s}' % (m, inner))
        self.check_duplicate(body, "deepkey", "repeated key 20 levels down")

    def test_repeated_marker_key(self):
        self.check_duplicate(lambda m: job_json("diag.noop", '{"marker":"%s","marker":"other"}' % m), "marker",
                             "payload repeating its first key")

    def test_repeated_payload_field(self):
        self.check_duplicate(lambda m: '{"type":"diag.noop","payload":{"marker":"%s"},"payload":{"marker":"%s",'
                                       '"evil":1}}' % (m, m), "payload", "job with payload given twice")

    def test_repeated_idempotency_key_field(self):
        self.check_duplicate(lambda m: '{"type":"diag.noop","payload":{},"idempotency_key":"%s-1",'
                                       '"idempotency_key":"%s-2"}' % (m, m), "idempotency_key",
                             "job with idempotency_key given twice")

    def test_repeated_run_at_field(self):
        self.check_duplicate(lambda m: '{"type":"diag.noop","payload":{"marker":"%s"},"run_at":"%s",'
                                       '"run_at":"2000-01-01T00:00:00Z"}' % (m, YEAR_AHEAD), "run_at",
                             "job with run_at given twice")

    def test_repeated_jobs_field(self):
        def body(m):
            one = job_json("diag.noop", '{"marker":"%s"}' % m, run_at=YEAR_AHEAD)
            return '{"jobs":[%s],"jobs":[%s]}' % (one, one)
        self.check_duplicate(body, "jobs", "batch with jobs given twice")

    def test_repeated_filter_field_in_a_purge(self):
        self.check_duplicate(lambda m: '{"filter":{"type":"none.%s","type":"none.other"}}' % RUN_ID, "type",
                             "purge filter repeating type", token=OPS, path="/v1/dead-letters/purge")

    def test_repeated_dry_run_in_a_replay(self):
        self.check_duplicate(lambda m: '{"filter":{"type":"none.%s"},"dry_run":true,"dry_run":false}' % RUN_ID,
                             "dry_run", "replay repeating dry_run (a dry run must not turn real)", token=OPS,
                             path="/v1/dead-letters/replay")

    def test_keys_differing_in_case_or_spacing_are_not_duplicates(self):
        marker = self.marker()
        body = job_json("diag.noop", '{"marker":"%s","key":1,"Key":2,"key ":3}' % marker, run_at=YEAR_AHEAD)
        self.assert_status(self.post_jobs(body), 202, "keys 'key', 'Key' and 'key ' are distinct and accepted")

    def run_cli_enqueue(self, *extra: str) -> tuple[int, str, str]:
        marker = self.marker()
        done = harness.cli("enqueue", "diag.sleep", "--payload", '{"marker":"%s","ms":1,"ms":2}' % marker,
                           "--no-progress", *extra)
        return done.returncode, done.stdout + done.stderr, marker

    def test_cli_refuses_a_repeated_key(self):
        for extra in ((), ("--in", "1h"), ("--idempotency-key", f"{RUN_ID}-cli-dup")):
            with self.subTest(options=" ".join(extra)):
                code, output, marker = self.run_cli_enqueue(*extra)
                self.assertNotEqual(code, 0, f"conveyor enqueue {' '.join(extra)} with ms twice: expected a "
                                             f"non-zero exit, got 0 and {output!r}")
                self.assertTrue(mentions_key(output, "ms"), f"expected the CLI to name the repeated key 'ms', got "
                                                            f"{output!r}")
                self.assert_nothing_stored(marker, f"conveyor enqueue {' '.join(extra)} with a repeated key")


# ----------------------------------------------------------------------------------------------------------------
# 3. Idempotency keys namespaced by source


class TestIdempotencyNamespaces(ConveyorCase):
    """One key means one job per source: tokens, schedules, the CLI and SQL callers cannot claim each other's."""

    def enqueue_keyed(self, key: str, marker: str, token: Token = APP, job_type: str = "diag.noop",
                      scheduler: Optional[Scheduler] = None, **payload) -> Response:
        body = {"type": job_type, "payload": {"marker": marker, **payload}, "run_at": YEAR_AHEAD,
                "idempotency_key": key}
        return self.post_jobs(body, token=token, scheduler=scheduler)

    def accepted_id(self, response: Response, expectation: str) -> str:
        self.assert_status(response, 202, expectation)
        return response.json()["id"]

    def sql_enqueue_id(self, key: str, marker: str, source: Optional[str] = "sql") -> str:
        source_argument = "" if source is None else f", source => {sql_literal(source)}"
        return psql_value(
            f"SELECT conveyor.enqueue('diag.noop', {sql_literal(json.dumps({'marker': marker}))}::jsonb, "
            f"now() + interval '1 year', idempotency_key => {sql_literal(key)}{source_argument})")

    def test_a_token_key_shaped_like_a_schedule_key_gets_its_own_job(self):
        marker = self.marker()
        key = f"schedule:nightly-{RUN_ID}:2026-12-05T00:00:00Z"
        api_id = self.accepted_id(self.enqueue_keyed(key, marker), "token app with a schedule-shaped key")
        self.assertEqual(self.job_source(api_id), "api:app", "expected the job's source to be api:app")
        schedule_id = self.sql_enqueue_id(key, marker, source=f"schedule:nightly-{RUN_ID}")
        self.assertNotEqual(schedule_id, api_id, "expected the schedule's namespace not to be blocked by app's key")

    def test_a_schedule_fires_at_times_whose_keys_a_token_claimed(self):
        name = f"sec-{RUN_ID}-every-second"
        schedules = harness.write_file("schedules.yaml", json.dumps({"schedules": [{
            "name": name, "cron": "* * * * * *", "type": "diag.noop", "payload": {"marker": name},
            "misfire": "skip"}]}))
        firing = Scheduler("schedule", harness.write_tokens_file([APP]), ["--schedules", str(schedules)])
        firing.start_ready()
        try:
            if not wait_until(lambda: metric_value(firing.metrics(), "conveyor_scheduler_leader") == 1, 10):
                self.skipTest("another scheduler replica holds the lead, so the test schedule cannot fire")
            claimed = self.claim_fire_times(firing, name, int(time.time()) + 3, count=3)
            wait_until(lambda: time.time() > claimed[-1] + 2.5, 10)
        finally:
            firing.stop()
        times = ",".join(f"'{utc_from_epoch(at)}'::timestamptz" for at in claimed)
        fired = f"SELECT count(DISTINCT run_at) FROM conveyor.scheduled_jobs WHERE source = " \
                f"{sql_literal('schedule:' + name)} AND run_at"
        self.assertGreater(int(psql_value(f"{fired} NOT IN ({times})")), 0,
                           "expected the every-second schedule to fire at the seconds nobody claimed (test set-up)")
        self.assertEqual(int(psql_value(f"{fired} IN ({times})")), len(claimed),
                         "expected the schedule to fire at every second whose schedule:<name>:<time> key token app "
                         "had claimed")

    def claim_fire_times(self, scheduler: Scheduler, name: str, first: int, count: int) -> list[int]:
        claimed = []
        for at in range(first, first + count):
            key = f"schedule:{name}:{utc_from_epoch(at)}"
            job_id = self.accepted_id(self.enqueue_keyed(key, self.marker(), scheduler=scheduler),
                                      "token app claiming a schedule's fire-time key")
            self.assertEqual(self.job_source(job_id), "api:app", "expected the claiming job's source api:app")
            claimed.append(at)
        return claimed

    def test_two_tokens_with_one_key_get_two_jobs(self):
        key = f"{RUN_ID}-shared-key"
        first = self.accepted_id(self.enqueue_keyed(key, self.marker(), token=APP), "token app with key K")
        second = self.accepted_id(self.enqueue_keyed(key, self.marker(), token=APP2),
                                  "token app2 with app's key K and another payload (202, not 409)")
        third = self.accepted_id(self.enqueue_keyed(key, self.marker(), token=OPS), "token ops with key K")
        self.assertEqual(len({first, second, third}), 3, "expected three tokens using one key to get three jobs")
        self.assertEqual(self.job_source(second), "api:app2", "expected app2's job to have source api:app2")

    def test_replaying_a_key_with_the_same_job_returns_the_same_id(self):
        key, marker = f"{RUN_ID}-replay", self.marker()
        first = self.accepted_id(self.enqueue_keyed(key, marker), "first enqueue with key K")
        again = self.accepted_id(self.enqueue_keyed(key, marker), "the same job with key K again")
        self.assertEqual(again, first, "expected the same token, key, type and payload to return the same id")

    def test_reusing_a_key_for_another_payload_conflicts(self):
        key = f"{RUN_ID}-other-payload"
        self.accepted_id(self.enqueue_keyed(key, self.marker()), "first enqueue with key K")
        marker = self.marker()
        self.assert_refused(self.enqueue_keyed(key, marker), 409, "key K again with another payload",
                            mentions=[key])
        self.assert_nothing_stored(marker, "a conflicting replay")

    def test_reusing_a_key_for_another_type_conflicts(self):
        key, marker = f"{RUN_ID}-other-type", self.marker()
        self.accepted_id(self.enqueue_keyed(key, marker), "first enqueue (diag.noop) with key K")
        self.assert_refused(self.enqueue_keyed(key, marker, job_type="diag.sleep", ms=1), 409,
                            "key K again for diag.sleep", mentions=[key])

    def test_a_batch_using_one_key_for_two_payloads_conflicts_whole(self):
        key, first, second = f"{RUN_ID}-batch-twice", self.marker(), self.marker()
        jobs = [{"type": "diag.noop", "payload": {"marker": marker}, "run_at": YEAR_AHEAD, "idempotency_key": key}
                for marker in (first, second)]
        self.assert_refused(self.post_jobs({"jobs": jobs}), 409, "a batch with key K on two payloads",
                            mentions=[key])
        self.assert_nothing_stored(first, "jobs[0] of a conflicting batch")
        self.assert_nothing_stored(second, "jobs[1] of a conflicting batch")

    def test_a_batch_conflicting_with_a_stored_key_is_refused_whole(self):
        key = f"{RUN_ID}-batch-stored"
        self.accepted_id(self.enqueue_keyed(key, self.marker()), "first enqueue with key K")
        fresh, clashing = self.marker(), self.marker()
        jobs = [{"type": "diag.noop", "payload": {"marker": fresh}, "run_at": YEAR_AHEAD},
                {"type": "diag.noop", "payload": {"marker": clashing}, "run_at": YEAR_AHEAD,
                 "idempotency_key": key}]
        self.assert_refused(self.post_jobs({"jobs": jobs}), 409, "a batch reusing a stored key for another payload",
                            mentions=[key])
        self.assert_nothing_stored(fresh, "the unkeyed job of a refused batch")

    def test_sql_callers_and_tokens_do_not_share_keys(self):
        key, marker = f"{RUN_ID}-sql-and-api", self.marker()
        sql_id = self.sql_enqueue_id(key, marker, source="sql")
        self.assertEqual(self.sql_enqueue_id(key, marker, source=None), sql_id,
                         "expected conveyor.enqueue() without source to use the 'sql' namespace")
        api_id = self.accepted_id(self.enqueue_keyed(key, marker), "token app using the SQL caller's key")
        self.assertNotEqual(api_id, sql_id, "expected the API's namespace apart from SQL's")

    def test_sql_sources_are_not_joined_into_one_string(self):
        marker = self.marker()
        done = sql_in_rollback(
            f"SELECT conveyor.enqueue('diag.noop', '{{}}', now() + interval '1 year', "
            f"idempotency_key => {sql_literal(f'x:{marker}')}, source => 'api:app');",
            f"SELECT conveyor.enqueue('diag.noop', '{{}}', now() + interval '1 year', "
            f"idempotency_key => {sql_literal(marker)}, source => 'api:app:x');")
        ids = UUID.findall(done.stdout)
        self.assertEqual(len(ids), 2, f"expected two ids from conveyor.enqueue(), got {done.stdout}{done.stderr}")
        self.assertNotEqual(ids[0], ids[1], "expected (api:app, 'x:K') and (api:app:x, 'K') to be two keys")

    def test_the_cli_has_its_own_namespace(self):
        key, marker = f"{RUN_ID}-cli-key", self.marker()
        done = harness.cli("enqueue", "diag.noop", "--payload", json.dumps({"marker": marker}), "--in", "8760h",
                           "--idempotency-key", key, "--no-progress")
        self.assertEqual(done.returncode, 0, f"conveyor enqueue --idempotency-key: expected success, got "
                                             f"{done.stdout}{done.stderr}")
        cli_id = UUID.findall(done.stdout)[-1]
        self.assertEqual(self.job_source(cli_id), "cli", "expected the CLI's job to have source cli")
        api_id = self.accepted_id(self.enqueue_keyed(key, marker), "token app using the CLI's key")
        self.assertNotEqual(api_id, cli_id, "expected the API's namespace apart from the CLI's")

    def test_the_cli_takes_an_idempotency_key_without_a_time(self):
        key, marker = f"{RUN_ID}-cli-now", self.marker()
        done = harness.cli("enqueue", "diag.noop", "--payload", json.dumps({"marker": marker}), "--idempotency-key",
                           key, "--no-progress")
        self.assertEqual(done.returncode, 0, f"conveyor enqueue --idempotency-key alone (README: goes through "
                                             f"conveyor.enqueue()): expected success, got {done.stdout}{done.stderr}")
        self.assertEqual(self.job_source(UUID.findall(done.stdout)[-1]), "cli", "expected source cli")

    def test_a_rotated_token_replays_its_key_to_the_same_job(self):
        key, marker = f"{RUN_ID}-rotation", self.marker()
        before = Token.new("app", "enqueue")
        first = Scheduler("before-rotation", harness.write_tokens_file([before])).start_ready()
        try:
            original = self.accepted_id(self.enqueue_keyed(key, marker, token=before, scheduler=first),
                                        "token app before rotation")
        finally:
            first.stop()
        after = before.rotated()
        second = Scheduler("after-rotation", harness.write_tokens_file([after])).start_ready()
        try:
            replayed = self.accepted_id(self.enqueue_keyed(key, marker, token=after, scheduler=second),
                                        "token app after rotation replaying its key")
            old_secret = self.enqueue_keyed(key, marker, token=before, scheduler=second)
        finally:
            second.stop()
        self.assertEqual(replayed, original, "expected the rotated token (same name) to get the same job id")
        self.assert_status(old_secret, 401, "the secret from before the rotation is no longer valid")

    def test_token_names_cannot_forge_another_tokens_namespace(self):
        plain, colon = Token.new("app", "enqueue"), Token.new("app:x", "enqueue")
        scheduler = Scheduler("colon-token", harness.write_tokens_file([plain, colon])).start()
        try:
            if not scheduler.wait_for("/readyz"):
                self.assertIn("app:x", scheduler.log(), "a tokens file the scheduler refuses: expected the log "
                                                        "to name the token")
                return
            key, marker = f"{RUN_ID}-colon", self.marker()
            first = self.accepted_id(self.enqueue_keyed(f"x:{key}", marker, token=plain, scheduler=scheduler),
                                     "token app with key x:K")
            second = self.accepted_id(self.enqueue_keyed(key, marker, token=colon, scheduler=scheduler),
                                      "token app:x with key K")
        finally:
            scheduler.stop()
        self.assertNotEqual(first, second, "expected (app, x:K) and (app:x, K) to be different keys")


# ----------------------------------------------------------------------------------------------------------------
# 4. NUL bytes


DEAD_LETTER_COLUMNS = ("job_id, type, family, queue, routing_key, reason, error, error_pattern, fingerprint, "
                       "attempts, failed_at, headers, body, archive_key")


def insert_dead_letters(marker: str, count: int = 3) -> None:
    text = sql_literal(marker)
    psql_value(
        f"INSERT INTO conveyor.dead_letters ({DEAD_LETTER_COLUMNS}) SELECT {text} || '-' || n, 'diag.fail', 'diag', "
        f"'conveyor.diag.dlq', 'diag.fail', 'permanent_failure', 'security suite ' || {text}, 'security suite', "
        f"{text}, 1, now(), '{{}}'::jsonb, '\\x7b7d'::bytea, {text} || '-' || n FROM generate_series(1, {count}) n")


def dead_diag_fail_letters(marker: Optional[str] = None) -> int:
    mine = f" AND strpos(archive_key, {sql_literal(marker)}) > 0" if marker else ""
    return int(psql_value(f"SELECT count(*) FROM conveyor.dead_letters WHERE type = 'diag.fail' AND "
                          f"state = 'dead'{mine}"))


class TestNulBytes(ConveyorCase):
    """Text with a NUL never reaches PostgreSQL: a 400 first, with no PostgreSQL internals in it."""

    def test_nul_in_dead_letter_query_parameters(self):
        values = {"type": "diag.fail%00zzz", "family": "diag%00x", "reason": "permanent_failure%00x",
                  "error": "boom%00x", "since": "2026-01-01T00:00:00Z%00x", "until": "2026-01-01T00:00:00Z%00",
                  "job_id": "abc%00def", "fingerprint": "abcdef%00", "state": "dead%00"}
        for name, value in values.items():
            with self.subTest(parameter=name):
                response = self.scheduler.api("GET", f"/v1/dead-letters?{name}={value}", token=OPS)
                self.assert_refused(response, 400, f"GET /v1/dead-letters?{name}={value}")

    def test_nul_in_scheduled_query_parameters(self):
        for query in ("type=diag.noop%00x", "type=%00", "state=pending%00", "limit=5%00"):
            with self.subTest(query=query):
                response = self.scheduler.api("GET", f"/v1/scheduled?{query}", token=OPS)
                self.assert_refused(response, 400, f"GET /v1/scheduled?{query}")

    def test_other_bytes_postgresql_refuses_in_query_parameters(self):
        for value in ("%C0%80", "%FF", "diag.fail%ED%A0%80", "%E2%82"):
            for path in ("/v1/dead-letters?type=", "/v1/scheduled?type="):
                with self.subTest(query=path + value):
                    self.assert_client_error(self.scheduler.api("GET", path + value, token=OPS),
                                             f"GET {path}{value} (not UTF-8)")

    def test_nul_in_path_ids(self):
        for method, path in (("GET", "/v1/dead-letters/1%00"), ("GET", "/v1/dead-letters/%00"),
                             ("DELETE", "/v1/scheduled/00000000-0000-0000-0000-000000000000%00")):
            with self.subTest(path=path):
                self.assert_client_error(self.scheduler.api(method, path, token=OPS), f"{method} {path}")

    def purge(self, filter_json: str) -> Response:
        return self.scheduler.api("POST", "/v1/dead-letters/purge", body='{"filter":%s}' % filter_json, token=OPS)

    def test_nul_in_a_purge_filter_deletes_nothing(self):
        marker = self.marker()
        insert_dead_letters(marker)
        total = dead_diag_fail_letters()
        # First a probe that can only match this test's rows, in case the NUL still cut the filter short.
        probe = self.purge(r'{"type":"diag.fail\u0000zzz","error":"%s"}' % marker)
        self.assert_refused(probe, 400, "purge with type diag.fail\\u0000zzz narrowed to this test's rows")
        self.assertEqual(dead_diag_fail_letters(marker), 3, "expected the refused purge to delete nothing")
        refused = self.purge(r'{"type":"diag.fail\u0000zzz"}')
        self.assert_refused(refused, 400, 'purge with {"filter":{"type":"diag.fail\\u0000zzz"}}')
        self.assertEqual(dead_diag_fail_letters(marker), 3, "expected the refused purge to delete none of ours")
        self.assertGreaterEqual(dead_diag_fail_letters(), total, "expected no dead diag.fail letter deleted")

    def test_nul_in_any_purge_or_replay_filter_field(self):
        marker = self.marker()
        insert_dead_letters(marker)
        fields = ("family", "reason", "error", "job_id", "fingerprint", "since", "state")
        for field in fields:
            with self.subTest(field=field):
                if field == "error":
                    filter_json = r'{"error":"%s\u0000x"}' % marker
                else:
                    filter_json = r'{"%s":"x\u0000","error":"%s"}' % (field, marker)
                self.assert_refused(self.purge(filter_json), 400, f"purge with a NUL in filter.{field}")
        replay = self.scheduler.api("POST", "/v1/dead-letters/replay", token=OPS,
                                    body=r'{"filter":{"type":"diag.fail\u0000"},"dry_run":true}')
        self.assert_refused(replay, 400, "replay dry run with a NUL in filter.type")
        self.assertEqual(dead_diag_fail_letters(marker), 3, "expected refused purges to delete nothing")

    def nul_job_bodies(self, marker: str) -> dict[str, str]:
        payload = '{"marker":"%s"}' % marker
        return {
            "payload string": job_json("diag.noop", r'{"marker":"%s","s":"a\u0000b"}' % marker),
            "payload key": job_json("diag.noop", r'{"marker":"%s","a\u0000b":1}' % marker),
            "payload key that is only NUL": job_json("diag.noop", r'{"marker":"%s","\u0000":1}' % marker),
            "string deep in payload arrays": job_json("diag.noop", r'{"marker":"%s","l":[[["\u0000"]]]}' % marker),
            "idempotency_key": r'{"type":"diag.noop","payload":%s,"idempotency_key":"%s\u0000x"}' % (payload, marker),
            "idempotency_key that is only NUL": r'{"type":"diag.noop","payload":%s,"idempotency_key":"\u0000"}'
                                                % payload,
            "correlation_id": r'{"type":"diag.noop","payload":%s,"correlation_id":"%s\u0000x"}' % (payload, marker),
            "type": r'{"type":"diag.noop\u0000","payload":%s}' % payload,
            "run_at": r'{"type":"diag.noop","payload":%s,"run_at":"%s\u0000"}' % (payload, YEAR_AHEAD),
            "delay": r'{"type":"diag.noop","payload":%s,"delay":"90s\u0000"}' % payload,
            "traceparent": r'{"type":"diag.noop","payload":%s,"traceparent":"00-%s-%s-01\u0000"}'
                           % (payload, "1" * 32, "2" * 16),
            "top-level field name": r'{"type":"diag.noop","payload":%s,"type\u0000":"x"}' % payload,
            "batch element": batch_json(job_json("diag.noop", payload),
                                        job_json("diag.noop", r'{"marker":"%s","s":"\u0000"}' % marker)),
        }

    def test_nul_anywhere_in_a_job_is_refused(self):
        marker = self.marker()
        for label, body in self.nul_job_bodies(marker).items():
            with self.subTest(where=label):
                self.assert_refused(self.post_jobs(body), 400, f"a NUL in the job's {label}")
        self.assert_nothing_stored(marker, "jobs with a NUL")

    def test_a_raw_nul_byte_in_the_body_is_refused(self):
        marker = self.marker()
        body = job_json("diag.noop", '{"marker":"%s","s":"a\x00b"}' % marker).encode()
        self.assert_refused(self.post_jobs(body), 400, "a raw NUL byte inside a JSON string")
        self.assert_refused(self.post_jobs(b"\x00" + body), 400, "a raw NUL byte before the JSON body")
        self.assert_nothing_stored(marker, "bodies with raw NUL bytes")

    def test_lone_surrogates_never_cause_a_5xx(self):
        marker = self.marker()
        for escape in (r"\ud800", r"\udfff", r"\ud800\u0041"):
            with self.subTest(escape=escape):
                response = self.post_jobs(job_json("diag.noop", r'{"marker":"%s","s":"%s"}' % (marker, escape),
                                                   run_at=YEAR_AHEAD))
                self.assertLess(response.status, 500, f"a payload string {escape}: expected no 5xx, got {response}")
                self.assert_no_database_internals(response, f"a payload string {escape}")
                self.assert_still_serving()

    def test_invalid_utf8_in_a_body_is_refused(self):
        for raw in (b"\xff", b"\xc0\x80", b"\xed\xa0\x80", b"\xe2\x82"):
            with self.subTest(raw=raw):
                body = b'{"type":"diag.noop","payload":{"s":"' + raw + b'"}}'
                self.assert_refused(self.post_jobs(body), 400, f"invalid UTF-8 {raw!r} in a payload string")


# ----------------------------------------------------------------------------------------------------------------
# 5. Secrets in URLs


CONNECTION_ERROR = re.compile(r"(?i)\b(error|failed|failure|refused|unreachable|cannot|could not|unavailable|"
                              r"not usable|invalid)\b")
DEAD = "127.0.0.1:1"
LIVE_PG = "127.0.0.1:5432"


@dataclasses.dataclass
class SecretForm:
    label: str
    env: dict
    secrets: tuple[str, ...]
    live: bool
    via_flags: bool = False
    scheduler: Optional[Scheduler] = None
    ready_status: Optional[int] = None
    readyz: str = ""
    metrics: str = ""
    log: str = ""
    error_logged: bool = False


def new_secret(tag: str) -> str:
    return f"{tag}{RUN_ID}{secrets.token_hex(4)}"


def pg_form(label: str, url_of, live: bool, via_flags: bool = False) -> SecretForm:
    secret = new_secret("pw")
    return SecretForm(label, {"CONVEYOR_PG_URL": url_of(secret)}, (secret,), live, via_flags)


def amqp_form(label: str, url_of) -> SecretForm:
    secret = new_secret("amqp")
    return SecretForm(label, {"CONVEYOR_AMQP_URL": url_of(secret)}, (secret,), live=False)


def secret_forms() -> list[SecretForm]:
    spaced = (new_secret("sp"), new_secret("sq"))
    encoded = (new_secret("ea"), new_secret("eb"))
    quoted = (new_secret("qa"), new_secret("qb"))
    return [
        pg_form("userinfo", lambda s: f"postgresql://postgres:{s}@{LIVE_PG}/conveyor", True),
        pg_form("query password", lambda s: f"postgresql://postgres@{LIVE_PG}/conveyor?password={s}", True),
        pg_form("sslpassword and password",
                lambda s: f"postgresql://postgres@{LIVE_PG}/conveyor?sslpassword={s}&password={s}", True),
        pg_form("keyword", lambda s: f"host=127.0.0.1 port=5432 dbname=conveyor user=postgres password={s}", True),
        SecretForm("quoted keyword", {"CONVEYOR_PG_URL": "host=127.0.0.1 port=5432 dbname=conveyor user=postgres "
                                                         f"password='{spaced[0]} {spaced[1]}'"},
                   (f"{spaced[0]} {spaced[1]}", *spaced), True),
        pg_form("multi-host", lambda s: f"postgresql://postgres:{s}@{LIVE_PG},127.0.0.1:5433/conveyor", True),
        SecretForm("percent-encoded", {"CONVEYOR_PG_URL": f"postgresql://postgres:{encoded[0]}%2F%40{encoded[1]}@"
                                                          f"{LIVE_PG}/conveyor"},
                   (f"{encoded[0]}/@{encoded[1]}", *encoded), True),
        pg_form("userinfo via --pg-url", lambda s: f"postgresql://postgres:{s}@{LIVE_PG}/conveyor", True, True),
        pg_form("postgres:// scheme", lambda s: f"postgres://postgres:{s}@{LIVE_PG}/conveyor", True),
        pg_form("keyword with spaces around =",
                lambda s: f"host=127.0.0.1 port=5432 dbname=conveyor user=postgres password = {s}", True),
        SecretForm("keyword with an escaped quote",
                   {"CONVEYOR_PG_URL": "host=127.0.0.1 port=5432 dbname=conveyor user=postgres "
                                       f"password='{quoted[0]}\\'{quoted[1]}'"},
                   (f"{quoted[0]}'{quoted[1]}", *quoted), True),
        pg_form("percent-encoded parameter name",
                lambda s: f"postgresql://postgres@{LIVE_PG}/conveyor?pass%77ord={s}", True),
        pg_form("dead userinfo", lambda s: f"postgresql://postgres:{s}@{DEAD}/conveyor", False),
        pg_form("dead query password", lambda s: f"postgresql://postgres@{DEAD}/conveyor?password={s}", False),
        pg_form("dead keyword", lambda s: f"host=127.0.0.1 port=1 dbname=conveyor user=postgres password={s}", False),
        pg_form("dead multi-host", lambda s: f"postgresql://postgres:{s}@{DEAD},127.0.0.1:2/conveyor", False),
        pg_form("malformed port", lambda s: f"postgresql://postgres:{s}@127.0.0.1:notaport/conveyor", False),
        pg_form("malformed keyword", lambda s: f"host=127.0.0.1 password={s} bogus", False),
        amqp_form("dead broker", lambda s: f"amqp://guest:{s}@{DEAD}/%2f"),
        amqp_form("malformed broker", lambda s: f"amqp://guest:{s}@127.0.0.1:99999999/%2f"),
        SecretForm("dead broker, encoded password",
                   {"CONVEYOR_AMQP_URL": f"amqp://guest:{encoded[0]}%40{encoded[1]}@{DEAD}/%2f"},
                   (f"{encoded[0]}@{encoded[1]}", *encoded), False),
    ]


def settle(form: SecretForm, started: float) -> bool:
    """Whether a form has shown what it will: ready (live), a connection error logged (dead), or an exit."""
    scheduler = form.scheduler
    if not scheduler.running():
        return True
    if time.monotonic() - started < 3:
        return False
    if form.live:
        return harness.request(scheduler.port, "GET", "/readyz", timeout=2).status == 200
    return CONNECTION_ERROR.search(scheduler.log()) is not None


def observe(form: SecretForm) -> None:
    scheduler = form.scheduler
    if scheduler.running():
        try:
            ready = harness.request(scheduler.port, "GET", "/readyz", timeout=5)
            form.ready_status, form.readyz = ready.status, ready.text
            form.metrics = scheduler.metrics()
        except (OSError, harness.ConnectionClosed):
            pass
    form.error_logged = CONNECTION_ERROR.search(scheduler.log()) is not None
    scheduler.stop()
    form.log = scheduler.log()


class TestSecretsStayOutOfOutput(unittest.TestCase):
    """A password in CONVEYOR_PG_URL / CONVEYOR_AMQP_URL, in any form, never shows in logs, /readyz, /metrics or
    --help. All forms run side by side; setUpClass records what each showed, the tests judge it."""

    forms: list[SecretForm] = []

    @classmethod
    def setUpClass(cls) -> None:
        cls.forms = secret_forms()
        tokens = harness.write_tokens_file([APP])
        for index, form in enumerate(cls.forms):
            form.scheduler = Scheduler(f"secret-{index}", tokens, env=harness.base_env(**form.env),
                                       pass_urls=form.via_flags).start()
        started = time.monotonic()
        pending = list(cls.forms)
        while pending and time.monotonic() - started < 20:
            pending = [form for form in pending if not wait_until(lambda f=form: settle(f, started), 0)]
            time.sleep(0.2)
        for form in cls.forms:
            observe(form)

    @classmethod
    def tearDownClass(cls) -> None:
        for form in cls.forms:
            if form.scheduler is not None:
                form.scheduler.stop()

    def assert_secret_absent(self, form: SecretForm, text: str, where: str) -> None:
        for secret in form.secrets:
            self.assertNotIn(secret, text, f"{form.label}: expected the secret not to appear in {where}")

    def test_live_forms_become_ready(self):
        for form in (form for form in self.forms if form.live):
            with self.subTest(form=form.label):
                self.assertEqual(form.ready_status, 200, f"{form.label}: with trust auth expected /readyz 200; "
                                                         f"log tail:\n{form.log[-1500:]}")

    def test_dead_forms_log_a_connection_error(self):
        for form in (form for form in self.forms if not form.live):
            with self.subTest(form=form.label):
                self.assertTrue(form.error_logged, f"{form.label}: expected an error in the log (so the log check "
                                                   f"covers the error path); log:\n{form.log[-1500:]}")

    def test_logs_do_not_hold_the_secret(self):
        for form in self.forms:
            with self.subTest(form=form.label):
                self.assert_secret_absent(form, form.log, "stdout/stderr")

    def test_readyz_and_metrics_do_not_hold_the_secret(self):
        for form in self.forms:
            with self.subTest(form=form.label):
                self.assert_secret_absent(form, form.readyz, "/readyz")
                self.assert_secret_absent(form, form.metrics, "/metrics")

    def test_help_output_does_not_hold_the_secret(self):
        for form in self.forms:
            env = harness.base_env(**form.env)
            with self.subTest(form=form.label):
                self.assert_secret_absent(form, harness.scheduler_help(env), "conveyor-scheduler --help")
                for args in (("--help",), ("enqueue", "--help"), ("migrate", "--help"), ("scheduled", "--help")):
                    done = harness.cli(*args, env=env, timeout=30)
                    self.assert_secret_absent(form, done.stdout + done.stderr, f"conveyor {' '.join(args)}")


# ----------------------------------------------------------------------------------------------------------------
# 6. Connections and file descriptors


class OwnSchedulerCase(ConveyorCase):
    """A class whose scheduler runs with flags of its own (ARGS), started once for the class."""

    ARGS: list[str] = []
    NOFILE: Optional[int] = None
    own: Optional[Scheduler] = None

    @classmethod
    def setUpClass(cls) -> None:
        tokens = harness.write_tokens_file([APP, OPS])
        cls.own = Scheduler(cls.__name__, tokens, cls.ARGS, nofile=cls.NOFILE).start_ready()

    @classmethod
    def tearDownClass(cls) -> None:
        if cls.own is not None:
            cls.own.stop()

    @property
    def scheduler(self) -> Scheduler:
        return self.own

    def assert_still_serving(self, scheduler: Optional[Scheduler] = None) -> None:
        super().assert_still_serving(scheduler or self.own)


LIMIT = 8
PARTIAL_REQUEST = b"GET /healthz HTTP/1.1\r\nHo"


class TestConnectionLimit(OwnSchedulerCase):
    """--http-max-connections 8: a 9th connection is answered 503 with Retry-After and closed, and counted."""

    ARGS = ["--http-max-connections", str(LIMIT)]

    def setUp(self) -> None:
        self.assertTrue(wait_until(lambda: self.own.api("GET", "/healthz", timeout=2).status == 200, 10),
                        "expected the scheduler to serve before the test holds its connections")

    def hold_limit(self) -> list:
        """LIMIT idle connections: half send nothing, half a partial request."""
        silent = harness.open_connections(self.own.port, LIMIT // 2)
        partial = harness.open_connections(self.own.port, LIMIT - LIMIT // 2, first_bytes=PARTIAL_REQUEST)
        time.sleep(1)
        return silent + partial

    def probe_over_limit(self) -> tuple[Response, bool]:
        """A request on one more connection: (its answer, whether the server then closed it). A probe that is
        served is retried for a few seconds, in case the server had not yet accepted every held connection (a loaded
        CI machine once served all of four probes spread over 2 s)."""
        for _ in range(12):
            with HttpConnection(self.own.port, timeout=5) as connection:
                connection.send(harness.encode_request("GET", "/healthz", keep_alive=True))
                try:
                    response = connection.read_response(timeout=5)
                except (harness.ConnectionClosed, OSError) as error:
                    self.fail(f"connection {LIMIT + 1}: expected a 503 answer before the close, got {error!r}")
                if response.status == 503:
                    return response, connection.closed_by_peer(3)
            time.sleep(0.5)
        return response, False

    def test_the_connection_over_the_limit_gets_503_and_is_closed(self):
        held = self.hold_limit()
        try:
            response, closed = self.probe_over_limit()
            self.assert_status(response, 503, f"a request on connection {LIMIT + 1} while {LIMIT} are held")
            self.assertTrue(closed, f"connection {LIMIT + 1}: expected the server to close it after the 503")
            self.assertIsNotNone(response.header("Retry-After"), "expected Retry-After on the 503")
            self.assertRegex(response.header("Retry-After") or "", r"^\d+$", "expected Retry-After in seconds")
            harness.close_all(held[: LIMIT // 2])
            time.sleep(0.5)
            metrics = self.own.metrics()
        finally:
            harness.close_all(held)
        self.assertEqual(metric_type(metrics, "conveyor_http_connections"), "gauge",
                         "expected a conveyor_http_connections gauge in /metrics")
        self.assertIsNotNone(metric_value(metrics, "conveyor_http_connections"),
                             "expected a conveyor_http_connections sample")
        refused = metric_value(metrics, "conveyor_http_refused_total", {"reason": "connection_limit"})
        self.assertGreater(refused or 0, 0, 'expected conveyor_http_refused_total{reason="connection_limit"} > 0')

    def test_many_connections_over_the_limit_are_answered_or_closed_quickly(self):
        held = self.hold_limit()
        try:
            for attempt in range(20):
                status, closed, seconds = raw_verdict(self.own.port, harness.encode_request("GET", "/healthz"), 5)
                self.assertTrue(status == 503 or (status is None and closed),
                                f"attempt {attempt}: expected 503 or a close over the limit, got {status}")
                self.assertLess(seconds, 5, f"attempt {attempt}: expected an answer within 5 s over the limit")
        finally:
            harness.close_all(held)
        self.assertTrue(wait_until(lambda: self.own.api("GET", "/healthz", timeout=2).status == 200, 5),
                        "expected /healthz 200 within 5 s once the held connections close")

    def test_released_connections_make_room_again(self):
        held = self.hold_limit()
        harness.close_all(held)
        self.assertTrue(wait_until(lambda: self.own.api("GET", "/healthz", timeout=2).status == 200, 5),
                        "expected /healthz 200 within 5 s after the held connections closed")
        self.assert_status(self.own.api("POST", "/v1/jobs", body={}, token=APP), 400,
                           "the API serves again after the held connections closed")


class TestDescriptorExhaustion(OwnSchedulerCase):
    """Under a 64-descriptor limit, 300 connections at once neither spin the CPU nor flood the log."""

    NOFILE = 64
    CONNECTIONS = 300
    HOLD_SECONDS = 3

    def test_running_out_of_descriptors_neither_spins_nor_floods_the_log(self):
        opened = harness.open_connections(self.own.port, self.CONNECTIONS, within=2)
        try:
            time.sleep(0.3)
            cpu_before, lines_before = self.own.cpu_seconds(), self.own.log_line_count()
            time.sleep(self.HOLD_SECONDS)
            cpu_used = self.own.cpu_seconds() - cpu_before
            lines_written = self.own.log_line_count() - lines_before
        finally:
            harness.close_all(opened)
        self.assertGreaterEqual(len(opened), 250, "expected the test to open about 300 connections")
        self.assertLess(cpu_used, 1.0, f"expected under 1 s of CPU in {self.HOLD_SECONDS} s without descriptors, "
                                       f"used {cpu_used:.2f} s")
        self.assertLess(lines_written, 50, f"expected under 50 log lines in {self.HOLD_SECONDS} s without "
                                           f"descriptors, got {lines_written}; tail:\n{self.own.log_tail(10)}")
        self.assertTrue(wait_until(lambda: self.own.api("GET", "/healthz", timeout=2).status == 200, 5),
                        "expected /healthz 200 within 5 s after the connections closed")


# ----------------------------------------------------------------------------------------------------------------
# 7. Pre-authentication rate limit by client address


CLIENT_RATE = 5
CLIENT_BURST = 10
BUCKET_REFILL_SECONDS = 2.5  # burst 10 at 5 per second


class RateLimitCase(OwnSchedulerCase):
    """Each test starts with the client's bucket full again."""

    def setUp(self) -> None:
        time.sleep(BUCKET_REFILL_SECONDS)

    def flood(self, count: int, path: str = "/v1/schedules", method: str = "GET", token: Optional[Token] = None,
              headers=None, body=None) -> list[Response]:
        responses = []
        started = time.monotonic()
        while len(responses) < count and time.monotonic() < started + 20:
            responses.append(self.own.api(method, path, body=body, token=token, headers=headers, timeout=5))
        self.flood_seconds = time.monotonic() - started
        return responses

    def refused(self, responses: list[Response]) -> list[Response]:
        return [response for response in responses if response.status == 429]

    def assert_mostly_refused(self, responses: list[Response], what: str) -> None:
        refused = self.refused(responses)
        # Burst 10, then CLIENT_RATE a second, plus a little slack for a slow machine.
        may_pass = CLIENT_BURST + CLIENT_RATE * self.flood_seconds + 2
        expected = max(len(responses) // 2 + 1, int(len(responses) - may_pass))
        self.assertGreaterEqual(len(refused), expected, f"{what}: expected at least {expected} of {len(responses)} "
                                                        f"quick requests ({self.flood_seconds:.1f} s) to get 429, got "
                                                        f"{len(refused)} ({responses[-1]})")
        for response in refused:
            self.assertRegex(response.header("Retry-After") or "", r"^[1-9]\d*$",
                             f"{what}: expected Retry-After in whole seconds ≥ 1 on every 429")


class TestClientRateLimit(RateLimitCase):
    """--http-client-rate 5: requests per second per client address on /v1/*, before authentication."""

    ARGS = ["--http-client-rate", str(CLIENT_RATE)]

    def test_a_flood_without_a_token_is_refused_quietly(self):
        lines_before = self.own.log_line_count()
        responses = self.flood(60)
        lines_written = self.own.log_line_count() - lines_before
        self.assertNotEqual(responses[0].status, 429, "expected the first request within the burst")
        self.assert_mostly_refused(responses, "60 requests without a token")
        self.assertLess(lines_written, 10, f"expected under 10 log lines about a flood of refusals, got "
                                           f"{lines_written}; tail:\n{self.own.log_tail(10)}")
        refused = metric_value(self.own.metrics(), "conveyor_http_refused_total", {"reason": "client_rate_limit"})
        self.assertGreater(refused or 0, 0, 'expected conveyor_http_refused_total{reason="client_rate_limit"} > 0')

    def test_a_429_closes_the_connection(self):
        self.flood(30)
        for attempt in range(3):
            with HttpConnection(self.own.port, timeout=5) as connection:
                connection.send(harness.encode_request("GET", "/v1/schedules", keep_alive=True))
                response = connection.read_response()
                self.assert_status(response, 429, f"keep-alive request {attempt} after the bucket emptied")
                self.assertTrue(connection.closed_by_peer(2), "expected the connection closed after a 429")

    def test_a_flood_with_a_bad_token_is_refused_before_authentication(self):
        lines_before = self.own.log_line_count()
        responses = self.flood(60, "/v1/jobs", "POST", token=BAD_TOKEN, body={"type": "diag.noop"})
        lines_written = self.own.log_line_count() - lines_before
        self.assert_mostly_refused(responses, "60 requests with an unknown token")
        self.assertLess(lines_written, 10, f"expected under 10 log lines during a flood with a bad token, got "
                                           f"{lines_written}; tail:\n{self.own.log_tail(10)}")

    def test_a_valid_token_does_not_escape_the_address_limit(self):
        responses = self.flood(60, "/v1/jobs", "POST", token=APP, body={"payload": {}})
        self.assert_mostly_refused(responses, "60 requests with a valid token (rate_limit 1000)")

    def test_health_and_metrics_are_not_limited(self):
        self.flood(30)
        for path in ["/healthz"] * 30 + ["/metrics"] * 5 + ["/readyz"] * 5:
            self.assert_status(self.own.api("GET", path), 200, f"{path} while the client's API bucket is empty")

    def test_forwarded_for_from_an_untrusted_peer_is_ignored(self):
        self.flood(30)
        spoofed = [self.own.api("GET", "/v1/schedules", headers={"X-Forwarded-For": f"198.51.100.{n}"})
                   for n in range(10)]
        self.assertGreaterEqual(len(self.refused(spoofed)), 8, "expected X-Forwarded-For from an untrusted peer "
                                                               "not to buy a fresh bucket")

    def test_the_bucket_refills(self):
        self.flood(30)
        time.sleep(BUCKET_REFILL_SECONDS)
        self.assertNotEqual(self.own.api("GET", "/v1/schedules").status, 429,
                            "expected requests to pass again once the bucket refilled")


class TestTrustedProxies(RateLimitCase):
    """--http-trusted-proxies 127.0.0.1/32: the client is the rightmost X-Forwarded-For entry not a trusted proxy."""

    ARGS = ["--http-client-rate", str(CLIENT_RATE), "--http-trusted-proxies", "127.0.0.1/32"]

    def forwarded(self, chain: str) -> Response:
        return self.own.api("GET", "/v1/schedules", headers={"X-Forwarded-For": chain})

    def exhaust(self, address: str) -> None:
        responses = self.flood(30, headers={"X-Forwarded-For": address})
        self.assertGreaterEqual(len(self.refused(responses)), 10, f"expected client {address} to run out of bucket")

    def test_each_forwarded_client_has_its_own_bucket(self):
        self.exhaust("203.0.113.10")
        self.assertNotEqual(self.forwarded("203.0.113.11").status, 429, "expected another client its own bucket")
        self.assertEqual(self.forwarded("203.0.113.10").status, 429, "expected the exhausted client still limited")

    def test_the_rightmost_untrusted_entry_is_the_client(self):
        self.exhaust("203.0.113.20")
        for chain in ("192.0.2.1, 203.0.113.20", "203.0.113.20, 127.0.0.1", "10.9.9.9,203.0.113.20,127.0.0.1"):
            with self.subTest(chain=chain):
                self.assertEqual(self.forwarded(chain).status, 429, f"X-Forwarded-For {chain}: expected client "
                                                                    "203.0.113.20 (spoofed entries ignored)")
        self.assertNotEqual(self.forwarded("203.0.113.20, 203.0.113.21, 127.0.0.1").status, 429,
                            "expected client 203.0.113.21, the rightmost untrusted entry, to have its own bucket")

    def test_malformed_forwarded_for_never_breaks_the_server(self):
        chains = ["garbage", "", ",,,", "999.1.1.1", "::ffff:203.0.113.30", "[2001:db8::1]", "203.0.113.31:8080",
                  ", ".join(f"192.0.2.{n % 250}" for n in range(1000)), "unknown, 127.0.0.1", "\u00e9" * 10]
        for chain in chains:
            with self.subTest(chain=chain[:40]):
                response = self.own.api("GET", "/v1/schedules",
                                        headers={"X-Forwarded-For": chain.encode("utf-8").decode("latin-1")})
                self.assertLess(response.status, 500, f"X-Forwarded-For {chain[:40]!r}: expected no 5xx")
        self.assert_still_serving()


class TestClientRateDisabled(RateLimitCase):
    """--http-client-rate 0 turns the per-address limit off."""

    ARGS = ["--http-client-rate", "0"]

    def test_zero_disables_the_limit(self):
        responses = self.flood(60)
        self.assertEqual(self.refused(responses), [], "expected no 429 with --http-client-rate 0")


# ----------------------------------------------------------------------------------------------------------------
# 8. Extras: time bounds, sizes and numbers


class TestTimeAndLimits(ConveyorCase):
    """run_at and delay within 10 years and real dates; listing limits, batch sizes, long values and numbers."""

    def job(self, marker: str, **fields) -> dict:
        return {"type": "diag.noop", "payload": {"marker": marker}, **fields}

    def test_run_at_or_delay_beyond_10_years_is_refused(self):
        eleven_years = utc_text(datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=11 * 366))
        marker = self.marker()
        for fields in ({"run_at": "9999-01-01T00:00:00Z"}, {"run_at": eleven_years}, {"delay": 400000000},
                       {"delay": "100000h"}, {"delay": 1e300}, {"delay": "4000000000s"}):
            with self.subTest(**{key: str(value) for key, value in fields.items()}):
                self.assert_refused(self.post_jobs(self.job(marker, **fields)), 400,
                                    f"{fields}: beyond 10 years", mentions=["10 years"])
        self.assert_nothing_stored(marker, "jobs beyond 10 years")

    def test_impossible_dates_are_refused_as_run_at_errors(self):
        marker = self.marker()
        for run_at in ("2026-02-30T00:00:00Z", "2026-13-01T00:00:00Z", "2026-01-01T25:00:00Z",
                       "2026-01-01T00:61:00Z", "2026-00-10T00:00:00Z", "2026-01-00T00:00:00Z", "2027-02-29T00:00:00Z",
                       "2026-04-31T00:00:00Z", "2030-01-01T00:00:00+25:00", "2030-01-01T24:30:00Z"):
            with self.subTest(run_at=run_at):
                self.assert_refused(self.post_jobs(self.job(marker, run_at=run_at)), 400, f"run_at {run_at}",
                                    mentions=["run_at"])
        self.assert_nothing_stored(marker, "jobs with impossible dates")

    def test_odd_but_real_dates_never_cause_a_5xx(self):
        for run_at in ("0000-01-01T00:00:00Z", "1900-01-01T00:00:00Z", "2030-01-01T00:00:00-23:59",
                       "2030-01-01T00:00:00.999999Z", "2030-01-01t00:00:00z"):
            with self.subTest(run_at=run_at):
                self.assert_client_error_or_accepted(self.post_jobs(self.job(self.marker(), run_at=run_at)),
                                                     f"run_at {run_at}")

    def assert_client_error_or_accepted(self, response: Response, expectation: str) -> None:
        self.assertTrue(response.status == 202 or 400 <= response.status < 500,
                        f"{expectation}: expected 202 or a 4xx (never a 5xx), got {response}")
        self.assert_no_database_internals(response, expectation)

    def test_a_leap_day_is_accepted(self):
        self.assert_status(self.post_jobs(self.job(self.marker(), run_at="2028-02-29T12:00:00Z")), 202,
                           "run_at on 2028-02-29, a real leap day")

    def test_bad_delays_are_refused(self):
        marker = self.marker()
        for delay in (-1, "-5s", "", "5 years", "NaN", "1e400s", "9" * 40, [], {}, True, None):
            with self.subTest(delay=str(delay)):
                self.assert_refused(self.post_jobs(self.job(marker, delay=delay)), 400, f"delay {delay!r}")
        self.assert_refused(self.post_jobs(job_json("diag.noop", "{}")[:-1] + ',"delay":1e400}'), 400,
                            "delay 1e400 (overflowing number)")
        self.assert_nothing_stored(marker, "jobs with bad delays")

    def test_listing_limits_out_of_range_are_refused(self):
        for path in ("/v1/scheduled", "/v1/dead-letters"):
            for limit in ("-1", "0", "1001", "99999999999999999999999", "9223372036854775808", "1e3", "0x10", "%2B5",
                          "%205", "5%20", "", "abc", "5.0"):
                with self.subTest(path=path, limit=limit):
                    self.assert_refused(self.scheduler.api("GET", f"{path}?limit={limit}", token=OPS), 400,
                                        f"GET {path}?limit={limit}")

    def test_a_batch_over_1000_is_refused(self):
        marker = self.marker()
        jobs = [self.job(marker, run_at=YEAR_AHEAD)] * 1001
        self.assert_refused(self.post_jobs({"jobs": jobs}), 400, "a batch of 1,001 jobs")
        self.assert_nothing_stored(marker, "a batch of 1,001 jobs")

    def test_huge_numbers_never_cause_a_5xx(self):
        for number in ("1e400", "-1e400", "123456789012345678901234567890", "1e-400", "-0", "18446744073709551616",
                       "0." + "0" * 5000 + "1", "9" * 5000):
            with self.subTest(number=number[:30]):
                response = self.post_jobs(job_json("diag.noop", '{"marker":"%s","n":%s}' % (self.marker(), number),
                                                   run_at=YEAR_AHEAD))
                self.assert_client_error_or_accepted(response, f"payload number {number[:30]}")

    def test_out_of_range_sleep_times_are_refused(self):
        for ms in ("1e20", "18446744073709551616", "-1", "3600001", "1.5", "9223372036854775807"):
            with self.subTest(ms=ms):
                self.assert_refused(self.post_jobs('{"type":"diag.sleep","payload":{"ms":%s}}' % ms), 400,
                                    f"diag.sleep ms {ms}")

    def test_long_identifiers_are_refused(self):
        marker = self.marker()
        for field, value in (("idempotency_key", marker + "k" * 256), ("correlation_id", marker + "c" * 256),
                             ("traceparent", "00-" + "1" * 32 + "-" + "2" * 16 + "-01" + "0" * 10000)):
            with self.subTest(field=field):
                self.assert_refused(self.post_jobs(self.job(marker, **{field: value})), 400, f"{field} too long")
        self.assert_refused(self.post_jobs({"type": "diag." + "n" * 10000}), 400, "a 10,000-character type")
        self.assert_nothing_stored(marker, "jobs with too long identifiers")

    def test_very_long_keys_and_values_never_cause_a_5xx(self):
        for label, payload in (("a 100 KB key", '{"marker":"%s","%s":1}' % (self.marker(), "k" * 100_000)),
                               ("a 1 MB string", '{"marker":"%s","s":"%s"}' % (self.marker(), "v" * 1_000_000)),
                               ("10,000 keys", '{"marker":"%s",%s}' % (self.marker(), ",".join(
                                   f'"k{n}":{n}' for n in range(10_000))))):
            with self.subTest(payload=label):
                response = self.post_jobs(job_json("diag.noop", payload, run_at=YEAR_AHEAD))
                self.assert_client_error_or_accepted(response, f"a payload with {label}")
                self.assert_still_serving()

    def test_bodies_that_are_not_a_job_object_are_refused(self):
        for body in ("[]", '"x"', "1", "null", "", "{", "{}", '{"type":"diag.noop",}', "{'type':'diag.noop'}",
                     '\ufeff{"type":"diag.noop"}', '{"type":"diag.noop"} {"type":"diag.noop"}',
                     '/*c*/{"type":"diag.noop"}', '{"jobs":[]}', '{"jobs":{}}', '{"jobs":[1]}',
                     '{"jobs":[{"type":"diag.noop"}],"type":"diag.noop"}'):
            with self.subTest(body=body[:40]):
                self.assert_refused(self.post_jobs(body), 400, f"body {body[:40]!r}")

    def test_fields_a_client_must_not_set_are_refused(self):
        marker = self.marker()
        for field, value in (("source", "schedule:nightly"), ("id", "00000000-0000-0000-0000-000000000000"),
                             ("state", "published"), ("attempts", 0), ("Type", "diag.noop")):
            with self.subTest(field=field):
                self.assert_refused(self.post_jobs(self.job(marker, **{field: value})), 400, f"a job with {field}",
                                    mentions=[field])
        self.assert_nothing_stored(marker, "jobs with forbidden fields")

    def test_unknown_or_malformed_types_are_refused(self):
        for job_type in ("Diag.Noop", "diag.nope", "../etc/passwd", "diag", "diag.noop ", " diag.noop",
                         "diag..noop", "diag.noop\n", "diag.noop;DROP", "conveyor.jobs", "diag.*", "#"):
            with self.subTest(type=job_type):
                self.assert_refused(self.post_jobs({"type": job_type}), 400, f"type {job_type!r}")

    def test_an_oversized_body_is_refused_by_its_length(self):
        head = (b"POST /v1/jobs HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer " + APP.secret.encode() +
                b"\r\nContent-Type: application/json\r\nContent-Length: 9437184\r\n\r\n")
        status, _, seconds = raw_verdict(self.scheduler.port, head, 5)
        self.assertEqual(status, 413, "a 9 MiB Content-Length over the 8 MiB limit: expected 413")
        self.assert_still_serving()


# ----------------------------------------------------------------------------------------------------------------
# 8. Extras: the HTTP protocol


GARBAGE_REQUESTS = {
    "TLS ClientHello": bytes.fromhex("160301020001000200fc03030000000000000000") + b"\x00" * 200,
    "negative Content-Length": b"GET /x HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
    "overflowing Content-Length": b"POST /v1/jobs HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n"
                                  b"\r\n",
    "two different Content-Lengths": b"POST /v1/jobs HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 7"
                                     b"\r\n\r\n12345",
    "Content-Length and Transfer-Encoding": b"POST /v1/jobs HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n"
                                            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /v1/scheduled HTTP/1.1\r\n"
                                            b"Host: a\r\n\r\n",
    "bad chunk size": b"POST /v1/jobs HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
    "obfuscated Transfer-Encoding": b"POST /v1/jobs HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n"
                                    b"Content-Length: 2\r\n\r\n{}",
    "header without a colon": b"GET /healthz HTTP/1.1\r\nHost a\r\n\r\n",
    "NUL in a header": b"GET /healthz HTTP/1.1\r\nHost: a\x00b\r\n\r\n",
    "NUL in the method": b"G\x00T /healthz HTTP/1.1\r\nHost: a\r\n\r\n",
    "space in the target": b"GET /heal thz HTTP/1.1\r\nHost: a\r\n\r\n",
    "bare line feeds and garbage": b"\n\n\nGET\n\n",
    "empty lines only": b"\r\n\r\n\r\n\r\n",
    "HTTP/9.9": b"GET /healthz HTTP/9.9\r\nHost: a\r\n\r\n",
    "binary noise": bytes(range(256)) * 4,
}


class TestHttpProtocolAbuse(ConveyorCase):
    """Oversized headers, other protocols, malformed framing, pipelining and slow clients."""

    def test_headers_over_16_kib_get_431(self):
        big = "a" * (17 * 1024)
        many = "".join(f"X-Filler-{n}: {'b' * 1000}\r\n" for n in range(20))
        for label, headers in (("one 17 KiB header", f"X-Big: {big}\r\n"), ("20 headers of 1 KB", many)):
            with self.subTest(headers=label):
                data = f"GET /healthz HTTP/1.1\r\nHost: a\r\n{headers}\r\n".encode()
                status, _, _ = raw_verdict(self.scheduler.port, data, 5)
                self.assertEqual(status, 431, f"{label}: expected 431 Request Header Fields Too Large")
        self.assert_still_serving()

    def test_modest_headers_are_served(self):
        response = self.scheduler.api("GET", "/healthz", headers={"X-Modest": "m" * 4096})
        self.assert_status(response, 200, "a 4 KiB header is well within the limit")

    def test_a_huge_request_target_is_refused(self):
        data = b"GET /v1/scheduled?type=" + b"x" * 20000 + b" HTTP/1.1\r\nHost: a\r\n\r\n"
        status, closed, _ = raw_verdict(self.scheduler.port, data)
        self.assertTrue((status is not None and 400 <= status < 500) or (status is None and closed),
                        f"a 20 KB request target: expected a 4xx or a close, got {status}")
        self.assert_still_serving()

    def test_the_http2_preface_gets_505(self):
        status, _, _ = raw_verdict(self.scheduler.port, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 5)
        self.assertEqual(status, 505, "the HTTP/2 connection preface: expected 505 HTTP Version Not Supported")
        self.assert_still_serving()

    def test_garbage_requests_are_refused_or_closed_quickly(self):
        for label, data in GARBAGE_REQUESTS.items():
            with self.subTest(request=label):
                status, closed, seconds = raw_verdict(self.scheduler.port, data, 5)
                self.assertTrue((status is not None and 400 <= status < 506 and status != 500) or
                                (status is None and closed),
                                f"{label}: expected a 4xx (or 505) or a close, got {status} (closed={closed})")
                self.assertLess(seconds, 5, f"{label}: expected an answer or a close within 5 s")
                self.assert_still_serving()

    def test_a_smuggled_request_is_never_answered_200(self):
        data = GARBAGE_REQUESTS["Content-Length and Transfer-Encoding"]
        received, _, _ = harness.raw_exchange(self.scheduler.port, data.replace(b"Host: a\r\n\r\n",
                                              b"Host: a\r\nAuthorization: Bearer " + OPS.secret.encode() +
                                              b"\r\n\r\n", 2), timeout=3)
        self.assertNotIn(b" 200 ", received, "expected no 200 for a request hidden behind conflicting framing")

    def test_pipelined_requests_are_answered_in_order(self):
        requests = [("GET", "/healthz"), ("GET", "/nope"), ("GET", "/metrics"), ("POST", "/v1/jobs")]
        with HttpConnection(self.scheduler.port) as connection:
            connection.send(b"".join(harness.encode_request(method, path, token=APP, keep_alive=True,
                                                            body="{}" if method == "POST" else None)
                                     for method, path in requests))
            statuses = [connection.read_response().status for _ in requests]
        self.assertEqual(statuses, [200, 404, 200, 400], "expected pipelined answers in request order")

    def test_fifty_pipelined_requests_are_all_answered(self):
        with HttpConnection(self.scheduler.port) as connection:
            connection.send(harness.encode_request("GET", "/healthz", keep_alive=True) * 50)
            statuses = [connection.read_response(timeout=10).status for _ in range(50)]
        self.assertEqual(statuses, [200] * 50, "expected 50 pipelined /healthz answered 200")

    def test_slow_headers_do_not_hold_up_other_clients(self):
        slow = harness.open_connections(self.scheduler.port, 10, first_bytes=b"GET /healthz HTTP/1.1\r\nHost: a\r\n")
        worst = 0.0
        try:
            deadline = time.monotonic() + 6
            while time.monotonic() < deadline:
                for sock in slow:
                    try:
                        sock.send(b"X")
                    except OSError:
                        pass
                started = time.monotonic()
                self.assert_status(self.scheduler.api("GET", "/healthz", timeout=5), 200, "a client beside slow ones")
                worst = max(worst, time.monotonic() - started)
                time.sleep(0.5)
        finally:
            harness.close_all(slow)
        self.assertLess(worst, 1.0, f"expected /healthz within 1 s while 10 clients trickle headers, worst "
                                    f"{worst:.2f} s")

    def test_odd_methods_and_target_forms_never_cause_a_5xx(self):
        for line in (b"TRACE /v1/jobs HTTP/1.1", b"OPTIONS * HTTP/1.1", b"CONNECT 127.0.0.1:5432 HTTP/1.1",
                     b"GET http://evil.example/v1/scheduled HTTP/1.1", b"GET * HTTP/1.1", b"BREW /v1/jobs HTTP/1.1",
                     b"GET /v1/jobs HTTP/1.0", b"get /healthz HTTP/1.1"):
            with self.subTest(line=line.decode()):
                data = line + b"\r\nHost: a\r\nAuthorization: Bearer " + OPS.secret.encode() + b"\r\n\r\n"
                status, closed, _ = raw_verdict(self.scheduler.port, data, 5)
                self.assertTrue(status is None or status < 500 or status == 505,
                                f"{line!r}: expected no 5xx other than 505, got {status}")
                if b"scheduled" in line:
                    self.assertNotEqual(status, 200, f"{line!r}: expected no listing through an absolute-form target")
        self.assert_still_serving()


# ----------------------------------------------------------------------------------------------------------------
# 8. Extras: routing, ids and authorization


class TestRoutingAndAuthorization(ConveyorCase):
    """An enqueue-only token never reaches admin routes, whatever the path looks like; ids are checked."""

    ADMIN_PATH_TRICKS = ("/v1/scheduled/", "/v1//scheduled", "/v1/./scheduled", "/v1/jobs/../scheduled",
                         "/v1/%73cheduled", "/V1/scheduled", "/v1/scheduled%2F", "/v1/scheduled;x", "//v1/scheduled",
                         "/v1/dead-letters/../scheduled", "/v1/dead-letters/%2e%2e/scheduled",
                         "/v1/jobs%2F..%2Fscheduled", "/./v1/scheduled", "/v1/scheduled%00", "/v1/scheduled#x",
                         "/v1/dead-letters/", "/v1/dead-letters%2F1", "/v1/DEAD-LETTERS")

    def test_enqueue_token_gets_403_on_admin_routes(self):
        for method, path, body in (("GET", "/v1/scheduled", None), ("GET", "/v1/dead-letters", None),
                                   ("GET", "/v1/dead-letters/1", None),
                                   ("POST", "/v1/dead-letters/purge", {"filter": {}}),
                                   ("POST", "/v1/dead-letters/replay", {"filter": {}, "dry_run": True}),
                                   ("DELETE", "/v1/scheduled/00000000-0000-0000-0000-000000000000", None)):
            with self.subTest(route=f"{method} {path}"):
                self.assert_status(self.scheduler.api(method, path, body=body, token=APP), 403,
                                   f"{method} {path} with an enqueue-only token")

    def test_path_tricks_never_reach_admin_routes(self):
        for path in self.ADMIN_PATH_TRICKS:
            with self.subTest(path=path):
                response = self.scheduler.api("GET", path, token=APP)
                self.assertNotEqual(response.status, 200, f"GET {path} with an enqueue-only token: expected no 200")
                self.assertLess(response.status, 500, f"GET {path}: expected no 5xx, got {response}")

    def test_malformed_ids_are_refused(self):
        for method, path in (("GET", "/v1/dead-letters/..%2F1"), ("GET", "/v1/dead-letters/%2e%2e"),
                             ("GET", "/v1/dead-letters/-1"), ("GET", "/v1/dead-letters/0"),
                             ("GET", "/v1/dead-letters/9223372036854775808"), ("GET", "/v1/dead-letters/1%2F2"),
                             ("GET", "/v1/dead-letters/1.0"), ("GET", "/v1/dead-letters/0x1"),
                             ("GET", "/v1/dead-letters/%20"), ("GET", "/v1/dead-letters/" + "9" * 5000),
                             ("DELETE", "/v1/scheduled/..%2f..%2fetc%2fpasswd"), ("DELETE", "/v1/scheduled/x"),
                             ("DELETE", "/v1/scheduled/00000000-0000-0000-0000-000000000000x"),
                             ("DELETE", "/v1/scheduled/%27%20OR%201=1--"),
                             ("DELETE", "/v1/scheduled/{00000000-0000-0000-0000-000000000000}")):
            with self.subTest(request=f"{method} {path[:60]}"):
                self.assert_client_error(self.scheduler.api(method, path, token=OPS), f"{method} {path[:60]}")

    def test_unknown_ids_are_404(self):
        self.assert_status(self.scheduler.api("DELETE", "/v1/scheduled/00000000-0000-4000-8000-000000000000",
                                              token=OPS), 404, "cancelling an unknown job id")
        self.assert_status(self.scheduler.api("GET", "/v1/dead-letters/9223372036854775807", token=OPS), 404,
                           "an unknown dead letter id")

    def authorize(self, value: str) -> Response:
        return self.scheduler.api("POST", "/v1/jobs", body={"type": "diag.noop"}, headers={"Authorization": value})

    def test_authorization_header_abuse_is_401(self):
        for value in ("Bearer " + "a" * 10000, "Bearer " + APP.secret[:-1], "Bearer " + APP.secret + "x",
                      "Basic " + APP.secret, "Bearer", "Bearer ", "Token " + APP.secret,
                      "Bearer " + APP.secret.upper(), "Bearer\t" + "\u00e9".encode().decode("latin-1")):
            with self.subTest(authorization=value[:30]):
                self.assert_status(self.authorize(value), 401, f"Authorization {value[:30]!r}")

    def test_control_characters_in_authorization_are_refused(self):
        for value in ("Bearer \x01\x02", "Bearer " + APP.secret + "\x7f", "Bearer \x1b[31m"):
            with self.subTest(authorization=value[:30]):
                response = self.authorize(value)
                self.assertIn(response.status, (400, 401), f"Authorization {value!r}: expected 400 or 401, got "
                                                           f"{response}")
        self.assert_still_serving()

    def test_sql_shaped_filters_are_harmless(self):
        for value in ("diag.fail'%20OR%20'1'='1", "%27;DROP%20TABLE%20conveyor.dead_letters;--", "%25", "_",
                      "diag.fail%5C"):
            with self.subTest(type=value):
                response = self.scheduler.api("GET", f"/v1/dead-letters?type={value}", token=OPS)
                self.assertIn(response.status, (200, 400), f"type={value}: expected 200 (no match) or 400")
                if response.status == 200:
                    self.assertEqual(response.json()["dead_letters"], [], f"type={value}: expected no match")
        self.assertEqual(psql_value("SELECT to_regclass('conveyor.dead_letters') IS NOT NULL"), "t",
                         "expected conveyor.dead_letters to still exist")


# ----------------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--bin-dir", default="build/bin", help="where conveyor-scheduler and conveyor are")
    options, rest = parser.parse_known_args()
    harness.configure(options.bin_dir)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        program = unittest.main(argv=[sys.argv[0], *rest], exit=False)
    finally:
        harness.stop_all()
    passed = program.result.wasSuccessful()
    if passed:
        shutil.rmtree(harness.work_dir(), ignore_errors=True)
    else:
        print(f"scheduler logs and tokens files are kept in {harness.work_dir()}", file=sys.stderr)
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()
