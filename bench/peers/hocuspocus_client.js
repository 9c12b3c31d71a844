'use strict'
// Load for hocuspocus_server.js: HocuspocusProvider on a Y.Doc, one Y.Text insert at the end per edit.
// The ack: the server answers each update with a sync-status message, after which the provider's
// unsyncedChanges is 0 again. With --echo the ack is instead the update reaching a second provider
// (its own socket) on the same document: the server's broadcast.
const { HocuspocusProvider } = require('@hocuspocus/provider')
const WebSocket = require('ws')
const Y = require('yjs')
const { main, run, deferred, gate, withTimeout } = require('./common')

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
  // Edit i counts once i + 1 edits are acked (the server answers updates in order, and unsyncedChanges
  // is the number sent and not yet answered), or with --echo once the observer's text is i + 1 longer.
  const counted = gate()
  let sent = 0
  if (observer) {
    const seen = observer.document.getText('text')
    const start = text.length
    seen.observe(() => counted.reached(seen.length - start))
  } else {
    editor.on('unsyncedChanges', ({ number }) => counted.reached(sent - number))
  }
  await run(opts, () => {
    const done = counted.wait(++sent)
    text.insert(text.length, 'x')
    return done
  }, () => { editor.destroy(); if (observer) observer.destroy() })
})
