#!/usr/bin/env bash
# Runs the whole test suite. Tests start their own nats-server child processes and
# create a fresh database per test on the local PostgreSQL.
set -euo pipefail
cd "$(dirname "$0")/../.."
deploy/local/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
export DATABASE_URL="${DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}"
# deploy/ offline: YAML, Kubernetes and KEDA schemas, `nats-server -t`.
deploy/validate.sh
cargo test --workspace --all-targets --locked
