#!/usr/bin/env bash
# Real Apache Kafka (KRaft) brokers from Maven Central jars, for machines without Docker.
# Usage: kafka.sh COMMAND [options]
#
#   start [--brokers N] [--secure]   start the broker(s) (idempotent); prints the bootstrap list
#                                    --brokers 3: a cluster of 3 KRaft nodes (broker+controller),
#                                      replication factor 3, min.insync.replicas 2
#                                    --secure: SASL_SSL (SCRAM-SHA-512 over TLS) for clients, with
#                                      the StandardAuthorizer on (certificates made at start)
#   start --node I                   start node I again on its data (after stop/kill --node I)
#   stop [--node I]                  SIGTERM, wait up to 30 s, then SIGKILL (all nodes, or node I)
#   kill --node I                    SIGKILL node I at once (fault tests)
#   status                           "running ..." (exit 0), "degraded ..." (exit 4) or "stopped" (3)
#   bootstrap                        print the bootstrap list (exit 1 if nothing runs)
#   client-config                    print the librdkafka settings of the admin principal
#   logs [--node I] [-f]             tail a node's log (follow with -f)
#   clean                            stop, then delete the run dir's data, config and logs
#
# Only the bootstrap list (and client-config) go to stdout; progress and errors go to stderr.
# Environment:
#   BANDIT_KAFKA_CACHE    jar cache root, default ~/.cache/bandit-processor/kafka-4.1.1
#                         (jars in <root>/libs; fetched once with mvn, offline afterwards)
#   BANDIT_KAFKA_RUN_DIR  data, pids, logs and ports, default deploy/local-kafka/run;
#                         one run dir per cluster, so several can run side by side
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
READY_TIMEOUT_S=90
STOP_TIMEOUT_S=30
ADMIN_USER=admin

log() { printf 'kafka.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Absolute paths, so the script and the brokers work from any cwd.
mkdir -p -- "$RUN_DIR"
RUN_DIR=$(cd -- "$RUN_DIR" && pwd)
CLUSTER_FILE=$RUN_DIR/cluster # "brokers=N secure=0|1"
SECURE_DIR=$RUN_DIR/secure

node_dir() { printf '%s/node-%s' "$RUN_DIR" "$1"; }

cluster_value() { # cluster_value KEY: brokers / secure from the cluster file (empty if none)
    [[ -f $CLUSTER_FILE ]] || return 0
    tr ' ' '\n' <"$CLUSTER_FILE" | sed -n "s/^$1=//p"
}

node_count() { local n; n=$(cluster_value brokers); printf '%s\n' "${n:-0}"; }

running_pid() { # running_pid I: the pid of node I if it runs
    local pid_file pid
    pid_file=$(node_dir "$1")/kafka.pid
    # The pid file alone is not proof: after a reboot the pid may belong to another process.
    [[ -f $pid_file ]] || return 1
    pid=$(<"$pid_file")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    ps -p "$pid" -o args= 2>/dev/null | grep -q -- 'kafka\.Kafka' || return 1
    printf '%s\n' "$pid"
}

node_ports() { # node_ports I: "client controller internal"
    cat -- "$(node_dir "$1")/ports"
}

bootstrap_list() {
    local i n port _c _b out=()
    n=$(node_count)
    for ((i = 1; i <= n; i++)); do
        read -r port _c _b < <(node_ports "$i")
        out+=("127.0.0.1:$port")
    done
    (IFS=,; printf '%s\n' "${out[*]}")
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

pick_ports() { # pick_ports N: N distinct free ports on one line
    # Bind port 0 for all sockets at once (so they differ), read, close. The broker gets the
    # numbers, never 0: it would advertise port 0 to clients.
    "$PYTHON" - "$1" <<'PY'
import socket
import sys

socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(int(sys.argv[1]))]
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

random_token() { # random_token: base64url of 16 random bytes (what StorageTool random-uuid prints)
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

make_certificates() {
    # A CA and one server certificate for 127.0.0.1 / localhost, made fresh at every configure.
    mkdir -p -- "$SECURE_DIR"
    local d=$SECURE_DIR pass
    pass=$(random_token)
    printf '%s\n' "$pass" >"$d/keystore.password"
    openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=bandit-local-ca" \
        -keyout "$d/ca.key" -out "$d/ca.pem" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
        -keyout "$d/server.key" -out "$d/server.csr" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >"$d/san.ext"
    openssl x509 -req -in "$d/server.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" -CAcreateserial \
        -days 30 -extfile "$d/san.ext" -out "$d/server.pem" 2>/dev/null
    openssl pkcs12 -export -in "$d/server.pem" -inkey "$d/server.key" -certfile "$d/ca.pem" \
        -name broker -out "$d/server.p12" -passout "pass:$pass"
    random_token >"$d/admin.password"
    chmod 600 "$d"/*.key "$d"/*.password
}

write_config() { # write_config I N SECURE VOTERS
    local i=$1 n=$2 secure=$3 voters=$4 dir port controller internal rf isr
    dir=$(node_dir "$i")
    read -r port controller internal < <(node_ports "$i")
    rf=$((n < 3 ? n : 3))
    isr=$((n >= 3 ? 2 : 1))
    local listeners advertised map inter
    if ((secure)); then
        listeners="SASL_SSL://127.0.0.1:$port,BROKER://127.0.0.1:$internal,CONTROLLER://127.0.0.1:$controller"
        advertised="SASL_SSL://127.0.0.1:$port,BROKER://127.0.0.1:$internal"
        map="CONTROLLER:PLAINTEXT,BROKER:PLAINTEXT,SASL_SSL:SASL_SSL"
        inter=BROKER
    else
        listeners="PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller"
        advertised="PLAINTEXT://127.0.0.1:$port"
        map="CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"
        inter=PLAINTEXT
    fi
    sed -e "s|@NODE_ID@|$i|g" -e "s|@VOTERS@|$voters|g" -e "s|@LISTENERS@|$listeners|g" \
        -e "s|@ADVERTISED@|$advertised|g" -e "s|@PROTOCOL_MAP@|$map|g" -e "s|@INTER@|$inter|g" \
        -e "s|@LOG_DIR@|$dir/data|g" -e "s|@RF@|$rf|g" -e "s|@MIN_ISR@|$isr|g" \
        "$HERE/server.properties.template" >"$dir/server.properties"
    if ((secure)); then
        cat >>"$dir/server.properties" <<EOF

# --secure: clients authenticate with SCRAM-SHA-512 over TLS; ACLs are enforced. The BROKER and
# CONTROLLER listeners (loopback, PLAINTEXT) carry only broker and controller traffic; their
# principal User:ANONYMOUS is a super user. A local test setup, not a production one.
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
ssl.keystore.type=PKCS12
ssl.keystore.location=$SECURE_DIR/server.p12
ssl.keystore.password=$(<"$SECURE_DIR/keystore.password")
ssl.key.password=$(<"$SECURE_DIR/keystore.password")
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
allow.everyone.if.no.acl.found=false
super.users=User:ANONYMOUS;User:$ADMIN_USER
EOF
    fi
}

configure() { # configure N SECURE: keep an earlier run's data when it matches and its ports are free
    local n=$1 secure=$2 i
    if [[ -f $CLUSTER_FILE ]] && [[ $(node_count) == "$n" && $(cluster_value secure) == "$secure" ]]; then
        local ok=1 port controller internal
        for ((i = 1; i <= n; i++)); do
            local dir
            dir=$(node_dir "$i")
            if [[ ! -f $dir/data/meta.properties || ! -f $dir/ports ]]; then ok=0; break; fi
            if running_pid "$i" >/dev/null; then continue; fi
            read -r port controller internal <"$dir/ports"
            if ! ports_free "$port" "$controller" "$internal"; then ok=0; break; fi
        done
        if ((ok)); then
            log "reusing the data in $RUN_DIR ($n node(s))"
            return 0
        fi
        log "the earlier data in $RUN_DIR cannot be reused (ports taken or layout changed); starting over"
    fi
    for ((i = 1; i <= 9; i++)); do
        if running_pid "$i" >/dev/null; then die "node $i of an earlier cluster still runs; stop it first"; fi
    done
    rm -rf -- "$RUN_DIR"/node-* "$SECURE_DIR" "$CLUSTER_FILE" "$RUN_DIR/data" "$RUN_DIR/server.properties" "$RUN_DIR/ports"
    local ports voters="" cid
    read -r -a ports < <(pick_ports $((3 * n)))
    for ((i = 1; i <= n; i++)); do
        mkdir -p -- "$(node_dir "$i")/data"
        printf '%s %s %s\n' "${ports[3 * (i - 1)]}" "${ports[3 * (i - 1) + 1]}" "${ports[3 * (i - 1) + 2]}" \
            >"$(node_dir "$i")/ports"
        voters+="${voters:+,}$i@127.0.0.1:${ports[3 * (i - 1) + 1]}"
    done
    ((secure)) && make_certificates
    for ((i = 1; i <= n; i++)); do write_config "$i" "$n" "$secure" "$voters"; done
    cid=$(random_token)
    local scram=()
    if ((secure)); then
        scram=(--add-scram "SCRAM-SHA-512=[name=$ADMIN_USER,password=$(<"$SECURE_DIR/admin.password")]")
    fi
    log "formatting $n node(s) in $RUN_DIR (cluster id $cid)"
    for ((i = 1; i <= n; i++)); do
        # Static controller.quorum.voters: format WITHOUT --standalone.
        "$JAVA" -Xmx256m "$LOG4J" -cp "$LIBS/*" kafka.tools.StorageTool format \
            -t "$cid" -c "$(node_dir "$i")/server.properties" "${scram[@]}" >&2 ||
            die "formatting the storage of node $i failed"
    done
    printf 'brokers=%s secure=%s\n' "$n" "$secure" >"$CLUSTER_FILE"
}

launch() { # launch I: start node I in the background (its pid file is written by the child)
    local i=$1 dir
    dir=$(node_dir "$i")
    rm -f -- "$dir/kafka.pid"
    [[ -f $dir/broker.log ]] && mv -f -- "$dir/broker.log" "$dir/broker.log.1"
    local jvm_opts=(-Xms256m -Xmx512m -XX:+UseG1GC -XX:MaxGCPauseMillis=20
        -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent
        -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true "$LOG4J")
    # shellcheck disable=SC2206 # word splitting of user-given options is intended
    [[ -n ${BANDIT_KAFKA_JVM_OPTS:-} ]] && jvm_opts+=($BANDIT_KAFKA_JVM_OPTS)
    # Own session (setsid): a Ctrl-C in the caller's terminal must not reach the broker. The
    # inner sh records its pid, then execs java under that pid.
    local launcher=()
    command -v setsid >/dev/null && launcher=(setsid)
    "${launcher[@]}" sh -c 'echo $$ >"$0"; exec "$@"' "$dir/kafka.pid" \
        "$JAVA" "${jvm_opts[@]}" -cp "$LIBS/*" kafka.Kafka "$dir/server.properties" \
        >"$dir/broker.log" 2>&1 </dev/null 9>&- &
    local waited=0
    while [[ ! -s $dir/kafka.pid ]] && ((waited < 50)); do sleep 0.1; waited=$((waited + 1)); done
    log "node $i: started pid $(<"$dir/kafka.pid") (log $dir/broker.log)"
}

wait_ready() { # wait_ready I...: every named node logs "Kafka Server started"
    local deadline=$((SECONDS + READY_TIMEOUT_S)) i pid dir pending=("$@")
    while ((${#pending[@]})); do
        local left=()
        for i in "${pending[@]}"; do
            dir=$(node_dir "$i")
            pid=$(<"$dir/kafka.pid")
            if ! kill -0 "$pid" 2>/dev/null; then
                log "node $i exited during startup; last lines of $dir/broker.log:"
                tail -n 40 -- "$dir/broker.log" >&2 || true
                rm -f -- "$dir/kafka.pid"
                return 1
            fi
            grep -q 'Kafka Server started' -- "$dir/broker.log" || left+=("$i")
        done
        pending=("${left[@]}")
        ((${#pending[@]})) || break
        if ((SECONDS >= deadline)); then
            log "node(s) ${pending[*]} not ready after ${READY_TIMEOUT_S} s; last lines of their logs:"
            for i in "${pending[@]}"; do tail -n 20 -- "$(node_dir "$i")/broker.log" >&2 || true; done
            return 1
        fi
        sleep 0.2
    done
}

cmd_start() {
    local n="" secure="" node=""
    while (($#)); do
        case $1 in
        --brokers) n=${2:?--brokers needs a number}; shift 2 ;;
        --secure) secure=1; shift ;;
        --node) node=${2:?--node needs a number}; shift 2 ;;
        *) die "start: unknown option $1" ;;
        esac
    done
    command -v "$JAVA" >/dev/null || die "java (17+) is needed; set JAVA_HOME or put java on PATH"
    command -v "$PYTHON" >/dev/null || die "python3 is needed to pick free ports; set PYTHON"
    ensure_jars
    if [[ -n $node ]]; then
        [[ -f $(node_dir "$node")/server.properties ]] || die "node $node is not configured in $RUN_DIR"
        if running_pid "$node" >/dev/null; then
            log "node $node already runs"
        else
            launch "$node"
            wait_ready "$node" || { stop_node "$node"; exit 1; }
            log "node $node ready"
        fi
        bootstrap_list
        return 0
    fi
    # A plain `start` keeps the run dir's layout (nodes, security); options choose a new one.
    if [[ -z $n && -z $secure ]]; then
        n=$(node_count)
        secure=$(cluster_value secure)
    fi
    ((${n:-0} > 0)) || n=1
    secure=${secure:-0}
    [[ $n =~ ^[1-9]$ ]] || die "--brokers must be 1..9, got $n"
    if ((secure)); then command -v openssl >/dev/null || die "--secure needs openssl"; fi
    local i all_running=1
    for ((i = 1; i <= n; i++)); do running_pid "$i" >/dev/null || all_running=0; done
    if ((all_running)) && [[ $(node_count) == "$n" && $(cluster_value secure) == "$secure" ]]; then
        log "already running ($n node(s), run dir $RUN_DIR)"
        bootstrap_list
        return 0
    fi
    configure "$n" "$secure"
    local started=()
    for ((i = 1; i <= n; i++)); do
        if ! running_pid "$i" >/dev/null; then launch "$i"; started+=("$i"); fi
    done
    local t0=$SECONDS
    if ! wait_ready "${started[@]}"; then cmd_stop; exit 1; fi
    log "ready after $((SECONDS - t0)) s"
    bootstrap_list
}

stop_node() {
    local i=$1 pid waited=0
    pid=$(running_pid "$i") || { rm -f -- "$(node_dir "$i")/kafka.pid"; return 0; }
    kill -TERM "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null && ((waited < STOP_TIMEOUT_S * 5)); do
        sleep 0.2
        waited=$((waited + 1))
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "node $i (pid $pid) still alive after ${STOP_TIMEOUT_S} s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f -- "$(node_dir "$i")/kafka.pid"
}

cmd_stop() {
    local node="" i n
    [[ ${1:-} == --node ]] && node=${2:?--node needs a number}
    if [[ -n $node ]]; then
        log "stopping node $node"
        stop_node "$node"
        return 0
    fi
    n=$(node_count)
    if ((n == 0)); then log "not running (run dir $RUN_DIR)"; return 0; fi
    # Stop the nodes in parallel: a KRaft node waits for its quorum while it shuts down.
    local pids=()
    for ((i = 1; i <= n; i++)); do
        if running_pid "$i" >/dev/null; then stop_node "$i" & pids+=($!); fi
    done
    ((${#pids[@]})) && wait "${pids[@]}"
    log "stopped"
}

cmd_kill() {
    [[ ${1:-} == --node ]] || die "kill needs --node I"
    local node=${2:?--node needs a number} pid
    pid=$(running_pid "$node") || die "node $node is not running"
    kill -KILL "$pid"
    while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
    rm -f -- "$(node_dir "$node")/kafka.pid"
    log "node $node killed (pid $pid)"
}

cmd_status() {
    local n i up=0 pids=()
    n=$(node_count)
    for ((i = 1; i <= n; i++)); do
        if pid=$(running_pid "$i"); then up=$((up + 1)); pids+=("$i:$pid"); fi
    done
    if ((n > 0 && up == n)); then
        printf 'running nodes=%s pids=%s bootstrap=%s secure=%s run_dir=%s\n' "$n" "${pids[*]}" \
            "$(bootstrap_list)" "$(cluster_value secure)" "$RUN_DIR"
        return 0
    fi
    if ((up > 0)); then
        printf 'degraded nodes=%s/%s pids=%s run_dir=%s\n' "$up" "$n" "${pids[*]}" "$RUN_DIR"
        return 4
    fi
    printf 'stopped run_dir=%s\n' "$RUN_DIR"
    return 3
}

cmd_bootstrap() {
    local n i up=0
    n=$(node_count)
    for ((i = 1; i <= n; i++)); do running_pid "$i" >/dev/null && up=1; done
    ((up)) || die "not running (start it with: $0 start)"
    bootstrap_list
}

cmd_client_config() {
    # The admin principal's librdkafka settings, one name=value per line.
    [[ $(cluster_value secure) == 1 ]] || { printf 'security.protocol=PLAINTEXT\n'; return 0; }
    printf 'security.protocol=SASL_SSL\nsasl.mechanism=SCRAM-SHA-512\n'
    printf 'sasl.username=%s\nsasl.password=%s\nssl.ca.location=%s\n' \
        "$ADMIN_USER" "$(<"$SECURE_DIR/admin.password")" "$SECURE_DIR/ca.pem"
}

cmd_logs() {
    local node=1 follow=""
    while (($#)); do
        case $1 in
        --node) node=${2:?--node needs a number}; shift 2 ;;
        -f) follow=1; shift ;;
        *) die "logs: unknown option $1" ;;
        esac
    done
    local file
    file=$(node_dir "$node")/broker.log
    [[ -f $file ]] || die "no log yet at $file"
    if [[ -n $follow ]]; then tail -n 100 -f -- "$file"; else tail -n 200 -- "$file"; fi
}

cmd_clean() {
    cmd_stop
    rm -rf -- "$RUN_DIR"/node-* "$SECURE_DIR" "$CLUSTER_FILE"
    log "removed data, config and logs from $RUN_DIR"
}

lock_run_dir() {
    # One start/stop at a time per run dir (two concurrent starts would format twice).
    # The brokers get the lock fd closed (9>&- above), else they would hold the lock.
    command -v flock >/dev/null || return 0
    exec 9>"$RUN_DIR/.lock"
    flock 9
}

command=${1:-}
shift || true
case $command in
start) lock_run_dir; cmd_start "$@" ;;
stop) lock_run_dir; cmd_stop "$@" ;;
kill) cmd_kill "$@" ;;
status) cmd_status ;;
bootstrap) cmd_bootstrap ;;
client-config) cmd_client_config ;;
logs) cmd_logs "$@" ;;
clean) lock_run_dir; cmd_clean ;;
*)
    sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
