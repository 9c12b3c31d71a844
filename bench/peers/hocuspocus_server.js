'use strict'
// Hocuspocus with no extensions (nothing persisted), quiet. `node hocuspocus_server.js [PORT]`: prints the
// port once listening. It listens on its own http server (Server.listen binds every address).
const { Server } = require('@hocuspocus/server')

const hocuspocus = new Server({ quiet: true, stopOnSignals: false })
const http = hocuspocus.httpServer
http.listen(Number(process.argv[2] || 0), '127.0.0.1', () => console.log(http.address().port))
process.on('SIGTERM', () => hocuspocus.destroy().then(() => process.exit(0)))
