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
# The network workload (net) prints "tandem-linux: dhcp ADDRESS", "tandem-linux: dns NAME
# ADDRESS" and "tandem-linux: net up" once its services listen; then heartbeats.
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
echo "tandem-linux: ready on ${device:-no disk}; send: files | net | idle"
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

# The network workload: DHCP on eth0 (v86's NE2000) from the network the host gives the pair
# (passt), a name looked up through its DNS, then three TCP services, each a loop of busybox nc
# servers taking one connection at a time:
#   80  "tick N" ten times a second, and "echo LINE" for each line received
#   81  the numbers 1, 2, 3... one a line, as fast as the connection takes them
#   82  every byte received, sent back (round trips)
network() {
  mkdir -p /etc /tmp
  cat > /bin/dhcp-event <<'SCRIPT'
#!/bin/sh
# udhcpc's event script: configure the interface, the default route and the resolver.
[ "$1" = bound ] || [ "$1" = renew ] || exit 0
ifconfig "$interface" "$ip" netmask "${subnet:-255.255.255.0}" up
for r in $router; do route add default gw "$r" dev "$interface"; break; done
: > /etc/resolv.conf
for d in $dns; do echo "nameserver $d" >> /etc/resolv.conf; done
echo "$ip" > /tmp/address
SCRIPT
  cat > /bin/net-ticks <<'SCRIPT'
#!/bin/sh
# Each tick carries a token of random length and the MD5 of "tick N TOKEN": had a packet of an
# epoch the standby never saw reached the client, the standby's own bytes for the same stretch
# of the TCP stream would differ and, spliced in, break a line's checksum.
( n=0
  while true; do
    n=$((n + 1))
    line="tick $n $RANDOM$RANDOM"
    sum=$(echo "$line" | md5sum)
    echo "$line ${sum%% *}"
    usleep 100000
  done ) &
ticker=$!
while read -r line; do echo "echo $line"; done
kill "$ticker"
SCRIPT
  cat > /bin/net-count <<'SCRIPT'
#!/bin/sh
exec seq 1 1000000000
SCRIPT
  chmod 755 /bin/dhcp-event /bin/net-ticks /bin/net-count
  ifconfig lo up
  if ! ifconfig eth0 up; then
    echo "tandem-linux: no network card (eth0)"
    return
  fi
  echo "tandem-linux: asking for an address on eth0"
  if ! udhcpc -i eth0 -s /bin/dhcp-event -q -n -t 20 -T 1 2>&1; then
    echo "tandem-linux: no DHCP answer on eth0"
    return
  fi
  echo "tandem-linux: dhcp $(cat /tmp/address)"
  answer=$(timeout 10 nslookup tandem-dns-check.test 2>/dev/null | sed -n 's/^Address: \([0-9.]*\)$/\1/p' | tail -n 1)
  echo "tandem-linux: dns tandem-dns-check.test ${answer:-unanswered}"
  (while true; do nc -l -p 80 -e /bin/net-ticks; done) &
  (while true; do nc -l -p 81 -e /bin/net-count; done) &
  (while true; do nc -l -p 82 -e /bin/cat; done) &
  # "net up" promises a client that all three listen.
  for port in 80 81 82; do
    while ! netstat -ltn 2>/dev/null | grep -q ":$port "; do usleep 50000; done
  done
  echo "tandem-linux: net up"
}

case "$mode" in
  files)
    heartbeat &
    if [ -n "$device" ]; then files 1500; fi
    wait
    ;;
  net)
    network
    heartbeat
    ;;
  *)
    heartbeat
    ;;
esac
