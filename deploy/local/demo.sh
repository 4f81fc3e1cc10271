#!/usr/bin/env bash
# Runs the platform locally with a seeded demo portfolio: installs and starts NATS and
# PostgreSQL if missing, migrates, starts the fake providers (SMTP, Twilio-shaped,
# Meta-shaped) and `regua all` against them, creates the `demo` tenant, publishes 1,000
# invoices through the public subjects and advances the tenant's test clock while
# simulated customers pay (or not), so that real messages arrive at the fakes (printed
# in .regua-demo/providers.log, listed at http://127.0.0.1:8029/), stop when a customer
# pays, and a thank-you follows. Ctrl-C stops it gracefully.
set -euo pipefail
cd "$(dirname "$0")/../.."
deploy/local/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
export REGUA_DATABASE_URL="${REGUA_DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/regua_demo}"
export REGUA_ADMIN_TOKEN="${REGUA_ADMIN_TOKEN:-demo-admin-token-change-me}"
export REGUA_HTTP_ADDR="${REGUA_HTTP_ADDR:-127.0.0.1:8080}"
export REGUA_PUBLIC_URL="http://$REGUA_HTTP_ADDR"
# The fake providers' addresses and (fake) credentials: see `regua-fakes --help`.
export REGUA_SMTP_URL="smtp://127.0.0.1:2525"
export REGUA_TWILIO_API_BASE="http://127.0.0.1:8025"
export REGUA_TWILIO_ACCOUNT_SID="ACfake00000000000000000000000000"
export REGUA_TWILIO_AUTH_TOKEN="fake-twilio-auth-token"
export REGUA_TWILIO_FROM="+15005550006"
export REGUA_WHATSAPP_API_BASE="http://127.0.0.1:8026"
export REGUA_WHATSAPP_TOKEN="fake-whatsapp-token"
export REGUA_WHATSAPP_PHONE_NUMBER_ID="1098765432"
export REGUA_WHATSAPP_APP_SECRET="fake-whatsapp-app-secret"
export REGUA_WHATSAPP_VERIFY_TOKEN="fake-verify-token"
# The demo tenant lives on a test clock; its messages may go out only because the
# providers here are the fakes.
export REGUA_TEST_CLOCK_SENDS=true
# A laptop: the development link secret and a placeholder admin token are fine here.
export REGUA_ALLOW_DEVELOPMENT_SECRETS=true
export REGUA_SMS_RATE_PER_SEC="${REGUA_SMS_RATE_PER_SEC:-300}"
export REGUA_WHATSAPP_RATE_PER_SEC="${REGUA_WHATSAPP_RATE_PER_SEC:-300}"
export REGUA_EMAIL_RATE_PER_SEC="${REGUA_EMAIL_RATE_PER_SEC:-300}"
mkdir -p .regua-demo
# The shipped binary, and the development tools (demo, fakes), which it does not carry.
cargo build --locked -p regua --bin regua -p regua-devtools --bin regua-demo --bin regua-fakes
# The demo has a broker of its own (JetStream store in .regua-demo/nats), so it never
# touches the machine's. Every run starts from a fresh database and a fresh store
# (DEMO_KEEP=1 continues the last run, whose test clock is already two months on).
export REGUA_NATS_URL="nats://127.0.0.1:${DEMO_NATS_PORT:-4233}"
if [ "${DEMO_KEEP:-0}" != 1 ]; then
  psql "${REGUA_DATABASE_URL%/*}/postgres" -qc "DROP DATABASE IF EXISTS ${REGUA_DATABASE_URL##*/} WITH (FORCE)"
  rm -rf .regua-demo/nats
fi
nats-server -js -a 127.0.0.1 -p "${DEMO_NATS_PORT:-4233}" -sd .regua-demo/nats > .regua-demo/nats.log 2>&1 &
nats_pid=$!
target/debug/regua migrate
target/debug/regua-fakes --public-url "$REGUA_PUBLIC_URL" > .regua-demo/providers.log 2>&1 &
fakes_pid=$!
target/debug/regua all > .regua-demo/regua.log 2>&1 &
regua_pid=$!
trap 'kill -TERM $regua_pid 2>/dev/null; wait $regua_pid 2>/dev/null || true; kill -TERM $fakes_pid $nats_pid 2>/dev/null; wait $fakes_pid $nats_pid 2>/dev/null || true; echo "regua stopped"' EXIT
for _ in $(seq 1 100); do
  curl -fsS "http://$REGUA_HTTP_ADDR/readyz" >/dev/null 2>&1 && break
  kill -0 $regua_pid 2>/dev/null || { cat .regua-demo/regua.log; exit 1; }
  sleep 0.2
done
echo "regua all is up on http://$REGUA_HTTP_ADDR (log: .regua-demo/regua.log)"
target/debug/regua-demo --tenant demo --invoices "${DEMO_INVOICES:-1000}"
echo "the last messages each fake provider received (all of them: .regua-demo/providers.log, http://127.0.0.1:8029/):"
for channel in whatsapp sms email; do grep "^$channel " .regua-demo/providers.log | tail -n 3; done
if [ "${DEMO_EXIT:-0}" = 1 ]; then exit 0; fi
echo "running; Ctrl-C to stop"
wait $regua_pid
