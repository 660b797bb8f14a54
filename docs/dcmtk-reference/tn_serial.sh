#!/bin/bash
# -tn serial numbers: 300 tiny objects over one association; TCP_NODELAY=1 makes DCMTK disable Nagle
# (otherwise each C-STORE round trip takes ~88 ms on loopback and no two files share a millisecond).
# Usage: tn_serial.sh WORKDIR PORT   (WORKDIR/small/*.dcm: see make_small.py)
set -u
cd "$1"; P=$2
rm -rf tnser && mkdir tnser
TCP_NODELAY=1 /usr/bin/storescp -tn -od tnser $P > tnser.log 2>&1 & pid=$!; sleep 0.4
TCP_NODELAY=1 timeout 60 /usr/bin/storescu -xe +sd 127.0.0.1 $P small
kill $pid; wait $pid
ls tnser | head -20; echo "with serial: $(ls tnser | grep -c _) of $(ls tnser | wc -l)"
ls tnser | grep -o '_[0-9]*\.' | sort | uniq -c
