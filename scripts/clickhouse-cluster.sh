#!/usr/bin/env bash
# Two-shard local ClickHouse cluster for the ClickHouse backend (issue 15): two plain
# background servers (no systemd, so it works in CI and containers) with a `sextant`
# cluster of two shards in remote_servers, for Distributed tables (and sextant_one_shard_down,
# whose second shard is a port nothing listens on, for the fault tests).
#   scripts/clickhouse-cluster.sh up DIR    start (or find running) servers; the last line
#                                           printed is SEXTANT_CLICKHOUSE_URL=http://..,http://..
#   scripts/clickhouse-cluster.sh down DIR  stop them (exit 0 if none running)
# Written for Debian's clickhouse-server 18.16 (config root <yandex>, users in users.xml).
set -euo pipefail
set +m # without job control a background setsid execs in place, so $! is the server's pid

usage() { echo "usage: $0 up|down DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
cmd=$1
[ "$cmd" = up ] && mkdir -p "$2"
[ -d "$2" ] || exit 0 # down on a DIR that was never used: nothing runs
dir=$(cd "$2" && pwd) # absolute: the servers and the pid check need it

# A pid counts as ours only if that process runs with this DIR's config (pids get reused).
alive() {
  local pidfile=$dir/$1.pid pid
  [ -s "$pidfile" ] || return 1
  pid=$(cat "$pidfile")
  kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$dir/$1/config.xml"
}

# Both get TERM at once: each waits for the other's open interserver connections, so
# stopping them one after the other takes twice as long.
stop() {
  local s pid pids=()
  for s in shard1 shard2; do
    if alive "$s"; then
      pid=$(cat "$dir/$s.pid")
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid")
    fi
  done
  local deadline=$((SECONDS + 20)) # for a clean shutdown (flushes parts, closes files)
  for pid in ${pids[@]+"${pids[@]}"}; do
    while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      echo "clickhouse pid $pid ignored TERM for 20 s; killing it" >&2
      kill -KILL "$pid" 2>/dev/null || true
      while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    fi
  done
  rm -f "$dir/shard1.pid" "$dir/shard2.pid"
}

# Debian puts the server in /usr/sbin, which a non-root PATH often lacks.
server_bin() { command -v clickhouse-server || echo /usr/sbin/clickhouse-server; }

install_clickhouse() {
  [ -x "$(server_bin)" ] && command -v clickhouse-client >/dev/null && return 0
  local sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  local install=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q clickhouse-server clickhouse-client)
  # apt-get update only when needed: it is slow and the lists are often fresh already.
  if ! "${install[@]}"; then
    "${sudo[@]}" apt-get update -q
    "${install[@]}"
  fi
}

# Six distinct free ports. The previous run's ports (DIR/ports) are reused while all are
# still free, so the URL stays the same across down/up; else the kernel picks new ones. All
# sockets stay open until every port is chosen so none repeats.
free_ports() {
  python3 - "$(cat "$dir/ports" 2>/dev/null || true)" <<'PY'
import socket, sys

def bind_all(ports):
    socks = []
    try:
        for p in ports:
            s = socket.socket()
            socks.append(s)
            s.bind(("127.0.0.1", p))
        return [s.getsockname()[1] for s in socks]
    except OSError:
        return None
    finally:
        for s in socks:
            s.close()

old = [int(p) for p in sys.argv[1].split()]
print(" ".join(map(str, (len(old) == 6 and bind_all(old)) or bind_all([0] * 6))))
PY
}

write_config() { # shard http tcp interserver tcp1 tcp2
  local s=$1 base=$dir/$1
  mkdir -p "$base/data" "$base/tmp" "$base/log" "$base/user_files" "$base/format_schemas"
  cat >"$base/config.xml" <<EOF
<?xml version="1.0"?>
<!-- 18.16 wants the root element <yandex> (<clickhouse> is only read from 21.x on). -->
<yandex>
    <logger>
        <level>information</level>
        <log>$base/log/clickhouse-server.log</log>
        <errorlog>$base/log/clickhouse-server.err.log</errorlog>
        <size>100M</size>
        <count>2</count>
    </logger>
    <listen_host>127.0.0.1</listen_host>
    <http_port>$2</http_port>
    <tcp_port>$3</tcp_port>
    <interserver_http_host>127.0.0.1</interserver_http_host>
    <interserver_http_port>$4</interserver_http_port>
    <path>$base/data/</path>
    <tmp_path>$base/tmp/</tmp_path>
    <user_files_path>$base/user_files/</user_files_path>
    <format_schema_path>$base/format_schemas/</format_schema_path>
    <users_config>users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <max_connections>256</max_connections>
    <max_concurrent_queries>50</max_concurrent_queries>
    <!-- The defaults (5 GiB marks, 8 GiB uncompressed) are meant for a dedicated host. -->
    <mark_cache_size>268435456</mark_cache_size>
    <uncompressed_cache_size>268435456</uncompressed_cache_size>
    <remote_servers>
        <sextant>
            <shard>
                <replica><host>127.0.0.1</host><port>$5</port></replica>
            </shard>
            <shard>
                <replica><host>127.0.0.1</host><port>$6</port></replica>
            </shard>
        </sextant>
        <!-- The same first shard and a second one nothing listens on (port 1), for the tests
             of a shard that is down. -->
        <sextant_one_shard_down>
            <shard>
                <replica><host>127.0.0.1</host><port>$5</port></replica>
            </shard>
            <shard>
                <replica><host>127.0.0.1</host><port>1</port></replica>
            </shard>
        </sextant_one_shard_down>
    </remote_servers>
</yandex>
EOF
  cat >"$base/users.xml" <<'EOF'
<?xml version="1.0"?>
<yandex>
    <profiles>
        <default>
            <max_memory_usage>4000000000</max_memory_usage>
            <load_balancing>random</load_balancing>
        </default>
    </profiles>
    <users>
        <!-- Passwordless, loopback only: a throwaway test cluster. -->
        <default>
            <password></password>
            <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
            <profile>default</profile>
            <quota>default</quota>
        </default>
    </users>
    <quotas>
        <default>
            <interval>
                <duration>3600</duration>
                <queries>0</queries>
                <errors>0</errors>
                <result_rows>0</result_rows>
                <read_rows>0</read_rows>
                <execution_time>0</execution_time>
            </interval>
        </default>
    </quotas>
</yandex>
EOF
}

ready() { # http port
  [ "$(curl -sf --max-time 2 "http://127.0.0.1:$1/?query=SELECT%201" 2>/dev/null)" = 1 ]
}

up() {
  if alive shard1 && alive shard2 && [ -s "$dir/url" ]; then
    cat "$dir/url"
    return 0
  fi
  stop # a half-running cluster (one shard died) is restarted whole
  install_clickhouse
  local p1 p2 t1 t2 i1 i2 s pid
  read -r p1 p2 t1 t2 i1 i2 < <(free_ports)
  echo "$p1 $p2 $t1 $t2 $i1 $i2" >"$dir/ports"
  write_config shard1 "$p1" "$t1" "$i1" "$t1" "$t2"
  write_config shard2 "$p2" "$t2" "$i2" "$t1" "$t2"
  for s in shard1 shard2; do
    # One log per run (the previous one kept as .prev): a failure report shows this run only.
    for f in "$dir/$s"/log/*.log; do if [ -e "$f" ]; then mv -f "$f" "$f.prev"; fi; done
    # setsid + no inherited fds: the servers outlive this script and do not hold a caller's
    # pipe open (e.g. url=$(... up DIR) would otherwise never return).
    setsid "$(server_bin)" --config-file="$dir/$s/config.xml" \
      </dev/null >"$dir/$s/log/stdout.log" 2>&1 &
    echo $! >"$dir/$s.pid"
  done
  local port why deadline=$((SECONDS + 60))
  for s in shard1 shard2; do
    [ $s = shard1 ] && port=$p1 || port=$p2
    until ready "$port"; do
      pid=$(cat "$dir/$s.pid")
      if ! kill -0 "$pid" 2>/dev/null || [ $SECONDS -ge $deadline ]; then
        kill -0 "$pid" 2>/dev/null && why="did not answer SELECT 1 within 60 s" || why="exited"
        echo "clickhouse $s (pid $pid, http port $port) $why; log tail ($dir/$s/log):" >&2
        # Error lines only: the rest is mostly stack traces.
        { tail -n 5 "$dir/$s/log/stdout.log"
          grep -hE '<(Error|Fatal)>' "$dir/$s/log/clickhouse-server.log" | tail -n 5; } >&2 2>/dev/null || true
        stop
        exit 1
      fi
      sleep 0.5
    done
  done
  echo "SEXTANT_CLICKHOUSE_URL=http://127.0.0.1:$p1,http://127.0.0.1:$p2" >"$dir/url"
  cat "$dir/url"
}

case $cmd in
  up) up ;;
  down) stop ;;
  *) usage ;;
esac
