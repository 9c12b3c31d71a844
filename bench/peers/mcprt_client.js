'use strict'
// Load for mcprt (python -m mcprt.bench_servers real DB asyncio): a session over REST, a document made
// over REST (plain text like the peers' by default; one a socket opens unmade is HTML, sanitized on each
// edit), one socket on it, then per edit a realtime_edit inserting "x" at the end, answered by the
// edit_ack with its id.
// --lean offers the mcprt.ops.v1 subprotocol (acks carry the length, not the whole content).
// --echo: an edit counts once its realtime_edit broadcast reaches a second socket (another session).
// --bare: the server is a bare JSON echo (python -m mcprt.bench_servers bare, asyncio_echo_server.py):
// no session or document, the socket opens on its hello, and an edit counts when it comes back.
const WebSocket = require('ws')
const { main, run, deferred } = require('./common')

const LEAN = 'mcprt.ops.v1'

async function post (port, path, body, sessionId) {
  const headers = { 'Content-Type': 'application/json' }
  if (sessionId) headers.Authorization = `Bearer ${sessionId}`
  const reply = await fetch(`http://127.0.0.1:${port}${path}`, { method: 'POST', headers, body: JSON.stringify(body) })
  if (reply.status !== 201) throw new Error(`POST ${path} answered ${reply.status}: ${await reply.text()}`)
  return reply.json()
}

// A socket past its document_state; onMessage(parsed) then sees every later message.
async function join (port, sessionId, documentId, lean, onMessage) {
  const url = `ws://127.0.0.1:${port}/ws?session_id=${sessionId}&document_id=${documentId}`
  const socket = new WebSocket(url, lean ? [LEAN] : [])
  const state = deferred()
  let joined = false
  socket.on('error', state.reject)
  socket.on('close', (code, reason) => {
    state.reject(new Error(`socket closed: ${code} ${reason}`))
    onMessage({ type: 'error', payload: { closed: code, reason: String(reason) } })
  })
  socket.on('message', data => {
    const message = JSON.parse(data)
    if (!joined && message.type === 'error') return state.reject(new Error(`error: ${JSON.stringify(message.payload)}`))
    if (!joined && message.type === 'document_state') { joined = true; return state.resolve(message.payload) }
    onMessage(message)
  })
  return { socket, state: await state.promise }
}

main(async opts => {
  const documentId = `peers-${process.pid}`
  const waiting = new Map() // id -> deferred: the edits in flight
  const answer = wanted => message => {
    if (message.type === 'error') {
      const error = new Error(`error: ${JSON.stringify(message.payload)}`)
      for (const ack of waiting.values()) ack.reject(error)
      waiting.clear()
    } else if (message.type === wanted && waiting.has(message.id)) {
      waiting.get(message.id).resolve()
      waiting.delete(message.id)
    }
  }
  const session = async user => (await post(opts.port, '/api/sessions', { user_id: user })).session_id
  const editorSession = opts.bare ? 'bare' : await session('bench')
  if (!opts.bare) await post(opts.port, '/api/documents', { document_id: documentId, format: opts.format }, editorSession)
  const wanted = opts.bare ? 'realtime_edit' : opts.echo ? null : 'edit_ack'
  const editor = await join(opts.port, editorSession, documentId, opts.lean && !opts.bare, answer(wanted))
  const observer = opts.echo
    ? await join(opts.port, await session('bench-observer'), documentId, opts.lean, message => answer('realtime_edit')(
      { ...message, id: message.id && message.id.replace(/-broadcast$/, '') }))
    : null
  let length = [...editor.state.content].length
  await run(opts, i => {
    const ack = deferred()
    waiting.set(`e${i}`, ack)
    editor.socket.send(`{"id":"e${i}","type":"realtime_edit","payload":{"change_delta":{"position":${length},` +
      '"insert":"x"}},"timestamp":"2026-12-05T00:00:00Z"}')
    length++
    return ack.promise
  }, () => { editor.socket.close(); if (observer) observer.socket.close() })
})
