#!/usr/bin/env bash
# Transparency of mcp-auth-proxy, measured by the official MCP conformance suite: every
# server scenario is run against the reference server (@modelcontextprotocol/
# server-everything, from the npm registry) directly, then through the gateway (upstream
# auth `none`), one scenario at a time. Prints both counts; exits non-zero if any
# scenario that passes directly fails through the gateway, or if the gateway's own edge
# fails `dns-rebinding-protection` (Host and Origin validation is the gateway's job,
# whatever the upstream does).
set -euo pipefail
cd "$(dirname "$0")/.."

CONFORMANCE_VERSION=0.1.16
EVERYTHING_VERSION=2026.8.31
NODE=(npx -y -p node@22)
CONF=("${NODE[@]}" -p "@modelcontextprotocol/conformance@${CONFORMANCE_VERSION}" conformance)

OUT="$PWD/target/gateway-conformance"
rm -rf "$OUT"
mkdir -p "$OUT"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

cargo build --quiet --features proxy --bin mcp-auth-proxy
PROXY="$PWD/target/debug/mcp-auth-proxy"

EVERYTHING_PORT=$(free_port)
PORT=$EVERYTHING_PORT "${NODE[@]}" -p "@modelcontextprotocol/server-everything@${EVERYTHING_VERSION}" \
  mcp-server-everything streamableHttp >"$OUT/everything.log" 2>&1 &
EVERYTHING_PID=$!
GATEWAY_PORT=$(free_port)
cat >"$OUT/proxy.toml" <<TOML
listen = "127.0.0.1:${GATEWAY_PORT}"

[store]
sqlite = "${OUT}/gateway.db"

[identity]
mode = "anonymous"

[[upstream]]
name = "everything"
url = "http://127.0.0.1:${EVERYTHING_PORT}/mcp"
auth = "none"
TOML
"$PROXY" serve --config "$OUT/proxy.toml" >"$OUT/gateway.out" 2>"$OUT/gateway.log" &
GATEWAY_PID=$!
trap 'kill $EVERYTHING_PID $GATEWAY_PID 2>/dev/null || true' EXIT

for _ in $(seq 1 120); do
  if curl -s -o /dev/null "http://127.0.0.1:${EVERYTHING_PORT}/mcp" && curl -s -o /dev/null "http://127.0.0.1:${GATEWAY_PORT}/healthz"; then
    break
  fi
  sleep 0.5
done

DIRECT="http://127.0.0.1:${EVERYTHING_PORT}/mcp"
THROUGH="http://127.0.0.1:${GATEWAY_PORT}/everything/mcp"
mapfile -t SCENARIOS < <("${CONF[@]}" list 2>/dev/null | sed -n '/^Server scenarios/,/^$/p' | sed -n 's/^  - \([a-z0-9-]*\).*/\1/p')
[[ ${#SCENARIOS[@]} -gt 0 ]] || { echo "no server scenarios listed"; exit 1; }

direct=0
through=0
lost=()
rebinding=missing
for scenario in "${SCENARIOS[@]}"; do
  d=FAIL
  t=FAIL
  if "${CONF[@]}" server --url "$DIRECT" --scenario "$scenario" -o "$OUT/direct" >"$OUT/direct-$scenario.log" 2>&1; then
    d=pass
    direct=$((direct + 1))
  fi
  if "${CONF[@]}" server --url "$THROUGH" --scenario "$scenario" -o "$OUT/through" >"$OUT/through-$scenario.log" 2>&1; then
    t=pass
    through=$((through + 1))
  fi
  printf '%-32s direct %-4s  through the gateway %s\n' "$scenario" "$d" "$t"
  [[ $scenario == dns-rebinding-protection ]] && rebinding=$t
  if [[ $d == pass && $t != pass ]]; then
    lost+=("$scenario")
    grep -E 'FAILURE|Passed:' "$OUT/through-$scenario.log" | head -5 | sed 's/^/    /' || true
  fi
done

echo "server scenarios (conformance ${CONFORMANCE_VERSION}, server-everything ${EVERYTHING_VERSION}): ${direct}/${#SCENARIOS[@]} pass directly, ${through}/${#SCENARIOS[@]} through the gateway"
if [[ $rebinding != pass ]]; then
  echo "  dns-rebinding-protection through the gateway: $rebinding (the gateway must refuse a foreign Host/Origin itself)"
  grep -E 'FAILURE|Passed:' "$OUT/through-dns-rebinding-protection.log" 2>/dev/null | head -5 | sed 's/^/    /' || true
  exit 1
fi
if [[ ${#lost[@]} -gt 0 ]]; then
  printf '  passes directly, fails through the gateway: %s\n' "${lost[@]}"
  echo "  logs: $OUT"
  exit 1
fi
