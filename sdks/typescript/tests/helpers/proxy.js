// A loopback TCP proxy in front of the API whose connections a test can cut at will: what a
// dropped connection looks like to a client.
import { connect, createServer } from 'node:net';

export async function startProxy(target) {
  const { hostname, port } = new URL(target);
  const open = new Set();
  let connections = 0;
  const server = createServer((downstream) => {
    connections++;
    const upstream = connect(Number(port), hostname);
    const cut = () => {
      downstream.destroy();
      upstream.destroy();
      open.delete(cut);
    };
    open.add(cut);
    downstream.pipe(upstream);
    upstream.pipe(downstream);
    for (const s of [downstream, upstream]) {
      s.on('error', cut);
      s.on('close', cut);
    }
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    /** Connections accepted so far. */
    get connections() {
      return connections;
    },
    /** Cuts every open connection. */
    dropAll() {
      for (const cut of [...open]) cut();
    },
    close() {
      this.dropAll();
      server.close();
    },
  };
}
