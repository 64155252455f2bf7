#!/bin/sh
# The report's scale measurements (docs/report.md): CPU time, wall clock and peak memory from
# /usr/bin/time -v, with the load (uptime) before and after each run.
#   sh benchmarks/report_scale.sh WORKDIR [DEVICE]
# 1. the bundled reference: report + full atlas (all 176 channels of conv1-conv5)
# 2. resnet18 (random init) on 200 photos at 224 made by benchmarks/make_photos.py:
#    report + atlas of the 16 strongest channels per layer
# 3. with ALL_CHANNELS=1: the same resnet18 report + atlas of all 1,024 channels (long)
# SKIP_REFERENCE=1 / SKIP_RESNET=1 leave out run 1 / run 2.
set -e
work=${1:?usage: report_scale.sh WORKDIR [DEVICE]}
device=${2:-cpu}
mkdir -p "$work"
measure() {  # measure NAME ARGS...: one report run, its /usr/bin/time -v output in NAME.time
    name=$1
    shift
    echo "== $name: $(uptime)"
    /usr/bin/time -v python -m deconvnet_attr.report --out "$work/$name" --device "$device" \
        --no-progress "$@" 2> "$work/$name.time"
    echo "   after: $(uptime)"
    grep -E "Elapsed|Maximum resident|User time|System time" "$work/$name.time" | sed 's/^/   /'
}
[ -n "$SKIP_REFERENCE" ] || measure reference
if [ -z "$SKIP_RESNET" ] || [ -n "$ALL_CHANNELS" ]; then
    [ -d "$work/data/photos" ] || python benchmarks/make_photos.py "$work/data" --count 200 --size 224
fi
[ -n "$SKIP_RESNET" ] || measure resnet18 --model resnet18 --images "$work/data" --atlas-channels 16
[ -z "$ALL_CHANNELS" ] || measure resnet18-all --model resnet18 --images "$work/data" \
    --atlas-channels all
