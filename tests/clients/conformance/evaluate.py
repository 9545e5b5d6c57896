#!/usr/bin/env python3
"""Judges a run of python-fido2's tests/device against fidoseald.

Reads pytest's JUnit XML and expected-failures.txt; prints the counts and
every failure with its listed reason; exits 0 when every failure is listed
(kind xfail) and at least one test passed, 1 otherwise.

Usage: evaluate.py JUNIT_XML EXPECTED_FAILURES [--deselect-args]
  --deselect-args  only print the pytest --deselect arguments (one per line)
"""

import sys
import xml.etree.ElementTree as ET


def load_expected(path):
    entries = []
    with open(path) as f:
        for raw in f:
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            kind, test, reason = (line.split(None, 2) + ["", ""])[:3]
            if kind not in ("xfail", "deselect"):
                raise SystemExit(f"{path}: unknown kind {kind!r} in: {line}")
            entries.append((kind, test, reason))
    return entries


def matches(test_id, pattern):
    return test_id == pattern or ("[" not in pattern and test_id.startswith(pattern + "["))


def main(argv):
    if len(argv) >= 3 and argv[2] == "--deselect-args":
        for kind, test, _ in load_expected(argv[1]):
            if kind == "deselect":
                print(f"--deselect=tests/device/{test}")
        return 0
    junit, expected_path = argv[1], argv[2]
    expected = load_expected(expected_path)
    root = ET.parse(junit).getroot()
    counts = {"passed": 0, "failed": 0, "expected failures": 0, "unexpected passes": 0,
              "skipped": 0}
    lines = []
    for case in root.iter("testcase"):
        module = case.get("classname", "").split(".")[-1]
        test_id = f"{module}.py::{case.get('name')}"
        bad = case.find("failure")
        if bad is None:
            bad = case.find("error")
        listed = [e for e in expected if e[0] == "xfail" and matches(test_id, e[1])]
        if case.find("skipped") is not None:
            counts["skipped"] += 1
        elif bad is not None:
            msg = (bad.get("message") or "").splitlines()[0][:200] if bad.get("message") else ""
            if listed:
                counts["expected failures"] += 1
                lines.append(f"XFAIL {test_id}: {msg}\n      listed reason: {listed[0][2]}")
            else:
                counts["failed"] += 1
                lines.append(f"FAIL  {test_id}: {msg}")
        else:
            if listed:
                counts["unexpected passes"] += 1
                lines.append(f"XPASS {test_id}: listed as expected to fail, passed (remove it from {expected_path})")
            else:
                counts["passed"] += 1
    desel = [e for e in expected if e[0] == "deselect"]
    for _, test, reason in desel:
        lines.append(f"DESELECTED {test}\n      reason: {reason}")
    for l in lines:
        print(l)
    summary = ", ".join(f"{v} {k}" for k, v in counts.items())
    summary += f", {len(desel)} deselected pattern(s)"
    print(f"conformance: {summary}")
    ok = counts["failed"] == 0 and counts["passed"] > 0
    print(f"{counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
