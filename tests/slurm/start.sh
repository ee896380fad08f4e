#!/usr/bin/env bash
# A single-node SLURM with accounting on this machine, for the slurm executor's tests and for
# trying `medssl study run --executor slurm` by hand:
#   munged (as user munge) -> MariaDB -> slurmdbd (+ the cluster in accounting) -> slurmctld -> slurmd
# then waits until `sinfo` shows the node idle.
#
#   sudo tests/slurm/start.sh            # start (does nothing when the node already answers)
#   sudo tests/slurm/start.sh --install  # apt-get install the packages first when they are missing
#   sudo tests/slurm/stop.sh             # stop what this script started
#
# Needs root (the daemons run as root; munged as munge, MariaDB as mysql). Writes
# /etc/slurm/slurm.conf and /etc/slurm/slurmdbd.conf, marked as ours, and refuses to replace
# such files written by anything else (a real cluster's). Everything else lives in
# $MEDSSL_SLURM_DIR (default /var/tmp/medssl-slurm): spool, state, logs, the database.
# Plugins chosen to work in containers: proctrack/linuxproc, task/none, jobacct_gather/none.
# Accounting is required: submitit polls job states with sacct.
set -euo pipefail

DIR=${MEDSSL_SLURM_DIR:-/var/tmp/medssl-slurm}
CLUSTER=medssl
DB_PORT=${MEDSSL_SLURM_DB_PORT:-3306}
MARK="# written by medssl tests/slurm/start.sh"
PACKAGES=(slurm-wlm slurmdbd mariadb-server munge)

say() { echo "slurm/start.sh: $*" >&2; }
die() { say "$*"; exit 1; }

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local limit=$1 what=$2; shift 2
    for _ in $(seq 1 $((limit * 2))); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.5
    done
    die "$what did not come up within ${limit} s (logs in $DIR)"
}

node_ready() { [[ "$(timeout 5 sinfo -h -o %T 2>/dev/null | head -1)" =~ ^(idle|mixed|allocated)$ ]]; }
pid_alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

[[ $(id -u) == 0 ]] || die "needs root (it starts munged, MariaDB and the SLURM daemons)"

if [[ ${1:-} == --install ]]; then
    missing=()
    for cmd in slurmctld slurmd slurmdbd sacct mariadbd munged; do
        command -v "$cmd" >/dev/null || missing+=("$cmd")
    done
    if (( ${#missing[@]} )); then
        command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get to install ${PACKAGES[*]}"
        say "installing ${PACKAGES[*]} (missing: ${missing[*]})"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -q "${PACKAGES[@]}" </dev/null >"/tmp/medssl-slurm-apt.log" 2>&1 \
            || { apt-get update -q </dev/null >>"/tmp/medssl-slurm-apt.log" 2>&1 \
                 && apt-get install -y -q "${PACKAGES[@]}" </dev/null >>"/tmp/medssl-slurm-apt.log" 2>&1; } \
            || die "apt-get install ${PACKAGES[*]} failed (see /tmp/medssl-slurm-apt.log)"
    fi
fi
for cmd in slurmctld slurmd slurmdbd sacctmgr mariadbd mariadb-install-db munged; do
    command -v "$cmd" >/dev/null || die "$cmd not found: install ${PACKAGES[*]} (or run with --install)"
done

if node_ready; then
    say "SLURM already answers: $(sinfo -h -o '%N %T %c CPUs' | head -1)"
    exit 0
fi

HOST=$(hostname -s)
CPUS=$(nproc)
MEM_MB=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
mkdir -p "$DIR"/{ctld,d,log} /etc/slurm

for f in /etc/slurm/slurm.conf /etc/slurm/slurmdbd.conf; do
    if [[ -e $f ]] && ! grep -qF "$MARK" "$f"; then
        die "$f exists and was not written by this script; not replacing it (is this a real cluster?)"
    fi
done

# ---------------------------------------------------------------- munge
for d in /run/munge /var/log/munge /var/lib/munge /etc/munge; do
    mkdir -p "$d"; chown munge:munge "$d"
done
chmod 0755 /run/munge; chmod 0700 /var/log/munge /etc/munge
if [[ ! -s /etc/munge/munge.key ]]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
fi
chown munge:munge /etc/munge/munge.key; chmod 0400 /etc/munge/munge.key
if ! pid_alive /run/munge/munged.pid; then
    runuser -u munge -- munged || die "munged did not start (see /var/log/munge/munged.log)"
fi
wait_for 10 munged bash -c 'munge -n | unmunge'

# ---------------------------------------------------------------- MariaDB (accounting storage)
DB=$DIR/mysql
if [[ ! -d $DB/mysql ]]; then
    mkdir -p "$DB"; chown mysql:mysql "$DB"
    mariadb-install-db --user=mysql --datadir="$DB" --auth-root-authentication-method=socket \
        >"$DIR/log/mariadb-install.log" 2>&1 || die "mariadb-install-db failed (see $DIR/log/mariadb-install.log)"
fi
mkdir -p "$DIR/run"; chown mysql:mysql "$DIR/run" "$DIR/log"
if ! pid_alive "$DIR/run/mariadb.pid"; then
    setsid mariadbd --user=mysql --datadir="$DB" --socket="$DIR/run/mysqld.sock" --pid-file="$DIR/run/mariadb.pid" \
        --bind-address=127.0.0.1 --port="$DB_PORT" --log-error="$DIR/log/mariadb.log" </dev/null >/dev/null 2>&1 &
fi
wait_for 60 MariaDB mariadb --socket="$DIR/run/mysqld.sock" -e "SELECT 1"
mariadb --socket="$DIR/run/mysqld.sock" <<'SQL'
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'medssl-test';
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'medssl-test';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
FLUSH PRIVILEGES;
SQL

# ---------------------------------------------------------------- configuration
cat >/etc/slurm/slurmdbd.conf <<EOF
$MARK
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=root
LogFile=$DIR/log/slurmdbd.log
PidFile=$DIR/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=medssl-test
StorageLoc=slurm_acct_db
EOF
chmod 0600 /etc/slurm/slurmdbd.conf

cat >/etc/slurm/slurm.conf <<EOF
$MARK
ClusterName=$CLUSTER
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$DIR/ctld
SlurmdSpoolDir=$DIR/d
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
# a cancelled job's processes get SIGKILL 5 s after SIGTERM (default 30)
KillWait=5
MinJobAge=300
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF

# ---------------------------------------------------------------- daemons
pid_alive "$DIR/run/slurmdbd.pid" || slurmdbd
wait_for 30 slurmdbd sacctmgr -n show cluster
if ! sacctmgr -n -P show cluster format=cluster | grep -qx "$CLUSTER"; then
    sacctmgr -i add cluster "$CLUSTER" >/dev/null
fi
pid_alive "$DIR/run/slurmctld.pid" || slurmctld
wait_for 30 slurmctld scontrol ping
pid_alive "$DIR/run/slurmd.pid" || slurmd
wait_for 30 "the node ($HOST)" node_ready
say "ready: $(sinfo -h -o '%N %T %c CPUs' | head -1); cluster $CLUSTER, state in $DIR"
