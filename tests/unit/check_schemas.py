#!/usr/bin/env python3
"""Checks the job payload schemas and reports jsonschema's verdict on every sample.

Usage: check_schemas.py SCHEMA_DIR

SCHEMA_DIR holds one <type>.schema.json per job type (JSON Schema draft 2020-12) and
SCHEMA_DIR/samples/<type>.json, each {"valid": [payload, ...], "invalid": [{"payload": ..., "why": ...}, ...]}.

Prints one line per sample to stdout, in order of type, section and index:

    <type>\t<valid|invalid>\t<index>\t<accept|reject>

where accept/reject is jsonschema's verdict on the payload. Exits 1, with the reasons on stderr, if a schema is
not itself a valid draft 2020-12 schema, a file is not strict JSON or not in the expected shape, or a samples file
has no schema or a schema has no samples file; exits 0 otherwise, whether or not a verdict matches its section
(the caller compares).
"""

import json
import sys
from pathlib import Path

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

DRAFT_2020_12 = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_SUFFIX = ".schema.json"
SAMPLES_SUFFIX = ".json"


class Problem(Exception):
    pass


def _no_duplicates(pairs):
    seen = {}
    for key, value in pairs:
        if key in seen:
            # Parsers disagree on which duplicate wins, so a file that has one cannot mean one payload.
            raise Problem(f"duplicate key {key!r}")
        seen[key] = value
    return seen


def _no_constants(name):
    raise Problem(f"{name} is not JSON")


def load_json(path):
    """Strict JSON: no NaN/Infinity, no duplicate keys."""
    try:
        text = path.read_text(encoding="utf-8")
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except Problem as error:
        raise Problem(f"{path}: {error}") from None
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise Problem(f"{path}: {error}") from None


def sample_payloads(path, samples):
    """Yields (section, index, payload) from a parsed samples file, or raises Problem if it is malformed."""
    if not isinstance(samples, dict) or set(samples) != {"valid", "invalid"}:
        raise Problem(f'{path}: expected an object with exactly the keys "valid" and "invalid"')
    for section in ("valid", "invalid"):
        if not isinstance(samples[section], list):
            raise Problem(f'{path}: "{section}" is not an array')
    out = [("valid", index, payload) for index, payload in enumerate(samples["valid"])]
    for index, entry in enumerate(samples["invalid"]):
        if not isinstance(entry, dict) or set(entry) != {"payload", "why"} or not isinstance(entry["why"], str):
            raise Problem(f'{path}: invalid[{index}] is not {{"payload": ..., "why": "<reason>"}}')
        out.append(("invalid", index, entry["payload"]))
    return out


def main(argv):
    if len(argv) != 2:
        print(f"usage: {Path(argv[0]).name} SCHEMA_DIR", file=sys.stderr)
        return 1
    schema_dir = Path(argv[1])
    samples_dir = schema_dir / "samples"
    if not schema_dir.is_dir():
        print(f"{schema_dir}: not a directory", file=sys.stderr)
        return 1

    problems = []
    schema_files = {p.name[: -len(SCHEMA_SUFFIX)]: p for p in schema_dir.glob("*" + SCHEMA_SUFFIX) if p.is_file()}
    sample_files = {}
    if samples_dir.is_dir():
        sample_files = {p.name[: -len(SAMPLES_SUFFIX)]: p for p in samples_dir.glob("*" + SAMPLES_SUFFIX)
                        if p.is_file()}
    if not schema_files:
        problems.append(f"{schema_dir}: no *{SCHEMA_SUFFIX} files")
    for job_type in sorted(set(sample_files) - set(schema_files)):
        problems.append(f"{sample_files[job_type]}: no schema {schema_dir / (job_type + SCHEMA_SUFFIX)}")
    for job_type in sorted(set(schema_files) - set(sample_files)):
        problems.append(f"{schema_files[job_type]}: no samples file {samples_dir / (job_type + SAMPLES_SUFFIX)}")

    for job_type in sorted(schema_files):
        path = schema_files[job_type]
        try:
            schema = load_json(path)
            if not isinstance(schema, dict) or schema.get("$schema") != DRAFT_2020_12:
                raise Problem(f'{path}: "$schema" is not "{DRAFT_2020_12}"')
            try:
                Draft202012Validator.check_schema(schema)
            except SchemaError as error:
                raise Problem(f"{path}: not a valid draft 2020-12 schema: {error.message} "
                              f"(at {'/'.join(str(part) for part in error.path) or 'the root'})") from None
            validator = Draft202012Validator(schema)
            if job_type not in sample_files:
                continue
            samples_path = sample_files[job_type]
            for section, index, payload in sample_payloads(samples_path, load_json(samples_path)):
                verdict = "accept" if validator.is_valid(payload) else "reject"
                print(f"{job_type}\t{section}\t{index}\t{verdict}")
        except Problem as problem:
            problems.append(str(problem))

    sys.stdout.flush()
    for problem in problems:
        print(f"check_schemas: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
