#!/bin/busybox sh
# The init of tandem's Linux guest (guest/linux/README.md). It loads the disk drivers, mounts the
# ext4 data disk (found by its label, so it may be hda or hdb), says it is ready and waits for
# one line on the console naming the workload; a boot snapshot is taken while it waits, so every
# workload starts from the same booted machine.
#
# Every line it prints for the host carries a sequence number, so the host can tell a gap or a
# duplicate in the released output:
#   heartbeat N       once a second
#   file N SHA256     after /data/fN and the directory holding it were synced (fsync returned)
#   files done N      the workload stopped at its cap (the disk is finite)
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

# Modules in dependency order (the build computed it with modinfo).
while read -r module; do
  insmod "/lib/modules/$module" || echo "tandem-linux: insmod $module failed"
done < /lib/modules/order

device=""
tries=0
while [ -z "$device" ] && [ "$tries" -lt 300 ]; do
  device=$(findfs LABEL=tandem-data 2>/dev/null)
  [ -z "$device" ] && sleep 0.1
  tries=$((tries + 1))
done
if [ -z "$device" ]; then
  echo "tandem-linux: no disk labelled tandem-data"
elif ! mount -t ext4 "$device" /mnt; then
  echo "tandem-linux: cannot mount $device"
  device=""
fi

stty -echo 2>/dev/null
echo "tandem-linux: ready on ${device:-no disk}; send: files | idle"
read -r mode

heartbeat() {
  beat=0
  while true; do
    beat=$((beat + 1))
    echo "heartbeat $beat"
    sleep 1
  done
}

files() {
  cap=$1
  mkdir -p /mnt/data
  n=0
  while [ "$n" -lt "$cap" ]; do
    n=$((n + 1))
    file=/mnt/data/f$n
    dd if=/dev/urandom of="$file" bs=512 count=$((n % 32 + 1)) 2>/dev/null
    # sync with arguments fsyncs each: the file, then the directory that names it.
    sync "$file" /mnt/data
    sum=$(sha256sum "$file")
    echo "file $n ${sum%% *}"
  done
  echo "files done $n"
}

case "$mode" in
  files)
    heartbeat &
    if [ -n "$device" ]; then files 1500; fi
    wait
    ;;
  *)
    heartbeat
    ;;
esac
