#!/bin/sh
# A stand-in for OpenWrt's procd, to exercise upgraded's exec contract: as PID 1 it mounts the early
# filesystems, runs preinit, waits for a line on the FIFO /tmp/procd-exec-upgraded (the test writes it
# once the image and the config archive are in /tmp), and execs "/sbin/upgraded <path> <command>" with the
# environment procd gives it (UPGRADE_BACKUP, UPGRADE_OPT_*), as procd's sysupgrade_exec_upgraded does.
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs -o mode=01777 tmpfs /tmp
mkdir -p /tmp/run /tmp/log
/sbin/preinit start
mkfifo /tmp/procd-exec-upgraded
echo "procd-standin: waiting on /tmp/procd-exec-upgraded"
read -r _ < /tmp/procd-exec-upgraded
export UPGRADE_BACKUP=/tmp/sysupgrade.tgz UPGRADE_OPT_SAVE_PARTITIONS=1 UPGRADE_OPT_ADD_PROVISIONING=0
exec /sbin/upgraded /tmp/sysupgrade.img /lib/upgrade/do_stage2
