'use strict'
// ShareDB with its default in-memory database, over WebSocket (ws + websocket-json-stream), the
// text-unicode OT type registered. `node sharedb_server.js [PORT]`: prints the port once listening.
const http = require('node:http')
const ShareDB = require('sharedb')
const WebSocket = require('ws')
const WebSocketJSONStream = require('@teamwork/websocket-json-stream')

ShareDB.types.register(require('ot-text-unicode').type)

const backend = new ShareDB()
const server = http.createServer()
const wss = new WebSocket.Server({ server })
wss.on('connection', ws => backend.listen(new WebSocketJSONStream(ws)))

server.listen(Number(process.argv[2] || 0), '127.0.0.1', () => console.log(server.address().port))
process.on('SIGTERM', () => { wss.close(); server.close(); backend.close(() => process.exit(0)) })
