// The official TypeScript SDK's stdio client spawning `mcp-auth-proxy stdio` as its MCP
// server, as a desktop host would. Prints one JSON line with what it saw.
//
//   node stdio.mjs <bridge binary> <bridge args...>
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';

const [command, ...args] = process.argv.slice(2);

async function main() {
  const transport = new StdioClientTransport({ command, args, stderr: 'inherit', env: { ...process.env } });
  const client = new Client({ name: 'ts-stdio-client', version: '1.0.0' });
  await client.connect(transport);
  const { tools } = await client.listTools();
  const who = await client.callTool({ name: 'whoami', arguments: {} });
  const arrivals = [];
  const counted = await client.callTool({ name: 'countdown', arguments: { steps: 3 } }, undefined, {
    onprogress: () => arrivals.push(Date.now()),
  });
  console.log(JSON.stringify({
    event: 'done',
    tools: tools.map((t) => t.name),
    whoami: who.content[0].text,
    countdown: counted.content[0].text,
    progress: arrivals.length,
  }));
  await client.close();
}

main().then(
  () => process.exit(0),
  (error) => {
    console.log(JSON.stringify({ event: 'error', message: String(error) }));
    process.exit(1);
  },
);
