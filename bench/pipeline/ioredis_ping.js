// The ioredis 5 client of the pipelining benchmark: enableAutoPipelining, PING from --clients
// async loops against the servers in --addrs (alternating), --requests in all. Prints
// "requests seconds cpu_seconds" (process.cpuUsage: user + system).
const Redis = require("ioredis");
const args = Object.fromEntries(process.argv.slice(2).reduce((a, v, i, l) =>
  (i % 2 ? a : a.concat([[v.replace(/^--/, ""), l[i + 1]]])), []));
const addrs = args.addrs.split(",").map((a) => a.split(":"));
const clients = +args.clients || 32, total = +args.requests || 200000;
const conns = addrs.map(([host, port]) => new Redis({ host, port: +port, enableAutoPipelining: true }));
const per = Math.floor(total / clients);
(async () => {
  await Promise.all(conns.map((c) => c.ping()));
  const t0 = process.hrtime.bigint(), c0 = process.cpuUsage();
  await Promise.all(Array.from({ length: clients }, async (_, i) => {
    for (let k = 0; k < per; k++) await conns[(i + k) % conns.length].ping();
  }));
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  const cpu = process.cpuUsage(c0);
  console.log(`${per * clients} ${secs.toFixed(4)} ${((cpu.user + cpu.system) / 1e6).toFixed(4)}`);
  conns.forEach((c) => c.disconnect());
})();
