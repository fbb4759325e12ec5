#!/usr/bin/env node
// Runs browser/main.js (js-libp2p) in headless Chromium through playwright-core and relays the
// page's JSON event lines to stdout, so a browser peer looks like node.mjs to a test script.
//
//   npm run build                                   # browser/dist/bundle.js
//   npx node browser.mjs listen --relay /ip4/10.77.0.1/tcp/4102/ws/p2p/<relay id> --seed 4
//   npx node browser.mjs dial /ip4/10.77.0.1/tcp/4102/ws/p2p/<relay id>/p2p-circuit/p2p/<id> --ping 3 --send-bytes 1048576
//
// The relay must be reachable over WebSockets (node.mjs relay --listen .../tcp/N/ws).
// Environment: CHROMIUM (default /usr/bin/chromium), BROWSER_LOG=1 prints every console line
// of the page to stderr, DEBUG=libp2p:webrtc* enables js-libp2p's logs in the page (printed to stderr), BROWSER_FLAGS adds Chromium flags (space separated).

import { createServer } from 'node:http'
import { readFile } from 'node:fs/promises'
import { existsSync } from 'node:fs'
import { dirname, extname, join, normalize } from 'node:path'
import { fileURLToPath } from 'node:url'
import { chromium } from 'playwright-core'

const root = join(dirname(fileURLToPath(import.meta.url)), 'browser')
const emit = (obj) => process.stdout.write(JSON.stringify(obj) + '\n')

const argv = process.argv.slice(2)
if (argv.length === 0 || argv.includes('--help')) {
  console.log('usage: browser.mjs listen|dial <node.mjs arguments>   (see node.mjs --help)')
  process.exit(argv.length === 0 ? 2 : 0)
}
if (!existsSync(join(root, 'dist', 'bundle.js'))) {
  console.error('browser.mjs: browser/dist/bundle.js is missing: run `npm run build` first')
  process.exit(2)
}

// A static server for the page, on loopback (a secure context, so WebCrypto is there).
const types = { '.html': 'text/html', '.js': 'text/javascript', '.map': 'application/json' }
const server = createServer(async (req, res) => {
  const path = normalize(decodeURIComponent(new URL(req.url, 'http://x').pathname)).replace(/^(\.\.[/\\])+/, '')
  try {
    const body = await readFile(join(root, path === '/' ? 'index.html' : path))
    res.writeHead(200, { 'content-type': types[extname(path)] ?? 'application/octet-stream' })
    res.end(body)
  } catch {
    res.writeHead(404).end()
  }
})
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
const url = `http://127.0.0.1:${server.address().port}/index.html?argv=${encodeURIComponent(JSON.stringify(argv))}${process.env.DEBUG ? `&debug=${encodeURIComponent(process.env.DEBUG)}` : ''}`

const flags = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  // host candidates as IP addresses, not <uuid>.local mDNS names that the other side cannot resolve
  '--disable-features=WebRtcHideLocalIpsWithMdns',
  ...(argv.includes('--loopback') ? ['--allow-loopback-in-peer-connection'] : []),
  ...(process.env.BROWSER_FLAGS ?? '').split(' ').filter(Boolean)
]
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  headless: true,
  args: flags
})
let finished = false
const finish = async (code) => {
  if (finished) return
  finished = true
  await browser.close().catch(() => {})
  server.close()
  process.exit(code)
}
process.on('SIGINT', () => finish(130))
process.on('SIGTERM', () => finish(143))

const page = await browser.newPage()
await page.exposeFunction('__exit', (code) => { setTimeout(() => finish(code), 100) })
page.on('console', (msg) => {
  const text = msg.text()
  if (process.env.BROWSER_LOG === '1' || process.env.DEBUG) console.error(`[page ${msg.type()}] ${text}`)
  if (text.startsWith('{')) {
    try {
      const obj = JSON.parse(text)
      if (obj?.event != null) {
        emit(obj)
        return
      }
    } catch {}
  }
})
page.on('pageerror', (err) => {
  emit({ event: 'error', reason: `page error: ${err.message}` })
  finish(1)
})
page.on('crash', () => {
  emit({ event: 'error', reason: 'page crashed' })
  finish(1)
})
emit({ event: 'browser', version: browser.version(), flags })
await page.goto(url)
// keep the process alive: the page calls __exit
