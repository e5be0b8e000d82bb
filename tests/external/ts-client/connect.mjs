// A real MCP client of the gateway: the official TypeScript SDK, declaring URL-mode
// elicitation. Prints one JSON line per event on stdout; reads a line on stdin when it
// needs the test to sign the user in.
//
//   node connect.mjs <gateway MCP URL> <user>
import readline from 'node:readline';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { UrlElicitationRequiredError } from '@modelcontextprotocol/sdk/types.js';

const [url, user] = process.argv.slice(2);
const input = readline.createInterface({ input: process.stdin });
const nextLine = () => new Promise((resolve) => input.once('line', resolve));
const say = (event) => console.log(JSON.stringify(event));

async function connect() {
  const client = new Client(
    { name: 'ts-gateway-client', version: '1.0.0' },
    { capabilities: { elicitation: { form: {}, url: {} } } },
  );
  const transport = new StreamableHTTPClientTransport(new URL(url), {
    // The front proxy's identity header (the gateway trusts it from loopback).
    requestInit: { headers: { 'x-user': user } },
  });
  await client.connect(transport);
  return client;
}

async function main() {
  let client;
  try {
    client = await connect();
    say({ event: 'connected' });
  } catch (error) {
    if (!(error instanceof UrlElicitationRequiredError)) throw error;
    const [elicitation] = error.elicitations;
    say({ event: 'url-elicitation', code: error.code, mode: elicitation.mode, url: elicitation.url });
    await nextLine(); // the user signed in
    client = await connect();
    say({ event: 'connected' });
  }
  const { tools } = await client.listTools();
  const result = await client.callTool({ name: 'whoami', arguments: {} });
  // A tool that streams progress: the arrival times show whether the events came
  // through one by one or all at once.
  const arrivals = [];
  const counted = await client.callTool({ name: 'countdown', arguments: { steps: 5 } }, undefined, {
    onprogress: () => arrivals.push(Date.now()),
  });
  say({
    event: 'done',
    tools: tools.map((t) => t.name),
    whoami: result.content[0].text,
    countdown: counted.content[0].text,
    progress: arrivals.length,
    progressSpreadMs: arrivals.length ? arrivals[arrivals.length - 1] - arrivals[0] : 0,
  });
  await client.close();
}

main().then(
  () => process.exit(0),
  (error) => {
    say({ event: 'error', message: String(error), code: error?.code ?? null });
    process.exit(1);
  },
);
