'use strict'
// Load for hocuspocus_server.js: HocuspocusProvider on a Y.Doc, one Y.Text insert at the end per edit.
// The ack: the server answers each update with a sync-status message, after which the provider's
// unsyncedChanges is 0 again. With --echo the ack is instead the update reaching a second provider
// (its own socket) on the same document: the server's broadcast.
const { HocuspocusProvider } = require('@hocuspocus/provider')
const WebSocket = require('ws')
const Y = require('yjs')
const { main, run, deferred, withTimeout } = require('./common')

function connect (port, name) {
  const provider = new HocuspocusProvider({
    url: `ws://127.0.0.1:${port}`, WebSocketPolyfill: WebSocket, name, document: new Y.Doc(), awareness: null
  })
  const synced = deferred()
  provider.on('synced', synced.resolve)
  provider.on('authenticationFailed', ({ reason }) => synced.reject(new Error(`authentication failed: ${reason}`)))
  return withTimeout(synced.promise, 'sync with the server').then(() => provider)
}

main(async opts => {
  const name = `doc-${process.pid}`
  const editor = await connect(opts.port, name)
  const observer = opts.echo ? await connect(opts.port, name) : null
  const text = editor.document.getText('text')
  let waiting = null // the ack of the edit in flight
  if (observer) {
    const seen = observer.document.getText('text')
    seen.observe(() => { if (waiting && seen.length === text.length) waiting.resolve() })
  } else {
    editor.on('unsyncedChanges', ({ number }) => { if (waiting && number === 0) waiting.resolve() })
  }
  await run(opts, () => {
    waiting = deferred()
    text.insert(text.length, 'x')
    return waiting.promise
  }, () => { editor.destroy(); if (observer) observer.destroy() })
})
