#!/usr/bin/env bash
# Single-node Apache Kafka (KRaft, broker+controller) on 127.0.0.1 for tests and CI.
#
# Usage: scripts/kafka.sh install|start|stop|restart|clean|env
#   install  fetch Kafka + runtime deps from Maven Central into .cache/kafka/libs (once)
#   start    start a broker (installs first if needed); last stdout line: KAFKA_BOOTSTRAP=127.0.0.1:PORT
#            If a stopped broker's state exists, it restarts on the same port with the same data.
#   stop     stop the broker, keep data + port for a later `start`
#   restart  stop + start (same data, same port)
#   clean    stop and delete data and state (the installed jars stay)
#   env      print KAFKA_BOOTSTRAP=... of the running broker, exit 1 if none
# Env: KAFKA_PORT (fixed client port; also overrides the stored one on restart), KAFKA_VERSION (default below),
#      KAFKA_START_TIMEOUT (seconds, default 60), KAFKA_HEAP (default -Xmx512m).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"   # works from any cwd
SCRIPT=kafka.sh
CACHE="$ROOT/.cache/kafka"
PROC='kafka\.Kafka'
KEPT=data
LIBS="$CACHE/libs"
M2="$ROOT/.cache/m2"              # private maven repo: self-contained, no ~/.m2 needed
KAFKA_VERSION="${KAFKA_VERSION:-4.4.0}"   # newest 4.x on Maven Central as of 2026-11
TIMEOUT="${KAFKA_START_TIMEOUT:-60}"
HEAP="${KAFKA_HEAP:--Xmx512m}"

. "$ROOT/scripts/_broker.sh"

need_java() {
  command -v java >/dev/null || die "java not found (Kafka 4.x needs Java 17+): apt-get install -y openjdk-17-jre-headless"
  local v; v="$(java -XshowSettings:properties -version 2>&1 | awk -F'= ' '/java.specification.version/{print $2}')"
  [ "${v%%.*}" -ge 17 ] 2>/dev/null || die "Kafka 4.x needs Java 17+, found java.specification.version=$v"
}

installed() { [ "$(cat "$LIBS/.version" 2>/dev/null)" = "$KAFKA_VERSION" ]; }

cmd_install() {
  installed && { log "Kafka $KAFKA_VERSION already installed in $LIBS"; return 0; }
  need_java
  command -v mvn >/dev/null || die "mvn not found: apt-get install -y maven"
  log "installing Kafka $KAFKA_VERSION + runtime deps from Maven Central (~5 s on a fast mirror, longer on a cold slow link)..."
  # The published POMs leak test-only deps into runtime scope (junit, mockito, apacheds
  # Kerberos/LDAP test servers), and kafka-tools drags in all of Kafka Connect: exclude them.
  # kafka-tools gives StorageTool/TopicCommand; log4j-slf4j-impl binds slf4j 1.7 to log4j2.
  local ex='<exclusions>
        <exclusion><groupId>org.junit.jupiter</groupId><artifactId>*</artifactId></exclusion>
        <exclusion><groupId>org.mockito</groupId><artifactId>*</artifactId></exclusion>
        <exclusion><groupId>org.apache.directory.server</groupId><artifactId>*</artifactId></exclusion>
        <exclusion><groupId>org.apache.directory.api</groupId><artifactId>*</artifactId></exclusion>
        <exclusion><groupId>org.apache.kafka</groupId><artifactId>connect-runtime</artifactId></exclusion>
      </exclusions>'
  cat >"$CACHE/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.eventmesh</groupId><artifactId>kafka-runtime</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$KAFKA_VERSION</version>$ex</dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId><version>$KAFKA_VERSION</version>$ex</dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>2.25.5</version></dependency>
  </dependencies>
</project>
EOF
  rm -rf "$LIBS.tmp"
  # (the sed strips stray ANSI resets that Debian's mvn 3.8.7 prints even in batch mode)
  mvn -B -q -f "$CACHE/pom.xml" -Dmaven.repo.local="$M2" \
    dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$LIBS.tmp" 2>&1 \
    | sed 's/\x1b\[[0-9;]*m//g' >&2 \
    || die "maven could not fetch Kafka $KAFKA_VERSION (is Maven Central reachable?)"
  ls "$LIBS.tmp"/kafka_2.13-*.jar >/dev/null 2>&1 || die "kafka_2.13 jar missing after maven run"
  echo "$KAFKA_VERSION" >"$LIBS.tmp/.version"
  rm -rf "$LIBS" && mv "$LIBS.tmp" "$LIBS"   # swap in only when complete
  log "installed Kafka $KAFKA_VERSION ($(find "$LIBS" -name '*.jar' | wc -l) jars, $(du -sh "$LIBS" | cut -f1))"
}

# Loads PORT CPORT WORK (temp dir with server.properties, data/, kafka.log) from the state file.

java_tool() { java -Xmx256m -Dlog4j2.configurationFile="$WORK/log4j2.properties" -cp "$LIBS/*" "$@"; }

write_config() {
  cat >"$WORK/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$CPORT
listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CPORT
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CPORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$WORK/data
num.partitions=1
auto.create.topics.enable=true
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
EOF
  cat >"$WORK/log4j2.properties" <<'EOF'
rootLogger.level=INFO
rootLogger.appenderRef.stdout.ref=STDOUT
appender.stdout.type=Console
appender.stdout.name=STDOUT
appender.stdout.layout.type=PatternLayout
appender.stdout.layout.pattern=[%d] %p %m (%c)%n
logger.kafka.name=org.apache.kafka
logger.kafka.level=WARN
logger.state.name=state.change.logger
logger.state.level=WARN
EOF
}

cmd_start() {
  lock
  if pid="$(running_pid)"; then load_state; log "already running (pid $pid)"; echo "KAFKA_BOOTSTRAP=127.0.0.1:$PORT"; return 0; fi
  cmd_install
  need_java
  PORT="" CPORT="" WORK="" fresh=""
  if load_state && [ -f "$WORK/data/meta.properties" ]; then
    PORT="${KAFKA_PORT:-$PORT}"   # client port may change; the controller port is baked into the metadata
    log "restarting stopped broker on port $PORT with data in $WORK/data"
  else
    [ -n "$WORK" ] && log "previous data dir $WORK is gone; starting fresh"
    fresh=1
    PORT="${KAFKA_PORT:-$(free_port)}"
    CPORT="$(free_port)"; [ "$CPORT" != "$PORT" ] || CPORT="$(free_port)"
  fi
  for p in "$PORT" "$CPORT"; do port_open "$p" && die "port 127.0.0.1:$p is already in use by another process"; done
  if [ -n "$fresh" ]; then
    WORK="$(mktemp -d "${TMPDIR:-/tmp}/eventmesh-kafka.XXXXXX")"
    write_config
    # 4.x only runs KRaft; --standalone makes this node the sole (dynamic-quorum) voter.
    # A cluster id is a UUID in URL-safe base64, which can begin with "-": Kafka's own
    # random-uuid draws again then, as "-t -abc..." reads as an option (1 run in 64 failed).
    local cid; cid="$(python3 -c '
import base64, uuid
while True:
    cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    if not cid.startswith("-"):
        break
print(cid)')"
    java_tool kafka.tools.StorageTool format --cluster-id="$cid" -c "$WORK/server.properties" --standalone >"$WORK/format.log" 2>&1 \
      || { cat "$WORK/format.log" >&2; rm -rf "$WORK"; die "storage format failed"; }
  fi
  mkdir -p "$RUN"
  printf 'PORT=%s\nCPORT=%s\nWORK=%s\n' "$PORT" "$CPORT" "$WORK" >"$RUN/state.env"
  write_config   # rewritten on restart too, so the config always matches this script and the state

  local logf="$WORK/kafka.log" t0=$SECONDS
  rm -f "$PIDFILE"
  echo "===== kafka.sh start $(date -u +%FT%TZ) =====" >>"$logf"
  # setsid: own session, so the broker survives the caller's shell/terminal going away.
  # 9>&- : do not let the JVM inherit the lock fd. $HEAP is unquoted on purpose (may hold several flags).
  # shellcheck disable=SC2016,SC2086
  setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$PIDFILE" \
    java $HEAP -Xms128m -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$WORK/log4j2.properties" \
    -cp "$LIBS/*" kafka.Kafka "$WORK/server.properties" </dev/null >>"$logf" 2>&1 9>&- &
  log "starting Kafka $KAFKA_VERSION on 127.0.0.1:$PORT (log: $logf)"
  for _ in $(seq 1 50); do [ -s "$PIDFILE" ] && break; sleep 0.1; done   # child writes its pid

  # Ready = the port accepts connections AND a real admin/metadata request succeeds.
  local ok=""
  while (( SECONDS - t0 < TIMEOUT )); do
    sleep 0.5
    running_pid >/dev/null || break
    port_open "$PORT" || continue
    if java_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "127.0.0.1:$PORT" --list \
         >"$WORK/check.log" 2>&1; then ok=1; break; fi
  done
  [ -n "$ok" ] || fail_start "$logf" "broker did not come up within ${TIMEOUT}s"
  log "ready after $(( SECONDS - t0 ))s (pid $(cat "$PIDFILE"))"
  echo "KAFKA_BOOTSTRAP=127.0.0.1:$PORT"
}

env_line() { echo "KAFKA_BOOTSTRAP=127.0.0.1:$PORT"; }

broker_main "$@"
