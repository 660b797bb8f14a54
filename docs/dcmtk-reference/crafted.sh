#!/bin/bash
# Run crafted.py against storescp started inside WORKDIR/cr/a/b (so ../../ escapes are visible).
# Usage: crafted.sh WORKDIR PORT [storescp options]
set -u
cd "$1"; P=$2; shift 2
rm -rf cr && mkdir -p cr/a/b
(cd cr/a/b && exec /usr/bin/storescp -v "$@" $P) > cr.log 2>&1 & pid=$!
sleep 0.5
echo "##### (cd cr/a/b && storescp -v $* $P)"
timeout 60 /work/main/.venv/bin/python "$(dirname "$0")/crafted.py" $P 2>&1 | grep -v "UserWarning\|warn("
sleep 0.3; kill $pid; wait $pid 2>/dev/null
echo "--- files:"; find cr -type f | sort
echo "--- storescp:"; grep -v "^I: *$\|RECV" cr.log
