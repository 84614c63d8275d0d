#!/bin/sh
# A daemon that forks children which leave its process group (setsid) and ignore SIGTERM, so
# stopping the service's group is not enough: only the structural kill loop of stage2 finds them.
i=0
while [ "$i" -lt 3 ]; do
    setsid sh -c 'trap "" TERM; while :; do sleep 3600; done' &
    i=$((i + 1))
done
while :; do sleep 3600; done
