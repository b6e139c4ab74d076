#!/usr/bin/env node
// WebSocket client for integration tests.
//
// Usage: node ws_client.js URL [--header NAME:VALUE]... [--timeout MS] (ACTION)...
// Actions (run in order after the upgrade):
//   --msg text:N     send N characters of a deterministic text; expect the same text back
//   --msg bin:N      send N deterministic bytes in one binary message; expect them back
//   --msg lit:STR    send STR as a text message; expect it back
//   --stream T:C     send T deterministic bytes as binary messages of C bytes each, and
//                    expect T bytes back in any message split (a byte stream, e.g. a TCP
//                    endpoint); compares the concatenation
// Prints JSON lines on stdout: {"event":"open"}, one {"event":"ok",...} per action,
// {"event":"done"}. Exit codes: 0 all echoed intact; 1 a mismatch or a close before the
// end; 2 a connection error or timeout; 3 the server refused the upgrade (then the line is
// {"event":"unexpected-response","status":S,"headers":{...},"body":"..."}).
'use strict';

const path = require('path');
const crypto = require('crypto');

const WS_PATH = path.join(__dirname, '..', 'interop', 'node', 'node_modules', 'ws');
const WebSocket = require(WS_PATH);

function out(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

function fail(code, obj) {
  out(Object.assign({ event: 'error' }, obj));
  process.exit(code);
}

// Byte i is (i * 7 + 3) % 256 offset by the action index, so two actions differ.
function bytesFor(n, salt) {
  const b = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i++) b[i] = (i * 7 + 3 + salt) & 0xff;
  return b;
}

function textFor(n, salt) {
  const alphabet = 'abcdefghijklmnopqrstuvwxyz0123456789 ';
  let s = '';
  for (let i = 0; i < n; i++) s += alphabet[(i + salt) % alphabet.length];
  return s;
}

const args = process.argv.slice(2);
if (args.length < 1) fail(2, { message: 'usage: ws_client.js URL [options] actions' });
const url = args[0];
const headers = {};
const actions = [];
let timeoutMs = 30000;
for (let i = 1; i < args.length; i++) {
  const a = args[i];
  const v = args[i + 1];
  if (v === undefined) fail(2, { message: 'missing value for ' + a });
  i++;
  if (a === '--header') {
    const k = v.indexOf(':');
    if (k <= 0) fail(2, { message: 'bad header ' + v });
    headers[v.slice(0, k).trim()] = v.slice(k + 1).trim();
  } else if (a === '--timeout') {
    timeoutMs = parseInt(v, 10);
  } else if (a === '--msg') {
    const k = v.indexOf(':');
    const kind = v.slice(0, k);
    const arg = v.slice(k + 1);
    const salt = actions.length;
    if (kind === 'text') actions.push({ kind, data: textFor(parseInt(arg, 10), salt) });
    else if (kind === 'bin') actions.push({ kind, data: bytesFor(parseInt(arg, 10), salt) });
    else if (kind === 'lit') actions.push({ kind, data: arg });
    else fail(2, { message: 'bad --msg ' + v });
  } else if (a === '--stream') {
    const [t, c] = v.split(':').map((x) => parseInt(x, 10));
    if (!(t >= 0 && c > 0)) fail(2, { message: 'bad --stream ' + v });
    actions.push({ kind: 'stream', data: bytesFor(t, actions.length), chunk: c });
  } else {
    fail(2, { message: 'unknown option ' + a });
  }
}

const timer = setTimeout(() => fail(2, { message: 'timeout after ' + timeoutMs + ' ms',
                                         action: step }), timeoutMs);
let step = -1;
let streamBufs = [];
let streamLen = 0;

const ws = new WebSocket(url, { headers, perMessageDeflate: false,
                                maxPayload: 64 * 1024 * 1024 });

ws.on('unexpected-response', (req, res) => {
  const chunks = [];
  res.on('data', (c) => chunks.push(c));
  res.on('end', () => {
    clearTimeout(timer);
    out({ event: 'unexpected-response', status: res.statusCode, headers: res.headers,
          body: Buffer.concat(chunks).toString('utf8') });
    process.exit(3);
  });
});

ws.on('error', (err) => fail(2, { message: String(err && err.message), action: step }));

ws.on('close', (code) => {
  if (step < actions.length) fail(1, { message: 'closed early with code ' + code,
                                       action: step });
});

function next() {
  step++;
  if (step >= actions.length) {
    out({ event: 'done', actions: actions.length });
    clearTimeout(timer);
    ws.close(1000);
    ws.on('close', () => process.exit(0));
    setTimeout(() => process.exit(0), 2000); // a peer that never answers the close
    return;
  }
  const a = actions[step];
  if (a.kind === 'stream') {
    streamBufs = [];
    streamLen = 0;
    for (let off = 0; off < a.data.length; off += a.chunk) {
      ws.send(a.data.subarray(off, Math.min(off + a.chunk, a.data.length)), { binary: true });
    }
    if (a.data.length === 0) {
      out({ event: 'ok', action: step, kind: a.kind, length: 0 });
      next();
    }
  } else {
    ws.send(a.data, { binary: a.kind === 'bin' });
  }
}

ws.on('message', (data, isBinary) => {
  const a = actions[step];
  if (!a) fail(1, { message: 'unexpected message', action: step });
  if (a.kind === 'stream') {
    if (!isBinary) fail(1, { message: 'text message in a byte stream', action: step });
    streamBufs.push(data);
    streamLen += data.length;
    if (streamLen > a.data.length) fail(1, { message: 'too many bytes back', action: step });
    if (streamLen < a.data.length) return;
    const got = Buffer.concat(streamBufs);
    if (!got.equals(a.data)) fail(1, { message: 'stream bytes differ', action: step });
    out({ event: 'ok', action: step, kind: a.kind, length: got.length,
          messages: streamBufs.length });
    next();
    return;
  }
  const wantBinary = a.kind === 'bin';
  if (isBinary !== wantBinary) fail(1, { message: 'echo has the wrong type', action: step });
  const ok = wantBinary ? Buffer.from(data).equals(a.data)
                        : Buffer.from(data).toString('utf8') === a.data;
  if (!ok) fail(1, { message: 'echo differs', action: step, length: data.length });
  const len = wantBinary ? a.data.length : Buffer.byteLength(a.data);
  out({ event: 'ok', action: step, kind: a.kind, length: len,
        sha256: crypto.createHash('sha256').update(data).digest('hex') });
  next();
});

ws.on('open', () => {
  out({ event: 'open' });
  next();
});
