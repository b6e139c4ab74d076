#!/usr/bin/env node
// Node interop peer: yamux-js over ws, with the same modes, switches and summary line as
// tests/interop/codec_peer.c, so that the interop tests can pair it with our codecs.
//
//   node peer.js server --listen 127.0.0.1:0 [switches]   first stdout line: the port
//   node peer.js client --url ws://127.0.0.1:PORT/path [switches]
//
// Switches: --echo, --open N, --bytes M, --conns K, --timeout S, --ws-ping-ms MS, --ping,
// --ping-ms MS (yamux-js keepalive interval), --window BYTES. --msg-size and --frag are accepted and ignored.
//
// yamux-js 0.2.0 has bugs that would make it unusable over a real byte stream; the frame
// gate below works around them without touching the library:
//   - Session._transform drops the bytes of a frame split across two writes (a header or a
//     Data payload), so the gate reassembles the stream and writes exactly one whole frame
//     per session.write();
//   - a peer's FIN is never applied (processFlags tests FIN against the SYN constant, and
//     flags on Data frames are ignored), and RST is not surfaced, so the gate ends (FIN) or
//     destroys (RST) the stream itself once the session has taken the frame;
//   - a SYN's window delta is dropped (incomingStream returns before the update is applied),
//     so the gate adds it to the new stream's send window;
//   - a Data frame carrying SYN (a lazy open) loses its payload, so the gate splits it into
//     WindowUpdate(SYN) + Data;
//   - a Client session ignores streams the server opens (no onStream), so we set one.
'use strict';

const WebSocket = require('ws');
const { Client, Server } = require('yamux-js');

const HEADER = 12;
const T_DATA = 0, T_WINDOW = 1, T_PING = 2;
const F_SYN = 1, F_ACK = 2, F_FIN = 4, F_RST = 8;
const PROBE_PING_ID = 0x70696b6f; // our own yamux ping, answered by the peer
const CHUNK = 32 * 1024;

function usage() {
	process.stderr.write('usage: peer.js server --listen HOST:PORT | client --url URL [switches]\n');
	process.exit(2);
}

function parseArgs(argv) {
	const o = { echo: false, open: 0, bytes: 1 << 20, conns: 0, timeout: 60, wsPingMs: 0,
		ping: false, pingMs: 0, listen: null, url: null };
	if (argv.length < 1 || (argv[0] !== 'server' && argv[0] !== 'client'))
		usage();
	o.server = argv[0] === 'server';
	const num = (i) => {
		if (i >= argv.length || !/^[0-9]+$/.test(argv[i]))
			usage();
		return Number(argv[i]);
	};
	for (let i = 1; i < argv.length; i++) {
		switch (argv[i]) {
		case '--echo': o.echo = true; break;
		case '--ping': o.ping = true; break;
		case '--frag': break;
		case '--msg-size': num(++i); break;
		case '--open': o.open = num(++i); break;
		case '--bytes': o.bytes = num(++i); break;
		case '--conns': o.conns = num(++i); break;
		case '--timeout': o.timeout = num(++i); break;
		case '--ws-ping-ms': o.wsPingMs = num(++i); break;
		case '--ping-ms': o.pingMs = num(++i); break;
		case '--window': o.window = num(++i); break;
		case '--listen': o.listen = argv[++i]; break;
		case '--url': o.url = argv[++i]; break;
		default: usage();
		}
	}
	if ((o.server && !o.listen) || (!o.server && !o.url))
		usage();
	return o;
}

const opt = parseArgs(process.argv.slice(2));

// The per-stream byte pattern shared by every peer.
function fill(buf, k, off) {
	for (let j = 0; j < buf.length; j++) {
		const i = off + j;
		buf[j] = (i * 7 + k * 13 + Math.floor(i / 1024)) & 0xff;
	}
	return buf;
}

class Conn {
	constructor(ws, server, onDone) {
		this.ws = ws;
		this.onDone = onDone;
		this.st = { opened: 0, verified: 0, failed: 0, verifiedBytes: 0, echoedStreams: 0,
			echoedBytes: 0, pings: 0 };
		this.err = null;
		this.finished = false;
		this.pending = Buffer.alloc(0);
		this.openDone = 0;
		const cfg = { logger: (...a) => console.error(...a) };
		if (opt.pingMs > 0)
			cfg.keepAliveInterval = opt.pingMs / 1000;
		if (opt.window)
			cfg.maxStreamWindowSize = opt.window;
		const onStream = (s) => this.accept(s);
		this.sess = server ? new Server(onStream, cfg) : new Client(cfg);
		this.sess.onStream = onStream;
		this.sess.on('error', (e) => this.fail('yamux: ' + e.message));
		this.sess.on('data', (b) => {
			if (this.ws.readyState === WebSocket.OPEN)
				this.ws.send(b, { binary: true });
		});
		ws.on('message', (data, isBinary) => {
			if (!isBinary) {
				this.fail('websocket: text message');
				ws.close(1003, 'text message');
				return;
			}
			this.gate(data);
		});
		ws.on('close', (code) => {
			if (code !== 1000 && code !== 1001 && code !== 1005)
				this.fail('websocket: closed with code ' + code);
			this.finish();
		});
		ws.on('error', (e) => this.fail('websocket: ' + e.message));
		// ws hides socket errors (it only reports close 1006): log them for diagnosis.
		if (ws._socket)
			ws._socket.on('error', (e) => this.fail('socket: ' + e.message));
		if (opt.wsPingMs > 0)
			this.wsPinger = setInterval(() => ws.ping('node-peer'), opt.wsPingMs);
		this.pingOut = false;
		if (opt.ping) {
			this.pingOut = true;
			const h = Buffer.alloc(HEADER);
			h.writeUInt8(T_PING, 1);
			h.writeUInt16BE(F_SYN, 2);
			h.writeUInt32BE(PROBE_PING_ID, 8);
			ws.send(h, { binary: true });
		}
		for (let k = 0; k < opt.open; k++)
			this.openStream(k);
		if (opt.open === 0 && !opt.echo)
			this.maybeClose();
	}

	fail(msg) {
		console.error('node-peer: ' + msg);
		if (!this.err)
			this.err = msg;
	}

	// Reassembles the yamux byte stream and hands the session one whole frame at a time.
	gate(data) {
		this.pending = this.pending.length ? Buffer.concat([this.pending, data]) : data;
		while (this.pending.length >= HEADER) {
			const type = this.pending.readUInt8(1);
			const flags = this.pending.readUInt16BE(2);
			const id = this.pending.readUInt32BE(4);
			const len = this.pending.readUInt32BE(8);
			const size = HEADER + (type === T_DATA ? len : 0);
			if (this.pending.length < size)
				break;
			let frame = Buffer.from(this.pending.subarray(0, size));
			this.pending = this.pending.subarray(size);
			if (type === T_DATA && (flags & F_SYN)) {
				const syn = Buffer.alloc(HEADER);
				syn.writeUInt8(T_WINDOW, 1);
				syn.writeUInt16BE(F_SYN, 2);
				syn.writeUInt32BE(id, 4);
				this.sess.write(syn);
				frame.writeUInt16BE(flags & ~F_SYN, 2);
			}
			if (type === T_PING && (flags & F_ACK) && len === PROBE_PING_ID) {
				this.st.pings++;
				this.pingOut = false;
				this.maybeClose();
				continue;
			}
			const known = this.sess.streams.get(id); // an RST removes it from the map
			this.sess.write(frame, () => {
				const stream = known || this.sess.streams.get(id);
				if (!stream || (type !== T_DATA && type !== T_WINDOW))
					return;
				if (type === T_WINDOW && (flags & F_SYN))
					stream.sendWindow += len;
				if (flags & F_RST)
					stream.destroy(new Error('stream reset by the peer'));
				else if (flags & F_FIN)
					stream.push(null);
			});
		}
	}

	accept(stream) {
		if (!opt.echo) {
			stream.close();
			return;
		}
		const fin = () => {
			stream.close();
			this.st.echoedStreams++;
		};
		stream.on('data', (d) => {
			this.st.echoedBytes += d.length;
			if (!stream.write(d)) {
				stream.pause();
				stream.once('drain', () => stream.resume());
			}
		});
		stream.on('end', () => {
			stream.once('finish', fin);
			stream.end();
		});
		stream.on('error', (e) => this.fail('echo: ' + e.message));
	}

	openStream(k) {
		const s = this.sess.open();
		this.st.opened++;
		let sent = 0, got = 0, bad = false, ended = false, finSent = false;
		const want = Buffer.alloc(CHUNK);
		const done = () => {
			if (!ended || !finSent)
				return;
			if (!bad && got === opt.bytes) {
				this.st.verified++;
				this.st.verifiedBytes += got;
			} else {
				this.st.failed++;
				this.fail(`open: stream ${s.ID()}: FIN after ${got} bytes${bad ? ' (corrupt)' : ''}`);
			}
			this.openDone++;
			this.maybeClose();
		};
		s.on('data', (d) => {
			for (let off = 0; off < d.length && !bad; off += CHUNK) {
				const part = d.subarray(off, Math.min(d.length, off + CHUNK));
				if (got + off + part.length > opt.bytes ||
				    !part.equals(fill(want.subarray(0, part.length), k, got + off)))
					bad = true;
			}
			got += d.length;
		});
		s.on('end', () => {
			ended = true;
			done();
		});
		s.on('error', (e) => {
			this.fail('open: ' + e.message);
			ended = finSent = true;
			bad = true;
			done();
		});
		// FIN only once every byte went through _write (the library sends FIN at once).
		s.on('finish', () => {
			s.close();
			finSent = true;
			done();
		});
		const pump = () => {
			while (sent < opt.bytes) {
				const n = Math.min(CHUNK, opt.bytes - sent);
				const ok = s.write(fill(Buffer.alloc(n), k, sent));
				sent += n;
				if (!ok) {
					s.once('drain', pump);
					return;
				}
			}
			s.end();
		};
		pump();
	}

	maybeClose() {
		if (opt.open === 0 || this.openDone < opt.open || this.pingOut || this.closing)
			return;
		this.closing = true;
		this.ws.close(1000);
	}

	finish() {
		if (this.finished)
			return;
		this.finished = true;
		if (this.wsPinger)
			clearInterval(this.wsPinger);
		this.sess.close();
		if (opt.open && this.st.verified < opt.open && !this.err)
			this.fail(`open: connection ended with ${opt.open - this.st.verified} streams unverified`);
		const s = this.st;
		process.stdout.write(`summary opened=${s.opened} verified=${s.verified} failed=${s.failed} ` +
			`verified_bytes=${s.verifiedBytes} echoed_streams=${s.echoedStreams} ` +
			`echoed_bytes=${s.echoedBytes} pings=${s.pings} error=${this.err || 'none'}\n`);
		this.onDone(!this.err && s.verified === opt.open && s.failed === 0);
	}
}

setTimeout(() => {
	console.error('node-peer: timed out');
	process.exit(3);
}, opt.timeout * 1000).unref();

if (opt.server) {
	const i = opt.listen.lastIndexOf(':');
	const wss = new WebSocket.Server({ host: opt.listen.slice(0, i), port: Number(opt.listen.slice(i + 1)),
		perMessageDeflate: false });
	let done = 0, bad = 0;
	wss.on('listening', () => process.stdout.write(wss.address().port + '\n'));
	wss.on('connection', (ws) => {
		new Conn(ws, true, (ok) => {
			done++;
			if (!ok)
				bad++;
			if (opt.conns && done >= opt.conns)
				process.exit(bad ? 1 : 0);
		});
	});
	wss.on('error', (e) => {
		console.error('node-peer: ' + e.message);
		process.exit(1);
	});
} else {
	const ws = new WebSocket(opt.url);
	let up = false;
	ws.on('open', () => {
		up = true;
		new Conn(ws, false, (ok) => process.exit(ok ? 0 : 1));
	});
	ws.on('unexpected-response', (req, res) => {
		console.error('node-peer: handshake answered ' + res.statusCode);
		process.exit(1);
	});
	ws.on('error', (e) => {
		if (up)
			return; /* the connection reports it */
		console.error('node-peer: ' + e.message);
		process.exit(1);
	});
}
