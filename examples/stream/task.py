#!/usr/bin/env python3
"""A streaming task for mw (`[program] mode = "stream"`): one process answers many tasks.

mw writes one JSON input per line on stdin; answer each with one JSON line on stdout, in
order, and flush. An exception fails only its own task: it is answered as {"error": "..."}.
"""
import json
import sys


def serve(f):
    """Calls f on every input line and prints its result (or the error) as one line."""
    for line in sys.stdin:
        try:
            out = json.dumps(f(json.loads(line)))
        except Exception as e:  # this task fails; the program carries on
            out = json.dumps({"error": "%s: %s" % (type(e).__name__, e)})
        print(out, flush=True)


def task(x):
    """The work: here, the sum of squares below x["n"]."""
    return {"n": x["n"], "sum_sq": sum(i * i for i in range(x["n"]))}


if __name__ == "__main__":
    serve(task)
