#!/usr/bin/env bash
# The sharded catalogue build on a real Slurm cluster: Debian's slurm-wlm and munge, started here
# as a one-node cluster with its own config and ports. deploy/slurm/submit.sh runs an array of 4
# index shards over the 300 demo images and the merge after it; one task is requeued while it
# embeds (Slurm kills it and runs it again). The merged table must equal a plain `index` of the
# same folder, byte for byte, and the requeued task must have run twice.
#   tests/slurm/run.sh [BINARY]      (root; default target/debug/fashion-kiosk)
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
binary=$(realpath "${1:-target/debug/fashion-kiosk}")
fail() { echo "FAIL slurm: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || fail "needs root (slurmd, munged)"
for program in slurmctld slurmd sbatch squeue scontrol munged; do
    command -v "$program" >/dev/null || fail "$program is missing: apt-get install slurm-wlm munge"
done

mkdir -p target
work=$(mktemp -d -p "$PWD/target" slurm.XXXXXX)
chmod 755 "$work"
export SLURM_CONF=$work/slurm.conf
started_munge=""
cleanup() {
    for daemon in slurmd slurmctld; do
        [ -f "$work/$daemon.pid" ] && kill "$(cat "$work/$daemon.pid")" 2>/dev/null || true
    done
    [ -n "$started_munge" ] && kill "$started_munge" 2>/dev/null || true
    sleep 1
    rm -rf "$work"
}
trap cleanup EXIT
show_logs() {
    for log in "$work"/*.log "$work"/jobs/*.log; do
        [ -f "$log" ] && { echo "== $log"; tail -n 30 "$log"; }
    done
}

# munge authenticates Slurm's daemons and clients to each other.
if ! pgrep -x munged >/dev/null; then
    install -d -o munge -g munge -m 755 /run/munge
    [ -f /etc/munge/munge.key ] || runuser -u munge -- mungekey --create
    runuser -u munge -- munged
    started_munge=$(pgrep -x munged)
fi

node=$(hostname -s)
cat > "$SLURM_CONF" <<CONF
ClusterName=fashion-kiosk-ci
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=16817
SlurmdPort=16818
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$work/state
SlurmdSpoolDir=$work/spool
SlurmctldPidFile=$work/slurmctld.pid
SlurmdPidFile=$work/slurmd.pid
SlurmctldLogFile=$work/slurmctld.log
SlurmdLogFile=$work/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge=600
NodeName=$node NodeAddr=127.0.0.1 CPUs=$(nproc) State=UNKNOWN
PartitionName=ci Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
mkdir -p "$work/state" "$work/spool" "$work/jobs"
slurmctld -c
slurmd
for _ in $(seq 60); do
    [ "$(sinfo -h -o %T 2>/dev/null)" = idle ] && break
    sleep 1
done
[ "$(sinfo -h -o %T)" = idle ] || { show_logs; fail "the node did not come up: $(sinfo -h -o '%T %E')"; }
echo "slurm: $(sinfo -V), node $node idle with $(nproc) CPUs"

# The build, as a store would submit it; the fp32 model embeds fastest on this machine.
model=$repo/models/fashion-resnet50-fp32.manifest.json
export CATALOGUE=$repo/demo/catalogue LABELS=$repo/demo/labels.csv MODEL=$model \
    PARTS=$work/parts TABLE=$work/catalogue.fkt FASHION_KIOSK=$binary SHARDS=4
ids=$(cd "$work/jobs" && "$repo/deploy/slurm/submit.sh")
array=$(echo "$ids" | sed -n 's/^array //p')
merge=$(echo "$ids" | sed -n 's/^merge //p')
echo "submitted: array $array, merge $merge"

# Requeue task 2 once it is embedding (its log says which shard it is).
task_log=$work/jobs/fashion-kiosk-index-${array}_2.log
for _ in $(seq 300); do
    [ -f "$task_log" ] && grep -q "shard 2/4" "$task_log" && break
    sleep 1
done
grep -q "shard 2/4" "$task_log" 2>/dev/null || { show_logs; fail "task 2 never started"; }
sleep 3
[ -f "$work/parts/part-2.parquet" ] && fail "task 2 finished before it could be requeued"
scontrol requeue "${array}_2"
echo "requeued ${array}_2 while it embedded"

for _ in $(seq 900); do
    state=$(scontrol show job "$merge" 2>/dev/null | sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p')
    case "$state" in
        COMPLETED) break ;;
        FAILED | CANCELLED | TIMEOUT | NODE_FAIL | OUT_OF_MEMORY)
            show_logs; fail "the merge job ended $state" ;;
    esac
    sleep 1
done
[ "$state" = COMPLETED ] || { show_logs; squeue; fail "the merge did not complete (state $state)"; }
runs=$(grep -c "shard 2/4" "$task_log")
[ "$runs" = 2 ] || { show_logs; fail "task 2 ran $runs times, expected 2 (requeued once)"; }
cat "$work/jobs/fashion-kiosk-merge-$merge.log"

# The same folder indexed on one machine.
RAYON_NUM_THREADS=$(nproc) "$binary" index --catalogue "$CATALOGUE" --labels "$LABELS" \
    --model "$model" --out "$work/plain.fkt"
cmp "$work/catalogue.fkt" "$work/plain.fkt" || fail "the merged table differs from a plain index"
echo "slurm: 4 shards (one requeued mid-run) merged into $(grep -o '[0-9]* items from 4 parts' "$work/jobs/fashion-kiosk-merge-$merge.log"), identical to a plain index"
