#!/usr/bin/env bash
# Transparency of mcp-auth-proxy, measured by the official MCP conformance suite: every
# active server scenario is run against tests/external/conformance-server (the official
# TypeScript SDK, passing all of them) directly, then through the gateway (upstream auth
# `none`), one scenario at a time. That server sends its sampling and elicitation requests
# on the standalone GET stream, so the race between a client's GET and its first tools/call
# is part of what is measured.
#
# Prints checks and scenarios passed, directly and through the gateway, for each of RUNS
# runs (default 1). Exits non-zero if fewer than all checks pass directly, if any check that
# passes directly fails through the gateway, or if the gateway's own edge lets a foreign
# Host or Origin through (that is the gateway's job, whatever the upstream does).
#
#   MCP_AUTH_PROXY_BIN=/path/to/mcp-auth-proxy  use that binary instead of building one
#   RUNS=N                                      repeat the whole comparison N times
set -euo pipefail
cd "$(dirname "$0")/.."

CONFORMANCE_VERSION=0.1.16
# The suite's active server scenarios in 0.1.16 hold this many checks (SUCCESS + FAILURE).
EXPECTED_CHECKS=40
# `conformance list` also names the pending scenarios, which the active suite leaves out.
PENDING=" json-schema-2020-12 server-sse-polling "
RUNS=${RUNS:-1}
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || { echo "RUNS must be a positive integer"; exit 2; }
CONF=(npx -y -p node@22 -p "@modelcontextprotocol/conformance@${CONFORMANCE_VERSION}" conformance)
SERVER_DIR="$PWD/tests/external/conformance-server"

OUT="$PWD/target/gateway-conformance"
rm -rf "$OUT"
mkdir -p "$OUT"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

if [[ -n ${MCP_AUTH_PROXY_BIN:-} ]]; then
  PROXY="$MCP_AUTH_PROXY_BIN"
else
  cargo build --quiet -p mcp-auth-proxy
  PROXY="$PWD/target/debug/mcp-auth-proxy"
fi
[[ -x $PROXY ]] || { echo "no gateway binary at $PROXY"; exit 2; }

npm ci --silent --no-audit --no-fund --prefix "$SERVER_DIR"

SERVER_PORT=$(free_port)
PORT=$SERVER_PORT node "$SERVER_DIR/server.mjs" >"$OUT/server.log" 2>&1 &
SERVER_PID=$!
GATEWAY_PORT=$(free_port)
cat >"$OUT/proxy.toml" <<TOML
listen = "127.0.0.1:${GATEWAY_PORT}"

[store]
sqlite = "${OUT}/gateway.db"

[identity]
mode = "anonymous"

[[upstream]]
name = "conformance"
url = "http://127.0.0.1:${SERVER_PORT}/mcp"
auth = "none"
TOML
"$PROXY" serve --config "$OUT/proxy.toml" >"$OUT/gateway.out" 2>"$OUT/gateway.log" &
GATEWAY_PID=$!
trap 'kill $SERVER_PID $GATEWAY_PID 2>/dev/null || true' EXIT

DIRECT="http://127.0.0.1:${SERVER_PORT}/mcp"
THROUGH="http://127.0.0.1:${GATEWAY_PORT}/conformance/mcp"
ready=no
for _ in $(seq 1 120); do
  # The server answers a GET without a session with 400: it is up.
  if [[ $(curl -s -o /dev/null -w '%{http_code}' "$DIRECT") == 400 ]] && curl -sf -o /dev/null "http://127.0.0.1:${GATEWAY_PORT}/healthz"; then
    ready=yes
    break
  fi
  sleep 0.5
done
[[ $ready == yes ]] || { echo "server or gateway did not start; logs: $OUT"; exit 1; }

mapfile -t SCENARIOS < <("${CONF[@]}" list --server 2>/dev/null | sed -n 's/^  - \([a-z0-9-]*\).*/\1/p' |
  while read -r s; do [[ $PENDING == *" $s "* ]] || echo "$s"; done)
[[ ${#SCENARIOS[@]} -gt 0 ]] || { echo "no server scenarios listed"; exit 1; }

# checks DIR: "passed total" over every checks.json under DIR (total = SUCCESS + FAILURE,
# as the suite counts).
checks() {
  python3 - "$1" <<'PY'
import json, pathlib, sys
ok = total = 0
for f in pathlib.Path(sys.argv[1]).rglob("checks.json"):
    for c in json.loads(f.read_text()):
        ok += c["status"] == "SUCCESS"
        total += c["status"] in ("SUCCESS", "FAILURE")
print(ok, total)
PY
}

# lost DIRECT_DIR THROUGH_DIR: each check that succeeds directly and not through the gateway
# (missing, or another status), with the gateway run's error message.
lost() {
  python3 - "$1" "$2" <<'PY'
import json, pathlib, sys
def load(root):
    out = {}
    for f in pathlib.Path(root).rglob("checks.json"):
        scenario = f.relative_to(root).parts[0]
        for c in json.loads(f.read_text()):
            out.setdefault((scenario, c["id"]), c)
    return out
direct, through = load(sys.argv[1]), load(sys.argv[2])
for (scenario, cid), c in sorted(direct.items()):
    if c["status"] != "SUCCESS":
        continue
    t = through.get((scenario, cid))
    if t is None:
        others = [v for (s, _), v in through.items() if s == scenario and v["status"] == "FAILURE"]
        why = "; ".join(f'{v["id"]}: {v.get("errorMessage", "")}' for v in others) or "no result"
        print(f"{scenario} / {cid}: missing ({why})")
    elif t["status"] != "SUCCESS":
        print(f'{scenario} / {cid}: {t["status"]}: {t.get("errorMessage", "")}')
PY
}

# edge HEADER: the gateway's own answer to a foreign Host or Origin must be a 4xx that did not
# come from the upstream (whose refusals read "Invalid Host"/"Invalid Origin").
edge() {
  local code
  code=$(curl -s -o "$OUT/edge.body" -w '%{http_code}' -X POST "$THROUGH" -H "$1" \
    -H 'Content-Type: application/json' -H 'Accept: application/json, text/event-stream' \
    -d '{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"edge","version":"1"}}}')
  if [[ $code != 4* ]] || grep -q 'Invalid \(Host\|Origin\)' "$OUT/edge.body"; then
    echo "  the gateway's edge let '$1' through: HTTP $code $(head -c 300 "$OUT/edge.body")"
    return 1
  fi
}

status=0
edge 'Host: evil.example.com' || status=1
edge 'Origin: http://evil.example.com' || status=1

summary=()
for run in $(seq 1 "$RUNS"); do
  R="$OUT/run$run"
  mkdir -p "$R/direct" "$R/through"
  echo "run $run/$RUNS: conformance ${CONFORMANCE_VERSION}, ${#SCENARIOS[@]} server scenarios, directly and through the gateway"
  direct=0
  through=0
  for scenario in "${SCENARIOS[@]}"; do
    d=FAIL
    t=FAIL
    if "${CONF[@]}" server --url "$DIRECT" --scenario "$scenario" -o "$R/direct/$scenario" >"$R/direct/$scenario.log" 2>&1; then
      d=pass
      direct=$((direct + 1))
    fi
    if "${CONF[@]}" server --url "$THROUGH" --scenario "$scenario" -o "$R/through/$scenario" >"$R/through/$scenario.log" 2>&1; then
      t=pass
      through=$((through + 1))
    fi
    read -r dok dall < <(checks "$R/direct/$scenario")
    read -r tok tall < <(checks "$R/through/$scenario")
    printf '  %-32s direct %-4s %2s/%-2s  through the gateway %-4s %2s/%-2s\n' "$scenario" "$d" "$dok" "$dall" "$t" "$tok" "$tall"
  done
  read -r dok dall < <(checks "$R/direct")
  read -r tok tall < <(checks "$R/through")
  line="run $run: checks ${dok}/${dall} directly, ${tok}/${tall} through the gateway; scenarios ${direct}/${#SCENARIOS[@]} directly, ${through}/${#SCENARIOS[@]} through the gateway"
  echo "$line"
  summary+=("$line")
  if [[ $dok -ne $EXPECTED_CHECKS || $dall -ne $EXPECTED_CHECKS ]]; then
    echo "  directly: ${dok}/${dall} checks, ${EXPECTED_CHECKS}/${EXPECTED_CHECKS} expected (logs: $R/direct)"
    status=1
  fi
  mapfile -t regressions < <(lost "$R/direct" "$R/through")
  if [[ ${#regressions[@]} -gt 0 ]]; then
    printf '  passes directly, fails through the gateway: %s\n' "${regressions[@]}"
    echo "  logs: $R/through, $OUT/gateway.log, $OUT/server.log"
    status=1
  fi
done

if [[ $RUNS -gt 1 ]]; then
  printf '%s\n' "${summary[@]}"
fi
exit $status
