#!/bin/bash
# File naming: send CT_small, MR_small, CT_small again in one association to storescp with various options.
# Usage: naming.sh WORKDIR
set -u
TF=/work/main/.venv/lib/python3.11/site-packages/pydicom/data/test_files
cd "$1"
PORT=${PORT:-23104}
run() { # $1 name, rest: storescp args
  local name=$1; shift; rm -rf "$name"; mkdir -p "$name"
  /usr/bin/storescp -od "$name" "$@" $PORT > "$name.log" 2>&1 & local pid=$!; sleep 0.5
  /usr/bin/storescu 127.0.0.1 $PORT $TF/CT_small.dcm $TF/MR_small.dcm $TF/CT_small.dcm > "$name.scu.log" 2>&1; local rc=$?
  kill $pid; wait $pid 2>/dev/null
  echo "== storescp -od $name $* $PORT   (storescu rc=$rc)"; ls -1 "$name"; echo "-- storescp output:"; cat "$name.log"
}
run default
run uf +uf
run tn -tn
run fe -fe .dcm
run uffe +uf -fe .dcm
run tnfe -tn -fe .dcm
run v -v
