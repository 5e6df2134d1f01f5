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
SCRIPT=nats.sh
CACHE="$ROOT/.cache/nats"
PROC='nats-server'
KEPT=store
GO_VERSION="${NATS_GO_VERSION:-v2.10.27}"
TIMEOUT="${NATS_START_TIMEOUT:-30}"

. "$ROOT/scripts/_broker.sh"

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
  rm -f "$PIDFILE"
  echo "===== nats.sh start $(date -u +%FT%TZ) =====" >>"$logf"
  # -a binds client AND monitoring listeners to loopback only. A fixed server name (-n)
  # keeps the JetStream identity stable across restarts. setsid: survive the caller's shell.
  # shellcheck disable=SC2016  # $$/$@ are for the inner bash
  setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$PIDFILE" \
    "$bin" -a 127.0.0.1 -p "$PORT" -m "$MPORT" -n eventmesh-test -js -sd "$WORK/store" \
    </dev/null >>"$logf" 2>&1 9>&- &
  log "starting $("$bin" --version) on 127.0.0.1:$PORT (monitor :$MPORT, log: $logf)"
  for _ in $(seq 1 50); do [ -s "$PIDFILE" ] && break; sleep 0.1; done   # child writes its pid

  local ok=""
  while (( SECONDS - t0 < TIMEOUT )); do
    running_pid >/dev/null || break
    if ready; then ok=1; break; fi
    sleep 0.2
  done
  [ -n "$ok" ] || fail_start "$logf" "nats-server did not come up within ${TIMEOUT}s"
  log "ready after $(( SECONDS - t0 ))s (pid $(cat "$PIDFILE"))"
  echo "NATS_URL=nats://127.0.0.1:$PORT"
}

env_line() { echo "NATS_URL=nats://127.0.0.1:$PORT"; }

broker_main "$@"
