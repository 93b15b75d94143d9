#!/usr/bin/env python3
"""HTCondor's own code as an oracle for mw's condor-kit (see tests/tests/condor_oracle.rs).

Needs the PyPI package `htcondor` >= 25 (module `htcondor2`); no daemons, no config.

  condor_check.py submit FILE   -> one JSON object: every submit command's raw value (keys()),
                                   the queue arguments and the queue items (itemdata()).
  condor_check.py events LOG    -> one JSON line per event of the job event log:
                                   type, cluster, proc, and return value / signal / hold fields.
"""
import json
import os
import sys

os.environ.setdefault("CONDOR_CONFIG", "/dev/null")
import htcondor2  # noqa: E402


def submit(path):
    with open(path) as f:
        text = f.read()
    # itemdata() reads the `from FILE` relative to the working directory: use the file's dir.
    os.chdir(os.path.dirname(os.path.abspath(path)))
    s = htcondor2.Submit(text)
    values = {k: s[k] for k in s.keys()}
    items = s.itemdata()
    print(json.dumps({
        "values": values,
        "qargs": s.getQArgs(),
        "items": [dict(i) for i in items] if items is not None else None,
    }))


KEYS = {
    "ReturnValue": "return_value",
    "TerminatedNormally": "terminated_normally",
    "TerminatedBySignal": "signal",
    "HoldReason": "hold_reason",
    "HoldReasonCode": "hold_code",
    "HoldReasonSubCode": "hold_subcode",
}


def events(path):
    for ev in htcondor2.JobEventLog(path).events(stop_after=0):
        out = {"type": int(ev.type), "cluster": ev.cluster, "proc": ev.proc}
        for k, name in KEYS.items():
            if k in ev:
                v = ev[k]
                out[name] = v if isinstance(v, (int, str, bool)) else str(v)
        print(json.dumps(out))


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("submit", "events"):
        sys.exit(__doc__)
    {"submit": submit, "events": events}[sys.argv[1]](sys.argv[2])
