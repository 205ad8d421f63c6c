#!/usr/bin/env bash
# stop-local-slurm.sh - stop the one-node SLURM that start-local-slurm.sh
# started: cancels left-over jobs (so a later start does not find ghost jobs),
# then stops slurmd, slurmctld, slurmdbd by the PIDs in their pid files, and
# mariadbd / munged only when start-local-slurm.sh was the one that started
# them. Installed packages and config files stay. Safe to run again; exit 0
# unless a daemon refuses to die.
set -uo pipefail
exec </dev/null

STATE=/run/emflow-slurm
say() { echo "[stop-local-slurm] $*" >&2; }
[ "$(id -u)" = 0 ] || { say "must run as root"; exit 1; }

pid_of() { # PIDFILE NAME -> prints the pid if it is a live, non-zombie NAME
    local pid st
    pid=$(cat "$1" 2>/dev/null | tr -cd '0-9')
    [ -n "$pid" ] && [ "$(cat /proc/"$pid"/comm 2>/dev/null)" = "$2" ] || return 1
    st=$(cat /proc/"$pid"/stat 2>/dev/null) || return 1
    st=${st##*) }
    [ "${st%% *}" != Z ] && echo "$pid"
}
pid_alive() { # PID NAME (daemons remove their pid file before they are gone)
    local st
    [ "$(cat /proc/"$1"/comm 2>/dev/null)" = "$2" ] || return 1
    st=$(cat /proc/"$1"/stat 2>/dev/null) || return 1
    st=${st##*) }
    [ "${st%% *}" != Z ]
}
status=0
stop() { # PIDFILE NAME [SECONDS]
    local pid i
    pid=$(pid_of "$1" "$2") || { rm -f "$1"; return 0; }
    say "stopping $2 (pid $pid)"
    kill "$pid" 2>/dev/null
    for ((i = 0; i < ${3:-30} * 5; i++)); do pid_alive "$pid" "$2" || break; sleep 0.2; done
    if pid_alive "$pid" "$2"; then
        say "$2 ignored SIGTERM; killing it"
        kill -9 "$pid" 2>/dev/null
        sleep 0.5
        pid_alive "$pid" "$2" && { say "could not stop $2 (pid $pid)"; status=1; return 1; }
    fi
    rm -f "$1"
}

if pid_of /run/slurmctld.pid slurmctld >/dev/null && command -v scancel >/dev/null; then
    # -u root: every job here is root's; cancel them so slurmctld saves no live job
    scancel -u root >/dev/null 2>&1 || true
    for ((i = 0; i < 20; i++)); do
        [ -z "$(squeue -h -t RUNNING,PENDING,COMPLETING 2>/dev/null)" ] && break
        sleep 0.5
    done
fi
stop /run/slurmd.pid slurmd
stop /run/slurmctld.pid slurmctld
stop /run/slurmdbd.pid slurmdbd
if [ -e "$STATE/started-mariadb" ]; then
    stop /run/mysqld/mysqld.pid mariadbd 60 && rm -f "$STATE/started-mariadb"
fi
if [ -e "$STATE/started-munged" ]; then
    stop /run/munge/munged.pid munged && rm -f "$STATE/started-munged"
fi
rm -f "$STATE/env"
[ "$status" = 0 ] && say "stopped"
exit "$status"
