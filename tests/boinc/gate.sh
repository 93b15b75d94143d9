#!/bin/sh
# mw task program that blocks until the file named by $MW_GATE exists. It first writes its
# PID to $MW_STARTED (through a temp name, renamed) so a test can watch the process.
echo $$ > "$MW_STARTED.tmp" && mv "$MW_STARTED.tmp" "$MW_STARTED"
while [ ! -e "$MW_GATE" ]; do sleep 0.1; done
echo '"gate opened"'
