#!/usr/bin/env bash
# Load benchmark of `converge serve`: small runs submitted at a steady rate while read
# endpoints are hammered at a fixed rate and live event streams stay open, all against one
# server on loopback with its SQLite journal. Prints one JSON line per measured load (the
# same convention as `converge-bench`) and a short table.
#
#   crates/converge-bench/load/serve.sh                 # defaults below
#   DURATION=60s READ_RATE=2000 SUBMIT_RATE=100 crates/converge-bench/load/serve.sh
#
# Needs `oha` (a Rust HTTP load generator; installed with `cargo install` into target/ when
# it is not on PATH), curl and python3.
set -euo pipefail

DURATION=${DURATION:-20s}        # each read load, and the submissions beside them
READ_RATE=${READ_RATE:-1000}     # requests per second on each read endpoint
READ_CONNECTIONS=${READ_CONNECTIONS:-16}
SUBMIT_RATE=${SUBMIT_RATE:-50}   # runs submitted per second, during every read load
STREAMS=${STREAMS:-16}           # live SSE readers open throughout

root=$(cd "$(dirname "$0")/../../.." && pwd)
cd "$root"

cargo build --release -q -p converge-cli
converge=$root/target/release/converge

oha=${OHA:-$(command -v oha || true)}
if [[ -z "$oha" ]]; then
    if [[ ! -x target/oha/bin/oha ]]; then
        echo "installing oha into target/oha…" >&2
        cargo install -q --locked oha --root target/oha
    fi
    oha=$root/target/oha/bin/oha
fi

work=$(mktemp -d)
server_pid=""
cleanup() {
    jobs -p | xargs -r kill 2>/dev/null || true
    [[ -n "$server_pid" ]] && kill "$server_pid" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

export CONVERGE_DB=$work/journal.db
submitter=$("$converge" token create --tenant bench --name loader --role submitter 2>/dev/null)
viewer=$("$converge" token create --tenant bench --name reader --role viewer 2>/dev/null)

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
base=http://127.0.0.1:$port
CONVERGE_LOG=warn "$converge" serve --listen "127.0.0.1:$port" 2>"$work/serve.log" &
server_pid=$!
for _ in $(seq 100); do
    curl -fs "$base/healthz" >/dev/null 2>&1 && break
    sleep 0.1
done

spec=examples/release-approval.yaml
# One run to read: it stops awaiting approval after three cycles (26 events).
curl -fs -X POST -H "Authorization: Bearer $submitter" -H "Content-Type: application/yaml" \
    --data-binary @"$spec" "$base/v1/runs?id=read-me" >/dev/null
for _ in $(seq 100); do
    status=$(curl -fs -H "Authorization: Bearer $viewer" "$base/v1/runs/read-me" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["status"])')
    [[ "$status" != running ]] && break
    sleep 0.1
done

# Live readers: event streams of the run, held open for the whole benchmark.
for _ in $(seq "$STREAMS"); do
    curl -fsN -H "Authorization: Bearer $viewer" -H "Accept: text/event-stream" \
        "$base/v1/runs/read-me/events" >/dev/null 2>&1 &
done

measure() { # name rate connections [oha args…]
    local name=$1 rate=$2 connections=$3
    shift 3
    "$oha" --no-tui --output-format json --latency-correction -z "$DURATION" -q "$rate" \
        -c "$connections" "$@" \
        >"$work/$name.json"
}

report() { # name scenario endpoint rate
    python3 - "$work/$1.json" "$2" "$3" "$4" <<'PY'
import json, sys
path, scenario, endpoint, rate = sys.argv[1:]
data = json.load(open(path))
summary = data["summary"]
percentiles = data["latencyPercentiles"]
codes = data.get("statusCodeDistribution", {})
total = sum(codes.values())
ok = sum(count for code, count in codes.items() if code.startswith("2"))
print(json.dumps({
    "scenario": scenario,
    "endpoint": endpoint,
    "target_rps": float(rate),
    "rps": round(summary["requestsPerSec"], 1),
    "requests": total,
    "non_2xx": total - ok,
    "p50_ms": round(percentiles["p50"] * 1000, 2),
    "p99_ms": round(percentiles["p99"] * 1000, 2),
    "max_ms": round(summary["slowest"] * 1000, 2),
}))
PY
}

submit_load() { # name
    measure "$1" "$SUBMIT_RATE" 4 -m POST -T application/yaml -D "$spec" \
        -H "Authorization: Bearer $submitter" "$base/v1/runs"
}

results=()
for endpoint in "events?from=0" "" "facts"; do
    name=read-${endpoint%%\?*}
    name=${name%-}
    path=/v1/runs/read-me${endpoint:+/$endpoint}
    submit_load "submit-$name" &
    submitter_pid=$!
    measure "$name" "$READ_RATE" "$READ_CONNECTIONS" \
        -H "Authorization: Bearer $viewer" "$base$path"
    wait "$submitter_pid"
    results+=("$(report "$name" serve-read "GET $path" "$READ_RATE")")
    results+=("$(report "submit-$name" serve-submit "POST /v1/runs (during GET $path)" "$SUBMIT_RATE")")
done

printf '%s\n' "${results[@]}"
runs=$(curl -fs -H "Authorization: Bearer $viewer" "$base/v1/runs?limit=1000" |
    python3 -c 'import json,sys; print(len(json.load(sys.stdin)["runs"]))')
echo "runs in the journal after the benchmark: $runs; open event streams: $STREAMS" >&2
