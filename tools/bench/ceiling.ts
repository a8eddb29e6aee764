/**
 * The benchmark's ceiling: a bare fastify server (its own child process) answering the
 * coordinator's two hot routes with no work behind them, built as a user's own hello world
 * would be: default options, no schemas. POST /items answers {accepted: n}; GET
 * /items/:tenant/count answers {count: 0}. HOST and PORT come from the environment; prints
 * "ceiling listening <port>" once up.
 */
import Fastify from 'fastify';

const app = Fastify();
app.post('/items', async (req) => {
  const body = req.body as unknown;
  return { accepted: Array.isArray(body) ? body.length : 1 };
});
app.get('/items/:tenant/count', async () => ({ count: 0 }));
const host = process.env.HOST ?? '127.0.0.1';
const port = Number(process.env.PORT ?? 0);
await app.listen({ host, port });
const addr = app.server.address();
process.stdout.write(`ceiling listening ${typeof addr === 'object' && addr ? addr.port : port}\n`);
process.once('SIGTERM', () => void app.close().then(() => process.exit(0)));
