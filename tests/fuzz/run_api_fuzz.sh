#!/usr/bin/env bash
# API fuzz: schemathesis (its own venv: it does not co-install with brownie) against a real
# `tegrid serve --dev` (Anvil, deployed contracts, funded participants, SQLite) on free ports.
# Every operation but the SSE stream gets up to N generated requests (examples, coverage and
# fuzzing phases, positive and negative data); the one check is that no answer is a 5xx.
# Usage: tests/fuzz/run_api_fuzz.sh SCHEMATHESIS_BIN [MAX_EXAMPLES] [SEED]
set -euo pipefail
cd "$(dirname "$0")/../.."
schemathesis=${1:?usage: run_api_fuzz.sh SCHEMATHESIS_BIN [MAX_EXAMPLES] [SEED]}
examples=${2:-50}
seed=${3:-1}
work=$(mktemp -d /tmp/tegrid-fuzz.XXXXXX)
free_port() { .venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
api_port=$(free_port)
chain_port=$(free_port)
export TEGRID_RPC_URL="http://127.0.0.1:$chain_port"
export TEGRID_DATABASE_URL="sqlite:///$work/tegrid.db"
export TEGRID_DEPLOYMENT_FILE="$work/deployment.json"
export TEGRID_CHAIN_STATE_FILE="$work/chain-state.json"
.venv/bin/tegrid serve --dev --port "$api_port" --no-scheduler >"$work/serve.log" 2>&1 &
server=$!
cleanup() {
  kill "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  pkill -f "anvil --port $chain_port" 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 1 240); do
  if curl -fsS "http://127.0.0.1:$api_port/health" >/dev/null 2>&1; then break; fi
  if ! kill -0 "$server" 2>/dev/null; then echo "tegrid serve --dev exited:"; tail -20 "$work/serve.log"; exit 1; fi
  sleep 0.5
done
curl -fsS "http://127.0.0.1:$api_port/health" >/dev/null || { echo "API not up after 120 s"; tail -20 "$work/serve.log"; exit 1; }
status=0
"$schemathesis" run "http://127.0.0.1:$api_port/openapi.json" \
  --checks not_a_server_error \
  --exclude-path /events \
  --max-examples "$examples" --seed "$seed" \
  --workers 2 --no-color --suppress-health-check all \
  --request-timeout 30 \
  --report junit,ndjson --report-junit-path "$work/junit.xml" \
  --report-ndjson-path "$work/events.ndjson" || status=$?
fivexx=$( (grep -o '"status_code": *5[0-9][0-9]' "$work/events.ndjson" 2>/dev/null || true) | wc -l)
# The verdict is ours: a failed check (an answer >= 500) or any 5xx fails the run. schemathesis also
# exits non-zero on its own runtime errors (seen: hypothesis' lambda description hitting CPython
# 3.11's "AST constructor recursion depth mismatch" in the coverage phase): those are reported,
# with the operation, and do not fail the run.
read -r failures errors < <(.venv/bin/python - "$work/junit.xml" <<'PY'
import sys
import xml.etree.ElementTree as ET

try:
    root = ET.parse(sys.argv[1]).getroot()
except (OSError, ET.ParseError):
    print(-1, -1)
    raise SystemExit
cases = list(root.iter("testcase"))
print(sum(1 for c in cases if c.find("failure") is not None),
      sum(1 for c in cases if c.find("error") is not None))
PY
)
echo "api fuzz: max $examples examples per operation, seed $seed: responses >= 500: $fivexx, failed checks: $failures, schemathesis runtime errors: $errors"
if [ "$fivexx" -ne 0 ] || [ "$failures" -ne 0 ]; then
  echo "the API answered >= 500 or a check failed (schemathesis exit $status); server log: $work/serve.log"
  trap - EXIT; cleanup; exit 1
fi
if [ "$status" -ne 0 ] && [ "$errors" -le 0 ]; then
  echo "schemathesis exited $status without a report of why; server log: $work/serve.log"
  trap - EXIT; cleanup; exit "$status"
fi
rm -rf "$work"
