#!/usr/bin/python3
"""Local stand-in for a card payment gateway (integration tests, benchmarks, demo).

Two listeners:

* the gateway (plain HTTP/1.1, or HTTPS when --tls-cert/--tls-key are given)
  serving ``POST /v1/charges`` and ``POST /v1/refunds`` with Stripe-like
  idempotency keys;
* the control listener (plain HTTP/1.1, no auth) through which a test steers
  the gateway's behaviour and reads what it did.

Gateway: ``POST /v1/charges``
    Headers: ``Authorization: Bearer <key>`` (only when --api-key is given,
    else 401 unauthorized), ``Idempotency-Key`` (1..255 chars, else 400).
    Body (JSON object, at most 64 KiB, else 413)::

        {"amount_cents": 1299, "currency": "EUR", "order_id": "o-1", "customer_id": "c-1"}

    amount_cents a positive integer, currency three uppercase letters,
    order_id/customer_id non-empty strings, else 400 invalid_request.
    201 {"id": "ch_<32 hex>", "status": "succeeded", ...the four fields} creates
    one charge; 402 card_declined when the customer or the amount is in the
    control's decline lists.  The final response of a key's first request is
    stored: the same key with the same body replays it (header
    ``Idempotent-Replayed: true``), with a different body gets 422
    idempotency_key_reuse, and while the first is still running 409
    request_in_progress.

    Per validated request, in this order, one of the control counters is
    consumed: ``fail_next`` (respond ``fail_status``, default 503, code
    "unavailable", nothing stored under the key), ``hang_next`` (sleep
    ``hang_ms`` then close without a response, nothing stored),
    ``reset_after_charge_next`` (process normally, storing the charge, then
    abort the connection with a TCP RST instead of responding).
    ``latency_ms`` delays every /v1/charges response.

Gateway: ``POST /v1/refunds``
    Same headers, idempotency and failure counters as charges (a key is
    scoped to its endpoint).  Body::

        {"charge_id": "ch_...", "amount_cents": 1299}

    amount_cents optional (default: what is left of the charge).
    201 {"id": "re_<32 hex>", "status": "succeeded", "charge_id",
    "amount_cents", "currency", "order_id"} refunds the charge; 404
    resource_missing for an unknown charge; 400 charge_already_refunded when
    nothing is left, amount_too_large when more than is left is asked for;
    402 refund_declined when the charge's order is in the control's
    decline_refund_orders list.  ``latency_ms`` delays these responses too.

Gateway: ``GET /v1/charges?order_id=X``
    {"data": [...]}: the charges made for the order, each with "id",
    "status", "amount_cents", "amount_refunded", "currency", "order_id",
    "customer_id" (how a shop finds a charge whose response it never got).

Control listener:
    ``POST /control`` {key: value, ...}  merge keys into the state (latency_ms,
        fail_next, fail_status, hang_next, hang_ms, reset_after_charge_next,
        decline_customers, decline_amounts, decline_refund_orders, refuse);
        unknown key or bad value
        -> 400; returns the whole state.  ``refuse: true`` closes the gateway
        listener (new connections get ECONNREFUSED; idle keep-alive
        connections are shut down too), ``false`` binds it again on the
        same port.
    ``GET /control``   the state.
    ``POST /reset``    state back to the start-up defaults; charges, stats and
        idempotency records cleared; listener serving again.
    ``GET /stats``     {"requests", "by_status", "charges", "charges_by_order",
        "declines", "refunds", "refunds_by_order", "refund_declines",
        "replays", "idempotency_keys"}.
    ``GET /charges[?order_id=X]``  list of the charges created, each with the
        idempotency key and the traceparent header it arrived with.
    ``GET /refunds[?order_id=X]``  the same for the refunds made.

Each listener's bound port is written (atomically) to its port file once it
listens, so ``--port 0 --control-port 0`` works.  SIGTERM/SIGINT exit 0.
"""

import argparse
import http.server
import json
import os
import re
import signal
import socket
import socketserver
import ssl
import struct
import sys
import threading
import time
import urllib.parse

PROG = "payment_gateway"
MAX_BODY = 64 * 1024
CURRENCY_RE = re.compile(r"[A-Z]{3}")

REASONS = {
    200: "OK", 201: "Created", 400: "Bad Request", 401: "Unauthorized", 402: "Payment Required",
    404: "Not Found", 405: "Method Not Allowed", 409: "Conflict", 411: "Length Required",
    413: "Payload Too Large", 422: "Unprocessable Entity", 500: "Internal Server Error",
    502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout",
}


def log(message):
    sys.stderr.write(f"{PROG}: {message}\n")
    sys.stderr.flush()


def write_port_file(path, port):
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="ascii") as f:
        f.write(f"{port}\n")
    os.replace(tmp, path)


def error_body(code, message=None):
    err = {"code": code}
    if message is not None:
        err["message"] = message
    return {"error": err}


def dumps(obj):
    return json.dumps(obj, separators=(",", ":")).encode()


class BadRequest(Exception):
    pass


# --------------------------------------------------------------------------- state

def is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def non_negative_int(value):
    return is_int(value) and value >= 0


CONTROL_VALIDATORS = {
    "latency_ms": (lambda v: (is_int(v) or isinstance(v, float)) and not isinstance(v, bool) and v >= 0,
                   "a non-negative number"),
    "fail_next": (non_negative_int, "a non-negative integer"),
    "fail_status": (lambda v: is_int(v) and 100 <= v <= 599, "an HTTP status code"),
    "hang_next": (non_negative_int, "a non-negative integer"),
    "hang_ms": (lambda v: (is_int(v) or isinstance(v, float)) and not isinstance(v, bool) and v >= 0,
                "a non-negative number"),
    "reset_after_charge_next": (non_negative_int, "a non-negative integer"),
    "decline_customers": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
                          "a list of strings"),
    "decline_amounts": (lambda v: isinstance(v, list) and all(is_int(x) for x in v), "a list of integers"),
    "decline_refund_orders": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
                              "a list of strings"),
    "refuse": (lambda v: isinstance(v, bool), "a boolean"),
}


class State:
    """Everything mutable, guarded by one lock."""

    def __init__(self, default_latency_ms):
        self.lock = threading.Lock()
        self.default_latency_ms = default_latency_ms
        self.reset_locked()

    def default_control(self):
        return {
            "latency_ms": self.default_latency_ms,
            "fail_next": 0,
            "fail_status": 503,
            "hang_next": 0,
            "hang_ms": 30000,
            "reset_after_charge_next": 0,
            "decline_customers": [],
            "decline_amounts": [],
            "decline_refund_orders": [],
            "refuse": False,
        }

    def reset_locked(self):
        self.control = self.default_control()
        self.decline_customers = set()
        self.decline_amounts = set()
        self.decline_refund_orders = set()
        self.latency_s = self.default_latency_ms / 1000.0
        self.requests = 0
        self.by_status = {}
        self.charges = []
        self.charges_by_order = {}
        self.declines = 0
        self.charges_by_id = {}
        self.refunds = []
        self.refunds_by_order = {}
        self.refund_declines = 0
        self.replays = 0
        self.seen_keys = set()
        # key -> [fingerprint, status or None while in progress, body bytes]
        self.records = {}

    def control_view_locked(self):
        view = dict(self.control)
        view["decline_customers"] = list(view["decline_customers"])
        view["decline_amounts"] = list(view["decline_amounts"])
        view["decline_refund_orders"] = list(view["decline_refund_orders"])
        return view

    def apply_control_locked(self, changes):
        self.control.update(changes)
        self.decline_customers = set(self.control["decline_customers"])
        self.decline_amounts = set(self.control["decline_amounts"])
        self.decline_refund_orders = set(self.control["decline_refund_orders"])
        self.latency_s = self.control["latency_ms"] / 1000.0

    def count_status_locked(self, status):
        key = str(status)
        self.by_status[key] = self.by_status.get(key, 0) + 1

    def stats_locked(self):
        return {
            "requests": self.requests,
            "by_status": dict(self.by_status),
            "charges": len(self.charges),
            "charges_by_order": dict(self.charges_by_order),
            "declines": self.declines,
            "refunds": len(self.refunds),
            "refunds_by_order": dict(self.refunds_by_order),
            "refund_declines": self.refund_declines,
            "replays": self.replays,
            "idempotency_keys": len(self.seen_keys),
        }


# --------------------------------------------------------------------------- servers

class QuietServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 1024

    def server_bind(self):
        # HTTPServer.server_bind would resolve the host name (socket.getfqdn): skip the DNS lookup.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def handle_error(self, request, client_address):
        exc = sys.exc_info()[1]
        if isinstance(exc, (OSError, ssl.SSLError, ValueError)):
            return  # clients that vanish, TLS handshakes that fail: not our business
        log(f"error serving {client_address}: {exc!r}")


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "conveyor-payment-gateway"
    disable_nagle_algorithm = True

    def log_message(self, format, *args):  # no per-request logging
        pass

    def send_json(self, status, obj=None, body=None, extra_headers=""):
        if body is None:
            body = dumps(obj)
        close = "Connection: close\r\n" if self.close_connection else ""
        head = (f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                f"{extra_headers}{close}\r\n").encode("latin-1")
        self.wfile.write(head + body)

    def read_body(self):
        """Return the request body; None when it exceeds MAX_BODY (connection then closes)."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks, total = [], 0
            while True:
                line = self.rfile.readline(1024)
                if not line:
                    raise BadRequest("truncated chunked body")
                try:
                    size = int(line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise BadRequest("bad chunk size") from None
                if size == 0:
                    while True:  # trailers
                        line = self.rfile.readline(8192)
                        if line in (b"\r\n", b"\n", b""):
                            break
                    return b"".join(chunks)
                total += size
                if total > MAX_BODY:
                    self.close_connection = True
                    return None
                data = self.rfile.read(size)
                if len(data) != size:
                    raise BadRequest("truncated chunked body")
                chunks.append(data)
                self.rfile.readline(16)
        length = self.headers.get("Content-Length")
        if length is None:
            return b""
        try:
            n = int(length)
            if n < 0:
                raise ValueError
        except ValueError:
            raise BadRequest("bad Content-Length") from None
        if n > MAX_BODY:
            self.close_connection = True
            return None
        data = self.rfile.read(n) if n else b""
        if len(data) != n:
            raise BadRequest("truncated body")
        return data


def json_object(body):
    try:
        req = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("body is not valid JSON") from None
    if not isinstance(req, dict):
        raise BadRequest("body must be a JSON object")
    return req


def parse_charge(body):
    req = json_object(body)
    amount = req.get("amount_cents")
    if not is_int(amount) or amount <= 0:
        raise BadRequest("amount_cents must be a positive integer")
    currency = req.get("currency")
    if not isinstance(currency, str) or not CURRENCY_RE.fullmatch(currency):
        raise BadRequest("currency must be three uppercase letters")
    for field in ("order_id", "customer_id"):
        value = req.get(field)
        if not isinstance(value, str) or not value:
            raise BadRequest(f"{field} must be a non-empty string")
    return req


def parse_refund(body):
    req = json_object(body)
    charge_id = req.get("charge_id")
    if not isinstance(charge_id, str) or not charge_id:
        raise BadRequest("charge_id must be a non-empty string")
    amount = req.get("amount_cents")
    if amount is not None and (not is_int(amount) or amount <= 0):
        raise BadRequest("amount_cents must be a positive integer")
    return req


ENDPOINTS = {"/v1/charges": parse_charge, "/v1/refunds": parse_refund}


def create_charge_locked(state, req, key, traceparent):
    """The response to a new charge request: (status, body bytes)."""
    if req["customer_id"] in state.decline_customers or req["amount_cents"] in state.decline_amounts:
        state.declines += 1
        return 402, dumps(error_body("card_declined", "Your card was declined."))
    charge = {
        "id": "ch_" + os.urandom(16).hex(),
        "status": "succeeded",
        "amount_cents": req["amount_cents"],
        "currency": req["currency"],
        "order_id": req["order_id"],
        "customer_id": req["customer_id"],
    }
    listed = dict(charge, idempotency_key=key, traceparent=traceparent, created_at=time.time(), refunded_cents=0)
    state.charges.append(listed)
    state.charges_by_id[charge["id"]] = listed
    order = req["order_id"]
    state.charges_by_order[order] = state.charges_by_order.get(order, 0) + 1
    return 201, dumps(charge)


def create_refund_locked(state, req, key, traceparent):
    """The response to a new refund request: (status, body bytes)."""
    charge = state.charges_by_id.get(req["charge_id"])
    if charge is None:
        return 404, dumps(error_body("resource_missing", f"no such charge: {req['charge_id']}"))
    left = charge["amount_cents"] - charge["refunded_cents"]
    if left == 0:
        return 400, dumps(error_body("charge_already_refunded", "the charge has been refunded already"))
    amount = req.get("amount_cents", left)
    if amount > left:
        return 400, dumps(error_body("amount_too_large", f"at most {left} is left to refund"))
    if charge["order_id"] in state.decline_refund_orders:
        state.refund_declines += 1
        return 402, dumps(error_body("refund_declined", "The refund was declined."))
    charge["refunded_cents"] += amount
    refund = {
        "id": "re_" + os.urandom(16).hex(),
        "status": "succeeded",
        "charge_id": charge["id"],
        "amount_cents": amount,
        "currency": charge["currency"],
        "order_id": charge["order_id"],
    }
    state.refunds.append(dict(refund, idempotency_key=key, traceparent=traceparent, created_at=time.time()))
    order = charge["order_id"]
    state.refunds_by_order[order] = state.refunds_by_order.get(order, 0) + 1
    return 201, dumps(refund)


CREATORS = {"/v1/charges": create_charge_locked, "/v1/refunds": create_refund_locked}


class GatewayHandler(Handler):
    app = None  # set by App

    def setup(self):
        app = self.app
        if app.tls_context is not None:
            self.request = app.tls_context.wrap_socket(self.request, server_side=True)
        super().setup()
        with app.conns_lock:
            app.conns.add(self.connection)

    def finish(self):
        app = self.app
        with app.conns_lock:
            app.conns.discard(self.connection)
        try:
            super().finish()
        finally:
            if app.tls_context is not None:
                try:
                    self.connection.close()
                except OSError:
                    pass

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        if url.path != "/v1/charges":
            self.not_found()
            return
        self.discard_body()
        if self.app.auth_header is not None and self.headers.get("Authorization") != self.app.auth_header:
            self.send_json(401, error_body("unauthorized"))
            return
        order = urllib.parse.parse_qs(url.query).get("order_id", [None])[0]
        if not order:
            self.send_json(400, error_body("invalid_request", "order_id is required"))
            return
        state = self.app.state
        with state.lock:
            state.requests += 1
            found = [{"id": c["id"], "status": c["status"], "amount_cents": c["amount_cents"],
                      "amount_refunded": c["refunded_cents"], "currency": c["currency"],
                      "order_id": c["order_id"], "customer_id": c["customer_id"]}
                     for c in state.charges if c["order_id"] == order]
            state.count_status_locked(200)
        self.send_json(200, {"data": found})

    def do_PUT(self):
        self.not_found()

    def do_DELETE(self):
        self.not_found()

    def not_found(self):
        path = self.path.split("?", 1)[0]
        if path in ENDPOINTS:
            self.discard_body()
            allow = "GET, POST" if path == "/v1/charges" else "POST"
            self.send_json(405, error_body("method_not_allowed"), extra_headers=f"Allow: {allow}\r\n")
        else:
            self.discard_body()
            self.send_json(404, error_body("not_found"))

    def discard_body(self):
        try:
            if self.read_body() is None:
                self.close_connection = True
        except BadRequest:
            self.close_connection = True

    def do_POST(self):
        path = self.path.split("?", 1)[0]
        if path not in ENDPOINTS:
            self.not_found()
            return
        app = self.app
        state = app.state
        with state.lock:
            state.requests += 1
            latency = state.latency_s
        try:
            body = self.read_body()
        except BadRequest as e:
            self.close_connection = True
            self.finish_response(latency, 400, error_body("invalid_request", str(e)))
            return
        if body is None:
            self.finish_response(latency, 413, error_body("payload_too_large",
                                                          f"body exceeds {MAX_BODY} bytes"))
            return
        if app.auth_header is not None and self.headers.get("Authorization") != app.auth_header:
            self.finish_response(latency, 401, error_body("unauthorized"))
            return
        key = self.headers.get("Idempotency-Key")
        if key is None or not 1 <= len(key) <= 255:
            self.finish_response(latency, 400, error_body(
                "invalid_request", "Idempotency-Key header of 1..255 characters is required"))
            return
        try:
            req = ENDPOINTS[path](body)
        except BadRequest as e:
            self.finish_response(latency, 400, error_body("invalid_request", str(e)))
            return
        fingerprint = json.dumps(req, sort_keys=True, separators=(",", ":"))
        key = (path, key)

        mode = None
        with state.lock:
            ctl = state.control
            state.seen_keys.add(key)
            if ctl["fail_next"] > 0:
                ctl["fail_next"] -= 1
                mode = "fail"
                fail_status = ctl["fail_status"]
            elif ctl["hang_next"] > 0:
                ctl["hang_next"] -= 1
                mode = "hang"
                hang_s = ctl["hang_ms"] / 1000.0
            else:
                if ctl["reset_after_charge_next"] > 0:
                    ctl["reset_after_charge_next"] -= 1
                    mode = "reset"
                record = state.records.get(key)
                if record is None:
                    state.records[key] = [fingerprint, None, None]
                    outcome = "new"
                elif record[0] != fingerprint:
                    outcome = "reuse"
                elif record[1] is None:
                    outcome = "in_progress"
                else:
                    outcome = "replay"
                    state.replays += 1
                    stored_status, stored_body = record[1], record[2]

        if mode == "fail":
            self.finish_response(latency, fail_status, error_body("unavailable"))
            return
        if mode == "hang":
            if hang_s > 0:
                time.sleep(hang_s)
            with state.lock:
                state.count_status_locked("hang")
            self.close_connection = True
            return

        if outcome == "new":
            try:
                if latency > 0:
                    time.sleep(latency)
                latency = 0
                with state.lock:
                    status, out = CREATORS[path](state, req, key[1], self.headers.get("traceparent"))
                    record = state.records.get(key)
                    if record is not None and record[0] == fingerprint and record[1] is None:
                        record[1], record[2] = status, out
            except BaseException:
                with state.lock:
                    record = state.records.get(key)
                    if record is not None and record[1] is None:
                        del state.records[key]
                raise
            extra = ""
        elif outcome == "replay":
            status, out, extra = stored_status, stored_body, "Idempotent-Replayed: true\r\n"
        elif outcome == "reuse":
            status, extra = 422, ""
            out = dumps(error_body("idempotency_key_reuse",
                                   "Idempotency-Key was already used with a different body"))
        else:
            status, extra = 409, ""
            out = dumps(error_body("request_in_progress",
                                   "a request with this Idempotency-Key is still in progress"))

        if mode == "reset":
            if latency > 0:
                time.sleep(latency)
            self.abort_with_rst()
            return
        self.finish_response(latency, status, body=out, extra_headers=extra)

    def finish_response(self, latency, status, obj=None, body=None, extra_headers=""):
        if latency > 0:
            time.sleep(latency)
        with self.app.state.lock:
            self.app.state.count_status_locked(status)
        self.send_json(status, obj, body=body, extra_headers=extra_headers)

    def abort_with_rst(self):
        with self.app.state.lock:
            self.app.state.count_status_locked("reset")
        self.close_connection = True
        conn = self.connection
        try:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        # The buffered reader holds a reference to the socket; drop it so close() is real.
        try:
            self.rfile.close()
        except OSError:
            pass
        if isinstance(conn, ssl.SSLSocket):
            # Close the descriptor without a TLS close_notify.
            try:
                fd = conn.detach()
                os.close(fd)
            except OSError:
                pass
        else:
            try:
                conn.close()
            except OSError:
                pass


class ControlHandler(Handler):
    app = None

    def read_json(self):
        try:
            body = self.read_body()
        except BadRequest as e:
            self.close_connection = True
            raise BadRequest(str(e)) from None
        if body is None:
            raise BadRequest("body too large")
        if not body.strip():
            return {}
        try:
            return json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise BadRequest("body is not valid JSON") from None

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        state = self.app.state
        if url.path == "/control":
            with state.lock:
                view = state.control_view_locked()
            self.send_json(200, view)
        elif url.path == "/stats":
            with state.lock:
                stats = state.stats_locked()
            self.send_json(200, stats)
        elif url.path in ("/charges", "/refunds"):
            query = urllib.parse.parse_qs(url.query)
            order = query.get("order_id", [None])[0]
            with state.lock:
                made = state.charges if url.path == "/charges" else state.refunds
                listed = [dict(m) for m in made if order is None or m["order_id"] == order]
            self.send_json(200, listed)
        else:
            self.send_json(404, error_body("not_found"))

    def do_POST(self):
        path = urllib.parse.urlsplit(self.path).path
        try:
            payload = self.read_json()
        except BadRequest as e:
            self.send_json(400, error_body("invalid_request", str(e)))
            return
        if path == "/control":
            self.post_control(payload)
        elif path == "/reset":
            self.post_reset()
        else:
            self.send_json(404, error_body("not_found"))

    def post_control(self, payload):
        if not isinstance(payload, dict):
            self.send_json(400, error_body("invalid_request", "body must be a JSON object"))
            return
        for key, value in payload.items():
            check = CONTROL_VALIDATORS.get(key)
            if check is None:
                self.send_json(400, error_body("invalid_request", f"unknown control key {key!r}"))
                return
            if not check[0](value):
                self.send_json(400, error_body("invalid_request", f"{key} must be {check[1]}"))
                return
        app = self.app
        with app.control_lock:  # serialises listener changes
            changes = {k: v for k, v in payload.items() if k != "refuse"}
            with app.state.lock:
                app.state.apply_control_locked(changes)
            if "refuse" in payload:
                try:
                    app.set_refuse(payload["refuse"])
                except OSError as e:
                    log(f"cannot bind the gateway listener again: {e}")
                    self.send_json(500, error_body("bind_failed", str(e)))
                    return
            with app.state.lock:
                view = app.state.control_view_locked()
        self.send_json(200, view)

    def post_reset(self):
        app = self.app
        with app.control_lock:
            try:
                app.set_refuse(False)
            except OSError as e:
                log(f"cannot bind the gateway listener again: {e}")
                self.send_json(500, error_body("bind_failed", str(e)))
                return
            with app.state.lock:
                app.state.reset_locked()
                view = app.state.control_view_locked()
        self.send_json(200, view)


class App:
    def __init__(self, args):
        self.args = args
        self.state = State(args.latency_ms)
        self.auth_header = f"Bearer {args.api_key}" if args.api_key is not None else None
        self.tls_context = None
        if args.tls_cert:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(args.tls_cert, args.tls_key)
            self.tls_context = ctx
        self.conns = set()
        self.conns_lock = threading.Lock()
        self.control_lock = threading.Lock()
        self.gateway_port = args.port
        self.gateway = None
        self.gateway_thread = None
        self.control = None
        self.control_thread = None

        app = self

        class _Gateway(GatewayHandler):
            pass

        class _Control(ControlHandler):
            pass

        _Gateway.app = app
        _Control.app = app
        self.gateway_handler = _Gateway
        self.control_handler = _Control

    @staticmethod
    def serve(server):
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                                  daemon=True)
        thread.start()
        return thread

    def listen_gateway(self):
        server = QuietServer((self.args.host, self.gateway_port), self.gateway_handler)
        self.gateway_port = server.server_address[1]
        self.gateway = server
        self.gateway_thread = self.serve(server)

    def close_gateway(self):
        server, self.gateway = self.gateway, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        # Idle keep-alive connections would otherwise keep working; make them see EOF.
        with self.conns_lock:
            conns = list(self.conns)
        for conn in conns:
            try:
                socket.socket.shutdown(conn, socket.SHUT_RD)
            except OSError:
                pass

    def set_refuse(self, refuse):
        if refuse and self.gateway is not None:
            self.close_gateway()
        elif not refuse and self.gateway is None:
            self.listen_gateway()
        with self.state.lock:
            self.state.control["refuse"] = self.gateway is None

    def start(self):
        self.listen_gateway()
        self.control = QuietServer((self.args.host, self.args.control_port), self.control_handler)
        self.control_thread = self.serve(self.control)
        write_port_file(self.args.port_file, self.gateway_port)
        write_port_file(self.args.control_port_file, self.control.server_address[1])
        scheme = "https" if self.tls_context else "http"
        log(f"gateway {scheme}://{self.args.host}:{self.gateway_port}/v1/charges, "
            f"control http://{self.args.host}:{self.control.server_address[1]}")

    def stop(self):
        if self.control is not None:
            self.control.shutdown()
            self.control.server_close()
        with self.control_lock:
            self.close_gateway()


def main():
    parser = argparse.ArgumentParser(
        prog="payment_gateway.py",
        description="Local stand-in for a payment gateway: POST /v1/charges with idempotency "
                    "keys, plus a control listener to inject failures and read statistics.",
        epilog="Control API (plain HTTP on the control port): POST /control {json}, GET /control, "
               "POST /reset, GET /stats, GET /charges[?order_id=X]. See the module docstring.")
    parser.add_argument("--port-file", required=True,
                        help="file receiving the gateway's bound port (written atomically)")
    parser.add_argument("--control-port-file", required=True,
                        help="file receiving the control listener's bound port")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="gateway port (default 0: any free port)")
    parser.add_argument("--control-port", type=int, default=0,
                        help="control port (default 0: any free port)")
    parser.add_argument("--tls-cert", metavar="PEM", help="serve the gateway over TLS with this certificate")
    parser.add_argument("--tls-key", metavar="PEM", help="private key for --tls-cert")
    parser.add_argument("--api-key", metavar="KEY",
                        help="require 'Authorization: Bearer KEY' on /v1/charges")
    parser.add_argument("--latency-ms", type=float, default=0,
                        help="initial delay added to every /v1/charges response (default 0)")
    args = parser.parse_args()
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    if args.latency_ms < 0:
        parser.error("--latency-ms must be non-negative")
    if args.latency_ms == int(args.latency_ms):
        args.latency_ms = int(args.latency_ms)

    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    app = App(args)
    try:
        app.start()
    except (OSError, ssl.SSLError) as e:
        log(f"cannot start: {e}")
        return 1
    while not stop.wait(0.5):
        pass
    log("shutting down")
    app.stop()
    sys.stderr.flush()
    sys.stdout.flush()
    # Connection threads (some possibly asleep in a hang) are daemons; leave without joining them.
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
