#!/usr/bin/env bash
# A one-node SLURM cluster with accounting, on localhost, for the tests marked `slurm` (make test-full).
#
#   bash tests/services/slurm.sh start    install what is missing, configure, start; one line once jobs can run
#   bash tests/services/slurm.sh stop     cancel its jobs and end its daemons
#   bash tests/services/slurm.sh status   one line per part; exit 0 only when the cluster is ready
#
# Root on Debian 12 (SLURM 22.05). Machines without systemd or cgroups (containers, CI): every daemon is started
# by hand, and processes are tracked without cgroups. Both commands are idempotent. Logs: /var/log/slurm/.
# Why each setting is here: docs/cluster.md#the-test-cluster.
set -euo pipefail

PACKAGES=(munge slurmctld slurmd slurm-client slurmdbd mariadb-server)
CLUSTER=resnet9
ACCOUNT=resnet9
CONF_DIR=/etc/slurm
LOG_DIR=/var/log/slurm
RUN_DIR=/run/slurm
MARK="# written by resnet9's tests/services/slurm.sh"
NODE=$(hostname -s)
READY_S=60

fail() { # one line: what went wrong and where to look, exit 1
    echo "slurm.sh: $*" >&2
    exit 1
}

running() { # running NAME PIDFILE: is the daemon whose pid the file holds alive, and is it NAME?
    local pid
    pid=$(cat "$2" 2>/dev/null) || return 1
    [[ -n $pid && -r /proc/$pid/comm ]] && [[ $(cat "/proc/$pid/comm") == "$1"* ]]
}

wait_for() { # wait_for SECONDS WHAT COMMAND...: poll COMMAND until it succeeds, or fail naming WHAT
    local limit=$1 what=$2
    local deadline=$((SECONDS + limit))
    shift 2
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || fail "$what was not ready within ${limit} s; see the logs in $LOG_DIR/"
        sleep 0.2
    done
}

install_packages() {
    local missing=()
    for package in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing+=("$package")
    done
    ((${#missing[@]} == 0)) && return
    export DEBIAN_FRONTEND=noninteractive
    # the package lists of a fresh image may be stale or absent: update only when the install needs it
    apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null 2>&1 ||
        { apt-get update >/dev/null && apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null; } ||
        fail "apt-get install ${missing[*]} failed; run it by hand to see why"
}

ours_or_absent() { # never overwrite a real cluster's configuration
    [[ ! -e $1 ]] || grep -qF "$MARK" "$1" ||
        fail "$1 exists and was not written by this script; move it away to run the test cluster here"
}

write_if_changed() { # write_if_changed FILE MODE < content: replace FILE only if the content differs (0 = changed)
    local new
    new=$(cat)
    if [[ -e $1 ]] && [[ $(cat "$1") == "$new" ]]; then return 1; fi
    install -m "$2" /dev/null "$1"
    printf '%s\n' "$new" >"$1"
}

slurm_conf() {
    # the node as slurmd measures it (CPUs, sockets, memory), reachable on localhost only
    local node_line
    node_line=$(slurmd -C | head -n 1 | sed "s/^NodeName=[^ ]*/NodeName=$NODE NodeAddr=127.0.0.1/")
    cat <<EOF
$MARK; rewritten by each start
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# a requeued job waits for its launch credential to expire: 30 s, not the default 121 s
AuthInfo=cred_expire=30
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=$RUN_DIR/slurmctld.pid
SlurmdPidFile=$RUN_DIR/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
# no systemd, no cgroups: processes tracked through /proc, tasks not confined
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
SwitchType=switch/none
# submitit polls sacct: accounting through slurmdbd
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
JobCompType=jobcomp/none
SchedulerType=sched/backfill
# a job that became eligible (submitted, requeued) starts within seconds, not ~40 s
SchedulerParameters=bf_interval=5,sched_interval=5
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# requeue allowed (scontrol requeue, submitit after SIGUSR2); SIGKILL 10 s after SIGTERM
JobRequeue=1
KillWait=10
# a node that was down (a restart) takes jobs again as soon as its slurmd registers
ReturnToService=2
$node_line State=UNKNOWN
# up to 4 jobs per core: the tests' jobs mostly wait (start-up, requeues), and run together on a 2-core machine
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
EOF
}

slurmdbd_conf() {
    cat <<EOF
$MARK; rewritten by each start
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=root
PidFile=$RUN_DIR/slurmdbd.pid
LogFile=$LOG_DIR/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$1
StorageLoc=slurm_acct_db
EOF
}

db_password() { # the password of the slurm DB user: kept from the earlier configuration, else a new one
    local kept=""
    [[ -r $CONF_DIR/slurmdbd.conf ]] && kept=$(sed -n 's/^StoragePass=//p' "$CONF_DIR/slurmdbd.conf")
    [[ -n $kept ]] && echo "$kept" || od -An -N12 -tx1 /dev/urandom | tr -d ' \n'
}

start_munge() {
    running munged /run/munge/munged.pid && return
    mkdir -p /run/munge && chown munge:munge /run/munge
    [[ -s /etc/munge/munge.key ]] || mungekey --create --keyfile=/etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
    runuser -u munge -- /usr/sbin/munged || fail "munged did not start; see /var/log/munge/munged.log"
    wait_for 10 munge bash -c 'munge -n | unmunge'
}

start_mariadb() { # by hand (no systemd), on 127.0.0.1 only
    if ! running mariadbd /run/mysqld/mysqld.pid; then
        mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
        [[ -d /var/lib/mysql/mysql ]] || mariadb-install-db --user=mysql >"$LOG_DIR/mariadb-install.log" 2>&1
        setsid mariadbd --user=mysql --bind-address=127.0.0.1 --socket=/run/mysqld/mysqld.sock \
            --pid-file=/run/mysqld/mysqld.pid --log-error="$LOG_DIR/mariadb.log" </dev/null >/dev/null 2>&1 &
        wait_for 30 mariadb mariadb-admin --socket=/run/mysqld/mysqld.sock ping
    fi
    mariadb --socket=/run/mysqld/mysqld.sock -e "
        CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$1';
        ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$1';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';" || fail "could not create the slurm DB user"
}

start_slurm_daemons() { # $1: the configuration changed (a running slurmctld/slurmd only reads it at start)
    running slurmdbd "$RUN_DIR/slurmdbd.pid" || slurmdbd || fail "slurmdbd did not start; see $LOG_DIR/slurmdbd.log"
    wait_for 30 slurmdbd sacctmgr -n list cluster
    sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER" ||
        sacctmgr -i add cluster "$CLUSTER" >/dev/null || fail "sacctmgr could not add cluster $CLUSTER"
    if [[ $1 == changed ]]; then stop_daemon slurmd "$RUN_DIR/slurmd.pid"; fi
    if [[ $1 == changed ]]; then stop_daemon slurmctld "$RUN_DIR/slurmctld.pid"; fi
    running slurmctld "$RUN_DIR/slurmctld.pid" || slurmctld || fail "slurmctld did not start; see $LOG_DIR/slurmctld.log"
    running slurmd "$RUN_DIR/slurmd.pid" || slurmd || fail "slurmd did not start; see $LOG_DIR/slurmd.log"
    wait_for 30 slurmctld scontrol ping
}

register_users() { # an account, and root and the invoking user in it (submitit's sacct queries need none; jobs do)
    sacctmgr -n -P list account format=account | grep -qx "$ACCOUNT" ||
        sacctmgr -i add account "$ACCOUNT" Cluster="$CLUSTER" Description=tests Organization=resnet9 >/dev/null
    for user in root ${SUDO_USER:-}; do
        sacctmgr -n -P list user "$user" format=user | grep -qx "$user" ||
            sacctmgr -i add user "$user" Account="$ACCOUNT" Cluster="$CLUSTER" >/dev/null
    done
}

node_idle() {
    local state
    state=$(sinfo -h -N -n "$NODE" -o %T 2>/dev/null) || return 1
    case $state in
    idle* | mixed* | allocated*) return 0 ;;
    down* | drain*) scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true ;;
    esac
    return 1
}

start() {
    [[ $(id -u) == 0 ]] || fail "start needs root (it installs packages and starts daemons); run it with sudo"
    install_packages
    mkdir -p "$CONF_DIR" "$LOG_DIR" "$RUN_DIR" /var/spool/slurmctld /var/spool/slurmd
    ours_or_absent "$CONF_DIR/slurm.conf"
    ours_or_absent "$CONF_DIR/slurmdbd.conf"
    local password changed=unchanged
    password=$(db_password)
    slurmdbd_conf "$password" | write_if_changed "$CONF_DIR/slurmdbd.conf" 600 || true
    slurm_conf | write_if_changed "$CONF_DIR/slurm.conf" 644 && changed=changed
    local started=$SECONDS
    start_munge
    start_mariadb "$password"
    start_slurm_daemons "$changed"
    register_users
    wait_for "$READY_S" "node $NODE (idle)" node_idle
    wait_for 20 sacct sacct -n -X -S now
    local version
    version=$(sinfo --version | awk '{print $2}')
    echo "SLURM $version ready on localhost in $((SECONDS - started)) s: node $NODE idle" \
        "($(sinfo -h -N -o '%c CPUs, %m MB')), partition debug, accounting (sacct) on; stop: bash $0 stop"
}

stop_daemon() { # stop_daemon NAME PIDFILE: SIGTERM, then SIGKILL after 20 s
    running "$1" "$2" || return 0
    local pid
    pid=$(cat "$2")
    kill "$pid"
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.2
    done
    kill -9 "$pid" 2>/dev/null || true
}

stop() {
    if running slurmctld "$RUN_DIR/slurmctld.pid"; then # its jobs first: nothing of the tests keeps running
        for user in root ${SUDO_USER:-}; do scancel --user="$user" >/dev/null 2>&1 || true; done
        for _ in $(seq 50); do # (their steps end within KillWait, 10 s)
            [[ -z $(squeue -h -o %i 2>/dev/null) ]] && break
            sleep 0.3
        done
    fi
    stop_daemon slurmd "$RUN_DIR/slurmd.pid"
    stop_daemon slurmctld "$RUN_DIR/slurmctld.pid"
    stop_daemon slurmdbd "$RUN_DIR/slurmdbd.pid"
    stop_daemon mariadbd /run/mysqld/mysqld.pid
    stop_daemon munged /run/munge/munged.pid
    echo "SLURM test cluster stopped (slurmd, slurmctld, slurmdbd, mariadbd, munged)"
}

status() {
    local ok=0
    for part in "munged /run/munge/munged.pid" "mariadbd /run/mysqld/mysqld.pid" "slurmdbd $RUN_DIR/slurmdbd.pid" \
        "slurmctld $RUN_DIR/slurmctld.pid" "slurmd $RUN_DIR/slurmd.pid"; do
        read -r name pidfile <<<"$part"
        if running "$name" "$pidfile"; then echo "$name: running (pid $(cat "$pidfile"))"; else
            echo "$name: not running"
            ok=1
        fi
    done
    if ((ok == 0)) && node_idle && sacct -n -X -S now >/dev/null 2>&1; then
        echo "node $NODE: $(sinfo -h -N -n "$NODE" -o %T); sacct answers: ready"
    else
        echo "cluster: not ready; start it with: bash $0 start"
        ok=1
    fi
    return $ok
}

case ${1:-} in
start | stop | status) "$1" ;;
*) fail "usage: bash $0 start|stop|status" ;;
esac
