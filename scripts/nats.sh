#!/usr/bin/env bash
# Single NATS server with JetStream on 127.0.0.1 for tests and CI.
#
# Usage: scripts/nats.sh install|start|stop|restart|clean|env
#   install  ensure nats-server exists: PATH, else apt-get (Debian), else `go install` into .cache/nats/bin
#   start    start the server (installs first if needed); last stdout line: NATS_URL=nats://127.0.0.1:PORT
#            If a stopped server's state exists, it restarts on the same port with the same JetStream store.
#   stop     stop it, keep the store + port for a later `start`
#   restart  stop + start (same store, same port)
#   clean    stop and delete store and state
#   env      print NATS_URL=... of the running server, exit 1 if none
# Env: NATS_PORT (fixed client port; also overrides the stored one on restart), NATS_START_TIMEOUT (seconds, default 30),
#      NATS_GO_VERSION (version for the `go install` fallback, default below).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"   # works from any cwd
CACHE="$ROOT/.cache/nats"
RUN="$CACHE/run"                  # state.env + nats.pid; survives `stop`, removed by `clean`
GO_VERSION="${NATS_GO_VERSION:-v2.10.27}"
TIMEOUT="${NATS_START_TIMEOUT:-30}"

die() { echo "nats.sh: error: $*" >&2; exit 1; }
log() { echo "nats.sh: $*" >&2; }      # progress to stderr; stdout is only for KEY=VALUE

# Serialise concurrent invocations; the server must not inherit the lock fd (see 9>&- below).
lock() { mkdir -p "$CACHE"; exec 9>"$CACHE/.lock"; flock -w 300 9 || die "timed out waiting for $CACHE/.lock"; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

server_bin() {  # prints the nats-server to use; a go-built one in .cache/nats/bin wins over PATH
  if [ -x "$CACHE/bin/nats-server" ]; then echo "$CACHE/bin/nats-server"; else command -v nats-server; fi
}

cmd_install() {
  if bin="$(server_bin)"; then log "using $bin ($("$bin" --version))"; return 0; fi
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    log "installing nats-server with apt-get..."
    # Note: on a host running systemd the Debian package also enables a system-wide
    # nats-server.service on :4222; we never use it (our server gets its own port).
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q nats-server >&2 \
      || log "apt-get install nats-server failed; trying the go fallback"
  fi
  if ! server_bin >/dev/null; then
    command -v go >/dev/null || die "nats-server not found, apt-get failed/unavailable and no 'go' toolchain for the fallback"
    log "building nats-server $GO_VERSION with go install (module proxy)..."
    GOBIN="$CACHE/bin" go install "github.com/nats-io/nats-server/v2@$GO_VERSION" >&2 \
      || die "go install github.com/nats-io/nats-server/v2@$GO_VERSION failed (is the Go module proxy reachable?)"
  fi
  bin="$(server_bin)" || die "nats-server still not found after install"
  log "installed $bin ($("$bin" --version))"
}

# Loads PORT MPORT WORK (temp dir with store/ and nats.log) from the state file.
load_state() { [ -f "$RUN/state.env" ] && . "$RUN/state.env"; }

running_pid() {  # prints the pid if our server is alive (guards against pid reuse)
  local pid; pid="$(cat "$RUN/nats.pid" 2>/dev/null)" || return 1
  [ -n "$pid" ] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'nats-server' && echo "$pid"
}

ready() {  # JetStream-aware health check on the monitoring port; TCP INFO banner if no curl
  if command -v curl >/dev/null; then
    curl -fsS -m 2 "http://127.0.0.1:$MPORT/healthz?js-enabled-only=true" >/dev/null 2>&1
  else
    local line; exec 3<>"/dev/tcp/127.0.0.1/$PORT" 2>/dev/null || return 1
    read -r -t 2 line <&3 || true; exec 3<&-; [[ "$line" == INFO* ]]
  fi
}

cmd_start() {
  lock
  if pid="$(running_pid)"; then load_state; log "already running (pid $pid)"; echo "NATS_URL=nats://127.0.0.1:$PORT"; return 0; fi
  cmd_install
  local bin; bin="$(server_bin)"
  PORT="" MPORT="" WORK=""
  if load_state && [ -d "$WORK/store" ]; then
    PORT="${NATS_PORT:-$PORT}"
    log "restarting stopped server on port $PORT with store $WORK/store"
  else
    [ -n "$WORK" ] && log "previous store $WORK is gone; starting fresh"
    PORT="${NATS_PORT:-$(free_port)}"
    MPORT="$(free_port)"; [ "$MPORT" != "$PORT" ] || MPORT="$(free_port)"
  fi
  for p in "$PORT" "$MPORT"; do port_open "$p" && die "port 127.0.0.1:$p is already in use by another process"; done
  if [ -z "$WORK" ] || [ ! -d "$WORK/store" ]; then
    WORK="$(mktemp -d "${TMPDIR:-/tmp}/eventmesh-nats.XXXXXX")"; mkdir -p "$WORK/store"
  fi
  mkdir -p "$RUN"
  printf 'PORT=%s\nMPORT=%s\nWORK=%s\n' "$PORT" "$MPORT" "$WORK" >"$RUN/state.env"

  local logf="$WORK/nats.log" t0=$SECONDS
  rm -f "$RUN/nats.pid"
  echo "===== nats.sh start $(date -u +%FT%TZ) =====" >>"$logf"
  # -a binds client AND monitoring listeners to loopback only. A fixed server name (-n)
  # keeps the JetStream identity stable across restarts. setsid: survive the caller's shell.
  # shellcheck disable=SC2016  # $$/$@ are for the inner bash
  setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$RUN/nats.pid" \
    "$bin" -a 127.0.0.1 -p "$PORT" -m "$MPORT" -n eventmesh-test -js -sd "$WORK/store" \
    </dev/null >>"$logf" 2>&1 9>&- &
  log "starting $("$bin" --version) on 127.0.0.1:$PORT (monitor :$MPORT, log: $logf)"
  for _ in $(seq 1 50); do [ -s "$RUN/nats.pid" ] && break; sleep 0.1; done   # child writes its pid

  local ok=""
  while (( SECONDS - t0 < TIMEOUT )); do
    running_pid >/dev/null || break
    if ready; then ok=1; break; fi
    sleep 0.2
  done
  if [ -z "$ok" ]; then
    log "---- last 40 lines of $logf ----"; tail -n 40 "$logf" >&2 || true
    pid="$(running_pid)" && kill -9 "$pid" 2>/dev/null
    rm -f "$RUN/nats.pid"
    die "nats-server did not come up within ${TIMEOUT}s"
  fi
  log "ready after $(( SECONDS - t0 ))s (pid $(cat "$RUN/nats.pid"))"
  echo "NATS_URL=nats://127.0.0.1:$PORT"
}

cmd_stop() {
  local pid
  if pid="$(running_pid)"; then
    kill -TERM "$pid"
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done   # 30 s grace
    if kill -0 "$pid" 2>/dev/null; then log "no exit after SIGTERM, sending SIGKILL"; kill -KILL "$pid"; fi
    while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
    log "stopped (pid $pid); store kept for restart"
  else
    log "not running"
  fi
  rm -f "$RUN/nats.pid"
}

cmd_env() {
  running_pid >/dev/null || { log "no running server started by this script"; exit 1; }
  load_state; echo "NATS_URL=nats://127.0.0.1:$PORT"
}

case "${1:-}" in
  install) lock; cmd_install ;;
  start)   cmd_start ;;
  stop)    lock; cmd_stop ;;
  restart) lock; cmd_stop; cmd_start ;;
  clean)   lock; cmd_stop; WORK=""; load_state || true
           [ -n "${WORK:-}" ] && rm -rf "$WORK"; rm -rf "$RUN"; log "cleaned store and state" ;;
  env)     cmd_env ;;
  *) echo "usage: $0 {install|start|stop|restart|clean|env}" >&2; exit 2 ;;
esac
