// The official TypeScript SDK's stdio client, declaring elicitation and sampling, spawns
// `mcp-auth-proxy stdio` and calls tools of the official "everything" server that send
// requests back to the client (elicitation/create, sampling/createMessage) in the middle
// of a tool call. Prints one JSON line with what it saw.
//
//   node elicit.mjs <bridge binary> <bridge args...>
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';
import { CreateMessageRequestSchema, ElicitRequestSchema } from '@modelcontextprotocol/sdk/types.js';

const [command, ...args] = process.argv.slice(2);

async function main() {
  const transport = new StdioClientTransport({ command, args, stderr: 'inherit', env: { ...process.env } });
  const client = new Client(
    { name: 'ts-stdio-client', version: '1.0.0' },
    { capabilities: { elicitation: {}, sampling: {} } },
  );
  const asked = { elicitation: 0, sampling: 0 };
  client.setRequestHandler(ElicitRequestSchema, async () => {
    asked.elicitation += 1;
    return { action: 'accept', content: { name: 'Alice Example', check: true, email: 'alice@example.com' } };
  });
  client.setRequestHandler(CreateMessageRequestSchema, async () => {
    asked.sampling += 1;
    return { model: 'stdio-test-model', role: 'assistant', content: { type: 'text', text: 'sampled by the stdio client' } };
  });
  await client.connect(transport);
  const elicited = await client.callTool({ name: 'trigger-elicitation-request', arguments: {} });
  const sampled = await client.callTool({ name: 'trigger-sampling-request', arguments: { prompt: 'say hi', maxTokens: 20 } });
  console.log(JSON.stringify({
    event: 'done',
    asked,
    elicited: JSON.stringify(elicited.content),
    sampled: JSON.stringify(sampled.content),
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
