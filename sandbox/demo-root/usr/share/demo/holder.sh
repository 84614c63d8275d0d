#!/bin/sh
# A daemon that keeps a file on the overlay open for writing.
mkdir -p /etc/demo
exec 3>>/etc/demo/holder.log
while :; do
    echo "tick $(date +%s)" >&3
    sleep 5
done
