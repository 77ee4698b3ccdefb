#!/usr/bin/env bash
# A lab of three hosts on this one machine, to try a multi-host orchestra without three
# machines. It is built the way the multi-host tests build theirs (tests/lab/mod.rs):
#
#   colab-ctl (10.250.0.2)  ─┐
#   colab-h1  (10.250.0.11) ─┼─ bridge br0 in namespace colab-sw
#   colab-h2  (10.250.0.12) ─┤
#   colab-h3  (10.250.0.13) ─┘
#
# Each host is a network namespace with its own address, hostname, System V IPC, sshd and host
# key, and private tmpfs mounts on /dev/shm (so its own JACK server), /tmp and root's home
# (with the lab's key in .ssh/authorized_keys). The controller namespace is where you run
# `orchestra`. Nothing outside these namespaces and loopback is addressed.
#
# Run as root, from anywhere:
#   scripts/lab.sh up       build the lab; print the commands that play on it
#   scripts/lab.sh status   what the lab holds now
#   scripts/lab.sh down     remove it: every process in its namespaces, the namespaces (and
#                           with them its mounts), and its directory
#
# Files (hosts file, known_hosts, the lab's key, a three-host script, sshd logs) are in
# /var/tmp/colab, which every host sees (/tmp is private to each host).
# Needs: iproute2 (ip), util-linux (unshare), openssh-server (sshd), openssh-client (ssh,
# ssh-keygen): all in scripts/packages.txt or installed with them.
set -euo pipefail

PREFIX=colab                 # every namespace of the lab is called colab-…
NET=10.250.0                 # the lab's /24 (the tests' labs use 10.77.N.0/24)
DIR=/var/tmp/colab           # the lab's files
HOSTS=(h1 h2 h3)
CORES=2                      # cores each host offers the placement
SW=$PREFIX-sw
CTL=$PREFIX-ctl
CTL_ADDRESS=$NET.2
REPO=$(cd "$(dirname "$0")/.." && pwd)

say() { echo "lab: $*" >&2; }
die() { say "$*"; exit 1; }

address_of() { echo "$NET.$((11 + $1))"; }   # host index 0, 1, 2 → .11, .12, .13
netns_of() { echo "$PREFIX-${HOSTS[$1]}"; }

# The lab's namespaces that exist now.
lab_namespaces() {
  local ns
  for ns in /run/netns/"$PREFIX"-*; do
    [ -e "$ns" ] && basename "$ns"
  done
  return 0
}

# The pids of the processes living in network namespace $1 (compared by the namespace's
# inode, as tests/lab/mod.rs does), this shell excluded.
pids_in() {
  local file=/run/netns/$1 nsfs inode pid
  nsfs=$(stat -L -c %d /proc/self/ns/net)
  # A half-made or half-removed namespace is an empty file, not an nsfs one: nothing lives in it.
  [ "$(stat -c %d "$file" 2>/dev/null)" = "$nsfs" ] || return 0
  inode=$(stat -c %i "$file")
  for pid in /proc/[0-9]*; do
    pid=${pid#/proc/}
    [ "$pid" = "$$" ] && continue
    [ "$(stat -L -c %i "/proc/$pid/ns/net" 2>/dev/null)" = "$inode" ] && echo "$pid"
  done
  return 0
}

# SIGTERM every process in the lab's namespaces, SIGKILL what is left after 2 s.
stop_processes() {
  local ns pids=() pid i
  for i in 1 2; do
    pids=()
    for ns in $(lab_namespaces); do
      for pid in $(pids_in "$ns"); do pids+=("$pid"); done
    done
    [ ${#pids[@]} -eq 0 ] && return 0
    if [ "$i" = 1 ]; then
      kill -TERM "${pids[@]}" 2>/dev/null || true
      for _ in $(seq 20); do
        sleep 0.1
        local alive=0
        for pid in "${pids[@]}"; do [ -e "/proc/$pid" ] && alive=1; done
        [ $alive = 0 ] && break
      done
    else
      kill -KILL "${pids[@]}" 2>/dev/null || true
      sleep 0.2
    fi
  done
}

down() {
  stop_processes
  local ns
  for ns in $(lab_namespaces); do
    ip netns del "$ns" 2>/dev/null || say "could not remove namespace $ns"
  done
  rm -rf "$DIR"
  local left
  left=$(lab_namespaces)
  [ -z "$left" ] || die "namespaces left: $left"
  # The hosts' tmpfs mounts live in their sshd's mount namespace: gone with its last process.
  if grep -qs " $PREFIX-\(shm\|tmp\|home\) " /proc/[0-9]*/mountinfo; then
    die "mounts of the lab are still held by a process"
  fi
  say "down: no namespace, process, mount or file of the lab is left"
}

status() {
  local ns pids
  if [ -z "$(lab_namespaces)" ]; then
    echo "no lab (scripts/lab.sh up builds one)"
    return 0
  fi
  for ns in $(lab_namespaces); do
    pids=$(pids_in "$ns" | tr '\n' ' ')
    printf '%-10s ' "$ns"
    if [ -z "$pids" ]; then
      echo "no processes"
    else
      ps -o comm= -p "$(echo $pids | tr ' ' ',')" | sort | uniq -c | awk '{printf "%s×%s ", $1, $2} END {print ""}'
    fi
  done
  [ -d "$DIR" ] && echo "files: $DIR"
  return 0
}

up() {
  local cmd
  for cmd in ip unshare ssh ssh-keygen /usr/sbin/sshd; do
    command -v "$cmd" >/dev/null || die "$cmd is missing (Debian: iproute2, util-linux, openssh-server)"
  done
  [ -z "$(lab_namespaces)" ] && [ ! -e "$DIR" ] ||
    die "a lab is already up (or half there): scripts/lab.sh down removes it"
  # Whatever stops the build half-way (a failing command, a host that never answers, Ctrl-C)
  # removes what was made so far.
  trap 'say "building the lab failed; removing what was made"; down' EXIT

  mkdir -m 700 -p "$DIR"
  # The key the controller logs in with, authorized on every host; one host key per host.
  ssh-keygen -q -t ed25519 -N "" -C "$PREFIX-user" -f "$DIR/id_ed25519"
  cp "$DIR/id_ed25519.pub" "$DIR/authorized_keys"
  : >"$DIR/known_hosts"
  local i name address ns
  for i in "${!HOSTS[@]}"; do
    name=${HOSTS[$i]}
    mkdir -p "$DIR/host-$name"
    ssh-keygen -q -t ed25519 -N "" -C "$name" -f "$DIR/host-$name/ssh_host_ed25519_key"
    echo "$(address_of "$i") $(cut -d' ' -f1,2 "$DIR/host-$name/ssh_host_ed25519_key.pub")" >>"$DIR/known_hosts"
  done

  # The network: a bridge in the switch namespace, one veth pair per namespace, made inside
  # the namespaces so that no name ever appears in this machine's own namespace.
  ip netns add "$SW"
  ip -n "$SW" link set lo up
  ip -n "$SW" link add br0 type bridge
  ip -n "$SW" link set br0 up
  local ends=("$CTL pctl $CTL_ADDRESS")
  for i in "${!HOSTS[@]}"; do
    ends+=("$(netns_of "$i") p$((i + 1)) $(address_of "$i")")
  done
  local end port
  for end in "${ends[@]}"; do
    read -r ns port address <<<"$end"
    ip netns add "$ns"
    ip link add eth0 netns "$ns" type veth peer name "$port" netns "$SW"
    ip -n "$SW" link set "$port" master br0
    ip -n "$SW" link set "$port" up
    ip -n "$ns" addr add "$address/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
  done

  # One sshd per host, in a mount namespace of its own (`ip netns exec` makes one) with
  # private /dev/shm, /tmp and /root, and its own hostname and System V IPC (JACK locks its
  # registry with a System V semaphore).
  mkdir -p /run/sshd
  for i in "${!HOSTS[@]}"; do
    name=${HOSTS[$i]}
    address=$(address_of "$i")
    cat >"$DIR/host-$name/sshd_config" <<EOF
# sshd of lab host $name; the system's sshd_config is not read.
ListenAddress $address
Port 22
HostKey $DIR/host-$name/ssh_host_ed25519_key
PidFile $DIR/host-$name/sshd.pid
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
AuthorizedKeysFile .ssh/authorized_keys
X11Forwarding no
PrintMotd no
MaxStartups 100:30:200
MaxSessions 100
Subsystem sftp internal-sftp
EOF
    ip netns exec "$(netns_of "$i")" unshare --uts --ipc sh -c "
      set -e
      hostname $name
      mount -t tmpfs -o mode=1777 $PREFIX-shm /dev/shm
      mount -t tmpfs -o mode=1777 $PREFIX-tmp /tmp
      mount -t tmpfs -o mode=700 $PREFIX-home /root
      mkdir -m 700 /root/.ssh
      cp $DIR/authorized_keys /root/.ssh/authorized_keys
      chmod 600 /root/.ssh/authorized_keys
      exec /usr/sbin/sshd -f $DIR/host-$name/sshd_config -E $DIR/host-$name/sshd.log"
  done

  # Wait until every host answers ssh from the controller, with strict host key checking.
  local ssh_opts=(-F /dev/null -i "$DIR/id_ed25519" -o IdentitiesOnly=yes
    -o "UserKnownHostsFile=$DIR/known_hosts" -o GlobalKnownHostsFile=/dev/null
    -o StrictHostKeyChecking=yes -o BatchMode=yes -o ConnectTimeout=5)
  for i in "${!HOSTS[@]}"; do
    address=$(address_of "$i")
    local tries=0
    until ip netns exec "$CTL" ssh "${ssh_opts[@]}" "root@$address" true 2>/dev/null; do
      tries=$((tries + 1))
      [ $tries -lt 30 ] || die "${HOSTS[$i]} ($address) never answered ssh; see $DIR/host-${HOSTS[$i]}/sshd.log"
      sleep 0.5
    done
  done

  {
    echo "-- The hosts of the lab made by scripts/lab.sh (removed by scripts/lab.sh down)."
    for i in "${!HOSTS[@]}"; do
      echo "host \"${HOSTS[$i]}\" { address = \"$(address_of "$i")\", user = \"root\", port = 22, cores = $CORES, identity = \"$DIR/id_ed25519\" }"
    done
  } >"$DIR/hosts.lua"
  cat >"$DIR/chain.lua" <<'EOF'
-- A 440 Hz sine on h1 through a lowpass on h2 into the DAC on h3: two jacktrip links.
local osc  = block "osc"  { module = "sine", freq = 440, host = "h1" }
local filt = block "filt" { module = "lp", cutoff = 2000, host = "h2" }
local out  = block "out"  { module = "dac", host = "h3" }
osc >> filt >> out
EOF
  trap - EXIT

  local orchestra=$REPO/target/debug/orchestra
  cat <<EOF
lab: up. Hosts h1, h2, h3 at $NET.11-13; the controller namespace $CTL is $CTL_ADDRESS.
  hosts file:  $DIR/hosts.lua
  known_hosts: $DIR/known_hosts
  a script:    $DIR/chain.lua (sine on h1 → lowpass on h2 → DAC on h3)

Play it from the controller namespace (Ctrl-C stops it everywhere):
  ip netns exec $CTL $orchestra run $DIR/chain.lua \\
    --hosts $DIR/hosts.lua --known-hosts $DIR/known_hosts --record /tmp/chain.wav --seconds 10
  $orchestra analyze /tmp/chain.wav

While it plays, from another terminal:
  ip netns exec $CTL $orchestra status $DIR/chain.lua --known-hosts $DIR/known_hosts
  ip netns exec $CTL curl -s http://127.0.0.1:7780/   # the page and OSC are on $CTL's own loopback
Log into a host:
  ip netns exec $CTL ssh -F /dev/null -i $DIR/id_ed25519 -o UserKnownHostsFile=$DIR/known_hosts root@$NET.11

When done: $REPO/scripts/lab.sh down
EOF
  [ -x "$orchestra" ] || say "note: $orchestra is not built yet: run cargo build (or scripts/setup.sh) first"
}

[ "$(id -u)" -eq 0 ] || die "run as root: the lab is made of network namespaces, mounts and sshd"
case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: scripts/lab.sh up|status|down" >&2; exit 2 ;;
esac
