'use strict'
// Load for pycrdt_server.py (the y-websocket protocol): two y-websocket providers on one room, each its own
// socket. The editor inserts one character at the end of a Y.Text per edit; the protocol has no ack, so an
// edit counts once the server has broadcast it to the observer (its Y.Text as long as the editor's).
const { WebsocketProvider } = require('y-websocket')
const WebSocket = require('ws')
const Y = require('yjs')
const { main, run, deferred, gate, withTimeout } = require('./common')

function connect (port, room) {
  const provider = new WebsocketProvider(`ws://127.0.0.1:${port}`, room, new Y.Doc(),
    { WebSocketPolyfill: WebSocket, disableBc: true })
  const synced = deferred()
  provider.once('sync', synced.resolve)
  provider.once('connection-error', () => synced.reject(new Error(`cannot connect to port ${port}`)))
  return withTimeout(synced.promise, 'sync with the server').then(() => provider)
}

main(async opts => {
  const room = `doc-${process.pid}`
  const editor = await connect(opts.port, room)
  const observer = await connect(opts.port, room)
  const text = editor.doc.getText('text')
  const seen = observer.doc.getText('text')
  const counted = gate() // edit i counts once the observer's text is i + 1 longer
  const start = text.length
  seen.observe(() => counted.reached(seen.length - start))
  await run(opts, () => {
    const done = counted.wait(text.length + 1 - start)
    text.insert(text.length, 'x')
    return done
  }, () => { editor.destroy(); observer.destroy() })
})
