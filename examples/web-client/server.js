#!/usr/bin/env node
// The web client's server: serves public/ (the page, its CSS and the compiled modules in
// public/js/) on 127.0.0.1, and forwards the page's API calls (/v1/*) to conveyor.
//
// Why forward: conveyor's API sends no CORS headers, so a page on another origin cannot read its
// answers. The page therefore calls /v1/* on this server (same origin), with the API's URL in the
// header X-Conveyor-Api (what the user pasted; CONVEYOR_URL when absent), and this server passes
// the request on, streaming both ways (SSE included). Only loopback APIs are accepted, and only
// requests whose Host is this server's loopback address (no DNS rebinding).
//
//   PORT=8090 CONVEYOR_URL=http://127.0.0.1:8080 node server.js
//
// PORT 0 picks a free port. It prints "web client on http://127.0.0.1:<port>/" once listening.

import { createReadStream, statSync } from 'node:fs';
import { request as httpRequest, createServer } from 'node:http';
import { extname, join, normalize, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

const PUBLIC = fileURLToPath(new URL('./public/', import.meta.url));
const HOST = '127.0.0.1';
const PORT = Number(process.env.PORT ?? 8090);
const DEFAULT_API = process.env.CONVEYOR_URL ?? '';
const TYPES = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.map': 'application/json',
};
const LOOPBACK = new Set(['127.0.0.1', 'localhost', '[::1]']);
// Request headers passed on to the API (no cookies, no hop-by-hop headers).
const FORWARD = ['authorization', 'content-type', 'accept', 'idempotency-key', 'last-event-id', 'content-length'];

function problem(res, status, detail) {
  res.writeHead(status, { 'Content-Type': 'application/problem+json' });
  res.end(JSON.stringify({ type: 'about:blank', title: status === 400 ? 'Bad Request' : 'Bad Gateway', status, detail }));
}

/** The API's base URL for this request, or an error message. */
function target(req) {
  const raw = req.headers['x-conveyor-api'] || DEFAULT_API;
  if (!raw) return { error: 'no API URL: paste it in the page (or start this server with CONVEYOR_URL)' };
  let url;
  try {
    url = new URL(raw);
  } catch {
    return { error: `not a URL: ${raw}` };
  }
  if (url.protocol !== 'http:' || !LOOPBACK.has(url.hostname)) {
    return { error: `this example forwards only to a conveyor API on this machine (http://127.0.0.1:…), not ${raw}` };
  }
  return { url };
}

function proxy(req, res) {
  const t = target(req);
  if (t.error) return problem(res, 400, t.error);
  const headers = {};
  for (const h of FORWARD) if (req.headers[h] !== undefined) headers[h] = req.headers[h];
  const upstream = httpRequest(
    {
      host: t.url.hostname === 'localhost' ? '127.0.0.1' : t.url.hostname.replace(/^\[|\]$/g, ''),
      port: t.url.port || 80,
      method: req.method,
      path: req.url,
      headers,
    },
    (answer) => {
      const out = { ...answer.headers };
      delete out.connection;
      delete out['keep-alive'];
      res.writeHead(answer.statusCode ?? 502, out);
      answer.pipe(res); // streams: SSE arrives event by event
    },
  );
  upstream.on('error', (e) => {
    if (!res.headersSent) problem(res, 502, `the API at ${t.url.origin} did not answer: ${e.message}`);
    else res.destroy();
  });
  // The browser went away (a closed tab, an aborted stream): close the API's side too.
  res.on('close', () => upstream.destroy());
  req.pipe(upstream);
}

function serveFile(req, res) {
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    res.writeHead(405, { Allow: 'GET, HEAD' }).end();
    return;
  }
  const path = decodeURIComponent(new URL(req.url, 'http://x').pathname);
  const file = normalize(join(PUBLIC, path === '/' ? 'index.html' : path));
  let size;
  try {
    if (!file.startsWith(PUBLIC) || file.includes(`${sep}..`)) throw new Error('outside');
    const st = statSync(file);
    if (!st.isFile()) throw new Error('not a file');
    size = st.size;
  } catch {
    res.writeHead(404, { 'Content-Type': 'text/plain' }).end('not found\n');
    return;
  }
  res.writeHead(200, {
    'Content-Type': TYPES[extname(file)] ?? 'application/octet-stream',
    'Content-Length': size,
    'Cache-Control': 'no-cache',
    'Content-Security-Policy': "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    'X-Content-Type-Options': 'nosniff',
  });
  if (req.method === 'HEAD') res.end();
  else createReadStream(file).pipe(res);
}

const server = createServer((req, res) => {
  const host = (req.headers.host ?? '').replace(/:\d+$/, '');
  if (!LOOPBACK.has(host)) return problem(res, 400, `unexpected Host ${req.headers.host}`);
  if (req.url.startsWith('/v1/')) return proxy(req, res);
  return serveFile(req, res);
});

server.listen(PORT, HOST, () => {
  const { port } = server.address();
  console.log(`web client on http://${HOST}:${port}/${DEFAULT_API ? ` (API by default: ${DEFAULT_API})` : ''}`);
});

for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => {
    server.close(() => process.exit(0));
    server.closeAllConnections();
  });
}
