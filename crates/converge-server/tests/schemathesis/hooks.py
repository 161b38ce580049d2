"""Schemathesis hooks for the API test (tests/schemathesis.rs).

A generated job spec is almost never one the server can run, so every submission whose body
schemathesis meant to be valid is given a real one: the release gate of
examples/release-approval.yaml, which stops awaiting approval. Runs then exist, so the
run-scoped operations (facts, approvals, decisions, events, audit, cancel…) are exercised on
real runs through the document's links. Bodies meant to be invalid are left as generated.

Requests carry a submitter's token, and decisions an approver's: the submitter may not decide
on its own run.

Environment: CONVERGE_JOB_SPEC (the spec file), CONVERGE_SUBMITTER_TOKEN and
CONVERGE_APPROVER_TOKEN.
"""

import itertools
import json
import os
import time
import urllib.request

import schemathesis
import yaml
from schemathesis.core.parameters import ParameterLocation

with open(os.environ["CONVERGE_JOB_SPEC"], encoding="utf-8") as spec:
    SPEC_JSON = yaml.safe_load(spec)
SUBMITTER = os.environ["CONVERGE_SUBMITTER_TOKEN"]
APPROVER = os.environ["CONVERGE_APPROVER_TOKEN"]


SUBMISSIONS = itertools.count()


def is_positive(case, location):
    meta = case.meta
    if meta is None:
        return True
    component = meta.components.get(location)
    mode = component.mode if component is not None else meta.generation.mode
    return mode.is_positive


@schemathesis.hook
def map_case(context, case):
    if (case.method.upper(), case.path) != ("POST", "/v1/runs"):
        return case
    if is_positive(case, ParameterLocation.BODY):
        # YAML and JSON bodies are the same data; schemathesis serializes it for each.
        case.body = json.loads(json.dumps(SPEC_JSON))
    if case.query and "id" in case.query and is_positive(case, ParameterLocation.QUERY):
        # Generated ids repeat (a taken id is a 409); a suffix makes each submission a run.
        suffix = f"-{next(SUBMISSIONS)}"
        case.query = {**case.query, "id": str(case.query["id"])[: 48 - len(suffix)] + suffix}
    return case


@schemathesis.auth(refresh_interval=None, retry_on=[])
class Tokens:
    """The submitter's token, except for decisions: those go with an approver's, since the
    submitter may not decide on its own run. Schemathesis' auth checks replace or drop it."""

    def get(self, case, context):
        if context.operation.path.endswith(("/approve", "/reject")):
            return APPROVER
        return SUBMITTER

    def set(self, case, data, context):
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


@schemathesis.hook
def after_call(context, case, response):
    """A submitted run goes on in the background: wait (a few seconds at most) until it
    stops, so that the operations the stateful phase calls next see it parked."""
    if (case.method.upper(), case.path) != ("POST", "/v1/runs") or response.status_code != 201:
        return
    url = (response.headers.get("location") or [None])[0]
    base = response.request.url.split("/v1/", 1)[0]
    token = f"Bearer {SUBMITTER}"
    deadline = time.monotonic() + 10
    while url and time.monotonic() < deadline:
        request = urllib.request.Request(base + url, headers={"Authorization": token})
        with urllib.request.urlopen(request, timeout=10) as answer:
            if json.load(answer)["status"] != "running":
                return
        time.sleep(0.05)
