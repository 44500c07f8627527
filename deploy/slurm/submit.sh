#!/usr/bin/env bash
# Builds a catalogue table on a Slurm cluster: an array of SHARDS index tasks, then the merge.
#   CATALOGUE=/shared/catalogue LABELS=/shared/labels.csv PARTS=/shared/parts \
#   TABLE=/shared/catalogue.fkt SHARDS=16 deploy/slurm/submit.sh [extra sbatch options]
# CATALOGUE, PARTS and TABLE must be on storage every node sees. Optional: LABELS, MODEL (a
# manifest; default the bundled int8 model), FASHION_KIOSK (the binary; default from PATH).
# Prints the array's and the merge's job ids; the merge runs only if every shard succeeded.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
: "${CATALOGUE:?set CATALOGUE}" "${PARTS:?set PARTS}" "${TABLE:?set TABLE}"
shards=${SHARDS:-4}
mkdir -p "$PARTS"
# Parts of an earlier build with more shards would be merged too: only this build's are kept.
for part in "$PARTS"/part-*.parquet; do
    [ -e "$part" ] || continue
    index=${part##*/part-}; index=${index%.parquet}
    [ "$index" -lt "$shards" ] 2>/dev/null || rm -f "$part"
done
export CATALOGUE PARTS TABLE LABELS MODEL FASHION_KIOSK
array=$(sbatch --parsable --export=ALL --array="0-$((shards - 1))" "$@" "$here/index-shard.sbatch")
array=${array%%;*}
merge=$(sbatch --parsable --export=ALL --dependency="afterok:$array" --kill-on-invalid-dep=yes \
    "$@" "$here/merge.sbatch")
echo "array $array"
echo "merge ${merge%%;*}"
