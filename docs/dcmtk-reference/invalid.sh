#!/bin/bash
# Invalid option combinations: exit code and output of storescp (each bounded by timeout 5).
# Usage: invalid.sh PORT
P=${1:-23150}
t() { echo "\$ storescp $*"; timeout 5 /usr/bin/storescp "$@" 2>&1 | head -5; echo "[exit ${PIPESTATUS[0]}]"; echo; }
t --fork -ss x $P
t --fork -xcs "echo" $P
t --fork -rns -ss x $P
t --inetd --fork
t --inetd $P
t +B +te $P
t +B -e $P
t +B +g $P
t +B -ss x $P
t +B +p 8 8 $P
t -F +p 8 8 $P
t -xf /etc/dcmtk/storescp.cfg Default -pm $P
t -xf /etc/dcmtk/storescp.cfg Default +xa $P
t -xf /etc/dcmtk/storescp.cfg Nope $P
t -xf /nonexistent.cfg Default $P
t -rns $P
t -tos 5 $P
t -xcs "echo" -tos 5 $P
t +td +B $P
t +cl 5 $P
t +td +cl 5 $P
t -od /nonexistent $P
t -pdu 100 $P
t -pdu 200000 $P
t -ts -1 $P
t
t 0
t 70000
t abc
t $P extra
t --bogus $P
t -sp -ss x $P
t +xs +xa $P
