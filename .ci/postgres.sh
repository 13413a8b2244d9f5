# Sourced by .ci/run (and usable by hand): start a throwaway PostgreSQL server on 127.0.0.1 and export
# OPTICAL_MEMORY_TEST_PG_URL. initdb refuses to run as root, so it runs as the postgres OS user.
start_postgres() {
    local bindir
    bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    if [ -z "$bindir" ]; then
        command -v apt-get >/dev/null || return 1
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) >/dev/null || return 1
        bindir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
    fi
    local dir port
    # a free loopback port, not a fixed one: another server (a second CI run, a developer's) may hold any
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    dir=$(mktemp -d /tmp/om-pg.XXXXXX)
    chown postgres "$dir" 2>/dev/null || true
    local as=""
    [ "$(id -u)" = 0 ] && as="runuser -u postgres --"
    $as "$bindir/initdb" -D "$dir/data" --auth=trust -U postgres >/dev/null || return 1
    $as "$bindir/pg_ctl" -D "$dir/data" -o "-h 127.0.0.1 -p $port -k $dir" -l "$dir/log" -w start >/dev/null || return 1
    export OPTICAL_MEMORY_TEST_PG_URL="postgresql+psycopg://postgres@127.0.0.1:$port/postgres"
    trap "$as $bindir/pg_ctl -D $dir/data -m fast stop >/dev/null 2>&1 || true" EXIT
}
