#!/usr/bin/python3
"""Local SMTP server that captures mail (integration tests, benchmarks, demo).

A real SMTP server (Debian's python3-aiosmtpd) on one asyncio loop.  Every
accepted message is appended to the mailbox file as one JSON line, flushed
before the 250 reply to DATA:

    {"mail_from": "...", "rcpt_tos": ["..."], "subject": "..." or null,
     "message_id": "<...>" or null, "headers": {name: value, ...},
     "body": "...", "received_at": 1700000000.123}

``headers`` holds every header (decoded; the last of a repeated name wins);
``body`` is the decoded text body (line ends "\\n"), for a multipart message
its first text/plain part ("" when there is none).

Recipients are judged at RCPT TO by the address's local part:

    ``+tempfail``  451 4.3.0 Temporary failure
    ``+reject``    550 5.1.1 Mailbox unavailable
    ``+flaky``     451 the first time that exact address is given since start,
                   accepted afterwards
    anything else  accepted

``--latency-ms`` delays the reply to DATA (without blocking other clients).
The bound port is written atomically to --port-file once the server listens,
so ``--port 0`` works.  SIGTERM/SIGINT exit 0.
"""

import argparse
import asyncio
import email
import email.errors
import email.header
import email.policy
import json
import logging
import os
import re
import signal
import sys
import time

try:
    from aiosmtpd.smtp import SMTP
except ImportError:
    # `python3` on PATH may be another interpreter (pyenv, venv) than Debian's, which
    # python3-aiosmtpd is installed for; it is pure Python, so borrow Debian's copy.
    sys.path.append("/usr/lib/python3/dist-packages")
    from aiosmtpd.smtp import SMTP

PROG = "smtp_sink"


def log(message):
    sys.stderr.write(f"{PROG}: {message}\n")
    sys.stderr.flush()


def write_port_file(path, port):
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="ascii") as f:
        f.write(f"{port}\n")
    os.replace(tmp, path)


_FOLD_RE = re.compile(r"\r?\n(?=[ \t])")


def _header_text(value):
    """Unfolded, RFC 2047-decoded text of a header value parsed with the compat32 policy."""
    if isinstance(value, email.header.Header):
        value = str(value)
    # Raw 8-bit bytes (SMTPUTF8 mail) arrive as surrogate escapes: read them as UTF-8.
    value = value.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="replace")
    value = _FOLD_RE.sub("", value)
    if "=?" in value:
        try:
            value = str(email.header.make_header(email.header.decode_header(value)))
        except (LookupError, ValueError, UnicodeError, email.errors.HeaderParseError):
            pass
    return value


def _text_of(part):
    payload = part.get_payload(decode=True)
    if payload is None:
        payload = part.get_payload()
        return payload if isinstance(payload, str) else ""
    charset = part.get_content_charset()
    if charset in (None, "us-ascii", "ascii"):
        charset = "utf-8"  # undeclared 8-bit text is utf-8 in practice
    try:
        return payload.decode(charset, errors="replace")
    except LookupError:
        return payload.decode("utf-8", errors="replace")


def parse_message(raw):
    """Return (subject, message_id, headers, body) of the raw message bytes.

    The compat32 policy with hand-decoded headers: the modern policy costs ~1 ms a
    message, which would make parsing the sink's bottleneck.
    """
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    headers = {name: _header_text(value) for name, value in msg.raw_items()}
    lowered = {name.lower(): value for name, value in headers.items()}
    if msg.is_multipart():
        body = ""
        for part in msg.walk():
            if part.get_content_type() == "text/plain" and not part.is_multipart():
                body = _text_of(part)
                break
    else:
        body = _text_of(msg)
    message_id = lowered.get("message-id")
    if message_id is not None:
        message_id = message_id.strip()
    return lowered.get("subject"), message_id, headers, body


class SinkHandler:
    def __init__(self, mailbox, latency_s):
        self.mailbox = mailbox
        self.latency_s = latency_s
        self.flaky_seen = set()
        self.messages = 0

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        local = address.rsplit("@", 1)[0]
        if "+tempfail" in local:
            return "451 4.3.0 Temporary failure"
        if "+reject" in local:
            return "550 5.1.1 Mailbox unavailable"
        if "+flaky" in local and address not in self.flaky_seen:
            self.flaky_seen.add(address)
            return "451 4.3.0 Temporary failure"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        raw = envelope.original_content
        if isinstance(raw, str):
            raw = raw.encode("utf-8", errors="surrogateescape")
        raw = raw.replace(b"\r\n", b"\n")  # SMTP's CRLF -> "\n" in the parsed text
        try:
            subject, message_id, headers, body = parse_message(raw)
        except Exception as e:  # never lose a message to a parser bug
            log(f"cannot parse a message ({e!r}); stored with its raw text as body")
            subject, message_id, headers = None, None, {}
            body = raw.decode("utf-8", errors="replace")
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": list(envelope.rcpt_tos),
            "subject": subject,
            "message_id": message_id,
            "headers": headers,
            "body": body,
            "received_at": time.time(),
        }
        self.mailbox.write(json.dumps(record) + "\n")
        self.mailbox.flush()
        self.messages += 1
        if self.latency_s > 0:
            await asyncio.sleep(self.latency_s)
        return "250 2.0.0 OK: message accepted"


async def serve(args):
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    try:
        mailbox = open(args.mailbox, "a", encoding="utf-8")
    except OSError as e:
        log(f"cannot open the mailbox: {e}")
        return 1
    handler = SinkHandler(mailbox, args.latency_ms / 1000.0)

    def factory():
        # hostname given so aiosmtpd does not resolve our FQDN for every connection
        return SMTP(handler, hostname="smtp-sink.local", ident="Conveyor smtp_sink",
                    enable_SMTPUTF8=True, loop=loop)

    try:
        server = await loop.create_server(factory, host=args.host, port=args.port,
                                          backlog=1024, reuse_address=True)
    except OSError as e:
        log(f"cannot listen on {args.host}:{args.port}: {e}")
        mailbox.close()
        return 1
    port = server.sockets[0].getsockname()[1]
    try:
        write_port_file(args.port_file, port)
    except OSError as e:
        log(f"cannot write the port file: {e}")
        server.close()
        mailbox.close()
        return 1
    log(f"listening on {args.host}:{port}, mailbox {args.mailbox}")

    await stop.wait()
    log(f"shutting down ({handler.messages} messages captured)")
    server.close()
    mailbox.close()
    return 0


def main():
    parser = argparse.ArgumentParser(
        prog="smtp_sink.py",
        description="SMTP server capturing every accepted message as a JSON line in a mailbox "
                    "file. Recipients with +tempfail get 451, +reject 550, +flaky 451 once.")
    parser.add_argument("--port-file", required=True,
                        help="file receiving the bound port (written atomically)")
    parser.add_argument("--mailbox", required=True, help="JSON-lines file messages are appended to")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port (default 0: any free port)")
    parser.add_argument("--latency-ms", type=float, default=0,
                        help="delay before the reply to DATA (default 0)")
    args = parser.parse_args()
    if args.latency_ms < 0:
        parser.error("--latency-ms must be non-negative")

    logging.basicConfig(level=logging.WARNING, format=f"{PROG}: %(name)s: %(message)s")
    logging.getLogger("mail.log").setLevel(logging.WARNING)

    code = asyncio.run(serve(args))
    sys.stderr.flush()
    # Open client connections still have tasks on the (now closed) loop; leave without fuss.
    os._exit(code)


if __name__ == "__main__":
    main()
