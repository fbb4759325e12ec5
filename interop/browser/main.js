// js-libp2p in Chromium: the listen and dial roles of node.mjs, over WebSockets to the relay
// and WebRTC (private-to-private) to the other peer. Arguments come from the page's query:
// ?argv=<JSON array of the node.mjs arguments>. Events are console.log'd as JSON lines, which
// browser.mjs relays to its stdout; the exit status goes to window.__exit (exposed by browser.mjs).

import { webSockets } from '@libp2p/websockets'
import { enable } from '@libp2p/logger'
import { parseArgs, runDial, runListen, startPeer } from '../lib/common.mjs'

const logEl = document.getElementById('log')
const emit = (obj) => {
  const line = JSON.stringify(obj)
  console.log(line)
  if (logEl != null) logEl.textContent += line + '\n'
}
const exit = (code) => {
  if (typeof window.__exit === 'function') window.__exit(code)
  else emit({ event: 'exit', code })
}

async function main () {
  const debug = new URLSearchParams(location.search).get('debug')
  if (debug) enable(debug) // DEBUG of browser.mjs, e.g. libp2p:webrtc*
  const argv = JSON.parse(new URLSearchParams(location.search).get('argv') ?? '[]')
  const args = parseArgs(argv)
  if (args.role === 'relay') throw new Error('the relay role runs in Node (node.mjs), not in the browser')
  const listen = [
    ...args.listen.map(String),
    ...(args.role === 'listen' ? [`${args.relay}/p2p-circuit`] : []),
    ...(args.noUpgrade ? [] : ['/webrtc'])
  ]
  const node = await startPeer(args, listen, [webSockets()], emit)
  emit({ event: 'started', peer: node.peerId.toString(), user_agent: navigator.userAgent })
  globalThis.libp2p = node
  const ok = args.role === 'listen' ? await runListen(node, args, emit) : await runDial(node, args, emit)
  return ok ? 0 : 1
}

main().then(exit, (err) => {
  emit({ event: 'error', reason: String(err?.message ?? err) })
  exit(1)
})
