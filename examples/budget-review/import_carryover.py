"""Command agent: import last quarter's carry-over rows as allocations, unchanged.

The spreadsheet is whatever people typed: an amount that is not a plain integer is passed
on as text, and the gate (the key's JSON Schema, the spec's invariants) decides what stands.
The CSV path is the first argument, relative to the spec's directory.
"""
import csv
import json
import sys


def amount(text):
    return int(text) if text.isdigit() else text


def main():
    json.load(sys.stdin)  # this agent reads no facts; the protocol still sends its input
    with open(sys.argv[1], newline="") as sheet:
        rows = list(csv.DictReader(sheet))
    proposals = [
        {
            "key": "allocations",
            "id": "carryover-" + row["team"],
            "content": {
                "team": row["team"],
                "amount": amount(row["amount"]),
                "rationale": row["rationale"],
            },
            "confidence": 0.6,
        }
        for row in rows
    ]
    print("imported %d carry-over rows" % len(rows), file=sys.stderr)
    json.dump({"proposals": proposals}, sys.stdout)


if __name__ == "__main__":
    main()
