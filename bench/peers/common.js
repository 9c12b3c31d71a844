'use strict'
// What the load clients share: their command line, the handshake with run.py and the edit loop.
//
//   node X_client.js --port P [--warmup 1] [--seconds 4] [--window 1] [--echo] [--lean] [--format text|html] [--bare]
//
// --window W keeps W edits in flight: edit i + W is made once edit i counted (acknowledgements come in
// order on every server here). At the end of each part the edits still in flight are waited for and not
// counted.
//
// The client edits for `warmup` seconds, prints "timing" and waits for a line on stdin (run.py reads the
// server's CPU then), edits for `seconds`, prints {"edits", "seconds", "rate"} and waits for another line
// before it disconnects. stdin at its end counts as a line, so `< /dev/null` runs a client by hand.
const { parseArgs } = require('node:util')
const readline = require('node:readline')
const { performance } = require('node:perf_hooks')

const ACK_TIMEOUT_MS = 5000

function options () {
  const { values } = parseArgs({
    options: {
      port: { type: 'string' },
      warmup: { type: 'string', default: '1' },
      seconds: { type: 'string', default: '4' },
      window: { type: 'string', default: '1' }, // edits in flight
      echo: { type: 'boolean', default: false }, // pace by a second client receiving each edit
      lean: { type: 'boolean', default: false }, // mcprt only: the mcprt.ops.v1 subprotocol
      format: { type: 'string', default: 'text' }, // mcprt only: the document's format, text or html
      bare: { type: 'boolean', default: false } // mcprt_client.js only: a bare echo server, no session or document
    }
  })
  if (!values.port) fail('--port is required')
  const window = Number(values.window)
  if (!(window >= 1 && Number.isInteger(window))) fail('--window must be a whole number from 1')
  const { port, warmup, seconds } = values
  return { ...values, port: Number(port), warmup: Number(warmup), seconds: Number(seconds), window }
}

const lines = readline.createInterface({ input: process.stdin })
const waiting = []
lines.on('line', () => { const w = waiting.shift(); if (w) w() })
lines.on('close', () => { while (waiting.length) waiting.shift()() })
let closed = false
lines.on('close', () => { closed = true })

function handshake (text) {
  process.stdout.write(text + '\n')
  return closed ? Promise.resolve() : new Promise(resolve => waiting.push(resolve))
}

function fail (message) {
  process.stderr.write(`${process.argv[1].split('/').pop()}: ${message}\n`)
  process.exit(1)
}

// A promise with its resolve and reject, settled by whoever sees the answer.
function deferred () {
  let resolve, reject
  const promise = new Promise((res, rej) => { resolve = res; reject = rej })
  return { promise, resolve, reject }
}

function withTimeout (promise, what) {
  let timer
  const late = new Promise((resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`no ${what} within ${ACK_TIMEOUT_MS / 1000} s`)), ACK_TIMEOUT_MS)
  })
  return Promise.race([promise, late]).finally(() => clearTimeout(timer))
}

// Promises for "the count has reached n" (a length, a number of acks), settled in order as it grows.
function gate () {
  const waiting = [] // [target, deferred], targets rising
  return {
    wait (target) { const d = deferred(); waiting.push([target, d]); return d.promise },
    reached (count) { while (waiting.length && waiting[0][0] <= count) waiting.shift()[1].resolve() }
  }
}

// edit(i) makes edit i and returns a promise settled by its acknowledgement; opts.window are in flight.
async function run (opts, edit, close) {
  let i = 0
  const flight = []
  const start = () => {
    const n = i++
    const acked = withTimeout(edit(n), `acknowledgement of edit ${n}`)
    acked.catch(() => {}) // awaited below, in order; this only keeps Node from calling it unhandled first
    flight.push(acked)
  }
  const until = async end => {
    let n = 0
    while (performance.now() < end) {
      while (flight.length < opts.window) start()
      await flight.shift()
      n++
    }
    return n
  }
  const drain = async () => { while (flight.length) await flight.shift() }
  await until(performance.now() + opts.warmup * 1000)
  await drain()
  await handshake('timing')
  const started = performance.now()
  const edits = await until(started + opts.seconds * 1000)
  const seconds = (performance.now() - started) / 1000
  await drain()
  await handshake(JSON.stringify({ edits, seconds, rate: edits / seconds }))
  await close()
  process.exit(0)
}

function main (body) {
  body(options()).catch(error => fail(error && error.message ? error.message : String(error)))
}

module.exports = { main, run, deferred, gate, withTimeout, fail }
