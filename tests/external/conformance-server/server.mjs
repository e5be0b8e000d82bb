// MCP server for the official conformance suite's server scenarios, built on the official
// TypeScript SDK. Stateful Streamable HTTP at http://127.0.0.1:$PORT/mcp.
//
// Sampling and elicitation requests are sent without `relatedRequestId`, so the SDK puts them
// on the session's standalone GET SSE stream rather than on the POST stream of the tools/call,
// as the suite's reference server does. A client that opens the GET stream without awaiting it
// and posts tools/call at once races the two: if the server sends the request before the GET
// stream is attached, the SDK keeps it only in the event store and the tool call times out.
// That race is deliberately left in place; it is what the gateway comparison exercises.
import { randomUUID } from 'node:crypto';
import { Server } from '@modelcontextprotocol/sdk/server/index.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import { createMcpExpressApp } from '@modelcontextprotocol/sdk/server/express.js';
import {
  CallToolRequestSchema,
  CompleteRequestSchema,
  GetPromptRequestSchema,
  ListPromptsRequestSchema,
  ListResourcesRequestSchema,
  ListResourceTemplatesRequestSchema,
  ListToolsRequestSchema,
  McpError,
  ErrorCode,
  ReadResourceRequestSchema,
  SubscribeRequestSchema,
  UnsubscribeRequestSchema,
  isInitializeRequest,
} from '@modelcontextprotocol/sdk/types.js';

const HOST = '127.0.0.1';
const PORT = Number(process.env.PORT ?? 3000);
// Bounds a server-to-client request whose message was lost, so the scenario fails in
// seconds instead of hanging for the SDK's 60 s default.
const CLIENT_REQUEST_TIMEOUT_MS = Number(process.env.CLIENT_REQUEST_TIMEOUT_MS ?? 15000);
const LOCAL_HOSTNAMES = ['localhost', '127.0.0.1', '[::1]'];

// 1x1 red PNG and a minimal WAV.
const PNG = 'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==';
const WAV = 'UklGRiYAAABXQVZFZm10IBAAAAABAAEAQB8AAAB9AAACABAAZGF0YQIAAAA=';

const log = (...args) => console.error(new Date().toISOString(), ...args);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const text = (t) => ({ type: 'text', text: t });
const noArgs = { type: 'object', properties: {} };

// In-memory event store (one per session) so POST and GET streams can be resumed with
// Last-Event-ID. Ids sort in creation order: `<stream>::<zero-padded sequence>`.
function memoryEventStore() {
  const events = [];
  let seq = 0;
  return {
    async storeEvent(streamId, message) {
      const eventId = `${streamId}::${String(++seq).padStart(12, '0')}`;
      events.push({ eventId, streamId, message });
      return eventId;
    },
    async getStreamIdForEventId(eventId) {
      return events.find((e) => e.eventId === eventId)?.streamId;
    },
    async replayEventsAfter(lastEventId, { send }) {
      const at = events.findIndex((e) => e.eventId === lastEventId);
      if (at < 0) return '';
      const { streamId } = events[at];
      for (const e of events.slice(at + 1)) {
        // Priming events are stored as `{}` and carry nothing to replay.
        if (e.streamId === streamId && Object.keys(e.message).length > 0) {
          await send(e.eventId, e.message);
        }
      }
      return streamId;
    },
  };
}

const TOOLS = [
  { name: 'test_simple_text', description: 'Returns simple text content', inputSchema: noArgs },
  { name: 'test_image_content', description: 'Returns image content', inputSchema: noArgs },
  { name: 'test_audio_content', description: 'Returns audio content', inputSchema: noArgs },
  { name: 'test_embedded_resource', description: 'Returns an embedded resource', inputSchema: noArgs },
  { name: 'test_multiple_content_types', description: 'Returns text, image and resource content', inputSchema: noArgs },
  { name: 'test_tool_with_logging', description: 'Sends three info log notifications while running', inputSchema: noArgs },
  { name: 'test_tool_with_progress', description: 'Reports progress 0, 50, 100 of 100', inputSchema: noArgs },
  { name: 'test_error_handling', description: 'Always returns a tool error', inputSchema: noArgs },
  {
    name: 'test_sampling',
    description: 'Asks the client for an LLM completion (sampling/createMessage)',
    inputSchema: {
      type: 'object',
      properties: { prompt: { type: 'string', description: 'The prompt to send to the LLM' } },
      required: ['prompt'],
    },
  },
  {
    name: 'test_elicitation',
    description: 'Asks the client for user input (elicitation/create)',
    inputSchema: {
      type: 'object',
      properties: { message: { type: 'string', description: 'The message to show the user' } },
      required: ['message'],
    },
  },
  { name: 'test_elicitation_sep1034_defaults', description: 'Elicitation whose schema has defaults for every primitive type (SEP-1034)', inputSchema: noArgs },
  { name: 'test_elicitation_sep1330_enums', description: 'Elicitation with the five enum schema variants (SEP-1330)', inputSchema: noArgs },
  { name: 'test_reconnection', description: 'Closes its SSE stream mid-call; the result arrives after the client resumes (SEP-1699)', inputSchema: noArgs },
  {
    name: 'json_schema_2020_12_tool',
    description: 'Tool with JSON Schema 2020-12 features (SEP-1613)',
    inputSchema: {
      $schema: 'https://json-schema.org/draft/2020-12/schema',
      type: 'object',
      $defs: {
        address: { type: 'object', properties: { street: { type: 'string' }, city: { type: 'string' } } },
      },
      properties: { name: { type: 'string' }, address: { $ref: '#/$defs/address' } },
      additionalProperties: false,
    },
  },
];

const SEP1034_SCHEMA = {
  type: 'object',
  properties: {
    name: { type: 'string', description: 'Name', default: 'John Doe' },
    age: { type: 'integer', description: 'Age', default: 30 },
    score: { type: 'number', description: 'Score', default: 95.5 },
    status: { type: 'string', description: 'Status', enum: ['active', 'inactive', 'pending'], default: 'active' },
    verified: { type: 'boolean', description: 'Verified', default: true },
  },
  required: [],
};

const SEP1330_SCHEMA = {
  type: 'object',
  properties: {
    untitledSingle: { type: 'string', description: 'Pick one', enum: ['option1', 'option2', 'option3'] },
    titledSingle: {
      type: 'string',
      description: 'Pick one (titled)',
      oneOf: [
        { const: 'value1', title: 'First Option' },
        { const: 'value2', title: 'Second Option' },
        { const: 'value3', title: 'Third Option' },
      ],
    },
    legacyEnum: {
      type: 'string',
      description: 'Pick one (legacy titles)',
      enum: ['opt1', 'opt2', 'opt3'],
      enumNames: ['Option One', 'Option Two', 'Option Three'],
    },
    untitledMulti: {
      type: 'array',
      description: 'Pick several',
      items: { type: 'string', enum: ['option1', 'option2', 'option3'] },
    },
    titledMulti: {
      type: 'array',
      description: 'Pick several (titled)',
      items: {
        anyOf: [
          { const: 'value1', title: 'First Choice' },
          { const: 'value2', title: 'Second Choice' },
          { const: 'value3', title: 'Third Choice' },
        ],
      },
    },
  },
  required: [],
};

const STATIC_RESOURCES = {
  'test://static-text': {
    meta: { name: 'static-text', description: 'Static text resource', mimeType: 'text/plain' },
    content: { mimeType: 'text/plain', text: 'This is the content of the static text resource.' },
  },
  'test://static-binary': {
    meta: { name: 'static-binary', description: 'Static binary resource (PNG)', mimeType: 'image/png' },
    content: { mimeType: 'image/png', blob: PNG },
  },
  'test://watched-resource': {
    meta: { name: 'watched-resource', description: 'Resource that can be subscribed to', mimeType: 'text/plain' },
    content: { mimeType: 'text/plain', text: 'Watched resource content' },
  },
};
const TEMPLATE = /^test:\/\/template\/([^/]+)\/data$/;

const PROMPTS = [
  { name: 'test_simple_prompt', description: 'Prompt without arguments' },
  {
    name: 'test_prompt_with_arguments',
    description: 'Prompt with two required arguments',
    arguments: [
      { name: 'arg1', description: 'First test argument', required: true },
      { name: 'arg2', description: 'Second test argument', required: true },
    ],
  },
  {
    name: 'test_prompt_with_embedded_resource',
    description: 'Prompt that embeds a resource',
    arguments: [{ name: 'resourceUri', description: 'URI of the resource to embed', required: true }],
  },
  { name: 'test_prompt_with_image', description: 'Prompt with image content' },
];
const COMPLETIONS = { arg1: ['paris', 'park', 'party', 'test', 'testing'], arg2: ['alpha', 'beta', 'gamma'] };

function createServer(session) {
  const server = new Server(
    { name: 'tower-mcp-auth-conformance-server', version: '1.0.0' },
    {
      capabilities: {
        tools: {},
        resources: { subscribe: true },
        prompts: {},
        logging: {},
        completions: {},
      },
    },
  );

  // Not tied to the tools/call (no relatedRequestId): goes on the standalone GET stream.
  const askClient = async (label, ask) => {
    // Diagnostics only (SDK internals): whether the request can be delivered right now.
    const inner = session.transport._webStandardTransport ?? session.transport;
    const attached = inner._streamMapping?.has('_GET_stream');
    log(`[${session.id}] ${label} on the standalone stream (GET stream ${attached ? 'attached' : 'NOT attached'})`);
    try {
      return { result: await ask({ timeout: CLIENT_REQUEST_TIMEOUT_MS }) };
    } catch (err) {
      log(`[${session.id}] ${label} failed: ${err.message}`);
      return { error: `${label} failed: ${err.message}` };
    }
  };
  const elicitTool = async (message, requestedSchema, prefix) => {
    const { result, error } = await askClient('elicitation/create', (opts) =>
      server.elicitInput({ mode: 'form', message, requestedSchema }, opts),
    );
    if (error) return { isError: true, content: [text(error)] };
    return { content: [text(`${prefix}: action=${result.action}, content=${JSON.stringify(result.content ?? {})}`)] };
  };

  server.setRequestHandler(ListToolsRequestSchema, async () => ({ tools: TOOLS }));

  server.setRequestHandler(CallToolRequestSchema, async (request, extra) => {
    const args = request.params.arguments ?? {};
    switch (request.params.name) {
      case 'test_simple_text':
        return { content: [text('This is a simple text response for testing.')] };
      case 'test_image_content':
        return { content: [{ type: 'image', data: PNG, mimeType: 'image/png' }] };
      case 'test_audio_content':
        return { content: [{ type: 'audio', data: WAV, mimeType: 'audio/wav' }] };
      case 'test_embedded_resource':
        return {
          content: [
            {
              type: 'resource',
              resource: { uri: 'test://embedded-resource', mimeType: 'text/plain', text: 'This is an embedded resource content.' },
            },
          ],
        };
      case 'test_multiple_content_types':
        return {
          content: [
            text('Multiple content types test:'),
            { type: 'image', data: PNG, mimeType: 'image/png' },
            {
              type: 'resource',
              resource: {
                uri: 'test://mixed-content-resource',
                mimeType: 'application/json',
                text: JSON.stringify({ test: 'data', value: 123 }),
              },
            },
          ],
        };
      case 'test_tool_with_logging': {
        // Related to the call, so the notifications travel on its POST stream.
        const steps = ['Tool execution started', 'Tool processing data', 'Tool execution completed'];
        for (const [i, data] of steps.entries()) {
          if (i > 0) await sleep(50);
          await extra.sendNotification({
            method: 'notifications/message',
            params: { level: 'info', logger: 'conformance-server', data },
          });
        }
        return { content: [text('Tool with logging executed successfully')] };
      }
      case 'test_tool_with_progress': {
        const progressToken = request.params._meta?.progressToken;
        for (const progress of [0, 50, 100]) {
          if (progress > 0) await sleep(50);
          if (progressToken !== undefined) {
            await extra.sendNotification({
              method: 'notifications/progress',
              params: { progressToken, progress, total: 100, message: `${progress}/100` },
            });
          }
        }
        return { content: [text('Tool with progress executed successfully')] };
      }
      case 'test_error_handling':
        return { isError: true, content: [text('This tool intentionally returns an error for testing')] };
      case 'test_sampling': {
        const { result, error } = await askClient('sampling/createMessage', (opts) =>
          server.createMessage(
            { messages: [{ role: 'user', content: text(String(args.prompt ?? '')) }], maxTokens: 100 },
            opts,
          ),
        );
        if (error) return { isError: true, content: [text(error)] };
        const reply = result.content?.type === 'text' ? result.content.text : JSON.stringify(result.content);
        return { content: [text(`LLM response: ${reply}`)] };
      }
      case 'test_elicitation':
        return elicitTool(
          String(args.message ?? ''),
          {
            type: 'object',
            properties: {
              username: { type: 'string', description: "User's response" },
              email: { type: 'string', description: "User's email address" },
            },
            required: ['username', 'email'],
          },
          'User response',
        );
      case 'test_elicitation_sep1034_defaults':
        return elicitTool('Please review the fields (every one has a default)', SEP1034_SCHEMA, 'Elicitation completed');
      case 'test_elicitation_sep1330_enums':
        return elicitTool('Please choose from the enum fields', SEP1330_SCHEMA, 'Elicitation completed');
      case 'test_reconnection':
        // Ends the POST stream early; the result is kept in the event store and delivered
        // when the client resumes with Last-Event-ID.
        session.transport.closeSSEStream(extra.requestId);
        await sleep(100);
        return { content: [text('Reconnection test completed: the result arrived after the stream was closed.')] };
      case 'json_schema_2020_12_tool':
        return { content: [text(`json_schema_2020_12_tool called with ${JSON.stringify(args)}`)] };
      default:
        throw new McpError(ErrorCode.InvalidParams, `Unknown tool: ${request.params.name}`);
    }
  });

  server.setRequestHandler(ListResourcesRequestSchema, async () => ({
    resources: Object.entries(STATIC_RESOURCES).map(([uri, r]) => ({ uri, ...r.meta })),
  }));
  server.setRequestHandler(ListResourceTemplatesRequestSchema, async () => ({
    resourceTemplates: [
      {
        uriTemplate: 'test://template/{id}/data',
        name: 'template',
        description: 'Resource template with an id parameter',
        mimeType: 'application/json',
      },
    ],
  }));
  server.setRequestHandler(ReadResourceRequestSchema, async (request) => {
    const { uri } = request.params;
    const fixed = STATIC_RESOURCES[uri];
    if (fixed) return { contents: [{ uri, ...fixed.content }] };
    const m = TEMPLATE.exec(uri);
    if (m) {
      const id = decodeURIComponent(m[1]);
      return {
        contents: [{ uri, mimeType: 'application/json', text: JSON.stringify({ id, templateTest: true, data: `Data for ID: ${id}` }) }],
      };
    }
    throw new McpError(-32002, `Resource not found: ${uri}`, { uri });
  });
  server.setRequestHandler(SubscribeRequestSchema, async (request) => {
    session.subscriptions.add(request.params.uri);
    return {};
  });
  server.setRequestHandler(UnsubscribeRequestSchema, async (request) => {
    session.subscriptions.delete(request.params.uri);
    return {};
  });

  server.setRequestHandler(ListPromptsRequestSchema, async () => ({ prompts: PROMPTS }));
  server.setRequestHandler(GetPromptRequestSchema, async (request) => {
    const args = request.params.arguments ?? {};
    switch (request.params.name) {
      case 'test_simple_prompt':
        return { messages: [{ role: 'user', content: text('This is a simple prompt for testing.') }] };
      case 'test_prompt_with_arguments':
        return { messages: [{ role: 'user', content: text(`Prompt with arguments: arg1='${args.arg1}', arg2='${args.arg2}'`) }] };
      case 'test_prompt_with_embedded_resource':
        return {
          messages: [
            {
              role: 'user',
              content: {
                type: 'resource',
                resource: { uri: args.resourceUri, mimeType: 'text/plain', text: 'Embedded resource content for testing.' },
              },
            },
            { role: 'user', content: text('Please process the embedded resource above.') },
          ],
        };
      case 'test_prompt_with_image':
        return {
          messages: [
            { role: 'user', content: { type: 'image', data: PNG, mimeType: 'image/png' } },
            { role: 'user', content: text('Please analyze the image above.') },
          ],
        };
      default:
        throw new McpError(ErrorCode.InvalidParams, `Unknown prompt: ${request.params.name}`);
    }
  });

  server.setRequestHandler(CompleteRequestSchema, async (request) => {
    const { name, value } = request.params.argument;
    const values = (COMPLETIONS[name] ?? []).filter((v) => v.startsWith(value ?? ''));
    return { completion: { values, total: values.length, hasMore: false } };
  });

  return server;
}

const sessions = new Map();

// Host validation (403 for a foreign Host) comes from the SDK's createMcpExpressApp when bound
// to a loopback address; a browser's Origin is checked here as well.
const app = createMcpExpressApp({ host: HOST });
app.use((req, res, next) => {
  const origin = req.headers.origin;
  if (origin !== undefined) {
    let hostname;
    try {
      hostname = new URL(origin).hostname;
    } catch {
      hostname = undefined;
    }
    if (!LOCAL_HOSTNAMES.includes(hostname)) {
      res.status(403).json({ jsonrpc: '2.0', error: { code: -32000, message: `Invalid Origin: ${origin}` }, id: null });
      return;
    }
  }
  next();
});

const jsonRpcError = (res, status, code, message) =>
  res.status(status).json({ jsonrpc: '2.0', error: { code, message }, id: null });

// Unknown or ended sessions get 404 so that a client starts a new one.
function existingSession(req, res) {
  const id = req.headers['mcp-session-id'];
  if (id === undefined) {
    jsonRpcError(res, 400, -32000, 'Bad Request: Mcp-Session-Id header is required');
    return undefined;
  }
  const session = sessions.get(id);
  if (!session) jsonRpcError(res, 404, -32001, 'Session not found');
  return session;
}

app.post('/mcp', async (req, res) => {
  try {
    if (req.headers['mcp-session-id'] === undefined && isInitializeRequest(req.body)) {
      const session = { id: undefined, transport: undefined, subscriptions: new Set() };
      const transport = new StreamableHTTPServerTransport({
        sessionIdGenerator: () => randomUUID(),
        eventStore: memoryEventStore(),
        retryInterval: 1000,
        onsessioninitialized: (id) => {
          session.id = id;
          sessions.set(id, session);
          log(`[${id}] session started`);
        },
      });
      session.transport = transport;
      const server = createServer(session);
      transport.onclose = () => {
        if (session.id && sessions.delete(session.id)) log(`[${session.id}] session closed`);
      };
      await server.connect(transport);
      await transport.handleRequest(req, res, req.body);
      return;
    }
    const session = existingSession(req, res);
    if (session) await session.transport.handleRequest(req, res, req.body);
  } catch (err) {
    log('POST /mcp failed:', err);
    if (!res.headersSent) jsonRpcError(res, 500, -32603, 'Internal server error');
  }
});

app.get('/mcp', async (req, res) => {
  const session = existingSession(req, res);
  if (!session) return;
  log(`[${session.id}] GET stream${req.headers['last-event-id'] ? ` resumed after ${req.headers['last-event-id']}` : ' opened'}`);
  try {
    await session.transport.handleRequest(req, res);
  } catch (err) {
    log('GET /mcp failed:', err);
    if (!res.headersSent) jsonRpcError(res, 500, -32603, 'Internal server error');
  }
});

app.delete('/mcp', async (req, res) => {
  const session = existingSession(req, res);
  if (!session) return;
  try {
    await session.transport.handleRequest(req, res);
  } catch (err) {
    log('DELETE /mcp failed:', err);
    if (!res.headersSent) jsonRpcError(res, 500, -32603, 'Internal server error');
  }
});

app.all('/mcp', (req, res) => {
  res.set('Allow', 'GET, POST, DELETE');
  jsonRpcError(res, 405, -32000, 'Method not allowed');
});

// express.json() failures would otherwise be answered with an HTML page.
app.use((err, req, res, next) => {
  if (res.headersSent) return next(err);
  if (err.type === 'entity.parse.failed') return jsonRpcError(res, 400, -32700, 'Parse error');
  log(`${req.method} ${req.path} failed:`, err);
  jsonRpcError(res, err.status ?? 500, -32603, err.message);
});

const httpServer = app.listen(PORT, HOST, () => log(`listening on http://${HOST}:${PORT}/mcp`));
httpServer.on('error', (err) => {
  log('listen failed:', err.message);
  process.exit(1);
});
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => {
    for (const { transport } of sessions.values()) transport.close().catch(() => {});
    httpServer.close(() => process.exit(0));
    setTimeout(() => process.exit(0), 1000).unref();
  });
}
