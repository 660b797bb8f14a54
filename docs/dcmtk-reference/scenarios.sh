#!/bin/bash
# Fault-injection and misc. options: run storescp -v with OPTION, send CT_small with storescu -v, show both logs.
# Usage: scenarios.sh WORKDIR PORT
set -u
TF=/work/main/.venv/lib/python3.11/site-packages/pydicom/data/test_files
cd "$1"; P=$2
sc() { # $1 label, $2 storescp options, $3 storescu options
  local d="sc_$1"; rm -rf "$d"; mkdir "$d"
  /usr/bin/storescp -v -od "$d" $2 $P > "$d.scp.log" 2>&1 & local pid=$!; sleep 0.4
  local t0=$(date +%s.%N)
  timeout 30 /usr/bin/storescu -v $3 127.0.0.1 $P $TF/CT_small.dcm > "$d.scu.log" 2>&1; local rc=$?
  local t1=$(date +%s.%N)
  sleep 0.3; kill $pid 2>/dev/null; wait $pid 2>/dev/null
  echo "===== storescp -v $2 PORT   |   storescu -v $3 127.0.0.1 PORT CT_small.dcm"
  echo "storescu rc=$rc, elapsed $(echo "$t1 - $t0" | bc | cut -c1-5)s, files: $(ls $d | tr '\n' ' ')"
  echo "--- storescp:"; grep -v '^I: *$' "$d.scp.log"
  echo "--- storescu:"; grep -v '^I: *$' "$d.scu.log" | grep -v "Checking input\|checking input\|Sending file\|Converting\|Request Param\|Presentation Context\|Context ID\|Abstract Syntax\|Role\|Transfer Syntax\|=Little\|=Big\|Implementation\|Application\|Max PDU\|Extended Neg\|Identity Neg\|A-ASSOCIATE\|Our \|Their "
}
sc refuse "--refuse" ""
sc reject "--reject" ""
sc ignore "--ignore" ""
sc abort_after "--abort-after" ""
sc abort_during "--abort-during" ""
sc sleep_after "--sleep-after 2" ""
sc sleep_during "--sleep-during 2" ""
sc dataset_only "-F" ""
sc default_to_jpeg_only "" "-R -xy"
