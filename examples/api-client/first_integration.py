"""A first integration with the Converge HTTP API, on a Python client generated from the
server's OpenAPI document (docs/http-api.md, "A first integration").

It submits a job, follows the run's events until the run waits for a human, approves the
pending proposal with a second token, follows the events to the end, then verifies the
stored hash chain and replays the run.

Usage:
    first_integration.py JOB_SPEC.yaml

Environment:
    CONVERGE_URL             the server, e.g. http://127.0.0.1:7700
    CONVERGE_TOKEN           a submitter's token
    CONVERGE_APPROVER_TOKEN  an approver's token (someone other than the submitter)

The generated package `converge_client` must be importable (it is generated with
`openapi-python-client generate --url $CONVERGE_URL/openapi.json --meta none
--output-path converge_client`), and PyYAML installed to read the spec.
Exits 0 when the run converged, its chain is intact and its replay identical.
"""

import os
import sys
import time

import yaml
from converge_client import AuthenticatedClient
from converge_client.api.approvals import approvals, approve
from converge_client.api.audit import replay, verify
from converge_client.api.events import events
from converge_client.api.runs import get_run, submit
from converge_client.models import (
    ApproveRequest,
    DecisionAccepted,
    EventPage,
    JobSpec,
    PendingList,
    Replay,
    ReplayOutcome,
    RunState,
    RunView,
    StopKind,
    Verification,
)

# How long the run may take to reach its next stop.
WAIT_SECONDS_MAX = 30


def expect(answer, kind, what):
    """The answer when it is a `kind`; otherwise stop, saying what the server said."""
    if not isinstance(answer, kind):
        sys.exit(f"{what}: the server answered {answer}")
    return answer


def follow(client, run, start):
    """Prints the run's events from `start` until the run stops or parks; the next seq."""
    deadline = time.monotonic() + WAIT_SECONDS_MAX
    while time.monotonic() < deadline:
        page = expect(events.sync(run, client=client, from_=start), EventPage, "events")
        for entry in page.events:
            print(f"  event {entry.seq:3}  {entry.event.event.value}")
        start = page.next_
        state = expect(get_run.sync(run, client=client), RunView, "run").status
        if state != RunState.RUNNING and not page.events:
            return start
        if not page.events:
            time.sleep(0.1)
    sys.exit(f"run {run} did not stop within {WAIT_SECONDS_MAX} s")


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: first_integration.py JOB_SPEC.yaml")
    url = os.environ["CONVERGE_URL"]
    submitter = AuthenticatedClient(base_url=url, token=os.environ["CONVERGE_TOKEN"])
    approver = AuthenticatedClient(base_url=url, token=os.environ["CONVERGE_APPROVER_TOKEN"])

    with open(sys.argv[1], encoding="utf-8") as file:
        spec = JobSpec.from_dict(yaml.safe_load(file))
    run = expect(submit.sync(client=submitter, body=spec), RunView, "submit").id
    print(f"submitted run {run}")

    seen = follow(submitter, run, 0)
    state = expect(get_run.sync(run, client=submitter), RunView, "run")
    if state.status != RunState.AWAITING_APPROVAL:
        sys.exit(f"run {run} stopped without asking for approval: {state.status.value}")
    pending = expect(approvals.sync(run, client=approver), PendingList, "approvals").pending
    for proposal in pending:
        print(f"approving {proposal.proposal}: {proposal.key}/{proposal.id} by {proposal.agent_name}")
        decided = approve.sync(
            run,
            proposal.proposal,
            client=approver,
            body=ApproveRequest(hash_=proposal.hash_),
        )
        expect(decided, DecisionAccepted, "approve")

    follow(submitter, run, seen)
    state = expect(get_run.sync(run, client=submitter), RunView, "run")
    print(f"run {run} is {state.status.value}: {state.stop_reason.stop.value}")
    if state.stop_reason.stop != StopKind.CONVERGED:
        sys.exit(1)

    checked = expect(verify.sync(run, client=submitter), Verification, "verify")
    print(f"verify: intact={checked.intact}, root hash {checked.root_hash}")
    replayed = expect(replay.sync(run, client=submitter), Replay, "replay")
    print(f"replay: {replayed.replay.value}, root hash {replayed.root_hash}")
    if not checked.intact or replayed.replay != ReplayOutcome.IDENTICAL:
        sys.exit(1)
    if checked.root_hash != replayed.root_hash:
        sys.exit("verify and replay disagree on the root hash")


if __name__ == "__main__":
    main()
