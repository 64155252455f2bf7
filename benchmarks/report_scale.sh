#!/bin/sh
# The report's scale measurements (docs/report.md): wall clock and peak memory, /usr/bin/time -v.
#   sh benchmarks/report_scale.sh WORKDIR [DEVICE]
# 1. the bundled reference: report + full atlas (all 176 channels of conv1-conv5)
# 2. resnet18 (random init) on 200 photos at 224 made by benchmarks/make_photos.py:
#    report + atlas of the 16 strongest channels per layer
set -e
work=${1:?usage: report_scale.sh WORKDIR [DEVICE]}
device=${2:-cpu}
mkdir -p "$work"
uptime
[ -n "$SKIP_REFERENCE" ] || /usr/bin/time -v python -m deconvnet_attr.report --out "$work/reference" --device "$device" \
    --no-progress 2> "$work/reference.time"
python benchmarks/make_photos.py "$work/data" --count 200 --size 224
uptime
/usr/bin/time -v python -m deconvnet_attr.report --out "$work/resnet18" --model resnet18 \
    --images "$work/data" --atlas-channels 16 --device "$device" --no-progress \
    2> "$work/resnet18.time"
uptime
grep -h -E "Elapsed|Maximum resident|User time|System time" "$work"/*.time
