#!/bin/sh
# ctest fuzz.api.loopback_only: the API fuzzer's ops that add peers (add_peer with addresses
# and host names of every kind, drain, remove_peer; each round adds some too) for a few
# seconds under strace: no connect or send may leave loopback. (This machine's resolver is off loopback: a
# pool without dns_servers asked it for 'host.example' until the fuzzer got a DNS server of
# its own.) sh spec/fuzz/loopback_only.sh BUILD_DIR [SEED] [SECONDS], from the source root.
build=${1:?build dir}
here=$(dirname "$0")
FUZZ_OPS=${FUZZ_OPS:-add_peer,remove_peer,stats} \
  exec sh "$here/../support/off_loopback.sh" sh "$here/run.sh" "$build" "${2:-1}" "${3:-3}"
