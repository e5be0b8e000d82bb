// The GET/POST race, counted: N times, an SDK client connects (which opens the
// session's standalone GET stream without waiting for it) and at once calls the
// `test_sampling` tool, whose sampling request the server sends on that stream.
// Prints how many of the N requests reached the client. Run against the server
// directly and through mcp-auth-proxy:
//   node tests/external/conformance-server/race.mjs http://127.0.0.1:3000/mcp 200
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { CreateMessageRequestSchema } from '@modelcontextprotocol/sdk/types.js';

const [url, n = '100'] = process.argv.slice(2);
let delivered = 0;
let slowest = 0;
for (let i = 0; i < Number(n); i++) {
  const client = new Client({ name: 'race', version: '1' }, { capabilities: { sampling: {} } });
  let asked = false;
  client.setRequestHandler(CreateMessageRequestSchema, async () => {
    asked = true;
    return { role: 'assistant', content: { type: 'text', text: 'ok' }, model: 'm' };
  });
  await client.connect(new StreamableHTTPClientTransport(new URL(url)));
  const started = Date.now();
  try {
    await client.callTool({ name: 'test_sampling', arguments: { prompt: 'p' } }, undefined, { timeout: 20000 });
  } catch {
    // A lost request ends in the server's timeout; counted below.
  }
  slowest = Math.max(slowest, Date.now() - started);
  if (asked) delivered++;
  await client.close();
}
console.log(`${url}: sampling request delivered ${delivered}/${n}; slowest call ${slowest} ms`);
