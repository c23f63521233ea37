#!/usr/bin/env bash
# A real single-node Slurm 22.05 cluster with accounting (munge, MariaDB, slurmdbd, slurmctld,
# slurmd) for development and tests, started without systemd.
#
# Usage: bash slurm/dev_cluster.sh start|stop|status
#   start   install the Debian packages if missing (needs root + apt-get), write the configs and
#           start the daemons; a no-op when the cluster already answers. Idempotent.
#   stop    stop only the daemons this script started (PIDs recorded under the state dir).
#   status  exit 0 and print the node state when the cluster answers, exit 1 otherwise.
#
# Environment: SLURM_DEV_STATE (state dir, default /var/tmp/slurm-dev).
# Clients (sbatch, squeue, sacct, submitit) find the config through /etc/slurm/slurm.conf,
# a symlink to "$SLURM_DEV_STATE/etc/slurm.conf"; an existing foreign slurm.conf is never replaced.
set -euo pipefail

STATE=${SLURM_DEV_STATE:-/var/tmp/slurm-dev}
ETC=$STATE/etc
PIDS=$STATE/pids
LOGS=$STATE/log
CONF=$ETC/slurm.conf
SYS_CONF=/etc/slurm/slurm.conf
export SLURM_CONF=$CONF
DB_SOCK=$STATE/mysqld.sock
MARKER="# managed by slurm/dev_cluster.sh"
PACKAGES=(slurmctld slurmd slurm-client slurmdbd munge mariadb-server-core mariadb-client-core)

log() { echo "[dev_cluster] $*" >&2; }
die() { log "error: $*"; exit 1; }

install_packages() {
    local missing=()
    for p in "${PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
    [ ${#missing[@]} -eq 0 ] && return 0
    [ "$(id -u)" = 0 ] || die "packages missing (${missing[*]}) and not root: cannot apt-get install"
    command -v apt-get >/dev/null || die "packages missing (${missing[*]}) and no apt-get"
    log "apt-get install ${missing[*]}"
    local apt=(apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=600)
    if ! DEBIAN_FRONTEND=noninteractive "${apt[@]}" "${missing[@]}" >"$LOGS/apt.log" 2>&1; then
        apt-get update -qq -o DPkg::Lock::Timeout=600 >>"$LOGS/apt.log" 2>&1
        DEBIAN_FRONTEND=noninteractive "${apt[@]}" "${missing[@]}" >>"$LOGS/apt.log" 2>&1 ||
            die "apt-get install failed, see $LOGS/apt.log"
    fi
}

# Node topology as slurmd sees it, e.g. "NodeName=vm CPUs=2 ... RealMemory=24105".
node_line() { slurmd -C | head -n1; }

write_configs() {
    local node host
    node=$(node_line)
    host=$(echo "$node" | sed -E 's/^NodeName=([^ ]+).*/\1/')
    cat >"$CONF" <<EOF
$MARKER
ClusterName=dev
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
MailProg=/bin/true
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MinJobAge=600
KillWait=5
# A requeued job waits cred_expire + 1 s, then for the next main scheduler pass (default 120 s and
# 60 s): shortened so the preemption/requeue tests restart jobs in ~11 s instead of ~140 s.
AuthInfo=cred_expire=10
SchedulerParameters=sched_interval=2
InactiveLimit=0
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
$node State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
    # slurmdbd reads slurmdbd.conf next to $SLURM_CONF and insists on mode 600.
    cat >"$ETC/slurmdbd.conf" <<EOF
$MARKER
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
LogFile=$LOGS/slurmdbd.log
PidFile=$STATE/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
EOF
    chmod 600 "$ETC/slurmdbd.conf"
    link_system_conf
}

link_system_conf() {
    if [ -L "$SYS_CONF" ] && [ "$(readlink "$SYS_CONF")" = "$CONF" ]; then return 0; fi
    if [ -e "$SYS_CONF" ] && ! grep -qF "$MARKER" "$SYS_CONF"; then
        die "$SYS_CONF exists and is not ours; refusing to replace it"
    fi
    mkdir -p "$(dirname "$SYS_CONF")"
    ln -sfn "$CONF" "$SYS_CONF"
}

# running PID: the process exists and is not a zombie waiting to be reaped.
running() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    [ "$(echo "${stat##*) }" | cut -d' ' -f1)" != Z ]
}

# alive NAME: the recorded PID of NAME is running the expected program.
alive() {
    local f=$PIDS/$1.pid pid
    [ -f "$f" ] || return 1
    pid=$(cat "$f")
    running "$pid" && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "$1"
}

# spawn NAME CMD...: start CMD in the foreground mode of the daemon, record its PID.
spawn() {
    local name=$1
    shift
    if alive "$name"; then return 0; fi
    setsid "$@" >"$LOGS/$name.out" 2>&1 </dev/null &
    echo $! >"$PIDS/$name.pid"
}

wait_for() { # wait_for SECONDS DESCRIPTION CMD...
    local deadline=$((SECONDS + $1)) what=$2
    shift 2
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || die "timed out waiting for $what (logs in $LOGS)"
        sleep 0.2
    done
}

start_munge() {
    if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then return 0; fi
    [ -s /etc/munge/munge.key ] || { mungekey --create 2>/dev/null || create_munge_key; }
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge /etc/munge/munge.key
    chmod 0755 /run/munge
    spawn munged setpriv --reuid=munge --regid=munge --init-groups munged -F
    wait_for 10 munged bash -c 'munge -n </dev/null | unmunge'
}

create_munge_key() {
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 2>/dev/null
    chmod 400 /etc/munge/munge.key
}

start_mariadb() {
    if [ ! -d "$STATE/mysql/mysql" ]; then
        mariadb-install-db --no-defaults --datadir="$STATE/mysql" --user=root \
            --auth-root-authentication-method=socket --skip-test-db >"$LOGS/mariadb-install.log" 2>&1 ||
            die "mariadb-install-db failed, see $LOGS/mariadb-install.log"
    fi
    spawn mariadbd mariadbd --no-defaults --datadir="$STATE/mysql" --user=root \
        --socket="$DB_SOCK" --skip-networking --pid-file="$STATE/run/mariadbd.pid" \
        --log-error="$LOGS/mariadbd.log" --innodb-buffer-pool-size=128M --innodb-lock-wait-timeout=900
    wait_for 30 mariadbd mariadb --no-defaults --socket="$DB_SOCK" -e "select 1"
}

start_slurm_daemons() {
    # libmariadb honours MYSQL_UNIX_PORT for host "localhost": slurmdbd finds our socket.
    MYSQL_UNIX_PORT=$DB_SOCK spawn slurmdbd slurmdbd -D
    wait_for 30 slurmdbd bash -c "exec 3<>/dev/tcp/127.0.0.1/6819"
    spawn slurmctld slurmctld -D -f "$CONF"
    wait_for 30 slurmctld scontrol ping
    spawn slurmd slurmd -D -f "$CONF"
    wait_for 30 "an idle node" bash -c "sinfo -h -o %T | grep -Eq '^(idle|mixed|allocated)'"
}

cluster_up() { sinfo -h -o %T 2>/dev/null | grep -Eq '^(idle|mixed|allocated|completing)'; }

cmd_start() {
    mkdir -p "$ETC" "$PIDS" "$LOGS" "$STATE/ctld" "$STATE/spool" "$STATE/run"
    if [ -e "$SYS_CONF" ] && ! grep -qF "$MARKER" "$SYS_CONF"; then
        cluster_up || die "$SYS_CONF belongs to another cluster that does not answer"
        log "a Slurm cluster not managed here answers ($SYS_CONF); nothing to do"
        return 0
    fi
    local t0=$SECONDS
    install_packages
    [ $((SECONDS - t0)) -lt 2 ] || log "packages installed in $((SECONDS - t0)) s"
    write_configs
    if alive slurmctld && alive slurmd && cluster_up; then
        log "already running"
        return 0
    fi
    start_munge
    start_mariadb
    start_slurm_daemons
    wait_for 30 "accounting" sacct -n -X -S now
    log "up in $((SECONDS - t0)) s; state and logs in $STATE"
}

cmd_stop() {
    local name pid
    for name in slurmd slurmctld slurmdbd mariadbd munged; do
        if alive "$name"; then
            pid=$(cat "$PIDS/$name.pid")
            kill -TERM "$pid" 2>/dev/null || true
            for _ in $(seq 100); do running "$pid" || break; sleep 0.1; done
            if running "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
            log "stopped $name ($pid)"
        fi
        rm -f "$PIDS/$name.pid"
    done
}

cmd_status() {
    if { [ ! -e "$CONF" ] || alive slurmctld; } && cluster_up; then
        sinfo -h -o "%P %D %T %c"
        return 0
    fi
    log "not running"
    return 1
}

case "${1:-}" in
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
*) die "usage: $0 start|stop|status" ;;
esac
