"""Failures per schemathesis check, from the run's NDJSON report.

Usage: summary.py REPORT_DIR [--by-operation]

A failure is counted once per (operation, check, failure title and first line
of its message), as schemathesis dedupes them; the per-operation list shows
which operations each check flagged.
"""

import collections
import glob
import json
import sys


def main() -> int:
    report_dir = sys.argv[1]
    paths = sorted(glob.glob(f"{report_dir}/ndjson-*.ndjson"))
    if not paths:
        print("summary: no NDJSON report found")
        return 1
    unique: dict[str, set[tuple[str, str]]] = collections.defaultdict(set)
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
            for results in finished["recorder"].get("checks", {}).values():
                for r in results:
                    checked[r["name"]] += 1
                    if r["status"] != "failure":
                        continue
                    fail = r["failure_info"]["failure"]
                    first = fail.get("message", "").splitlines()[:1]
                    unique[r["name"]].add((label, f"{fail.get('title')}: {first[0] if first else ''}"))
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
                print(f"    {label}: {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
