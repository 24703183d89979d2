#!/bin/sh
# Tests and benchmarks send network traffic to loopback only. This runs a command under strace
# (every process it starts too) and fails if any of them connected or sent to an address off
# loopback -- e.g. a host name asked of the system's resolver (/etc/resolv.conf) rather than of
# a test's own DNS server (spec/support/dns_server.lua), or a dial of a made-up 10.x peer.
#   sh spec/support/off_loopback.sh COMMAND [ARG...]     e.g. (from build/) ... ctest -j2
# Prints each offending syscall with the command line of its process; exits 1 if there was
# any, the command's own status otherwise, 77 without strace (ctest: skipped).
# Loopback: 127.0.0.0/8, ::1, ::ffff:127.x.y.z; unix sockets are not network traffic.
command -v strace >/dev/null 2>&1 || { echo "off_loopback: strace is not installed" >&2; exit 77; }
log=$(mktemp "${TMPDIR:-/tmp}/off-loopback.XXXXXX")
# (--seccomp-bpf: only the traced calls stop the process, so the command runs at nearly full
# speed; older strace lacks it)
fast=""
strace --seccomp-bpf -f -qq -e trace=none true 2>/dev/null && fast="--seccomp-bpf"
strace $fast -f -qq -e trace=execve,connect,sendto,sendmsg,sendmmsg -e signal=none -o "$log" "$@"
rc=$?
bad=$(grep -E '(connect|sendto|sendmsg|sendmmsg)\(' "$log" | grep -E 'sin6?_addr' |
  grep -vE 'inet_addr\("127\.' | grep -vE 'inet_pton\(AF_INET6, "(::1|::ffff:127\.[0-9.]+)"')
if [ -n "$bad" ]; then
  echo "off_loopback: traffic off loopback:" >&2
  printf '%s\n' "$bad" | head -n 20 | while read -r pid rest; do
    cmd=$(grep -E "^$pid +execve\(" "$log" | tail -n 1 | sed 's/^[0-9]* *execve("[^"]*", \[//; s/\], 0x.*//')
    echo "  $rest" | cut -c1-200 >&2
    echo "    by pid $pid: ${cmd:-(a process started before its execve was traced)}" | cut -c1-240 >&2
  done
  rm -f "$log"
  exit 1
fi
rm -f "$log"
exit $rc
