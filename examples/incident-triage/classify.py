"""Command agent: give every monitoring alert a priority.

Reads the protocol's input on stdin ({"facts": {"signals": [...]}, ...}) and prints one
evaluation per alert. Deterministic: the same alerts always get the same priorities.
"""
import json
import sys


def classify(content):
    message = content.get("message", "")
    if "unreachable" in message or content.get("error_rate", 0) >= 0.2:
        return "P1", "service unreachable or failing more than 20% of requests"
    if content.get("p99_ms", 0) >= 2000:
        return "P2", "p99 latency of %d ms breaks the 2 s objective" % content["p99_ms"]
    if content.get("days_left", 365) <= 7:
        return "P3", "certificate expires in %d days" % content["days_left"]
    return "P4", "no user impact yet"


def main():
    job = json.load(sys.stdin)
    proposals = []
    for alert in job["facts"]["signals"]:
        priority, reason = classify(alert["content"])
        proposals.append({
            "key": "evaluations",
            "id": "triage-" + alert["id"],
            "content": {
                "alert": alert["id"],
                "service": alert["content"]["service"],
                "priority": priority,
                "reason": reason,
            },
            "confidence": 0.8,
            "derived_from": [{"key": "signals", "id": alert["id"]}],
        })
    print("classified %d alerts" % len(proposals), file=sys.stderr)
    json.dump({"proposals": proposals}, sys.stdout)


if __name__ == "__main__":
    main()
