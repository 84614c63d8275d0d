#!/bin/sh
# A daemon that ignores SIGTERM: only SIGKILL ends it.
trap '' TERM
while :; do sleep 3600; done
