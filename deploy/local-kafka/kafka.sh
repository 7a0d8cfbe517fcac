#!/usr/bin/env bash
# A real single-node Apache Kafka (KRaft) broker from Maven Central jars, for
# machines without Docker.  Usage: kafka.sh start|stop|status|bootstrap|logs [-f]|clean
#
#   start      start the broker (idempotent); prints 127.0.0.1:PORT on stdout
#   stop       SIGTERM, wait up to 30 s, then SIGKILL
#   status     "running ..." (exit 0) or "stopped" (exit 3)
#   bootstrap  print 127.0.0.1:PORT of the running broker (exit 1 if stopped)
#   logs [-f]  tail the broker log (follow with -f)
#   clean      stop, then delete the run dir's data, config and log
#
# Only the bootstrap address goes to stdout; progress and errors go to stderr.
# Environment:
#   BANDIT_KAFKA_CACHE    jar cache root, default ~/.cache/bandit-processor/kafka-4.1.1
#                         (jars in <root>/libs; fetched once with mvn, offline afterwards)
#   BANDIT_KAFKA_RUN_DIR  data, pid, log and ports, default deploy/local-kafka/run;
#                         one run dir per broker, so several can run side by side
#   BANDIT_KAFKA_JVM_OPTS extra JVM options appended to the defaults
#   JAVA_HOME, PYTHON     which java / python3 to use
set -euo pipefail

KAFKA_VERSION=4.1.1
HERE=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
CACHE_DIR=${BANDIT_KAFKA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/bandit-processor/kafka-$KAFKA_VERSION}
LIBS=$CACHE_DIR/libs
RUN_DIR=${BANDIT_KAFKA_RUN_DIR:-$HERE/run}
PYTHON=${PYTHON:-python3}
if [[ -n ${JAVA_HOME:-} && -x $JAVA_HOME/bin/java ]]; then JAVA=$JAVA_HOME/bin/java; else JAVA=java; fi
LOG4J="-Dlog4j2.configurationFile=$HERE/log4j2.properties"
READY_TIMEOUT_S=60
STOP_TIMEOUT_S=30

log() { printf 'kafka.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Absolute paths, so the script and the broker work from any cwd.
mkdir -p -- "$RUN_DIR"
RUN_DIR=$(cd -- "$RUN_DIR" && pwd)
PID_FILE=$RUN_DIR/kafka.pid
PORTS_FILE=$RUN_DIR/ports
CONF=$RUN_DIR/server.properties
DATA=$RUN_DIR/data
BROKER_LOG=$RUN_DIR/broker.log

running_pid() {
    # The pid file alone is not proof: after a reboot the pid may belong to another process.
    [[ -f $PID_FILE ]] || return 1
    local pid
    pid=$(<"$PID_FILE")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    ps -p "$pid" -o args= 2>/dev/null | grep -q -- 'kafka\.Kafka' || return 1
    printf '%s\n' "$pid"
}

bootstrap_address() {
    local port _controller
    read -r port _controller <"$PORTS_FILE"
    printf '127.0.0.1:%s\n' "$port"
}

ensure_jars() {
    [[ -f $LIBS/.complete ]] && return 0
    command -v mvn >/dev/null || die "Maven (mvn) is needed once to fetch the Kafka jars into $LIBS"
    log "fetching Apache Kafka $KAFKA_VERSION jars from Maven Central into $LIBS (once)"
    mkdir -p -- "$CACHE_DIR"
    local tmp
    tmp=$(mktemp -d "$CACHE_DIR/libs.tmp.XXXXXX")
    if ! mvn -B -q -Dstyle.color=never -f "$HERE/pom.xml" \
        org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$tmp" >&2; then
        rm -rf -- "$tmp"
        die "mvn could not fetch the jars (is Maven Central reachable?)"
    fi
    touch "$tmp/.complete"
    # Rename into place so a concurrent start never sees a half-filled cache;
    # if another start got there first, keep its copy.
    [[ -d $LIBS && ! -f $LIBS/.complete ]] && rm -rf -- "$LIBS"
    if [[ -e $LIBS ]]; then rm -rf -- "$tmp"; else mv -- "$tmp" "$LIBS"; fi
    [[ -f $LIBS/.complete ]] || die "jar cache $LIBS is incomplete"
}

pick_ports() {
    # Bind port 0 for both sockets at once (so they differ), read, close. The
    # broker gets the numbers, never 0: it would advertise port 0 to clients.
    "$PYTHON" - <<'PY'
import socket

socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
for s in socks:
    s.close()
PY
}

ports_free() {
    "$PYTHON" - "$@" <<'PY'
import socket
import sys

for port in sys.argv[1:]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # As the JVM does: a port in TIME_WAIT after our own stop is free to reuse.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", int(port)))
        except OSError:
            sys.exit(1)
PY
}

cluster_id() {
    # What StorageTool random-uuid prints (base64url of 16 random bytes), without a JVM start.
    "$PYTHON" - <<'PY'
import base64
import uuid

while True:
    cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    if not cid.startswith("-"):
        print(cid)
        break
PY
}

configure() {
    # Keep the data of an earlier run when its ports are still free; else start over.
    if [[ -f $DATA/meta.properties && -f $PORTS_FILE && -f $CONF ]]; then
        local port controller
        read -r port controller <"$PORTS_FILE"
        if ports_free "$port" "$controller"; then
            log "reusing $DATA (ports $port/$controller)"
            return 0
        fi
        log "ports $port/$controller are taken now; starting with empty storage"
    fi
    rm -rf -- "$DATA"
    mkdir -p -- "$DATA"
    local port controller cid
    read -r port controller < <(pick_ports)
    sed -e "s|@PORT@|$port|g" -e "s|@CONTROLLER_PORT@|$controller|g" -e "s|@LOG_DIR@|$DATA|g" \
        "$HERE/server.properties.template" >"$CONF"
    printf '%s %s\n' "$port" "$controller" >"$PORTS_FILE"
    cid=$(cluster_id)
    log "formatting $DATA (cluster id $cid)"
    # Static controller.quorum.voters: format WITHOUT --standalone.
    "$JAVA" -Xmx256m "$LOG4J" -cp "$LIBS/*" kafka.tools.StorageTool format \
        -t "$cid" -c "$CONF" >&2 || die "formatting the storage failed"
}

cmd_start() {
    local pid
    if pid=$(running_pid); then
        log "already running (pid $pid, run dir $RUN_DIR)"
        bootstrap_address
        return 0
    fi
    rm -f -- "$PID_FILE"
    command -v "$JAVA" >/dev/null || die "java (17+) is needed; set JAVA_HOME or put java on PATH"
    command -v "$PYTHON" >/dev/null || die "python3 is needed to pick free ports; set PYTHON"
    ensure_jars
    configure
    [[ -f $BROKER_LOG ]] && mv -f -- "$BROKER_LOG" "$BROKER_LOG.1"
    local jvm_opts=(-Xms256m -Xmx512m -XX:+UseG1GC -XX:MaxGCPauseMillis=20
        -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent
        -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true "$LOG4J")
    # shellcheck disable=SC2206 # word splitting of user-given options is intended
    [[ -n ${BANDIT_KAFKA_JVM_OPTS:-} ]] && jvm_opts+=($BANDIT_KAFKA_JVM_OPTS)
    # Own session (setsid): a Ctrl-C in the caller's terminal must not reach the
    # broker. The inner sh records its pid, then execs java under that pid.
    local launcher=()
    command -v setsid >/dev/null && launcher=(setsid)
    "${launcher[@]}" sh -c 'echo $$ >"$0"; exec "$@"' "$PID_FILE" \
        "$JAVA" "${jvm_opts[@]}" -cp "$LIBS/*" kafka.Kafka "$CONF" \
        >"$BROKER_LOG" 2>&1 </dev/null 9>&- &
    local waited=0
    while [[ ! -s $PID_FILE ]] && ((waited < 50)); do sleep 0.1; waited=$((waited + 1)); done
    pid=$(<"$PID_FILE")
    log "started pid $pid (log $BROKER_LOG); waiting for readiness"
    local deadline=$((SECONDS + READY_TIMEOUT_S))
    while ((SECONDS < deadline)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            log "the broker exited during startup; last lines of $BROKER_LOG:"
            tail -n 40 -- "$BROKER_LOG" >&2 || true
            rm -f -- "$PID_FILE"
            exit 1
        fi
        if grep -q 'Kafka Server started' -- "$BROKER_LOG"; then
            log "ready after $((SECONDS + READY_TIMEOUT_S - deadline)) s"
            bootstrap_address
            return 0
        fi
        sleep 0.2
    done
    log "not ready after ${READY_TIMEOUT_S} s; last lines of $BROKER_LOG:"
    tail -n 40 -- "$BROKER_LOG" >&2 || true
    stop_pid "$pid"
    exit 1
}

stop_pid() {
    local pid=$1 waited=0
    kill -TERM "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null && ((waited < STOP_TIMEOUT_S * 5)); do
        sleep 0.2
        waited=$((waited + 1))
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "pid $pid still alive after ${STOP_TIMEOUT_S} s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f -- "$PID_FILE"
}

cmd_stop() {
    local pid
    if ! pid=$(running_pid); then
        rm -f -- "$PID_FILE"
        log "not running (run dir $RUN_DIR)"
        return 0
    fi
    log "stopping pid $pid"
    stop_pid "$pid"
    log "stopped"
}

cmd_status() {
    local pid
    if pid=$(running_pid); then
        printf 'running pid=%s bootstrap=%s run_dir=%s\n' "$pid" "$(bootstrap_address)" "$RUN_DIR"
        return 0
    fi
    printf 'stopped run_dir=%s\n' "$RUN_DIR"
    return 3
}

cmd_bootstrap() {
    running_pid >/dev/null || die "not running (start it with: $0 start)"
    bootstrap_address
}

cmd_logs() {
    [[ -f $BROKER_LOG ]] || die "no log yet at $BROKER_LOG"
    if [[ ${1:-} == -f ]]; then tail -n 100 -f -- "$BROKER_LOG"; else tail -n 200 -- "$BROKER_LOG"; fi
}

cmd_clean() {
    cmd_stop
    rm -rf -- "$DATA" "$CONF" "$PORTS_FILE" "$BROKER_LOG" "$BROKER_LOG.1"
    log "removed data, config and log from $RUN_DIR"
}

lock_run_dir() {
    # One start/stop at a time per run dir (two concurrent starts would format twice).
    # The broker gets the lock fd closed (9>&- above), else it would hold the lock.
    command -v flock >/dev/null || return 0
    exec 9>"$RUN_DIR/.lock"
    flock 9
}

case ${1:-} in
start) lock_run_dir; cmd_start ;;
stop) lock_run_dir; cmd_stop ;;
status) cmd_status ;;
bootstrap) cmd_bootstrap ;;
logs) cmd_logs "${2:-}" ;;
clean) lock_run_dir; cmd_clean ;;
*)
    sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
