"""Measure storescp's transfer syntax preference order for each --prefer option.

Usage: negotiation.py OUT.json [OPTION...]
For an option, repeatedly propose CT Image Storage with every transfer syntax of the manual's
--accept-all list (plus Verification so the association always succeeds) in one presentation
context, record the accepted TS, drop it and repeat until the context is rejected: the sequence
is storescp's preference list.  Done once with the TS list in manual order and once reversed
(the result must not depend on the proposal order).
"""
from __future__ import annotations

import json
import logging
import os
import sys

from pynetdicom import AE

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import storescp  # noqa: E402
from parse_manpage import manual, parse  # noqa: E402

CT = "1.2.840.10008.5.1.4.1.1.2"
OPTIONS = ["", "+x=", "+xe", "+xb", "+xi", "+xa", "+xs", "+xy", "+xx", "+xv", "+xw", "+xt", "+xu",
           "+xm", "+xh", "+xn", "+xl", "+x2", "+x3", "+xo", "+x4", "+x5", "+xr", "+xd"]


def chosen(port: int, tsyntaxes: list[str]) -> str | None:
    ae = AE(ae_title="NEGSCU")
    ae.add_requested_context(CT, tsyntaxes)
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="STORESCP")
    if not assoc.is_established:
        raise RuntimeError("association failed")
    ts = next((cx.transfer_syntax[0] for cx in assoc.accepted_contexts if cx.abstract_syntax == CT), None)
    assoc.release()
    return ts


def order(port: int, proposal: list[str]) -> list[str]:
    remaining, result = list(proposal), []
    while remaining:
        ts = chosen(port, remaining)
        if ts is None:
            break
        result.append(ts)
        remaining.remove(ts)
    return result


def main(out: str, options: list[str]) -> None:
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
    names = {uid: name for name, uid in parse(manual())["transfer_syntaxes"]}
    all_ts = list(names)
    results = {}
    for opt in options or OPTIONS:
        with storescp([opt] if opt else []) as (port, _):
            fwd = order(port, all_ts)
            rev = order(port, all_ts[::-1])
        results[opt or "(default)"] = {"order": fwd, "same_when_reversed": fwd == rev, "reversed": rev}
        print(f"{opt or '(default)':10s} {'' if fwd == rev else 'ORDER DEPENDS ON PROPOSAL '}{[names[t] for t in fwd]}", flush=True)
    json.dump(results, open(out, "w"), indent=1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
