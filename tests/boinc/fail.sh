#!/bin/sh
# mw task program that fails: a message on stderr, exit status 3.
echo "boom: this task always fails" >&2
exit 3
