#!/usr/bin/env bash
# Installs and starts what regua needs on a Debian machine, as root: a C toolchain,
# PostgreSQL, NATS with JetStream, and Rust (rustup) when cargo is missing. Idempotent:
# what is installed and running is left alone.
set -euo pipefail

log() { printf 'setup: %s\n' "$*" >&2; }

missing=()
command -v cc >/dev/null 2>&1 || missing+=(build-essential)
command -v curl >/dev/null 2>&1 || missing+=(curl ca-certificates)
command -v nats-server >/dev/null 2>&1 || missing+=(nats-server)
command -v pg_ctlcluster >/dev/null 2>&1 || missing+=(postgresql)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
python3 -c 'import yaml' >/dev/null 2>&1 || missing+=(python3-yaml)
python3 -c 'import ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
if ((${#missing[@]})); then
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    log "installing Rust with rustup"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --component rustfmt,clippy >/dev/null
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
fi

# PostgreSQL on 127.0.0.1:5432.
if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  log "starting PostgreSQL $version"
  pg_ctlcluster --skip-systemctl-redirect "$version" main start
  for _ in $(seq 1 50); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 0.2; done
fi
# regua connects as postgres/postgres over TCP. Servers with trust auth ignore the
# password; a fresh Debian install asks for one, so give the role that password.
if ! PGPASSWORD=postgres psql -h 127.0.0.1 -U postgres -d postgres -Atqc 'select 1' >/dev/null 2>&1; then
  log "setting a password for the postgres role"
  su postgres -c "psql -q -c \"ALTER ROLE postgres PASSWORD 'postgres'\""
fi

# NATS with JetStream on 127.0.0.1:4222.
if ! (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null; then
  log "starting nats-server with JetStream"
  mkdir -p /var/lib/nats-server
  start-stop-daemon --start --oknodo --background --exec "$(command -v nats-server)" -- \
    -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
  for _ in $(seq 1 50); do (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null && break; sleep 0.2; done
fi
# Offline validators for deploy/ (deploy/validate.sh): kubernetes-validate bundles the
# Kubernetes schemas, so nothing is fetched when it runs.
if [ ! -x /opt/regua-tools/bin/kubernetes-validate ]; then
  log "installing kubernetes-validate into /opt/regua-tools"
  python3 -m venv /opt/regua-tools
  /opt/regua-tools/bin/pip install -q kubernetes-validate==1.37.0
fi

log "ready: postgres 127.0.0.1:5432, nats 127.0.0.1:4222, $(cargo --version)"
