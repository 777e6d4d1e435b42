// POST /api/chat against the real Vercel AI SDK client (package `ai`).
//
// Run by tests/transports/test_aisdk.py against a live server:
//   CHAT_URL=http://127.0.0.1:8000/api/chat API_KEY=sk_... NONCE=abc node --test tests/js/
// Each test prints one `RESULT <json>` line the Python side checks against the database.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { parseJsonEventStream } from '@ai-sdk/provider-utils';
import { DefaultChatTransport, readUIMessageStream, uiMessageChunkSchema } from 'ai';

const url = process.env.CHAT_URL;
const key = process.env.API_KEY;
const nonce = process.env.NONCE ?? String(Date.now());
const skip = !url || !key ? 'CHAT_URL and API_KEY are not set' : false;

const report = (name, value) => console.log(`RESULT ${JSON.stringify({ name, ...value })}`);

async function post(body) {
  return fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-api-key': key },
    body: JSON.stringify(body),
  });
}

// Every chunk must pass the schema; returns the parsed chunks.
async function schemaChunks(response) {
  const chunks = [];
  for await (const result of parseJsonEventStream({
    stream: response.body,
    schema: uiMessageChunkSchema,
  })) {
    if (!result.success) throw result.error;
    chunks.push(result.value);
  }
  return chunks;
}

function userMessage(text) {
  return { id: `u-${nonce}-${Math.random()}`, role: 'user', parts: [{ type: 'text', text }] };
}

async function lastMessage(stream, errors = []) {
  let last;
  for await (const message of readUIMessageStream({
    stream,
    onError: (error) => errors.push(error),
  })) {
    last = message;
  }
  return last;
}

// What useChat does on sendMessage: the chat's messages to the transport.
const submit = (transport, chatId, messages) =>
  transport.sendMessages({
    chatId,
    trigger: 'submit-message',
    messageId: undefined,
    messages,
    abortSignal: undefined,
  });

const textOf = (message) =>
  message.parts.filter((part) => part.type === 'text').map((part) => part.text).join('');

test('every chunk of the seed prompt request passes uiMessageChunkSchema', { skip }, async () => {
  const response = await post({ prompt: `Draft a tweet announcing our new single ${nonce}` });
  assert.equal(response.status, 200);
  assert.equal(response.headers.get('x-vercel-ai-ui-message-stream'), 'v1');
  assert.match(response.headers.get('content-type'), /^text\/event-stream/);
  const chunks = await schemaChunks(response);
  const types = chunks.map((chunk) => chunk.type);
  assert.deepEqual(types.slice(0, 3), ['start', 'start-step', 'text-start']);
  assert.deepEqual(types.slice(-4), ['text-end', 'finish-step', 'message-metadata', 'finish']);
  assert.ok(types.filter((type) => type === 'text-delta').length > 3);
  const text = chunks.filter((c) => c.type === 'text-delta').map((c) => c.delta).join('');
  assert.equal(
    text,
    `This is the offline demo model. You said: Draft a tweet announcing our new single ${nonce}`,
  );
  assert.equal(chunks.at(-1).finishReason, 'stop');
  report('prompt', { chatId: chunks[0].messageMetadata.chatId, messageId: chunks[0].messageId });
});

test('DefaultChatTransport and readUIMessageStream yield the assistant text', { skip }, async () => {
  const transport = new DefaultChatTransport({ api: url, headers: { 'x-api-key': key } });
  const chatId = `chat-${nonce}`;
  const messages = [userMessage(`Hello from useChat ${nonce}`)];
  const first = await lastMessage(
    await transport.sendMessages({
      chatId,
      trigger: 'submit-message',
      messageId: undefined,
      messages,
      abortSignal: undefined,
    }),
  );
  assert.equal(first.role, 'assistant');
  assert.equal(textOf(first), `This is the offline demo model. You said: Hello from useChat ${nonce}`);
  assert.equal(first.metadata.model, 'demo/balanced');
  assert.ok(first.metadata.usage.outputTokens > 0);
  assert.ok(first.metadata.chatId);

  // The second turn of the same chat: history goes along, the chat is the same.
  messages.push(first, userMessage(`And again ${nonce}`));
  const second = await lastMessage(
    await transport.sendMessages({
      chatId,
      trigger: 'submit-message',
      messageId: undefined,
      messages,
      abortSignal: undefined,
    }),
  );
  assert.equal(textOf(second), `This is the offline demo model. You said: And again ${nonce}`);
  assert.equal(second.metadata.chatId, first.metadata.chatId);
  report('transport', { chatKey: chatId, chatId: first.metadata.chatId });
});

test('a failure mid-stream is an error chunk the client reports', { skip }, async () => {
  const response = await post({ prompt: `[demo:fail-after=2] fail ${nonce}` });
  const chunks = await schemaChunks(response);
  const error = chunks.find((chunk) => chunk.type === 'error');
  assert.match(error.errorText, /LLM_CONNECTION_ERROR/);
  assert.equal(chunks.at(-1).type, 'finish');
  assert.equal(chunks.at(-1).finishReason, 'error');

  const transport = new DefaultChatTransport({ api: url, headers: { 'x-api-key': key } });
  const errors = [];
  const last = await lastMessage(
    await transport.sendMessages({
      chatId: `fail-${nonce}`,
      trigger: 'submit-message',
      messageId: undefined,
      messages: [userMessage(`[demo:fail-after=2] again ${nonce}`)],
      abortSignal: undefined,
    }),
    errors,
  );
  assert.equal(errors.length, 1);
  assert.equal(textOf(last), 'This is');
  report('failure', { chatId: chunks[0].messageMetadata.chatId });
});

test('a refused request is a non-2xx answer the transport rejects', { skip }, async () => {
  const transport = new DefaultChatTransport({ api: url, headers: { 'x-api-key': 'sk_live_nope' } });
  await assert.rejects(
    transport.sendMessages({
      chatId: `bad-${nonce}`,
      trigger: 'submit-message',
      messageId: undefined,
      messages: [userMessage('hi')],
      abortSignal: undefined,
    }),
  );
});

const keepaliveUrl = process.env.KEEPALIVE_CHAT_URL;
test(
  'keep-alive comments between slow chunks are tolerated',
  { skip: skip || (!keepaliveUrl && 'KEEPALIVE_CHAT_URL is not set') },
  async () => {
    const body = JSON.stringify({ prompt: `[demo:tokens=3][demo:delay=500] slow ${nonce}` });
    const headers = { 'content-type': 'application/json', 'x-api-key': key };
    const raw = await (await fetch(keepaliveUrl, { method: 'POST', headers, body })).text();
    assert.match(raw, /^: keep-alive$/m);

    const response = await fetch(keepaliveUrl, { method: 'POST', headers, body });
    const chunks = await schemaChunks(response);
    assert.equal(chunks.at(-1).type, 'finish');

    const transport = new DefaultChatTransport({ api: keepaliveUrl, headers: { 'x-api-key': key } });
    const last = await lastMessage(
      await transport.sendMessages({
        chatId: `slow-${nonce}`,
        trigger: 'submit-message',
        messageId: undefined,
        messages: [userMessage(`[demo:tokens=3][demo:delay=500] slow ${nonce}`)],
        abortSignal: undefined,
      }),
    );
    assert.equal(textOf(last), 'lorem ipsum dolor');
  },
);

const WEATHER_TOOLS = [
  {
    type: 'function',
    function: {
      name: 'get_weather',
      description: 'The weather in a city.',
      parameters: { type: 'object', properties: { city: { type: 'string' } } },
    },
  },
];

test('a client tool call is rebuilt as a tool part, and the answer to its output too', { skip }, async () => {
  const ask = `Weather? [demo:tool=get_weather {"city": "Paris"}] ${nonce}`;
  const response = await post({ messages: [userMessage(ask)], tools: WEATHER_TOOLS });
  const types = (await schemaChunks(response)).map((chunk) => chunk.type);
  assert.deepEqual(types.slice(0, 3), ['start', 'start-step', 'tool-input-start']);
  assert.ok(types.filter((type) => type === 'tool-input-delta').length > 1);
  assert.deepEqual(types.slice(-4), ['tool-input-available', 'finish-step', 'message-metadata', 'finish']);

  const transport = new DefaultChatTransport({
    api: url,
    headers: { 'x-api-key': key },
    body: { tools: WEATHER_TOOLS },
  });
  const chatId = `client-tool-${nonce}`;
  const messages = [userMessage(ask)];
  const send = async () => lastMessage(await submit(transport, chatId, messages));
  const first = await send();
  const part = first.parts.find((p) => p.type === 'tool-get_weather');
  assert.equal(part.state, 'input-available');
  assert.deepEqual(part.input, { city: 'Paris' });
  assert.ok(part.toolCallId);
  assert.equal(part.providerExecuted, undefined, 'the client runs its own tools');

  // The client runs the tool and sends the conversation back with the output.
  part.state = 'output-available';
  part.output = { celsius: 18 };
  messages.push(first);
  const second = await send();
  assert.equal(textOf(second), 'The tool get_weather returned: {"celsius": 18}');
  assert.equal(second.metadata.chatId, first.metadata.chatId);
  report('clientTool', { chatId: first.metadata.chatId, toolCallId: part.toolCallId });
});

const projectId = process.env.PROJECT_ID;
test(
  'a server tool conversation is rebuilt: the call, its output, the answer in the next step',
  { skip: skip || (!projectId && 'PROJECT_ID is not set') },
  async () => {
    const transport = new DefaultChatTransport({
      api: url,
      headers: { 'x-api-key': key },
      body: { projectId },
    });
    const ask = `[demo:tool=search_knowledge {"query": "credit ledger"}] ${nonce}`;
    const last = await lastMessage(await submit(transport, `server-tool-${nonce}`, [userMessage(ask)]));
    const types = last.parts.map((part) => part.type);
    assert.deepEqual(types, ['step-start', 'tool-search_knowledge', 'step-start', 'text']);
    const tool = last.parts[1];
    assert.equal(tool.state, 'output-available');
    assert.equal(tool.providerExecuted, true);
    assert.deepEqual(tool.input, { query: 'credit ledger' });
    assert.equal(tool.output.results[0].source, 'LEDGER.md');
    assert.equal(textOf(last), `The tool search_knowledge returned: ${JSON.stringify(tool.output)}`);
    assert.deepEqual(last.metadata.excludedTools, []);
    report('serverTool', { chatId: last.metadata.chatId, toolCallId: tool.toolCallId });
  },
);

test('useChat({resume: true}): reconnectToStream replays the active stream to its end', { skip }, async () => {
  const transport = new DefaultChatTransport({ api: url, headers: { 'x-api-key': key } });
  const chatId = `resume-${nonce}`;
  const abort = new AbortController();
  const stream = await transport.sendMessages({
    chatId,
    trigger: 'submit-message',
    messageId: undefined,
    messages: [userMessage(`[demo:tokens=40][demo:delay=25] resume ${nonce}`)],
    abortSignal: abort.signal,
  });
  const reader = stream.getReader();
  for (let i = 0; i < 5; i += 1) await reader.read();
  abort.abort(); // the page goes away mid-answer; the answer goes on
  await reader.cancel().catch(() => {});

  const resumed = await transport.reconnectToStream({ chatId });
  assert.ok(resumed, 'the chat has an active stream');
  const last = await lastMessage(resumed);
  const text = textOf(last);
  assert.equal(text.trim().split(/\s+/).length, 40);
  assert.equal(last.metadata.usage.outputTokens, 40);
  assert.equal(await transport.reconnectToStream({ chatId }), null, 'over: 204');
  report('resume', { chatId: last.metadata.chatId, text });
});
