#!/usr/bin/env bash
# Runs the platform locally with a seeded demo portfolio: installs and starts NATS and
# PostgreSQL if missing, migrates, starts `regua all`, creates the `demo` tenant and
# publishes 1,000 invoices through the public subjects. Ctrl-C stops it gracefully.
set -euo pipefail
cd "$(dirname "$0")/../.."
deploy/local/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
export REGUA_DATABASE_URL="${REGUA_DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/regua_demo}"
export REGUA_ADMIN_TOKEN="${REGUA_ADMIN_TOKEN:-demo-admin-token-change-me}"
export REGUA_HTTP_ADDR="${REGUA_HTTP_ADDR:-127.0.0.1:8080}"
mkdir -p .regua-demo
cargo build --locked -p regua --bin regua
target/debug/regua migrate
target/debug/regua all > .regua-demo/regua.log 2>&1 &
regua_pid=$!
trap 'kill -TERM $regua_pid 2>/dev/null; wait $regua_pid 2>/dev/null; echo "regua stopped"' EXIT
for _ in $(seq 1 100); do
  curl -fsS "http://$REGUA_HTTP_ADDR/readyz" >/dev/null 2>&1 && break
  kill -0 $regua_pid 2>/dev/null || { cat .regua-demo/regua.log; exit 1; }
  sleep 0.2
done
echo "regua all is up on http://$REGUA_HTTP_ADDR (log: .regua-demo/regua.log)"
target/debug/regua demo --tenant demo --invoices "${DEMO_INVOICES:-1000}"
if [ "${DEMO_EXIT:-0}" = 1 ]; then exit 0; fi
echo "running; Ctrl-C to stop"
wait $regua_pid
