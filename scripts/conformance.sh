#!/usr/bin/env bash
# Runs the official MCP conformance suite's client scenarios against
# examples/conformance_client.rs, strictly: one scenario at a time, so that the
# client's exit code and timeouts count (suite mode ignores both). Prints
# "N passed, M failed" and exits non-zero on any failure.
#
#   scripts/conformance.sh                 # the 20 tier-scored + 3 draft + cross-app access
#   scripts/conformance.sh auth/scope-step-up ...   # just these
#   CLIENT=rmcp scripts/conformance.sh     # the same with examples/rmcp_conformance_client.rs
#                                          # (rmcp's transport on the crate's layers)
set -euo pipefail
cd "$(dirname "$0")/.."

CONFORMANCE_VERSION=0.1.16
# Node 22 comes from the npm registry: 0.1.16 does not start on Node < 22.
CONF=(npx -y -p node@22 -p "@modelcontextprotocol/conformance@${CONFORMANCE_VERSION}" conformance)

TIER_SCORED=(
  initialize
  tools_call
  elicitation-sep1034-client-defaults
  sse-retry
  auth/metadata-default
  auth/metadata-var1
  auth/metadata-var2
  auth/metadata-var3
  auth/basic-cimd
  auth/scope-from-www-authenticate
  auth/scope-from-scopes-supported
  auth/scope-omitted-when-undefined
  auth/scope-step-up
  auth/scope-retry-limit
  auth/token-endpoint-auth-basic
  auth/token-endpoint-auth-post
  auth/token-endpoint-auth-none
  auth/pre-registration
  auth/2025-03-26-oauth-metadata-backcompat
  auth/2025-03-26-oauth-endpoint-fallback
)
DRAFT=(
  auth/resource-mismatch
  auth/offline-access-scope
  auth/offline-access-not-supported
)
# Extension scenarios this crate implements (SEP-990 through OboHeaderLayer).
EXTENSIONS=(
  auth/cross-app-access-complete-flow
)

if [[ $# -gt 0 ]]; then
  SCENARIOS=("$@")
else
  SCENARIOS=("${TIER_SCORED[@]}" "${DRAFT[@]}" "${EXTENSIONS[@]}")
fi

case "${CLIENT:-hand-written}" in
  hand-written) EXAMPLE=conformance_client ;;
  rmcp) EXAMPLE=rmcp_conformance_client ;;
  *) echo "CLIENT must be hand-written or rmcp" >&2; exit 2 ;;
esac
cargo build --quiet --example "$EXAMPLE"
CLIENT="$PWD/target/debug/examples/$EXAMPLE"
OUT="$PWD/target/conformance/$EXAMPLE"
rm -rf "$OUT"
mkdir -p "$OUT"

passed=0
failed=()
for scenario in "${SCENARIOS[@]}"; do
  log="$OUT/$(echo "$scenario" | tr / _).log"
  if "${CONF[@]}" client --command "$CLIENT" --scenario "$scenario" -o "$OUT" >"$log" 2>&1; then
    passed=$((passed + 1))
    echo "PASS $scenario ($(grep -Eo 'Passed: [0-9]+/[0-9]+' "$log" | head -1))"
  else
    failed+=("$scenario")
    echo "FAIL $scenario"
    grep -E 'FAILURE|WARNING|Passed:|OVERALL|exited|timed out|failed:' "$log" | head -20 | sed 's/^/    /' || true
  fi
done

echo "conformance ${CONFORMANCE_VERSION} ($EXAMPLE): ${passed} passed, ${#failed[@]} failed"
if [[ ${#failed[@]} -gt 0 ]]; then
  printf '  failed: %s\n' "${failed[@]}"
  echo "  logs and checks.json files: $OUT"
  exit 1
fi
