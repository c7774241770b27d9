#!/usr/bin/env bash
# A PostgreSQL server on this machine for the tests marked `postgres` (make test-full), from Debian's package.
#   bash tests/services/postgres.sh start    install if missing, start, create role and database; one line when ready
#   bash tests/services/postgres.sh stop     stop it (fast: open sessions are ended)
#   bash tests/services/postgres.sh status   one line; exit 0 when it answers, 3 when it does not
# Run as root (CI does, from a fresh clone). No systemd here: pg_ctl runs the server as user postgres, on
# 127.0.0.1 only, its data in /var/tmp/resnet9-postgres/<port>. Both start and stop may be repeated.
# Environment: RESNET9_PG_PORT (default 5432), RESNET9_PG_PASSWORD (the role's password; a fixed test value).
# The tests connect as postgresql://resnet9@127.0.0.1:<port>/resnet9 with PGPASSWORD (tests/training/
# test_search_postgres.py); the role owns its database and nothing else: no superuser, no CREATEDB, no CREATEROLE.
set -euo pipefail

PORT=${RESNET9_PG_PORT:-5432}
PASSWORD=${RESNET9_PG_PASSWORD:-resnet9-test-only}
ROOT=/var/tmp/resnet9-postgres
HOME_DIR=$ROOT/$PORT     # one server per port: the socket and the log live beside the data
DATA=$HOME_DIR/data
LOG=$HOME_DIR/server.log
ROLE=resnet9
DATABASE=resnet9

die() { echo "postgres.sh: $*" >&2; exit 1; }

bin_dir() {  # the newest installed version's programs (/usr/lib/postgresql/<version>/bin), or nothing
    local found
    found=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    [[ -n $found && -x $found/initdb && -x $found/pg_ctl ]] && echo "$found" || true
}

install() {  # Debian's package; the package lists are refreshed only when the install fails without it
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q postgresql >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q postgresql >/dev/null; } \
        || die "apt-get install -y postgresql failed; run it by hand to see why"
}

as_postgres() {  # (from /: postgres may not be allowed into the caller's folder)
    (cd / && runuser -u postgres -- "$@")
}

psql_admin() {  # the server's own superuser, over the local socket (peer authentication: no password)
    as_postgres "$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$HOME_DIR" -p "$PORT" -d postgres "$@"
}

running() { [[ -f $DATA/PG_VERSION ]] && as_postgres "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; }

init_cluster() {
    [[ -f $DATA/PG_VERSION ]] && return 0
    # postgres must be able to enter every folder on the way to its data: /var/tmp is 1777, ours is its own
    mkdir -p "$HOME_DIR"
    chown postgres:postgres "$ROOT" "$HOME_DIR"
    chmod 0755 "$ROOT"
    chmod 0700 "$HOME_DIR"
    as_postgres "$BIN/initdb" -D "$DATA" -U postgres --auth-local=peer --auth-host=scram-sha-256 \
        --encoding=UTF8 --locale=C.UTF-8 >"$HOME_DIR/initdb.log" 2>&1 \
        || die "initdb failed; see $HOME_DIR/initdb.log"
    # a test server: localhost only, its socket beside its data (no /var/run/postgresql needed), and commits
    # that do not wait for the disk (a crash may lose the last transactions, never corrupt the data)
    cat >>"$DATA/postgresql.conf" <<EOF

# tests/services/postgres.sh
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$HOME_DIR'
synchronous_commit = off
EOF
}

port_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; }

start_server() {
    running && return 0
    port_taken && die "port $PORT on 127.0.0.1 is taken by another server; stop it or set RESNET9_PG_PORT"
    as_postgres "$BIN/pg_ctl" -D "$DATA" -l "$LOG" -w -t 50 start >/dev/null \
        || die "the server did not start; see $LOG"
}

ensure_role_and_database() {  # again on every start: a changed RESNET9_PG_PASSWORD takes effect
    psql_admin -v role="$ROLE" -v password="$PASSWORD" -v database="$DATABASE" <<'EOF'
SELECT format('CREATE ROLE %I LOGIN', :'role') WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'role')
\gexec
ALTER ROLE :"role" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION PASSWORD :'password';
SELECT format('CREATE DATABASE %I OWNER %I', :'database', :'role')
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'database')
\gexec
EOF
}

version() { "$BIN/postgres" --version | awk '{print $3}'; }

case "${1:-}" in
start)
    [[ $(id -u) == 0 ]] || die "run as root (it installs the package and runs the server as user postgres)"
    BIN=$(bin_dir)
    if [[ -z $BIN ]]; then
        install
        BIN=$(bin_dir)
        [[ -n $BIN ]] || die "postgresql is installed but no /usr/lib/postgresql/<version>/bin/initdb was found"
    fi
    init_cluster
    start_server
    ensure_role_and_database
    echo "postgresql $(version) ready: postgresql://$ROLE@127.0.0.1:$PORT/$DATABASE (password: RESNET9_PG_PASSWORD or the test default), data in $DATA"
    ;;
stop)
    BIN=$(bin_dir)
    if [[ -n $BIN ]] && running; then
        as_postgres "$BIN/pg_ctl" -D "$DATA" -m fast -w -t 50 stop >/dev/null || die "the server did not stop; see $LOG"
        echo "postgresql on 127.0.0.1:$PORT stopped"
    else
        echo "postgresql on 127.0.0.1:$PORT was not running"
    fi
    ;;
status)
    BIN=$(bin_dir)
    if [[ -n $BIN ]] && running; then
        echo "postgresql $(version) running on 127.0.0.1:$PORT, data in $DATA"
    else
        echo "postgresql on 127.0.0.1:$PORT is not running"
        exit 3
    fi
    ;;
*)
    echo "usage: bash tests/services/postgres.sh start|stop|status" >&2
    exit 2
    ;;
esac
