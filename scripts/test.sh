#!/usr/bin/env bash
# Every test of tower-mcp-auth, in the order a failure is cheapest to see. Fails loudly
# on the first failure. Needs the Rust toolchain (with rustfmt and clippy) and python3;
# installs cargo-deny with cargo and chromium / redis-server / nginx / npm / python3-venv from Debian if missing, Authlib
# from PyPI (the external authorization server of tests/external_as.rs) and, through
# npx, the MCP conformance suite with its own Node 22 from the npm registry.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

# One clean build, not an edit loop: incremental caches would only cost disk (GBs here).
export CARGO_INCREMENTAL=0
disk() { printf 'disk: %s free on the target filesystem; target/ holds %s\n' \
  "$(df -h --output=avail . | tail -1 | tr -d ' ')" "$(du -sh target 2>/dev/null | cut -f1 || echo 0)"; }
disk

step "format"
cargo fmt --all -- --check

step "clippy (all targets, all features, warnings are errors)"
cargo clippy --workspace --all-targets --all-features -- -D warnings

step "no import circle across folders in either crate (scripts/module-cycles.py)"
python3 scripts/module-cycles.py

step "no source file past ~500 lines (split along a seam instead)"
if find src mcp-auth-proxy/src -name '*.rs' -exec wc -l {} + | awk '$2 != "total" && $1 > 530 {print; bad=1} END {exit !bad}'; then
  echo "the files above are past 530 lines: split them along a seam"; exit 1
fi

step "cargo deny: licenses, banned and duplicate crates, sources (advisories need a network: see deny.toml)"
if ! command -v cargo-deny >/dev/null; then
  echo "cargo-deny not found; installing it with cargo"
  cargo install --locked cargo-deny
fi
cargo deny check licenses bans sources

step "without default features the library builds on hyper alone (no reqwest in the tree)"
cargo check --quiet -p tower-mcp-auth --no-default-features
if cargo tree -p tower-mcp-auth --no-default-features -e normal | grep -q "reqwest v"; then
  echo "reqwest is in the tree without the reqwest feature"; exit 1
fi

step "the library, all features on, depends on none of the binary's crates"
if cargo tree -p tower-mcp-auth --all-features -e normal | grep -E " (clap|toml|tracing-subscriber) v"; then
  echo "the library's tree holds a crate only mcp-auth-proxy needs"; exit 1
fi

step "MSRV: the library and mcp-auth-proxy build with the Rust version Cargo.toml declares (rustup installs it)"
MSRV=$(sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml)
rustup toolchain install "$MSRV" --profile minimal
cargo "+$MSRV" check --quiet --workspace --all-features --locked --target-dir target/msrv

step "applications beside the crate: their own reqwest works unchanged (default features off, and on)"
# Two crates of their own (tests/apps/), each an application that depends on reqwest and
# on this crate: cargo unifies reqwest's features across both, so a TLS feature of ours
# must not change how the application's own client behaves. The root's lock file pins
# their versions; the shared target directory reuses the crate's artifacts.
for app in reqwest-minimal reqwest-default; do
  cp Cargo.lock "tests/apps/$app/Cargo.lock"
  cargo run --quiet --manifest-path "tests/apps/$app/Cargo.toml" --target-dir target
done

step "docs (broken links are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --all-features --quiet

step "external authorization server for tests/external_as.rs (Authlib from PyPI)"
scripts/external-as.sh

step "Chromium for tests/browser.rs (Debian's package)"
if ! command -v chromium >/dev/null; then
  echo "chromium not found; installing it from Debian"
  apt-get update -qq && apt-get install -y -qq chromium
fi
chromium --version

step "redis-server for the Redis store tests (Debian's package; each test starts its own on a free loopback port)"
if ! command -v redis-server >/dev/null; then
  echo "redis-server not found; installing it from Debian"
  apt-get update -qq && apt-get install -y -qq redis-server
fi
redis-server --version

step "npm, and the official TypeScript MCP SDK for mcp-auth-proxy/tests/proxy.rs (pinned by its package-lock.json)"
if ! command -v npx >/dev/null; then
  echo "npx not found; installing npm from Debian"
  apt-get update -qq && apt-get install -y -qq npm
fi
npm ci --silent --no-audit --no-fund --prefix tests/external/ts-client

step "unit, integration, loom model-checking, fuzz-smoke, real-browser, multi-process and doc tests"
# Two tests at a time per binary: the storm tests each run hundreds of concurrent calls
# on a 2-core machine, and timing-based assertions need the CPU they were written for.
RUST_TEST_THREADS=2 cargo test --workspace --all-features

step "fuzz targets build (fuzz/, the same targets tests/fuzz_smoke.rs runs)"
cargo build --quiet --manifest-path fuzz/Cargo.toml --target-dir target/fuzz --bins

step "quickstart (the README's main command)"
cargo run --quiet --example quickstart

step "shared store example (two replicas, one SQLite file, one refresh)"
cargo run --quiet --example shared_store

step "client examples: hyper, reqwest (SSE streamed), rmcp, an axum proxy, Prometheus metrics"
for example in hyper_client reqwest_client rmcp_client axum_proxy metrics; do
  echo "--- $example"
  cargo run --quiet --example "$example"
done

step "refresh contention bench (exits non-zero if our coordinator redeems twice)"
cargo bench --bench refresh_contention

step "reconnect storm bench (exits non-zero if our breaker lets more than one call per backoff window through, is not 100x below no breaker, or recovers slower than 2 s)"
cargo bench --bench reconnect_storm

step "replica contention bench (real processes over memory, SQLite and Redis; exits non-zero if a shared store redeems twice)"
cargo bench --bench replica_contention

step "chaos soak, 60 s on SQLite and 60 s on Redis (replicas SIGKILLed, also mid-redemption; token endpoint 500s and resets; Redis restarted; exits non-zero on an avoidable invalid_grant, a lost credential or a call over 3 s)"
cargo run --quiet --example chaos_soak -- --seconds 60 --store sqlite
cargo run --quiet --example chaos_soak -- --seconds 60 --store redis

step "OBO storm bench (exits non-zero unless our layer makes one exchange per user, scope and token lifetime)"
cargo bench --bench obo_storm

step "gateway bench (direct vs through mcp-auth-proxy; every call must be answered)"
cargo bench -p mcp-auth-proxy --bench gateway

step "the gateway against nginx (Debian's package): the same upstream directly, through nginx proxy_pass and through mcp-auth-proxy"
if ! command -v nginx >/dev/null; then
  echo "nginx not found; installing it from Debian"
  apt-get update -qq && apt-get install -y -qq nginx
fi
cargo bench -p mcp-auth-proxy --bench versus_nginx

step "streams bench (1,000 to 10,000 SSE streams through mcp-auth-proxy over HTTP/1.1 and h2c; every event must arrive in order)"
cargo bench -p mcp-auth-proxy --bench streams

step "bridge bench (a stdio client through mcp-auth-proxy stdio and through mcp-remote vs a direct HTTP client)"
cargo bench -p mcp-auth-proxy --bench bridge

step "hot path bench (each benchmark run once as a smoke test)"
cargo bench --bench hot_path -- --test

step "MCP conformance suite, client scenarios, strictly one at a time"
scripts/conformance.sh

step "MCP conformance suite again, with rmcp's transport on the crate's layers (examples/rmcp_conformance_client.rs)"
CLIENT=rmcp scripts/conformance.sh

step "mcp-auth-proxy installs with cargo install, and the README's example configuration is valid"
# --debug and the shared target directory: the artifacts the tests built, not a second
# (release) build of the whole tree.
cargo install --quiet --debug --locked --force --path mcp-auth-proxy --root target/install --target-dir target
target/install/bin/mcp-auth-proxy --version
target/install/bin/mcp-auth-proxy check --config proxy.example.toml

step "mcp-auth-proxy transparency: the suite's server scenarios against an upstream on the official TypeScript SDK (tests/external/conformance-server), directly and through the gateway"
scripts/gateway-conformance.sh

disk
printf '\nall tests passed\n'
