#!/usr/bin/env bash
# Stop the single-node SLURM that tests/slurm/start.sh started: slurmd, slurmctld, slurmdbd,
# MariaDB, munged, each by the process id in its pid file (nothing else is signalled).
# State, logs and the accounting database stay in $MEDSSL_SLURM_DIR (default /var/tmp/medssl-slurm);
# `--purge` removes that folder and the two configuration files start.sh wrote.
set -euo pipefail
DIR=${MEDSSL_SLURM_DIR:-/var/tmp/medssl-slurm}
MARK="# written by medssl tests/slurm/start.sh"

stop() {  # stop NAME PIDFILE
    local name=$1 pidfile=$2 pid
    [[ -s $pidfile ]] || return 0
    pid=$(cat "$pidfile")
    kill -0 "$pid" 2>/dev/null || return 0
    kill "$pid"
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || { echo "slurm/stop.sh: stopped $name ($pid)" >&2; return 0; }; sleep 0.25; done
    echo "slurm/stop.sh: $name ($pid) did not stop within 10 s" >&2
    return 1
}

[[ $(id -u) == 0 ]] || { echo "slurm/stop.sh: needs root" >&2; exit 1; }
status=0
stop slurmd "$DIR/run/slurmd.pid" || status=1
stop slurmctld "$DIR/run/slurmctld.pid" || status=1
stop slurmdbd "$DIR/run/slurmdbd.pid" || status=1
stop mariadbd "$DIR/run/mariadb.pid" || status=1
stop munged /run/munge/munged.pid || status=1
if [[ ${1:-} == --purge ]]; then
    rm -rf "$DIR"
    for f in /etc/slurm/slurm.conf /etc/slurm/slurmdbd.conf; do
        if [[ -e $f ]] && grep -qF "$MARK" "$f"; then rm -f "$f"; fi
    done
fi
exit $status
