'use strict'
// Load for sharedb_server.js: one doc of type text-unicode, a one-character insert at its end per edit,
// each acknowledged by the server (submitOp's callback) before the next.
const ShareDB = require('sharedb/lib/client')
const WebSocket = require('ws')
const { main, run, deferred, withTimeout } = require('./common')

ShareDB.types.register(require('ot-text-unicode').type)

main(async opts => {
  const socket = new WebSocket(`ws://127.0.0.1:${opts.port}`)
  const connection = new ShareDB.Connection(socket)
  const doc = connection.get('bench', `doc-${process.pid}`)
  const ready = deferred()
  doc.subscribe(error => {
    if (error) return ready.reject(error)
    if (doc.type) return ready.resolve()
    doc.create('', 'text-unicode', e => (e ? ready.reject(e) : ready.resolve()))
  })
  await withTimeout(ready.promise, 'document from the server')
  await run(opts, () => {
    const acked = deferred()
    doc.submitOp([doc.data.length, 'x'], error => (error ? acked.reject(error) : acked.resolve()))
    return acked.promise
  }, () => socket.close())
})
