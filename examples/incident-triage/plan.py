"""Command agent: decide who acts on each urgent incident.

Reads the triage evaluations and proposes one action per P1 to P3 incident: page the
on-call engineer (P1), open an incident channel (P2) or file a ticket (P3).
"""
import json
import sys

ACTIONS = {
    "P1": ("page", "Page the on-call engineer for {service} now"),
    "P2": ("incident", "Open an incident channel for {service}"),
    "P3": ("ticket", "File a ticket for the {service} owners this week"),
}


def main():
    job = json.load(sys.stdin)
    proposals = []
    for evaluation in job["facts"]["evaluations"]:
        verdict = evaluation["content"]
        action = ACTIONS.get(verdict["priority"])
        if action is None:
            continue
        kind, text = action
        proposals.append({
            "key": "strategies",
            "id": "%s-%s" % (kind, verdict["alert"]),
            "content": {
                "action": kind,
                "instruction": text.format(service=verdict["service"]),
                "priority": verdict["priority"],
            },
            "derived_from": [{"key": "evaluations", "id": evaluation["id"]}],
        })
    json.dump({"proposals": proposals}, sys.stdout)


if __name__ == "__main__":
    main()
