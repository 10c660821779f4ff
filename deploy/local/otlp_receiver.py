#!/usr/bin/python3
"""Local stand-in for an OpenTelemetry collector's OTLP/HTTP traces endpoint (tests, demo).

Debian 12 packages no OpenTelemetry collector, so tests send Conveyor's spans here.
It checks every request against the OTLP JSON encoding, keeps the spans, and
shows them.

Receiver (plain HTTP/1.1, one port):

``POST /v1/traces``
    Content-Type application/json (anything else: 415), a JSON
    ExportTraceServiceRequest checked strictly: resourceSpans[].resource
    .attributes, resourceSpans[].scopeSpans[].scope and .spans[]; each span
    with traceId (32 hex, not all zero), spanId (16 hex, not all zero),
    parentSpanId (16 hex, or absent or ""), a non-empty name, kind 0-5,
    startTimeUnixNano <= endTimeUnixNano (decimal strings or integers),
    attributes as KeyValue lists whose values are AnyValues with exactly one
    field, status {code 0-2, message}.  An unknown field is an error too (the
    specification lets receivers ignore them; a test receiver had better say
    when a field is misspelt).  Valid: 200 {"partialSuccess": {}}; invalid:
    400 {"error": "<what and where>"}, nothing kept.
``GET /spans[?trace_id=X]``  the spans kept, flattened: each with its
    service.name as "service" and its attributes as a plain object.
``GET /render?trace_id=X``   the trace as a text timeline (text/plain).
``GET /stats``  {"requests", "accepted", "rejected", "spans", "failed"}.
``POST /control`` {"fail_next": N, "fail_status": 503, "latency_ms": M}:
    the next N requests are answered fail_status (nothing kept); every
    request waits latency_ms first.
``POST /reset``  spans, stats and control back to the start.

The bound port is written (atomically) to --port-file once it listens, so
``--port 0`` works.  SIGTERM/SIGINT exit 0.
"""

import argparse
import http.server
import json
import os
import re
import signal
import socketserver
import sys
import threading
import time
import urllib.parse

PROG = "otlp_receiver"
MAX_BODY = 16 * 1024 * 1024
HEX = re.compile(r"[0-9a-fA-F]+")
DECIMAL = re.compile(r"[0-9]+")
ANY_VALUE_FIELDS = {"stringValue", "boolValue", "intValue", "doubleValue", "arrayValue", "kvlistValue", "bytesValue"}
SPAN_FIELDS = {
    "traceId", "spanId", "traceState", "parentSpanId", "flags", "name", "kind", "startTimeUnixNano",
    "endTimeUnixNano", "attributes", "droppedAttributesCount", "events", "droppedEventsCount", "links",
    "droppedLinksCount", "status",
}
KIND_NAMES = {0: "unspecified", 1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}


class Invalid(Exception):
    pass


def log(message):
    sys.stderr.write(f"{PROG}: {message}\n")
    sys.stderr.flush()


def require(condition, where, what):
    if not condition:
        raise Invalid(f"{where}: {what}")


def only(obj, allowed, where):
    require(isinstance(obj, dict), where, "must be an object")
    unknown = sorted(set(obj) - allowed)
    require(not unknown, where, f"unknown field(s) {', '.join(unknown)}")


def check_hex(value, digits, where, optional=False):
    if optional and value in (None, ""):
        return
    require(isinstance(value, str) and len(value) == digits and HEX.fullmatch(value), where,
            f"must be {digits} hex digits, not {value!r}")
    require(set(value) != {"0"}, where, "must not be all zeros")


def check_uint64(value, where):
    if isinstance(value, int) and not isinstance(value, bool):
        require(0 <= value < 2**64, where, "out of range")
        return value
    require(isinstance(value, str) and DECIMAL.fullmatch(value), where,
            f"must be a decimal string or an integer, not {value!r}")
    return int(value)


def check_any_value(value, where):
    only(value, ANY_VALUE_FIELDS, where)
    require(len(value) == 1, where, "must hold exactly one value field")
    (field, item), = value.items()
    if field == "stringValue":
        require(isinstance(item, str), where, "stringValue must be a string")
    elif field == "boolValue":
        require(isinstance(item, bool), where, "boolValue must be a boolean")
    elif field == "intValue":
        require((isinstance(item, int) and not isinstance(item, bool))
                or (isinstance(item, str) and re.fullmatch(r"-?[0-9]+", item)), where,
                "intValue must be an integer or a decimal string")
    elif field == "doubleValue":
        require(isinstance(item, (int, float)) and not isinstance(item, bool), where, "doubleValue must be a number")
    elif field == "arrayValue":
        only(item, {"values"}, f"{where}.arrayValue")
        for index, element in enumerate(item.get("values", [])):
            check_any_value(element, f"{where}.arrayValue.values[{index}]")
    elif field == "kvlistValue":
        only(item, {"values"}, f"{where}.kvlistValue")
        check_attributes(item.get("values", []), f"{where}.kvlistValue.values")
    else:
        require(isinstance(item, str), where, "bytesValue must be a base64 string")


def check_attributes(attributes, where):
    require(isinstance(attributes, list), where, "must be a list")
    for index, pair in enumerate(attributes):
        here = f"{where}[{index}]"
        only(pair, {"key", "value"}, here)
        require(isinstance(pair.get("key"), str) and pair["key"], here, "key must be a non-empty string")
        require("value" in pair, here, "value is missing")
        check_any_value(pair["value"], f"{here}.value")


def plain(value):
    """An AnyValue as a plain JSON value."""
    (field, item), = value.items()
    if field == "intValue":
        return int(item)
    if field == "arrayValue":
        return [plain(v) for v in item.get("values", [])]
    if field == "kvlistValue":
        return {p["key"]: plain(p["value"]) for p in item.get("values", [])}
    return item


def check_span(span, where):
    only(span, SPAN_FIELDS, where)
    check_hex(span.get("traceId"), 32, f"{where}.traceId")
    check_hex(span.get("spanId"), 16, f"{where}.spanId")
    check_hex(span.get("parentSpanId"), 16, f"{where}.parentSpanId", optional=True)
    require(isinstance(span.get("name"), str) and span["name"], f"{where}.name", "must be a non-empty string")
    kind = span.get("kind", 0)
    require(isinstance(kind, int) and not isinstance(kind, bool) and kind in KIND_NAMES, f"{where}.kind",
            f"must be 0-5, not {kind!r}")
    require("startTimeUnixNano" in span and "endTimeUnixNano" in span, where, "start and end times are required")
    start = check_uint64(span["startTimeUnixNano"], f"{where}.startTimeUnixNano")
    end = check_uint64(span["endTimeUnixNano"], f"{where}.endTimeUnixNano")
    require(start <= end, where, "ends before it starts")
    check_attributes(span.get("attributes", []), f"{where}.attributes")
    status = span.get("status", {})
    only(status, {"code", "message"}, f"{where}.status")
    require(status.get("code", 0) in (0, 1, 2), f"{where}.status.code", "must be 0, 1 or 2")
    require(isinstance(status.get("message", ""), str), f"{where}.status.message", "must be a string")
    return start, end


def check_request(request):
    """The spans of a valid ExportTraceServiceRequest, flattened; raises Invalid."""
    only(request, {"resourceSpans"}, "request")
    resource_spans = request.get("resourceSpans", [])
    require(isinstance(resource_spans, list), "resourceSpans", "must be a list")
    kept = []
    for r, resource_span in enumerate(resource_spans):
        where = f"resourceSpans[{r}]"
        only(resource_span, {"resource", "scopeSpans", "schemaUrl"}, where)
        resource = resource_span.get("resource", {})
        only(resource, {"attributes", "droppedAttributesCount"}, f"{where}.resource")
        check_attributes(resource.get("attributes", []), f"{where}.resource.attributes")
        resource_attributes = {p["key"]: plain(p["value"]) for p in resource.get("attributes", [])}
        scope_spans = resource_span.get("scopeSpans", [])
        require(isinstance(scope_spans, list), f"{where}.scopeSpans", "must be a list")
        for s, scope_span in enumerate(scope_spans):
            here = f"{where}.scopeSpans[{s}]"
            only(scope_span, {"scope", "spans", "schemaUrl"}, here)
            only(scope_span.get("scope", {}), {"name", "version", "attributes", "droppedAttributesCount"},
                 f"{here}.scope")
            spans = scope_span.get("spans", [])
            require(isinstance(spans, list), f"{here}.spans", "must be a list")
            for i, span in enumerate(spans):
                start, end = check_span(span, f"{here}.spans[{i}]")
                kept.append({
                    "trace_id": span["traceId"].lower(),
                    "span_id": span["spanId"].lower(),
                    "parent_span_id": (span.get("parentSpanId") or "").lower(),
                    "name": span["name"],
                    "kind": KIND_NAMES[span.get("kind", 0)],
                    "start_ns": start,
                    "end_ns": end,
                    "attributes": {p["key"]: plain(p["value"]) for p in span.get("attributes", [])},
                    "status": span.get("status", {}).get("code", 0),
                    "status_message": span.get("status", {}).get("message", ""),
                    "service": resource_attributes.get("service.name", "?"),
                })
    return kept


def render(spans, trace_id, width=40):
    """A text timeline of one trace: each span under its parent, a bar where it ran."""
    spans = [s for s in spans if s["trace_id"] == trace_id]
    if not spans:
        return f"no spans of trace {trace_id}\n"
    begin = min(s["start_ns"] for s in spans)
    finish = max(s["end_ns"] for s in spans)
    total = max(finish - begin, 1)
    ids = {s["span_id"] for s in spans}
    children = {}
    for span in sorted(spans, key=lambda s: (s["start_ns"], s["end_ns"])):
        parent = span["parent_span_id"] if span["parent_span_id"] in ids else None
        children.setdefault(parent, []).append(span)
    lines = [f"trace {trace_id}: {len(spans)} spans, {total / 1e6:.1f} ms"]

    def walk(parent, depth):
        for span in children.get(parent, []):
            left = (span["start_ns"] - begin) * width // total
            length = max(1, (span["end_ns"] - span["start_ns"]) * width // total)
            bar = " " * left + "#" * min(length, width - left)
            failed = "  FAILED" + (f": {span['status_message']}" if span["status_message"] else "") \
                if span["status"] == 2 else ""
            lines.append(f"{(span['start_ns'] - begin) / 1e6:9.1f} ms {bar:<{width}} "
                         f"{(span['end_ns'] - span['start_ns']) / 1e6:8.1f} ms  {'  ' * depth}{span['name']} "
                         f"[{span['service']}, {span['kind']}]{failed}")
            walk(span["span_id"], depth + 1)

    walk(None, 0)
    return "\n".join(lines) + "\n"


class State:
    def __init__(self):
        self.lock = threading.Lock()
        self.reset()

    def reset(self):
        self.spans = []
        self.stats = {"requests": 0, "accepted": 0, "rejected": 0, "spans": 0, "failed": 0}
        self.control = {"fail_next": 0, "fail_status": 503, "latency_ms": 0}


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def server_bind(self):
        socketserver.TCPServer.server_bind(self)  # no reverse DNS lookup
        self.server_name, self.server_port = self.server_address[:2]


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "conveyor-otlp-receiver"
    state = None

    def log_message(self, format, *args):
        pass

    def reply(self, status, body, content_type="application/json"):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def body(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self.close_connection = True
            raise Invalid(f"body of {length} bytes is over {MAX_BODY}")
        return self.rfile.read(length) if length else b""

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        trace_id = (query.get("trace_id", [""])[0]).lower()
        with self.state.lock:
            spans = list(self.state.spans)
            stats = dict(self.state.stats)
        if url.path == "/spans":
            self.reply(200, [s for s in spans if not trace_id or s["trace_id"] == trace_id])
        elif url.path == "/render":
            self.reply(200, render(spans, trace_id).encode(), "text/plain; charset=utf-8")
        elif url.path == "/stats":
            self.reply(200, stats)
        else:
            self.reply(404, {"error": "not found"})

    def do_POST(self):
        path = urllib.parse.urlsplit(self.path).path
        try:
            raw = self.body()
        except (Invalid, ValueError) as e:
            self.reply(400, {"error": str(e)})
            return
        if path == "/v1/traces":
            self.export(raw)
        elif path == "/control":
            self.set_control(raw)
        elif path == "/reset":
            with self.state.lock:
                self.state.reset()
            self.reply(200, {})
        else:
            self.reply(404, {"error": "not found"})

    def export(self, raw):
        with self.state.lock:
            self.state.stats["requests"] += 1
            latency = self.state.control["latency_ms"] / 1000.0
            fail = self.state.control["fail_next"] > 0
            if fail:
                self.state.control["fail_next"] -= 1
                self.state.stats["failed"] += 1
            fail_status = self.state.control["fail_status"]
        if latency > 0:
            time.sleep(latency)
        if fail:
            self.reply(fail_status, {"error": "failing on purpose"})
            return
        content_type = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type != "application/json":
            self.reject(415, f"Content-Type must be application/json, not {content_type!r}")
            return
        try:
            spans = check_request(json.loads(raw))
        except (ValueError, UnicodeDecodeError) as e:
            self.reject(400, f"body is not JSON: {e}")
            return
        except Invalid as e:
            self.reject(400, str(e))
            return
        with self.state.lock:
            self.state.spans.extend(spans)
            self.state.stats["accepted"] += 1
            self.state.stats["spans"] += len(spans)
        self.reply(200, {"partialSuccess": {}})

    def reject(self, status, why):
        log(f"rejected an export: {why}")
        with self.state.lock:
            self.state.stats["rejected"] += 1
        self.reply(status, {"error": why})

    def set_control(self, raw):
        try:
            changes = json.loads(raw or b"{}")
            only(changes, {"fail_next", "fail_status", "latency_ms"}, "control")
            for key, value in changes.items():
                require(isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0, key,
                        "must be a non-negative number")
        except (ValueError, Invalid) as e:
            self.reply(400, {"error": str(e)})
            return
        with self.state.lock:
            self.state.control.update(changes)
            control = dict(self.state.control)
        self.reply(200, control)


def write_port_file(path, port):
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="ascii") as f:
        f.write(f"{port}\n")
    os.replace(tmp, path)


def main():
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4318, help="0 picks a free port (default 4318, OTLP/HTTP's)")
    parser.add_argument("--port-file", help="where to write the bound port")
    args = parser.parse_args()
    Handler.state = State()
    server = Server((args.host, args.port), Handler)
    if args.port_file:
        write_port_file(args.port_file, server.server_address[1])
    log(f"listening on {args.host}:{server.server_address[1]}")

    def stop(signum, frame):
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.serve_forever()
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
