#!/usr/bin/env python3
"""Summarizes an Autobahn-format fuzzing-client report (kosoku's) and judges it.

Usage: autobahn-summary.py REPORT_DIR

Prints cases by group and behaviour, then every case that is not OK. Exits 1 when a case
failed (FAILED, ERROR, UNIMPLEMENTED, an unclean or wrong-code close), or when a case is
NON-STRICT or INFORMATIONAL but not one of EXPLAINED below: README.md ("WebSocket
conformance") says why each of those is what it is, so a new one must be explained there too.
"""
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

# Case -> the behaviour README.md explains for it.
EXPLAINED = {
    # A text frame whose bytes arrive in chops: the frame decoder validates whole frames.
    "6.4.3": "NON-STRICT",
    "6.4.4": "NON-STRICT",
    # The suite itself calls these informational (its judgement is not pass/fail).
    "7.1.6": "INFORMATIONAL",
    "7.13.1": "INFORMATIONAL",
    "7.13.2": "INFORMATIONAL",
}
COLUMNS = ["OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED", "ERROR"]


def case_key(case_id):
    return [int(part) for part in case_id.split(".")]


def main():
    outdir = Path(sys.argv[1])
    index = json.loads((outdir / "index.json").read_text())
    problems = []
    for agent, cases in index.items():
        ids = sorted(cases, key=case_key)
        groups = defaultdict(Counter)
        for case in ids:
            groups[case.split(".")[0]][cases[case]["behavior"]] += 1
        columns = COLUMNS + sorted({b for c in groups.values() for b in c} - set(COLUMNS))
        print(f"Autobahn fuzzing client against {agent}: {len(ids)} cases")
        print(f"{'group':>5} {'cases':>5} " + " ".join(f"{c:>13}" for c in columns))
        total = Counter()
        for group in sorted(groups, key=int):
            counts = groups[group]
            total.update(counts)
            print(f"{group:>5} {sum(counts.values()):>5} "
                  + " ".join(f"{counts.get(c, 0):>13}" for c in columns))
        print(f"{'all':>5} {sum(total.values()):>5} "
              + " ".join(f"{total.get(c, 0):>13}" for c in columns))
        for case in ids:
            entry = cases[case]
            behaviour, close = entry["behavior"], entry["behaviorClose"]
            if behaviour == "OK" and close == "OK":
                continue
            detail = {}
            report = outdir / entry["reportfile"]
            if report.exists():
                detail = json.loads(report.read_text())
            explained = EXPLAINED.get(case) == behaviour and close in ("OK", behaviour)
            mark = "explained" if explained else "NOT EXPLAINED"
            print(f"  {case:7} {behaviour:13} close={close:13} code={entry['remoteCloseCode']}"
                  f"  [{mark}] {detail.get('description', '')[:90]!r}")
            if not explained:
                problems.append(case)
        missing = [case for case in EXPLAINED if case not in cases]
        if missing:
            print(f"  cases the explanation lists but the run lacks: {missing}")
            problems += missing
    if problems:
        print(f"conformance: {len(problems)} case(s) failed or unexplained: {problems}")
        return 1
    print("conformance: 0 failed, every non-OK case explained")
    return 0


if __name__ == "__main__":
    sys.exit(main())
