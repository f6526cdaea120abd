"""Failures per schemathesis check, from the run's NDJSON report.

Usage: summary.py REPORT_DIR [--by-operation] [--label TEXT] [--count] [--spec OPENAPI_JSON]

A failure is counted once per (operation, check, failure title and first line
of its message); schemathesis's own count (its summary) dedupes a little
differently. --by-operation lists, per check, each operation it flagged with
the status and problem code and detail of its answers (up to 3 different
ones). A failure of the stateful phase is put on the operation whose request
failed (counted with that operation's own) when --spec gives the paths to
match its URL against. --label names the run in the headings (check-contract.sh: the
backend). --count prints only the number of unique failures.
"""

import base64
import collections
import gzip
import glob
import json
import re
import sys
import urllib.parse
from collections.abc import Callable

ANSWERS_SHOWN = 3


def answer(it: dict | None) -> str:
    """A case's response: status, and problem code and detail."""
    if it:
        resp = it.get("response") or {}
        body = base64.b64decode((resp.get("content") or {}).get("$base64", "") or "")
        try:
            body = gzip.decompress(body)
        except OSError:
            pass
        try:
            doc = json.loads(body)
            what = f"{doc.get('code', '')}: {str(doc.get('detail', ''))[:140]}" if isinstance(doc, dict) else ""
        except ValueError:
            what = body[:80].decode(errors="replace")
        return f"{resp.get('status_code')} {what}"
    return ""


def operation_matcher(spec_path: str | None) -> Callable[[str, str], str | None]:
    """A function (method, url) -> "METHOD /template" of the spec's operation
    the request was made to (the most literal template wins: .../state over
    .../{action}), or None."""
    if not spec_path:
        return lambda method, url: None
    with open(spec_path, encoding="utf-8") as f:
        paths = json.load(f).get("paths", {})
    templates = []
    for template, ops in paths.items():
        regex = re.compile("^" + re.sub(r"\\\{[^/]*?\\\}", "[^/]+", re.escape(template)) + "$")
        literal = len(re.sub(r"\{[^/]*?\}", "", template))
        templates.append((literal, template, regex, {m.upper() for m in ops}))
    templates.sort(key=lambda t: -t[0])

    def match(method: str, url: str) -> str | None:
        path = urllib.parse.urlsplit(url).path
        for _, template, regex, methods in templates:
            if method.upper() in methods and regex.match(path):
                return f"{method.upper()} {template}"
        return None

    return match


def main() -> int:
    report_dir = sys.argv[1]
    run_label = sys.argv[sys.argv.index("--label") + 1] if "--label" in sys.argv[:-1] else ""
    tag = f"[{run_label}] " if run_label else ""
    paths = sorted(glob.glob(f"{report_dir}/ndjson-*.ndjson"))
    if not paths:
        print("?" if "--count" in sys.argv else "summary: no NDJSON report found")
        return 1
    spec = sys.argv[sys.argv.index("--spec") + 1] if "--spec" in sys.argv[:-1] else None
    operation_of = operation_matcher(spec)
    unique: dict[str, set[tuple[str, str]]] = collections.defaultdict(set)
    answers: dict[tuple[str, str], list[str]] = collections.defaultdict(list)
    ops: dict[str, set[str]] = collections.defaultdict(set)
    cases: collections.Counter[str] = collections.Counter()
    checked: collections.Counter[str] = collections.Counter()
    errors: set[tuple[str, str]] = set()
    with open(paths[-1], encoding="utf-8") as f:
        for line in f:
            event = json.loads(line)
            finished = event.get("ScenarioFinished")
            if finished is None:
                if "NonFatalError" in event:
                    e = event["NonFatalError"]
                    value = e.get("value") or e.get("info") or {}
                    what = f"{value.get('type', '?')}: {value.get('message', value.get('title', ''))}" if isinstance(value, dict) else str(value)
                    errors.add((e.get("label", "?"), what[:160]))
                continue
            scenario = finished["recorder"]["label"]
            interactions = finished["recorder"].get("interactions", {})
            for case_id, results in finished["recorder"].get("checks", {}).items():
                label = scenario
                if scenario == "Stateful tests":
                    req = (interactions.get(case_id) or {}).get("request") or {}
                    op = operation_of(req.get("method", ""), req.get("uri", ""))
                    label = op or scenario
                for r in results:
                    checked[r["name"]] += 1
                    if r["status"] != "failure":
                        continue
                    fail = r["failure_info"]["failure"]
                    first = fail.get("message", "").splitlines()[:1]
                    key = (label, f"{fail.get('title')}: {first[0] if first else ''}")
                    unique[r["name"]].add(key)
                    got = answer(interactions.get(case_id))
                    if got not in answers[key] and len(answers[key]) < ANSWERS_SHOWN:
                        answers[key].append(got)
                    ops[r["name"]].add(label)
                    cases[r["name"]] += 1
    total = sum(len(v) for v in unique.values())
    if "--count" in sys.argv:
        print(total)
        return 0
    print(f"== {tag}schemathesis failures per check ({total} unique)")
    for name in sorted(checked):
        n = len(unique.get(name, ()))
        mark = "FAIL" if n else "ok  "
        print(f"  {mark} {name:30} {n:4} unique, {len(ops.get(name, ())):3} operations, {cases[name]:5} of {checked[name]} checked cases")
    if errors:
        print(f"  errors (not checks): {len(errors)}")
        for label, title in sorted(errors)[:20]:
            print(f"    {label}: {title}")
    if "--by-operation" in sys.argv:
        for name in sorted(unique):
            print(f"-- {tag}{name}")
            for label, what in sorted(unique[name]):
                print(f"    {label}: {what}")
                for got in answers.get((label, what), []):
                    print(f"        {got}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
