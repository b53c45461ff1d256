#!/usr/bin/env bash
# Apache Kafka in KRaft mode, single node on 127.0.0.1, from jars fetched with Maven.
#   scripts/kafka.sh start|stop|status|logs|reset
# start is idempotent: a running broker is reused. It prints KAFKA_BOOTSTRAP=127.0.0.1:PORT.
# The broker's data (topics, offsets, changelogs) survives stop and start: the storage is
# formatted only when empty, and the broker listens on its recorded port again when that is
# free (KAFKA_PORT, else 9092, the first time). reset stops it and deletes its data.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

KAFKA_VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$PROJECT_ROOT/scripts/kafka/pom.xml")"
LIB_DIR="$CACHE_DIR/kafka-$KAFKA_VERSION/lib"
DIR="$SCRATCH/kafka"
PID_FILE="$DIR/kafka.pid"
LOG_FILE="$DIR/kafka.log"
PORT_FILE="$DIR/port"
CONTROLLER_PORT_FILE="$DIR/controller-port"

fetch_jars() {
  [ -f "$LIB_DIR/.complete" ] && return 0
  command -v mvn >/dev/null || die "Maven (mvn) is needed to fetch Kafka $KAFKA_VERSION"
  log "fetching Apache Kafka $KAFKA_VERSION jars from Maven Central into $LIB_DIR"
  rm -rf "$LIB_DIR"; mkdir -p "$LIB_DIR"
  mvn -q -B -f "$PROJECT_ROOT/scripts/kafka/pom.xml" dependency:copy-dependencies \
      -DoutputDirectory="$LIB_DIR" -DincludeScope=runtime >"$CACHE_DIR/mvn.log" 2>&1 \
    || { cat "$CACHE_DIR/mvn.log" >&2; die "Maven could not fetch Kafka $KAFKA_VERSION"; }
  touch "$LIB_DIR/.complete"
}

write_config() {
  local port="$1" controller="$2"
  cat > "$DIR/server.properties" <<CONF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$controller
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$DIR/data
num.partitions=8
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=8
group.initial.rebalance.delay.ms=0
log.retention.hours=168
CONF
  cat > "$DIR/log4j.properties" <<CONF
log4j.rootLogger=INFO, file
log4j.appender.file=org.apache.log4j.FileAppender
log4j.appender.file.File=$LOG_FILE
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.request.logger=WARN
log4j.logger.state.change.logger=WARN
CONF
}

start() {
  mkdir -p "$DIR"
  if pid_alive "$PID_FILE" && port_open "$(cat "$PORT_FILE")"; then
    echo "KAFKA_BOOTSTRAP=127.0.0.1:$(cat "$PORT_FILE")"; set_env KAFKA_BOOTSTRAP "127.0.0.1:$(cat "$PORT_FILE")"
    return 0
  fi
  command -v java >/dev/null || die "Java 17 is needed to run Kafka"
  fetch_jars
  local port controller started
  port="$(free_port "${KAFKA_PORT:-$(port_for "$PORT_FILE" 9092)}")"
  controller="$(free_port "$(port_for "$CONTROLLER_PORT_FILE" $((port + 1)))")"
  [ "$controller" = "$port" ] && controller="$(free_port $((port + 1)))"
  write_config "$port" "$controller"
  : > "$LOG_FILE"
  if [ ! -f "$DIR/data/meta.properties" ]; then
    log "formatting a new Kafka cluster in $DIR/data"
    java -cp "$LIB_DIR/*" -Dlog4j.configuration="file:$DIR/log4j.properties" kafka.tools.StorageTool \
        format -t "$(java -cp "$LIB_DIR/*" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -1)" \
        -c "$DIR/server.properties" >>"$LOG_FILE" 2>&1 || { cat "$LOG_FILE" >&2; die "kafka storage format failed"; }
  fi
  started=$(date +%s%N)
  nohup java -Xms256m -Xmx1g -XX:+UseG1GC -Djava.awt.headless=true \
      -Dlog4j.configuration="file:$DIR/log4j.properties" -cp "$LIB_DIR/*" \
      kafka.Kafka "$DIR/server.properties" >>"$LOG_FILE" 2>&1 &
  echo $! > "$PID_FILE"; echo "$port" > "$PORT_FILE"; echo "$controller" > "$CONTROLLER_PORT_FILE"
  local deadline=$((SECONDS + 90))
  until grep -q "Kafka Server started" "$LOG_FILE" && port_open "$port"; do
    if ! pid_alive "$PID_FILE" || [ $SECONDS -ge $deadline ]; then
      tail -n 60 "$LOG_FILE" >&2; die "Kafka did not start (log: $LOG_FILE)"
    fi
    sleep 0.2
  done
  log "Kafka $KAFKA_VERSION (KRaft) ready on 127.0.0.1:$port in $(( ($(date +%s%N) - started) / 1000000 )) ms; log $LOG_FILE"
  set_env KAFKA_BOOTSTRAP "127.0.0.1:$port"
  echo "KAFKA_BOOTSTRAP=127.0.0.1:$port"
}

stop() {
  if pid_alive "$PID_FILE"; then
    local pid; pid="$(cat "$PID_FILE")"
    kill "$pid"
    for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
    log "Kafka stopped"
  fi
  rm -f "$PID_FILE"
}

reset() {
  stop
  rm -rf "$DIR"
  log "Kafka data deleted ($DIR): the next start formats a new cluster"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) if pid_alive "$PID_FILE"; then echo "running on 127.0.0.1:$(cat "$PORT_FILE")"; else echo stopped; exit 1; fi ;;
  logs) cat "$LOG_FILE" ;;
  fetch) fetch_jars ;;
  reset) reset ;;
  *) echo "usage: $0 start|stop|status|logs|fetch|reset" >&2; exit 2 ;;
esac
