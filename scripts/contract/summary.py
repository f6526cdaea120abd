"""Failures per schemathesis check, from the run's NDJSON report.

Usage: summary.py REPORT_DIR [--by-operation]

A failure is counted once per (operation, check, failure title and first line
of its message); schemathesis's own count (its summary) dedupes a little
differently. --by-operation lists, per check, each operation it flagged with
the first answer's status and problem code and detail.
"""

import base64
import collections
import gzip
import glob
import json
import sys


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


def main() -> int:
    report_dir = sys.argv[1]
    paths = sorted(glob.glob(f"{report_dir}/ndjson-*.ndjson"))
    if not paths:
        print("summary: no NDJSON report found")
        return 1
    unique: dict[str, set[tuple[str, str]]] = collections.defaultdict(set)
    answers: dict[tuple[str, str], str] = {}
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
                    errors.add((e.get("label", "?"), str(e.get("info", {}).get("title", e))[:120]))
                continue
            label = finished["recorder"]["label"]
            interactions = finished["recorder"].get("interactions", {})
            for case_id, results in finished["recorder"].get("checks", {}).items():
                for r in results:
                    checked[r["name"]] += 1
                    if r["status"] != "failure":
                        continue
                    fail = r["failure_info"]["failure"]
                    first = fail.get("message", "").splitlines()[:1]
                    key = (label, f"{fail.get('title')}: {first[0] if first else ''}")
                    unique[r["name"]].add(key)
                    if key not in answers:
                        answers[key] = answer(interactions.get(case_id))
                    ops[r["name"]].add(label)
                    cases[r["name"]] += 1
    total = sum(len(v) for v in unique.values())
    print(f"== schemathesis failures per check ({total} unique)")
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
            print(f"-- {name}")
            for label, what in sorted(unique[name]):
                print(f"    {label}: {what}\n        {answers.get((label, what), '')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
