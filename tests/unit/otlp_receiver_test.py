#!/usr/bin/python3
"""deploy/local/otlp_receiver.py says no to what is not OTLP's JSON encoding: the tests that rely on it to check
Conveyor's exporter would otherwise prove nothing."""

import copy
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.error
import urllib.request

RECEIVER = pathlib.Path(__file__).resolve().parents[2] / "deploy/local/otlp_receiver.py"

VALID = {
    "resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "conveyor-worker"}}]},
        "scopeSpans": [{
            "scope": {"name": "conveyor"},
            "spans": [{
                "traceId": "0af7651916cd43dd8448eb211c80319c",
                "spanId": "b7ad6b7169203331",
                "name": "orders.place",
                "kind": 5,
                "startTimeUnixNano": "1700000000000000000",
                "endTimeUnixNano": "1700000000004000000",
                "attributes": [{"key": "conveyor.job.attempt", "value": {"intValue": "1"}}],
                "status": {"code": 1},
            }, {
                "traceId": "0af7651916cd43dd8448eb211c80319c",
                "spanId": "c7ad6b7169203332",
                "parentSpanId": "b7ad6b7169203331",
                "name": "db transaction",
                "kind": 3,
                "startTimeUnixNano": 1700000000001000000,
                "endTimeUnixNano": 1700000000003000000,
                "status": {"code": 2, "message": "rolled back"},
            }],
        }],
    }],
}


class OtlpReceiverTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.scratch = tempfile.TemporaryDirectory()
        port_file = pathlib.Path(cls.scratch.name) / "port"
        cls.process = subprocess.Popen([sys.executable, str(RECEIVER), "--port", "0", "--port-file", str(port_file)],
                                       stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not port_file.exists():
            if time.monotonic() > deadline:
                raise RuntimeError("the receiver did not start")
            time.sleep(0.05)
        cls.base = f"http://127.0.0.1:{port_file.read_text().strip()}"

    @classmethod
    def tearDownClass(cls):
        cls.process.terminate()
        cls.process.wait(5)
        cls.scratch.cleanup()

    def post(self, body, content_type="application/json"):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.base}/v1/traces", data=data, method="POST",
                                         headers={"Content-Type": content_type})
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    def spoiled(self, change):
        request = copy.deepcopy(VALID)
        change(request["resourceSpans"][0]["scopeSpans"][0]["spans"][0])
        return request

    def assert_refused(self, request, words):
        status, answer = self.post(request)
        self.assertEqual(status, 400, answer)
        self.assertIn(words, answer["error"])

    def test_a_valid_request_is_kept_and_rendered(self):
        status, answer = self.post(VALID)
        self.assertEqual((status, answer), (200, {"partialSuccess": {}}))
        with urllib.request.urlopen(f"{self.base}/spans?trace_id=0af7651916cd43dd8448eb211c80319c") as response:
            spans = json.loads(response.read())
        self.assertEqual([s["name"] for s in spans][:2], ["orders.place", "db transaction"])
        self.assertEqual(spans[0]["attributes"], {"conveyor.job.attempt": 1})
        self.assertEqual(spans[0]["service"], "conveyor-worker")
        with urllib.request.urlopen(f"{self.base}/render?trace_id=0af7651916cd43dd8448eb211c80319c") as response:
            timeline = response.read().decode()
        self.assertIn("orders.place [conveyor-worker, consumer]", timeline)
        self.assertIn("  db transaction [conveyor-worker, client]  FAILED: rolled back", timeline)

    def test_ids_of_the_wrong_length_or_all_zeros_are_refused(self):
        self.assert_refused(self.spoiled(lambda s: s.update(traceId="0af765")), "traceId: must be 32 hex digits")
        self.assert_refused(self.spoiled(lambda s: s.update(spanId="0" * 16)), "spanId: must not be all zeros")
        self.assert_refused(self.spoiled(lambda s: s.update(parentSpanId="xyz")), "parentSpanId")

    def test_a_misspelt_field_a_bad_time_or_kind_is_refused(self):
        self.assert_refused(self.spoiled(lambda s: s.update(trace_id="x")), "unknown field(s) trace_id")
        self.assert_refused(self.spoiled(lambda s: s.update(endTimeUnixNano="1")), "ends before it starts")
        self.assert_refused(self.spoiled(lambda s: s.update(startTimeUnixNano="1.5")), "startTimeUnixNano")
        self.assert_refused(self.spoiled(lambda s: s.update(kind=9)), "kind: must be 0-5")
        self.assert_refused(self.spoiled(lambda s: s.update(name="")), "name: must be a non-empty string")

    def test_attribute_values_must_hold_exactly_one_typed_field(self):
        two = [{"key": "k", "value": {"stringValue": "a", "intValue": "1"}}]
        self.assert_refused(self.spoiled(lambda s: s.update(attributes=two)), "exactly one value field")
        floated = [{"key": "k", "value": {"intValue": 1.5}}]
        self.assert_refused(self.spoiled(lambda s: s.update(attributes=floated)), "intValue")

    def test_protobuf_and_broken_json_are_refused(self):
        status, answer = self.post(b"\x0a\x00", "application/x-protobuf")
        self.assertEqual(status, 415, answer)
        status, answer = self.post(b"{", "application/json")
        self.assertEqual(status, 400, answer)


if __name__ == "__main__":
    unittest.main(verbosity=1)
