#!/usr/bin/env bash
# A single-node Slurm cluster on this host (slurmctld + slurmd + munged), for the tests in
# tests/cluster/ and for trying `archsearch slurm submit` on one machine.
#
#   deploy/slurm/start-local.sh          # start (does nothing when it already runs)
#   deploy/slurm/start-local.sh stop     # stop the daemons it started
#   export SLURM_CONF=/var/tmp/archsearch-slurm/slurm.conf   # then sbatch, squeue, ...
#
# Needs root and Debian's packages: apt-get install slurm-wlm munge. The configuration is
# written from deploy/slurm/slurm.conf.in into ARCHSEARCH_SLURM_DIR (default
# /var/tmp/archsearch-slurm) with this host's real name and CPU count (`slurmd -C`); the
# system's /etc/slurm is left alone, so the Slurm commands need SLURM_CONF set as above.
# Ports: ARCHSEARCH_SLURM_CTLD_PORT (6817) and ARCHSEARCH_SLURM_SLURMD_PORT (6818).
#
# Exit status: 0 the cluster answers and its node is idle; 3 it cannot run here (not
# root, packages missing), with the reason on stderr; 1 it was started but did not come
# up (the daemons' logs are in the state directory).
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
DIR="${ARCHSEARCH_SLURM_DIR:-/var/tmp/archsearch-slurm}"
CTLD_PORT="${ARCHSEARCH_SLURM_CTLD_PORT:-6817}"
SLURMD_PORT="${ARCHSEARCH_SLURM_SLURMD_PORT:-6818}"
export SLURM_CONF="$DIR/slurm.conf"

say() { echo "slurm-local: $*" >&2; }
cannot() { say "cannot run here: $*"; exit 3; }

# alive PIDFILE NAME: the pid file names a running NAME (not a stale pid reused since).
alive() {
    local pid
    pid="$(cat "$1" 2>/dev/null)" || return 1
    [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ]
}

stop() {
    local daemon
    for daemon in slurmd slurmctld; do
        if alive "$DIR/$daemon.pid" "$daemon"; then
            kill "$(cat "$DIR/$daemon.pid")"
            for _ in $(seq 50); do alive "$DIR/$daemon.pid" "$daemon" || break; sleep 0.1; done
        fi
        rm -f "$DIR/$daemon.pid"
    done
    # munged is left running: other software on the host may use it.
    say "stopped slurmctld and slurmd"
}

node_state() { scontrol -o show node "$NODE_NAME" 2>/dev/null | sed -n 's/.* State=\([^ ]*\).*/\1/p'; }

wait_for_idle_node() {
    local state=""
    for _ in $(seq 120); do
        state="$(node_state)"
        case "$state" in
            IDLE* | MIXED* | ALLOCATED*) return 0 ;;
            *DRAIN* | DOWN*) scontrol update nodename="$NODE_NAME" state=resume 2>/dev/null || true ;;
        esac
        sleep 0.5
    done
    say "node $NODE_NAME is not up (state ${state:-unknown}); logs: $DIR/slurmctld.log $DIR/slurmd.log"
    tail -n 20 "$DIR/slurmctld.log" "$DIR/slurmd.log" >&2 2>/dev/null || true
    return 1
}

start_munge() {
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        return 0
    fi
    [ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
    install -d -o munge -g munge -m 0755 /run/munge
    install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
    runuser -u munge -- /usr/sbin/munged
    for _ in $(seq 50); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    cannot "munged did not start (see /var/log/munge/munged.log)"
}

if [ "${1:-start}" = "stop" ]; then
    stop
    exit 0
fi
[ "${1:-start}" = "start" ] || { say "usage: $0 [start|stop]"; exit 2; }

[ "$(id -u)" = 0 ] || cannot "needs root (slurmd runs jobs as their users)"
for tool in munged munge slurmctld slurmd sbatch scontrol; do
    command -v "$tool" >/dev/null || cannot "$tool is missing: apt-get install slurm-wlm munge"
done

# The NodeName line as slurmd measures this host: its real name, CPUs, memory.
# (Before SLURM_CONF exists: -C reads the hardware, not a configuration.)
NODE_LINE="$(env -u SLURM_CONF slurmd -C 2>&1 | head -n 1)" || true
NODE_NAME="$(sed -n 's/^NodeName=\([^ ]*\).*/\1/p' <<<"$NODE_LINE")"
[ -n "$NODE_NAME" ] || cannot "slurmd -C printed no NodeName line: $NODE_LINE"

if alive "$DIR/slurmctld.pid" slurmctld && alive "$DIR/slurmd.pid" slurmd \
    && scontrol ping >/dev/null 2>&1; then
    wait_for_idle_node
    say "already running (SLURM_CONF=$SLURM_CONF)"
    exit 0
fi

start_munge
stop 2>/dev/null || true
install -d -m 0755 "$DIR" "$DIR/slurmd" "$DIR/slurmctld"
sed -e "s|@HOST@|$(hostname -s)|" -e "s|@NODE@|$NODE_LINE|" -e "s|@DIR@|$DIR|g" \
    -e "s|@CTLD_PORT@|$CTLD_PORT|" -e "s|@SLURMD_PORT@|$SLURMD_PORT|" \
    "$HERE/slurm.conf.in" >"$SLURM_CONF"
# -c: a fresh start, without the jobs of an earlier run of this test cluster.
slurmctld -c -f "$SLURM_CONF"
slurmd -c -f "$SLURM_CONF"
wait_for_idle_node || exit 1
say "up: node $NODE_NAME ($(sed -n 's/.*\(CPUs=[0-9]*\).*/\1/p' <<<"$NODE_LINE")); SLURM_CONF=$SLURM_CONF"
