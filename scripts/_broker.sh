# shellcheck shell=bash
# Shared by scripts/kafka.sh and scripts/nats.sh: one local server process with state
# that survives `stop`, so a test can restart it on the same port with the same data.
#
# The sourcing script sets, before sourcing:
#   SCRIPT   its name, for messages        CACHE  its cache folder under .cache/
#   PROC     a pattern its server's command line matches (guards against pid reuse)
#   KEPT     what `stop` keeps, for messages ("data", "store")
# and defines: cmd_install, cmd_start, env_line (prints the KEY=VALUE line; PORT is loaded).
# Then it calls: broker_main "$@"

RUN="$CACHE/run"        # state.env + server.pid; survives `stop`, removed by `clean`
PIDFILE="$RUN/server.pid"

die() { echo "$SCRIPT: error: $*" >&2; exit 1; }
log() { echo "$SCRIPT: $*" >&2; }      # progress to stderr; stdout is only for KEY=VALUE

# Serialise concurrent invocations (e.g. parallel test workers). The server itself is
# started with 9>&- so it does not inherit and hold the lock for ever.
lock() { mkdir -p "$CACHE"; exec 9>"$CACHE/.lock"; flock -w 300 9 || die "timed out waiting for $CACHE/.lock"; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

load_state() { [ -f "$RUN/state.env" ] && . "$RUN/state.env"; }

running_pid() {  # prints the pid if our server is alive
  local pid; pid="$(cat "$PIDFILE" 2>/dev/null)" || return 1
  [ -n "$pid" ] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "$PROC" && echo "$pid"
}

fail_start() {  # $1: the server's log file, $2: what did not happen
  log "---- last 40 lines of $1 ----"; tail -n 40 "$1" >&2 || true
  local pid; pid="$(running_pid)" && kill -9 "$pid" 2>/dev/null
  rm -f "$PIDFILE"
  die "$2"
}

cmd_stop() {
  local pid
  if pid="$(running_pid)"; then
    kill -TERM "$pid"
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done   # 30 s grace
    if kill -0 "$pid" 2>/dev/null; then log "no exit after SIGTERM, sending SIGKILL"; kill -KILL "$pid"; fi
    while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
    log "stopped (pid $pid); $KEPT kept for restart"
  else
    log "not running"
  fi
  rm -f "$PIDFILE"
}

cmd_env() {
  running_pid >/dev/null || { log "no running server started by this script"; exit 1; }
  load_state; env_line
}

broker_main() {
  case "${1:-}" in
    install) lock; cmd_install ;;
    start)   cmd_start ;;
    stop)    lock; cmd_stop ;;
    restart) lock; cmd_stop; cmd_start ;;
    clean)   lock; cmd_stop; WORK=""; load_state || true
             [ -n "${WORK:-}" ] && rm -rf "$WORK"; rm -rf "$RUN"; log "cleaned $KEPT and state" ;;
    env)     cmd_env ;;
    *) echo "usage: $0 {install|start|stop|restart|clean|env}" >&2; exit 2 ;;
  esac
}
