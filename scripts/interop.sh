#!/usr/bin/env bash
# Builds the foreign CloudEvents clients of the interop suite (tests/interop/) with this
# machine's toolchains, into the repository's ignored .cache/ (the network is needed the
# first time only). The last stdout line is RUN=<the command line that runs the client>.
#
# Usage: scripts/interop.sh go|java-kafka
#   go          tests/interop/go: github.com/cloudevents/sdk-go/v2 (go.mod pins it), built
#               with GOMODCACHE/GOCACHE/GOPATH under .cache/go
#   java-kafka  tests/interop/java-kafka: io.cloudevents:cloudevents-kafka (pom.xml pins
#               it), built with Maven (Java 17) and -Dmaven.repo.local=.cache/m2
# A client is built again only when one of its sources is newer than the build.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="$ROOT/.cache"
die() { echo "interop.sh: $*" >&2; exit 1; }

# stale OUTPUT SOURCE...: whether OUTPUT is missing or older than a SOURCE file
stale() {
  local output=$1; shift
  [[ -e $output ]] || return 0
  [[ -n $(find "$@" -type f -newer "$output" -print -quit) ]]
}

build_go() {
  # Go's own installer puts it in /usr/local/go/bin, which only login shells have on PATH
  local go
  go=$(command -v go || echo /usr/local/go/bin/go)
  [[ -x $go ]] || die "go not found: install Go 1.23 or later (tests/interop/go/go.mod)"
  local src="$ROOT/tests/interop/go" bin="$CACHE/go/bin/cesdk"
  export GOMODCACHE="$CACHE/go/mod" GOCACHE="$CACHE/go/build" GOPATH="$CACHE/go"
  export GOFLAGS=-modcacherw GOTOOLCHAIN=local
  if stale "$bin" "$src"; then
    mkdir -p "$(dirname "$bin")"
    (cd "$src" && "$go" build -o "$bin.tmp" .) >&2 || die "go build of $src failed"
    mv "$bin.tmp" "$bin"
  fi
  echo "RUN=$bin"
}

build_java_kafka() {
  command -v java >/dev/null || die "java not found: apt-get install -y openjdk-17-jdk-headless"
  command -v mvn >/dev/null || die "mvn not found: apt-get install -y maven"
  local src="$ROOT/tests/interop/java-kafka" out="$CACHE/java-kafka/target"
  local jar="$out/interop-cloudevents-kafka-1.jar"
  if stale "$jar" "$src"; then
    mvn -B -q -f "$src/pom.xml" -Dmaven.repo.local="$CACHE/m2" \
      -Dinterop.build="$out" package >&2 || die "mvn package of $src failed"
    touch "$jar"
  fi
  echo "RUN=java -cp $jar:$out/lib/* interop.Main"
}

case "${1:-}" in
  go) build_go ;;
  java-kafka) build_java_kafka ;;
  *) die "usage: scripts/interop.sh go|java-kafka" ;;
esac
