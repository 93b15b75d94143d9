#!/bin/sh
# mw task program for the real-BOINC-client tests: upper-cases its stdin (the input JSON)
# onto stdout and writes a declared output file. Never prints its environment.
tr a-z A-Z
echo "output file" > out.txt
