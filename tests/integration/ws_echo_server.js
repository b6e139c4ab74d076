#!/usr/bin/env node
// WebSocket echo server for integration tests (behind an agent).
//
// Usage: node ws_echo_server.js
// Listens on 127.0.0.1:0 and prints the port as the first line of stdout. Every message is
// sent back with the same type (text or binary). Prints one JSON line per connection with
// the request path and headers it saw, so tests can check what arrived.
'use strict';

const path = require('path');
const http = require('http');

const WS_PATH = path.join(__dirname, '..', 'interop', 'node', 'node_modules', 'ws');
const { WebSocketServer } = require(WS_PATH);

const server = http.createServer((req, res) => {
  res.writeHead(426, { 'Content-Type': 'text/plain', 'Content-Length': '15' });
  res.end('upgrade needed\n');
});
const wss = new WebSocketServer({
  server,
  perMessageDeflate: false,
  maxPayload: 64 * 1024 * 1024,
});

wss.on('connection', (ws, req) => {
  process.stdout.write(JSON.stringify({ event: 'connection', url: req.url,
                                        headers: req.headers }) + '\n');
  ws.on('message', (data, isBinary) => {
    ws.send(data, { binary: isBinary });
  });
  ws.on('error', () => {});
});

server.listen(0, '127.0.0.1', () => {
  process.stdout.write(server.address().port + '\n');
});
