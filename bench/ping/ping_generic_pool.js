// ping_generic_pool.js — the PING workload through Node's generic-pool over net sockets.
//
//   node bench/ping/ping_generic_pool.js [--peers HOST:PORT,...] [--clients C] [--requests N]
//                                        [--warmup W]
//
// (generic-pool comes from `npm install` in bench/ping, which bench/ping/setup.sh runs.)
// One generic-pool with max = C (min 0), whose factory opens a net socket (TCP_NODELAY) to the
// peers in turn, so C sockets end up spread evenly over them. C async clients run at once,
// each doing, per request:
//
//   const sock = await pool.acquire();
//   const line = await ping(sock);       // write "PING\r\n", resolve on the "+PONG" line
//   pool.release(sock);
//
// Each socket keeps one 'data' listener that buffers bytes and resolves the request waiting on
// it when a line is complete. First --warmup requests per client (untimed: the pool opens its
// sockets then), then --requests / C each, timed. Latency runs from just before pool.acquire()
// to the +PONG line. CPU: process.cpuUsage() around the timed phase. Any error ends the
// program with a message. Prints the RESULT line described in common.h.
'use strict';
const net = require('net');
const { performance } = require('perf_hooks');
const genericPool = require('generic-pool');

const args = { peers: '127.0.0.1:6379', clients: 32, requests: 100000, warmup: 20 };
for (let i = 2; i < process.argv.length; i += 2) {
  const name = (process.argv[i].match(/^--(\w+)$/) || [])[1];
  const v = process.argv[i + 1];
  if (!name || !(name in args) || v === undefined) {
    process.stderr.write('usage: node ping_generic_pool.js [--peers HOST:PORT,...] ' +
      '[--clients C] [--requests N] [--warmup W]\n');
    process.exit(2);
  }
  args[name] = name === 'peers' ? v : parseInt(v, 10);
}
const C = args.clients;
const perClient = Math.floor(args.requests / C);
const peers = args.peers.split(',').map((p) => {
  const i = p.lastIndexOf(':');
  return { host: p.slice(0, i), port: parseInt(p.slice(i + 1), 10) };
});

function die(msg) {
  process.stderr.write(`ping_generic_pool: ${msg}\n`);
  process.exit(1);
}
setTimeout(() => die('took too long (60 s); giving up'), 60000).unref();

let nextPeer = 0;
const factory = {
  create() {
    const peer = peers[nextPeer++ % peers.length];
    return new Promise((resolve, reject) => {
      const sock = net.createConnection(peer);
      sock.setNoDelay(true);
      sock.buf = '';
      sock.waiting = null;
      sock.on('data', (chunk) => {
        sock.buf += chunk;
        const nl = sock.buf.indexOf('\n');
        if (nl < 0) return;
        const line = sock.buf.slice(0, nl > 0 && sock.buf[nl - 1] === '\r' ? nl - 1 : nl);
        sock.buf = sock.buf.slice(nl + 1);
        const w = sock.waiting;
        sock.waiting = null;
        if (w) w(line);
        else die('a reply nobody waited for');
      });
      sock.once('connect', () => resolve(sock));
      sock.on('error', (err) => (sock.connecting ? reject(err) : die(`socket: ${err.message}`)));
      sock.setEncoding('latin1');
    });
  },
  destroy(sock) {
    sock.destroy();
    return Promise.resolve();
  },
};
const pool = genericPool.createPool(factory, { max: C, min: 0 });

function ping(sock) {
  return new Promise((resolve) => {
    sock.waiting = resolve;
    sock.write('PING\r\n');
  });
}

const lat = new Float64Array(perClient * C);
let nlat = 0;

async function client(n, timed) {
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    const sock = await pool.acquire();
    const line = await ping(sock);
    if (line !== '+PONG') die(`unexpected reply '${line}'`);
    if (timed) lat[nlat++] = performance.now() - t0;
    pool.release(sock);
  }
}

async function phase(n, timed) {
  const all = [];
  for (let i = 0; i < C; i++) all.push(client(n, timed));
  await Promise.all(all);
}

async function main() {
  if (args.warmup > 0) await phase(args.warmup, false);
  const c0 = process.cpuUsage();
  const w0 = performance.now();
  await phase(perClient, true);
  const w1 = performance.now();
  const c1 = process.cpuUsage(c0);
  const sorted = lat.subarray(0, nlat).sort();
  const q = (p) => sorted[Math.min(nlat, Math.max(1, Math.ceil(p * nlat))) - 1];
  process.stderr.write(`ping_generic_pool: pool: ${pool.size} sockets, ` +
    `${pool.borrowed} borrowed, ${pool.pending} pending at the end\n`);
  process.stdout.write(`RESULT kind=generic_pool requests=${nlat} ` +
    `wall_s=${((w1 - w0) / 1e3).toFixed(6)} cpu_user_s=${(c1.user / 1e6).toFixed(6)} ` +
    `cpu_sys_s=${(c1.system / 1e6).toFixed(6)} p50_us=${(q(0.5) * 1e3).toFixed(2)} ` +
    `p99_us=${(q(0.99) * 1e3).toFixed(2)} errors=0\n`);
  await pool.drain();
  await pool.clear();
}

main().catch((err) => die(err && err.stack ? err.stack : err));
