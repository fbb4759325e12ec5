// What node.mjs (Node.js) and browser/main.js (Chromium) share: arguments, identity, the echo
// protocol of examples/support/mod.rs, pings over one chosen connection, and the listen and
// dial roles. Platform specifics (transports, where events go) are passed in.

import { circuitRelayTransport } from '@libp2p/circuit-relay-v2'
import { generateKeyPairFromSeed } from '@libp2p/crypto/keys'
import { identify } from '@libp2p/identify'
import { noise } from '@libp2p/noise'
import { ping } from '@libp2p/ping'
import { webRTC } from '@libp2p/webrtc'
import { yamux } from '@libp2p/yamux'
import { multiaddr } from '@multiformats/multiaddr'
import { createLibp2p } from 'libp2p'
import { pEvent } from 'p-event'

/** The echo protocol of examples/support/mod.rs: everything written is sent back until the writer closes. */
export const ECHO = '/webrtc-signal-example/echo/1.0.0'
/** libp2p ping. */
export const PING = '/ipfs/ping/1.0.0'

export const USAGE = `usage:
  node.mjs relay  --listen <multiaddr>... [--external <multiaddr>]... [relay limits] [common]
  node.mjs listen --relay <relay multiaddr with /p2p/ID> [--send-bytes N] [--check-reset] [common]
  node.mjs dial   <multiaddr> [--ping N] [--send-bytes N] [--check-reset] [--allow-relayed]
                  [--linger S] [common]

  <multiaddr> for dial: <relay>/p2p-circuit/p2p/<id> or <relay>/p2p-circuit/webrtc/p2p/<id>;
  js-libp2p does not upgrade by itself, so the dialer first dials the relayed address, then
  <relay>/p2p-circuit/webrtc/p2p/<id> (signaling /webrtc-signaling/0.0.1 on the relayed
  connection), unless --no-upgrade.

common:
  --seed <u64>             deterministic Ed25519 identity, same peer id as examples/node.rs --seed
  --listen <multiaddr>     also listen here (repeatable)
  --stun <url>             STUN server (repeatable; none by default: rtcConfiguration.iceServers = [])
  --turn <url>             TURN server (repeatable), with --turn-user and --turn-pass
  --no-upgrade             no WebRTC: stay on the relayed connection
  --upgrade-timeout <s>    bound of the WebRTC dial (default 30)
  --timeout <s>            dial: give up after this long (default 120); relay and listen:
                           exit 0 after this long (default: run until killed)

relay limits (js-libp2p circuit relay v2 server):
  --max-reservations <n>   (default 128)
  --max-circuits <n>       maxInboundHopStreams (default 16)
  --max-circuit-duration <s>  (default 120)
  --max-circuit-bytes <n>     (default 131072)

checks (dial: on the connection under test; listen: on every direct connection):
  --send-bytes <n>         echo n bytes over a new stream, checked byte for byte (default 0)
  --check-reset            then echo 4 KiB over another stream and reset it: the remote's
                           echo server must report the reset ("served" with end "reset")

dial:
  --ping <n>               pings over the checked connection (default 3)
  --allow-relayed          exit 0 also when the checks succeeded over the relay
  --linger <s>             after "done", keep serving for this long before exiting (default 0)

events (stdout, one JSON object per line): listening, reserved, connected, upgrade_started,
upgraded, upgrade_failed, ping, transfer, reset_sent, served, done, error.
exit status: 0 success, 1 a check failed or an error, 2 bad usage.`

export class UsageError extends Error {}

/** Parses the command line of examples/node.rs (the subset that makes sense here). */
export function parseArgs (raw) {
  const args = { pings: 3, sendBytes: 0, linger: 0, listen: [], external: [], stun: [], turn: [] }
  const it = raw[Symbol.iterator]()
  const next = () => it.next().value
  args.role = next()
  if (!['relay', 'listen', 'dial'].includes(args.role)) throw new UsageError(`unknown role ${JSON.stringify(args.role)}`)
  const value = (flag, parse = (v) => v) => {
    const v = next()
    if (v == null) throw new UsageError(`${flag} needs a value`)
    return parse(v)
  }
  const num = (flag) => value(flag, (v) => {
    const n = Number(v)
    if (!Number.isInteger(n) || n < 0) throw new UsageError(`${flag} ${JSON.stringify(v)}: not a number`)
    return n
  })
  const ma = (flag) => value(flag, (v) => {
    try { return multiaddr(v) } catch (e) { throw new UsageError(`${flag} ${JSON.stringify(v)}: ${e.message}`) }
  })
  for (let arg = next(); arg != null; arg = next()) {
    switch (arg) {
      case '--listen': args.listen.push(ma(arg)); break
      case '--external': args.external.push(ma(arg)); break
      case '--relay': args.relay = ma(arg); break
      case '--seed': args.seed = value(arg, (v) => BigInt.asUintN(64, BigInt(v))); break
      case '--stun': args.stun.push(value(arg)); break
      case '--turn': args.turn.push(value(arg)); break
      case '--turn-user': args.turnUser = value(arg); break
      case '--turn-pass': args.turnPass = value(arg); break
      case '--no-upgrade': args.noUpgrade = true; break
      case '--loopback': args.loopback = true; break // accepted for parity; node-datachannel decides
      case '--upgrade-timeout': args.upgradeTimeout = num(arg); break
      case '--max-attempts': args.maxAttempts = num(arg); break // accepted for parity, unused
      case '--timeout': args.timeout = num(arg); break
      case '--ping': args.pings = num(arg); break
      case '--send-bytes': args.sendBytes = num(arg); break
      case '--allow-relayed': args.allowRelayed = true; break
      case '--check-reset': args.checkReset = true; break
      case '--linger': args.linger = num(arg); break
      case '--max-reservations': args.maxReservations = num(arg); break
      case '--max-circuits': args.maxCircuits = num(arg); break
      case '--max-circuit-duration': args.maxCircuitDuration = num(arg); break
      case '--max-circuit-bytes': args.maxCircuitBytes = num(arg); break
      default:
        if (arg.startsWith('--')) throw new UsageError(`unknown flag ${arg}`)
        if (args.role === 'dial' && args.target == null) {
          try { args.target = multiaddr(arg) } catch (e) { throw new UsageError(`${JSON.stringify(arg)}: ${e.message}`) }
        } else {
          throw new UsageError(`unexpected argument ${JSON.stringify(arg)}`)
        }
    }
  }
  if (args.role === 'relay' && args.listen.length === 0) throw new UsageError('relay needs --listen')
  if (args.role === 'listen' && args.relay == null) throw new UsageError('listen needs --relay')
  if (args.role === 'dial' && args.target == null) throw new UsageError('dial needs a multiaddr')
  if (args.turn.length > 0 && (args.turnUser == null || args.turnPass == null)) {
    throw new UsageError('--turn needs --turn-user and --turn-pass')
  }
  return args
}

/**
 * The identity of examples/node.rs: Ed25519 secret key = seed as u64 little endian, zero-padded
 * to 32 bytes (libp2p's ed25519_from_bytes takes the 32-byte seed, as generateKeyPairFromSeed does).
 */
export async function identity (seed) {
  if (seed == null) return undefined
  const bytes = new Uint8Array(32)
  new DataView(bytes.buffer).setBigUint64(0, seed, true)
  return generateKeyPairFromSeed('Ed25519', bytes)
}

/** rtcConfiguration: no ICE servers unless given (js-libp2p's default is four public STUN servers). */
export function rtcConfiguration (args) {
  const iceServers = args.stun.map((url) => ({ urls: [url] }))
  for (const url of args.turn) iceServers.push({ urls: [url], username: args.turnUser, credential: args.turnPass })
  return { iceServers }
}

/**
 * A started listen or dial peer: `transports` (the platform's: TCP and WebSockets in Node,
 * WebSockets in the browser), circuit relay, WebRTC unless --no-upgrade, Noise, Yamux,
 * identify and ping; connections are reported through `emit`.
 */
export async function startPeer (args, listen, transports, emit) {
  const node = await createLibp2p({
    start: false,
    privateKey: await identity(args.seed),
    addresses: { listen },
    transports: [
      ...transports,
      circuitRelayTransport(),
      ...(args.noUpgrade ? [] : [webRTC({ rtcConfiguration: rtcConfiguration(args) })])
    ],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    // the browser default denies private addresses and insecure (ws://) WebSockets
    connectionGater: { denyDialMultiaddr: () => false },
    // js-libp2p bounds a dial by dialTimeout (10 s) and each address by addressDialTimeout
    // (6 s); make --upgrade-timeout (default 30 s) the bound of the WebRTC dial instead
    connectionManager: {
      dialTimeout: (args.upgradeTimeout ?? 30) * 1000,
      addressDialTimeout: (args.upgradeTimeout ?? 30) * 1000
    },
    // The checks ping over one long-lived stream (openPinger). js-libp2p's connection monitor
    // pings every connection every 10 s on a stream of its own, and a peer may keep one
    // inbound ping stream (rust-libp2p answers only the newest and drops the one before); the
    // two collided in about one lossy run of ten ("Cannot write to a stream that is closed"),
    // and a monitor ping refused for the pinger's stream aborts the connection.
    connectionMonitor: { enabled: false },
    services: {
      identify: identify(),
      ping: ping({ runOnLimitedConnection: true })
    }
  })
  reportConnections(node, emit)
  await node.start()
  return node
}

/** `len` bytes of the pattern of examples/support/mod.rs `payload` (xorshift32, low byte). */
export function payload (len) {
  const out = new Uint8Array(len)
  let x = 0x9e3779b9
  for (let i = 0; i < len; i++) {
    x = (x ^ (x << 13)) >>> 0
    x = (x ^ (x >>> 17)) >>> 0
    x = (x ^ (x << 5)) >>> 0
    out[i] = x & 0xff
  }
  return out
}

const bytesOf = (chunk) => chunk instanceof Uint8Array ? chunk : chunk.subarray()

/** Sends `data`, waiting for 'drain' when the stream asks for it. */
async function sendAll (stream, data, chunk = 64 * 1024) {
  for (let i = 0; i < data.byteLength; i += chunk) {
    if (!stream.send(data.subarray(i, Math.min(i + chunk, data.byteLength)))) {
      await pEvent(stream, 'drain', { rejectionEvents: ['close'] })
    }
  }
}

/**
 * Echoes a stream back to its writer until it closes its side, then closes ours (serve_echo);
 * reports how it ended as a `served` event: end "closed", "reset" (the remote reset it) or "error".
 */
export async function serveEcho (stream, peer, emit) {
  let bytes = 0
  let end = 'closed'
  let error
  try {
    for await (const chunk of stream) {
      const b = bytesOf(chunk)
      bytes += b.byteLength
      if (!stream.send(b)) {
        await pEvent(stream, 'drain', { rejectionEvents: ['close'] })
      }
    }
    if (stream.status === 'reset') throw new Error('the stream was reset')
    await stream.close()
  } catch (err) {
    end = stream.status === 'reset' || err?.name === 'StreamResetError' ? 'reset' : 'error'
    error = String(err?.message ?? err)
    stream.abort(err)
  }
  emit({ event: 'served', peer, bytes, end, ...(error != null ? { error } : {}) })
}

/**
 * Sees whether a WebRTC stream receives FIN_ACK for our FIN: @libp2p/webrtc 6.0.x keeps the
 * wait in `receivedFinAck` (a Promise.withResolvers() set by sendCloseWrite and resolved on
 * FIN_ACK; a timeout or the channel closing also ends close()). Test instrumentation of that
 * private field; returns null for a stream that is not a WebRTCStream.
 */
function watchFinAck (stream) {
  if (!Object.prototype.hasOwnProperty.call(stream, 'receivedFinAck')) return null
  const seen = { finAck: false }
  let current = stream.receivedFinAck
  Object.defineProperty(stream, 'receivedFinAck', {
    configurable: true,
    get: () => current,
    set: (v) => {
      current = v == null ? v : { ...v, resolve: (x) => { seen.finAck = true; v.resolve(x) } }
    }
  })
  return seen
}

/**
 * echo_transfer: writes `len` bytes while reading the echo, half-closes once the whole echo is
 * back (so the close is the FIN -> FIN_ACK round trip), checks byte for byte.
 * Returns { ms, closeMs, finAck } (finAck: FIN_ACK seen; null if not a WebRTC stream).
 */
export async function echoTransfer (connection, len, { signal } = {}) {
  const data = payload(len)
  const stream = await connection.newStream(ECHO, { signal, runOnLimitedConnection: true })
  const fin = watchFinAck(stream)
  const started = performance.now()
  const echoed = Promise.withResolvers()
  const writer = (async () => {
    await sendAll(stream, data)
    await echoed.promise.catch(() => {})
    const closing = performance.now()
    await stream.close({ signal })
    return performance.now() - closing
  })()
  const reader = (async () => {
    const got = new Uint8Array(len + 65536)
    let n = 0
    try {
      if (len === 0) echoed.resolve()
      for await (const chunk of stream) {
        const b = bytesOf(chunk)
        if (n + b.byteLength > got.byteLength) throw new Error(`echo returned more than ${len} bytes`)
        got.set(b, n)
        n += b.byteLength
        if (n >= len) echoed.resolve()
      }
    } finally {
      echoed.reject(new Error('the echo ended early'))
    }
    return got.subarray(0, n)
  })()
  const [closeMs, got] = await Promise.all([writer, reader])
  const ms = performance.now() - started
  checkEcho(got, data)
  return { ms, closeMs, finAck: fin?.finAck ?? null }
}

function checkEcho (got, data) {
  if (got.byteLength !== data.byteLength) throw new Error(`echo returned ${got.byteLength} of ${data.byteLength} bytes`)
  for (let i = 0; i < data.byteLength; i++) {
    if (got[i] !== data[i]) throw new Error(`echo differs at byte ${i}`)
  }
}

/** echo_then_reset: writes `len` bytes, reads them back and checks them, then resets the stream (abort: RESET). */
export async function echoThenReset (connection, len, { signal } = {}) {
  const data = payload(len)
  const stream = await connection.newStream(ECHO, { signal, runOnLimitedConnection: true })
  const got = new Uint8Array(len)
  let n = 0
  const done = new Promise((resolve, reject) => {
    stream.addEventListener('message', (evt) => {
      const b = bytesOf(evt.data)
      if (n + b.byteLength > len) { reject(new Error(`echo returned more than ${len} bytes`)); return }
      got.set(b, n)
      n += b.byteLength
      if (n === len) resolve()
    })
    stream.addEventListener('close', (evt) => reject(evt.error ?? new Error(`stream closed after ${n} of ${len} bytes`)))
  })
  await sendAll(stream, data)
  await done
  checkEcho(got, data)
  stream.abort(new Error('reset check'))
}

/** The checks of examples/node.rs on one connection: an echo of --send-bytes, then with --check-reset an echo whose stream is reset. */
export async function runChecks (connection, args, emit, { peer, direct, signal }) {
  let ok = true
  if (args.sendBytes > 0) {
    try {
      const { ms, closeMs, finAck } = await echoTransfer(connection, args.sendBytes, { signal })
      emit({ event: 'transfer', peer, bytes: args.sendBytes, direct, ok: true, ms, close_ms: closeMs, fin_ack: finAck })
    } catch (err) {
      ok = false
      emit({ event: 'transfer', peer, bytes: args.sendBytes, direct, ok: false, error: String(err?.message ?? err) })
    }
  }
  if (args.checkReset) {
    try {
      await echoThenReset(connection, 4096, { signal })
      emit({ event: 'reset_sent', peer, direct, ok: true })
    } catch (err) {
      ok = false
      emit({ event: 'reset_sent', peer, direct, ok: false, error: String(err?.message ?? err) })
    }
  }
  return ok
}

/** A ping client on one stream of one chosen connection (as rust-libp2p's ping: 32 bytes, echoed, repeated). */
export async function openPinger (connection, { signal } = {}) {
  const stream = await connection.newStream(PING, { signal, runOnLimitedConnection: true })
  let pending = null
  let buffered = new Uint8Array(0)
  stream.addEventListener('message', (evt) => {
    const b = bytesOf(evt.data)
    const joined = new Uint8Array(buffered.byteLength + b.byteLength)
    joined.set(buffered); joined.set(b, buffered.byteLength)
    buffered = joined
    if (pending != null && buffered.byteLength >= 32) {
      const got = buffered.subarray(0, 32); buffered = buffered.subarray(32)
      const p = pending; pending = null
      p.resolve(got)
    }
  })
  stream.addEventListener('close', (evt) => { pending?.reject(evt.error ?? new Error('ping stream closed')) })
  return {
    async ping (timeoutMs = 10000) {
      const data = crypto.getRandomValues(new Uint8Array(32))
      pending = Promise.withResolvers()
      const started = performance.now()
      stream.send(data)
      const timer = setTimeout(() => pending?.reject(new Error('ping timeout')), timeoutMs)
      try {
        const got = await pending.promise
        const rtt = performance.now() - started
        for (let i = 0; i < 32; i++) if (got[i] !== data[i]) throw new Error('wrong ping payload')
        return rtt
      } finally {
        clearTimeout(timer)
      }
    },
    close: () => stream.close().catch(() => {})
  }
}

/** What kind of connection an address is, for the `connected` event. */
export function describe (addr) {
  const s = addr.toString()
  const webrtc = s.includes('/webrtc/') || s.endsWith('/webrtc') || s.startsWith('/webrtc')
  const circuit = s.includes('/p2p-circuit')
  return {
    relayed: circuit && !webrtc,
    direct: webrtc && !s.includes('/webrtc-direct'),
    transport: webrtc ? 'webrtc' : circuit ? 'p2p-circuit' : s.includes('/ws') ? 'websockets' : s.includes('/tcp/') ? 'tcp' : 'other'
  }
}

/** Reports connections as examples/node.rs does. */
export function reportConnections (node, emit) {
  node.addEventListener('connection:open', (evt) => {
    const c = evt.detail
    emit({
      event: 'connected',
      peer: c.remotePeer.toString(),
      addr: c.remoteAddr.toString(),
      ...describe(c.remoteAddr),
      direction: c.direction,
      limited: c.limits != null,
      multiplexer: c.multiplexer,
      encryption: c.encryption ?? null
    })
  })
  node.addEventListener('connection:close', (evt) => {
    const c = evt.detail
    emit({ event: 'disconnected', peer: c.remotePeer.toString(), addr: c.remoteAddr.toString(), ...describe(c.remoteAddr) })
  })
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

/** Waits until `fn` returns something. */
async function until (fn, ms, what) {
  const end = Date.now() + ms
  for (;;) {
    const v = fn()
    if (v) return v
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`)
    await sleep(50)
  }
}

/** Serves ECHO, reporting each stream's end. */
async function handleEcho (node, emit) {
  await node.handle(ECHO, (stream, connection) => {
    serveEcho(stream, connection?.remotePeer?.toString(), emit)
  }, { runOnLimitedConnection: true })
}

/** The listen role: reserves a slot on the relay, advertises <relay>/p2p-circuit/webrtc/p2p/<id>, serves echo (ping is a service). */
export async function runListen (node, args, emit) {
  await handleEcho(node, emit)
  if (args.sendBytes > 0 || args.checkReset) {
    node.addEventListener('connection:open', (evt) => {
      const c = evt.detail
      if (!describe(c.remoteAddr).direct) return
      const peer = c.remotePeer.toString()
      runChecks(c, args, emit, { peer, direct: true }).then(
        (ok) => emit({ event: 'done', peer, direct: true, ok }),
        (err) => emit({ event: 'done', peer, direct: true, ok: false, error: String(err?.message ?? err) })
      )
    })
  }
  const id = node.peerId.toString()
  const relayId = args.relay.getComponents().filter((c) => c.name === 'p2p').pop()?.value
  if (relayId == null) throw new Error(`--relay ${args.relay} has no /p2p/<relay id>`)
  await node.listen?.([]) // no-op: listen addresses were given to createLibp2p
  const circuit = await until(() => node.getMultiaddrs().find((a) => a.toString().includes('/p2p-circuit') && !a.toString().includes('/webrtc')), 30000, 'the relay reservation')
  emit({ event: 'reserved', relay: relayId, addr: circuit.toString() })
  if (args.noUpgrade) {
    emit({ event: 'listening', addr: circuit.toString(), peer: id, webrtc: false })
  } else {
    const webrtcAddr = await until(() => node.getMultiaddrs().find((a) => a.toString().includes('/p2p-circuit/webrtc')), 10000, 'the /webrtc listen address')
    emit({ event: 'listening', addr: webrtcAddr.toString(), peer: id, webrtc: true })
  }
  if (args.timeout != null) {
    await sleep(args.timeout * 1000)
    return true
  }
  await new Promise(() => {})
}

/** The dial role: relayed connection, then the WebRTC dial over it, then pings and an echo on the WebRTC connection. */
export async function runDial (node, args, emit) {
  const started = performance.now()
  const target = args.target
  const peer = target.getComponents().filter((c) => c.name === 'p2p').pop()?.value
  if (peer == null) throw new Error(`${target} does not end in /p2p/<peer id>`)
  const s = target.toString()
  const circuitAddr = multiaddr(s.replace('/p2p-circuit/webrtc/', '/p2p-circuit/'))
  const webrtcAddr = multiaddr(s.includes('/p2p-circuit/webrtc/') ? s : s.replace('/p2p-circuit/', '/p2p-circuit/webrtc/'))
  const overall = AbortSignal.timeout((args.timeout ?? 120) * 1000)

  await handleEcho(node, emit)
  const relayed = await node.dial(circuitAddr, { signal: overall })
  let checked = relayed
  let direct = false
  if (!args.noUpgrade) {
    emit({ event: 'upgrade_started', peer, role: 'offerer', attempt: 1, addr: webrtcAddr.toString() })
    const t0 = performance.now()
    try {
      const phases = {}
      const onProgress = (evt) => { phases[evt.type] = +(performance.now() - t0).toFixed(3) }
      const conn = await node.dial(webrtcAddr, {
        signal: AbortSignal.any([overall, AbortSignal.timeout((args.upgradeTimeout ?? 30) * 1000)]),
        onProgress
      })
      emit({ event: 'upgraded', peer, addr: conn.remoteAddr.toString(), ms: performance.now() - t0, progress_ms: phases, multiplexer: conn.multiplexer, limited: conn.limits != null })
      checked = conn
      direct = describe(conn.remoteAddr).direct
    } catch (err) {
      emit({ event: 'upgrade_failed', peer, reason: String(err?.message ?? err), attempt: 1, will_retry: false })
    }
  }
  let pinger = await openPinger(checked, { signal: overall })
  let failures = 0
  for (let ok = 0; ok < args.pings;) {
    try {
      const rtt = await pinger.ping()
      ok++
      emit({ event: 'ping', peer, rtt_ms: rtt, direct, ok: true })
    } catch (err) {
      emit({ event: 'ping', peer, direct, ok: false, error: String(err?.message ?? err) })
      if (++failures >= 3) throw new Error(`pings keep failing: ${err?.message ?? err}`)
      // A new stream for the next try, as js-libp2p's own ping does for every ping: the
      // remote may have closed this one (see connectionMonitor in startPeer).
      await pinger.close()
      pinger = await openPinger(checked, { signal: overall })
    }
    await sleep(250)
  }
  await pinger.close()
  const checksOk = await runChecks(checked, args, emit, { peer, direct, signal: overall })
  const ok = checksOk && (direct || args.allowRelayed === true)
  emit({ event: 'done', peer, direct, ok, ms: performance.now() - started })
  if (args.linger > 0) await sleep(args.linger * 1000) // keep serving the listener's checks
  return ok
}
