#!/usr/bin/env bash
# start-local-slurm.sh - a real one-node SLURM cluster on localhost, for the
# emflow SLURM tests and CI (Debian 12, slurm-wlm 22.05, run as root).
#
#   eval "$(tests/workflow/slurm/start-local-slurm.sh)"   # sets EMFLOW_SLURM_* below
#   snakemake --profile profiles/slurm ...
#   tests/workflow/slurm/stop-local-slurm.sh
#
# What it does (every step is skipped when already done, so it is idempotent):
#   1. apt-get update + install munge, slurmctld, slurmd, slurm-client and, with
#      accounting, slurmdbd + mariadb-server (non-interactive, no recommends).
#   2. writes /etc/slurm/slurm.conf (+ cgroup.conf, slurmdbd.conf) for ONE node
#      on 127.0.0.1 with the cores/memory that `slurmd -C` detects here.
#   3. starts munged, [mariadbd, slurmdbd], slurmctld, slurmd as daemons (there
#      is no systemd in containers/CI; each daemon writes a pid file under /run).
#   4. waits until `sinfo` reports the node idle.
# stdout: only shell assignments (EMFLOW_SLURM_PARTITION, EMFLOW_SLURM_ACCOUNT,
# EMFLOW_SLURM_ACCOUNTING); the same lines go to /run/emflow-slurm/env.
# stderr: progress; on failure the reason and the tails of the daemon logs,
# and the exit status is non-zero.
#
# Knobs (environment):
#   EMFLOW_SLURM_ACCOUNTING=1  1: slurmdbd + MariaDB so that `sacct` works. The
#       pinned snakemake-executor-plugin-slurm (1.4.0) polls job states ONLY
#       with sacct; without accounting sacct fails and snakemake waits forever.
#       0: no accounting (lighter); only for plugin versions that offer
#       `slurm-status-command: squeue` (see docs/slurm.md).
#   EMFLOW_SLURM_PARTITION=debug   EMFLOW_SLURM_ACCOUNT=emflow (accounting only)
#   EMFLOW_SLURM_TIMEOUT=60    seconds to wait for each daemon and the node
#   EMFLOW_SLURM_NO_INSTALL=0  1: never call apt-get (fail if packages missing)
set -euo pipefail
exec </dev/null

ACCOUNTING=${EMFLOW_SLURM_ACCOUNTING:-1}
PARTITION=${EMFLOW_SLURM_PARTITION:-debug}
ACCOUNT=${EMFLOW_SLURM_ACCOUNT:-emflow}
TIMEOUT=${EMFLOW_SLURM_TIMEOUT:-60}
NO_INSTALL=${EMFLOW_SLURM_NO_INSTALL:-0}
CLUSTER=emflowtest
LOGDIR=/var/log/slurm
STATE=/run/emflow-slurm            # our bookkeeping: env file, "we started X" marks
ETC=/etc/slurm

say() { echo "[start-local-slurm] $*" >&2; }
fail() {
    say "FAILED: $*"
    local f
    for f in "$LOGDIR"/slurmctld.log "$LOGDIR"/slurmd.log "$LOGDIR"/slurmdbd.log \
             "$LOGDIR"/mariadb.log /var/log/munge/munged.log; do
        if [ -s "$f" ]; then echo "----- last lines of $f" >&2; tail -n 15 "$f" >&2; fi
    done
    exit 1
}
trap 'fail "command failed (line $LINENO): $BASH_COMMAND"' ERR

[ "$(id -u)" = 0 ] || fail "must run as root (it installs packages and starts system daemons)"
case "$ACCOUNTING" in 0|1) ;; *) fail "EMFLOW_SLURM_ACCOUNTING must be 0 or 1, got '$ACCOUNTING'";; esac

# ------------------------------------------------------------------ packages
PACKAGES=(munge slurmctld slurmd slurm-client)
[ "$ACCOUNTING" = 1 ] && PACKAGES+=(slurmdbd mariadb-server)
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    [ "$NO_INSTALL" = 1 ] && fail "packages missing: ${missing[*]} (and EMFLOW_SLURM_NO_INSTALL=1)"
    command -v apt-get >/dev/null || fail "packages missing: ${missing[*]}; no apt-get to install them"
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >&2 || fail "apt-get update failed (no network / mirror?)"
    # the slurm-wlm metapackage would pull ~30 unneeded plugins; these suffice
    apt-get install -y -q --no-install-recommends "${missing[@]}" >&2 \
        || fail "apt-get install ${missing[*]} failed"
fi

# ------------------------------------------------------------------ helpers
# running PIDFILE NAME: prints the pid if the pid file names a live,
# non-zombie process called NAME (stale pid files / pid reuse / kill -9 zombies)
running() {
    local pid
    pid=$(cat "$1" 2>/dev/null | tr -cd '0-9')
    [ -n "$pid" ] && alive "$pid" "$2" && echo "$pid"
}
running_quiet() { running "$@" >/dev/null; }
alive() { # PID NAME
    local st
    [ "$(cat /proc/"$1"/comm 2>/dev/null)" = "$2" ] || return 1
    st=$(cat /proc/"$1"/stat 2>/dev/null) || return 1
    st=${st##*) }
    [ "${st%% *}" != Z ]
}
# wait_until WHAT CMD...: poll CMD every 0.5 s for up to TIMEOUT seconds
wait_until() {
    local what=$1 i
    shift
    for ((i = 0; i < TIMEOUT * 2; i++)); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.5
    done
    fail "no $what after ${TIMEOUT}s"
}
# put FILE MODE < content: replace FILE only when the content differs;
# status 0 means "changed"
put() {
    local tmp
    tmp=$(mktemp)
    cat >"$tmp"
    if cmp -s "$tmp" "$1"; then rm -f "$tmp"; return 1; fi
    install -m "$2" "$tmp" "$1"
    rm -f "$tmp"
}
stop_daemon() { # PIDFILE NAME; waits on the pid: daemons drop the file early
    local pid i
    pid=$(running "$1" "$2") || return 0
    say "stopping $2 (pid $pid)"
    kill "$pid" 2>/dev/null || true
    for ((i = 0; i < 150; i++)); do alive "$pid" "$2" || break; sleep 0.2; done
    alive "$pid" "$2" && { kill -9 "$pid" 2>/dev/null || true; sleep 0.5; }
    rm -f "$1"
}

# ------------------------------------------------------------------ config
mkdir -p "$ETC" "$LOGDIR" "$STATE" /var/lib/slurm/slurmctld /var/lib/slurm/slurmd
HOST=$(hostname -s)
# `slurmd -C` prints exactly the hardware slurmd will register with, e.g.
# "NodeName=x CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1 RealMemory=24105"
HW=$(slurmd -C 2>/dev/null | head -n 1) || true
CPUS=$(sed -n 's/.*CPUs=\([0-9]\+\).*/\1/p' <<<"$HW")
MEM_MB=$(sed -n 's/.*RealMemory=\([0-9]\+\).*/\1/p' <<<"$HW")
TOPOLOGY=$(grep -o 'Boards=[0-9]* SocketsPerBoard=[0-9]* CoresPerSocket=[0-9]* ThreadsPerCore=[0-9]*' <<<"$HW" || true)
[ -n "$CPUS" ] && [ -n "$MEM_MB" ] || fail "cannot read cores/memory from 'slurmd -C': '$HW'"
# advertise 90 %: a node claiming more memory than slurmd measures is set INVALID
NODE_MEM_MB=$((MEM_MB * 90 / 100))
# a job without --mem would otherwise reserve the whole node (jobs serialise)
DEF_MEM_PER_CPU=$((NODE_MEM_MB / CPUS > 1024 ? 1024 : NODE_MEM_MB / CPUS))
say "node $HOST: $CPUS CPUs, ${MEM_MB} MB detected (${NODE_MEM_MB} MB offered to jobs)"

if [ "$ACCOUNTING" = 1 ]; then
    ACCOUNTING_CONF="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819"
else
    ACCOUNTING_CONF="AccountingStorageType=accounting_storage/none"
fi

changed=0
put "$ETC/slurm.conf" 0644 <<EOF && changed=1 || true
# written by emflow tests/workflow/slurm/start-local-slurm.sh: one node on localhost
ClusterName=$CLUSTER
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
SlurmctldPort=6817
SlurmdPort=6818
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd.log
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
# containers have no usable cgroup hierarchy: track processes via /proc
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$DEF_MEM_PER_CPU
ReturnToService=2
# finished jobs stay visible to squeue/scontrol for 5 min (squeue-based polling)
MinJobAge=300
SlurmdTimeout=60
$ACCOUNTING_CONF
JobCompType=jobcomp/filetxt
JobCompLoc=$LOGDIR/jobcomp.log
NodeName=$HOST NodeAddr=127.0.0.1 NodeHostname=$HOST CPUs=$CPUS $TOPOLOGY RealMemory=$NODE_MEM_MB State=UNKNOWN
PartitionName=$PARTITION Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
# not read while Proctrack/Task use no cgroups; written so that switching
# those plugins on later does not silently mount or constrain anything
put "$ETC/cgroup.conf" 0644 <<EOF && changed=1 || true
# written by emflow tests/workflow/slurm/start-local-slurm.sh
CgroupAutomount=no
ConstrainCores=no
ConstrainRAMSpace=no
EOF

# ------------------------------------------------------------------ munge
if [ ! -s /etc/munge/munge.key ]; then
    say "creating the munge key"
    mkdir -p /etc/munge
    mungekey --create --keyfile=/etc/munge/munge.key --force >&2 2>/dev/null \
        || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown -R munge:munge /etc/munge
chmod 0700 /etc/munge
chmod 0400 /etc/munge/munge.key
install -d -o munge -g munge -m 0755 /run/munge
install -d -o munge -g munge -m 0700 /var/log/munge /var/lib/munge
if ! running_quiet /run/munge/munged.pid munged; then
    say "starting munged"
    touch "$STATE/started-munged"
    # munged refuses to run as root; the key belongs to the munge user
    runuser -u munge -- /usr/sbin/munged >/dev/null 2>&1 || fail "munged did not start"
fi
wait_until "munge credential round trip" bash -c 'munge -n | unmunge'

# ------------------------------------------------------------------ accounting
if [ "$ACCOUNTING" = 1 ]; then
    install -d -o mysql -g mysql -m 0755 /run/mysqld
    SOCK=/run/mysqld/mysqld.sock
    if ! mariadb-admin --socket=$SOCK ping >/dev/null 2>&1; then
        [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql --datadir=/var/lib/mysql >&2
        say "starting mariadbd (unix socket only)"
        touch "$STATE/started-mariadb"
        setsid /usr/sbin/mariadbd --user=mysql --datadir=/var/lib/mysql --skip-networking \
            --socket=$SOCK --pid-file=/run/mysqld/mysqld.pid >>"$LOGDIR/mariadb.log" 2>&1 &
        wait_until "answer from mariadbd" mariadb-admin --socket=$SOCK ping
    fi
    # ALTER USER too: CREATE USER IF NOT EXISTS would keep a stale password
    mariadb --socket=$SOCK -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
        CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
        ALTER USER 'slurm'@'localhost' IDENTIFIED BY 'slurm';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
    put "$ETC/slurmdbd.conf" 0600 <<EOF && changed=1 || true
# written by emflow tests/workflow/slurm/start-local-slurm.sh
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
PidFile=/run/slurmdbd.pid
LogFile=$LOGDIR/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=slurm_acct_db
StorageUser=slurm
StoragePass=slurm
EOF
    if [ "$changed" = 1 ]; then stop_daemon /run/slurmdbd.pid slurmdbd; fi
    if ! running_quiet /run/slurmdbd.pid slurmdbd; then
        say "starting slurmdbd"
        /usr/sbin/slurmdbd >/dev/null 2>&1 || fail "slurmdbd did not start"
    fi
    wait_until "answer from slurmdbd" sacctmgr -n list cluster
    sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER" \
        || sacctmgr -i add cluster "$CLUSTER" >&2
    sacctmgr -n -P list account format=account | grep -qx "$ACCOUNT" \
        || sacctmgr -i add account "$ACCOUNT" Cluster="$CLUSTER" Description=emflow-tests Organization=emflow >&2
    sacctmgr -n -P list assoc user=root account="$ACCOUNT" cluster="$CLUSTER" format=user | grep -qx root \
        || sacctmgr -i add user root Account="$ACCOUNT" Cluster="$CLUSTER" >&2
fi

# ------------------------------------------------------------------ slurm
if [ "$changed" = 1 ]; then   # new config: restart what runs with the old one
    stop_daemon /run/slurmd.pid slurmd
    stop_daemon /run/slurmctld.pid slurmctld
fi
fresh=0
if ! running_quiet /run/slurmctld.pid slurmctld; then
    say "starting slurmctld"
    /usr/sbin/slurmctld >/dev/null 2>&1 || fail "slurmctld did not start"
    fresh=1
fi
wait_until "answer from slurmctld" scontrol ping
if ! running_quiet /run/slurmd.pid slurmd; then
    say "starting slurmd"
    /usr/sbin/slurmd >/dev/null 2>&1 || fail "slurmd did not start"
    fresh=1
fi

# a node we just started must become idle; one that was already up may be busy
ready='^(idle|mixed|allocated|completing)$'
[ "$fresh" = 1 ] && ready='^idle$'
state=
for ((i = 0; i < TIMEOUT * 2; i++)); do
    state=$(sinfo -h -n "$HOST" -o %T 2>/dev/null | head -n 1 || true)
    [[ "$state" =~ $ready ]] && break
    # e.g. "unexpectedly rebooted" after an unclean stop
    case "$state" in down*|drain*|fail*) scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true;; esac
    sleep 0.5
done
[[ "$state" =~ $ready ]] || fail "node $HOST is '${state:-unknown}', not idle, after ${TIMEOUT}s \
(jobs left from an unclean stop? see 'squeue'; stop-local-slurm.sh then start again)"
say "SLURM ready: node $HOST $state, partition $PARTITION, accounting=$ACCOUNTING"

trap - ERR
{
    echo "EMFLOW_SLURM_PARTITION=$PARTITION"
    echo "EMFLOW_SLURM_ACCOUNT=$([ "$ACCOUNTING" = 1 ] && echo "$ACCOUNT" || true)"
    echo "EMFLOW_SLURM_ACCOUNTING=$ACCOUNTING"
} | tee "$STATE/env"
