// The playground: one conversation against the service's own endpoints, in the wire
// format chosen, with everything that came back shown beside the answer. The tenant key
// lives in this tab's sessionStorage only.
import { DefaultChatTransport, readUIMessageStream } from "./vendor/ai-client.js";

const $ = (id) => document.getElementById(id);
const KEY_STORAGE = "playground.apiKey";

const ui = {
  key: $("api-key"),
  format: $("format"),
  formatAbout: $("format-about"),
  model: $("model"),
  temperature: $("temperature"),
  temperatureValue: $("temperature-value"),
  governor: $("governor"),
  project: $("project"),
  userId: $("user-id"),
  transcript: $("transcript"),
  composer: $("composer"),
  message: $("message"),
  send: $("send"),
  stop: $("stop"),
  status: $("status"),
  summary: $("summary"),
  verdict: $("governor-verdict"),
  violations: $("violations"),
  tools: $("tools"),
  headers: $("headers"),
  raw: $("raw"),
};

// --- Conversation state, per format ----------------------------------------------------

let conversation = newConversation();

function newConversation() {
  return {
    messages: [], // {role, content}: the history the stateless formats resend
    uiMessages: [], // the AI SDK's UIMessages
    chatId: crypto.randomUUID(), // the AI SDK chat / docgen conversation id
    socket: null, // the WebSocket and what it was opened with
    socketKey: "",
  };
}

let running = null; // {abort(), startedAt} of the exchange in flight

// --- Small DOM helpers ----------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function setStatus(text, kind) {
  ui.status.textContent = text;
  ui.status.className = `status ${kind}`;
}

function field(name, value) {
  const dd = ui.summary.querySelector(`[data-field="${name}"]`);
  dd.textContent = value === undefined || value === null || value === "" ? "—" : String(value);
}

function credits(value) {
  if (value === undefined || value === null || value === "") return "—";
  const number = Number(value);
  return Number.isFinite(number) ? number.toLocaleString(undefined, { maximumFractionDigits: 6 }) : String(value);
}

function resetInspector() {
  for (const name of ["model", "cache", "tokens", "charged", "remaining", "finish"]) field(name, "…");
  ui.verdict.className = "verdict";
  ui.verdict.textContent = "…";
  ui.violations.replaceChildren();
  toolCalls.clear();
  ui.tools.replaceChildren(el("li", { class: "muted none", text: "none" }));
  ui.headers.tBodies[0].replaceChildren(el("tr", {}, el("td", { class: "muted", text: "…" })));
}

// What the answer never reported (it failed, or the format has no such figure) shows "—".
function settleInspector() {
  for (const dd of ui.summary.querySelectorAll("dd")) if (dd.textContent === "…") dd.textContent = "—";
  if (ui.verdict.textContent === "…") ui.verdict.textContent = "—";
  for (const cell of ui.headers.querySelectorAll("td")) if (cell.textContent === "…") cell.textContent = "—";
}

function showHeaders(headers) {
  // The product's own headers first, then the rest.
  const interesting = (name) => /^x-(governor|credits|regpilot|cache|chat|request|ratelimit)|^idempotent/.test(name);
  const rows = [...headers.entries()].sort(
    ([a], [b]) => Number(interesting(b)) - Number(interesting(a)) || a.localeCompare(b),
  );
  ui.headers.tBodies[0].replaceChildren(
    ...rows.map(([name, value]) =>
      el("tr", interesting(name) ? { class: "hot" } : {}, el("th", { text: name }), el("td", { text: value })),
    ),
  );
  if (headers.get("x-governor-validated")) {
    showVerdict({
      approved: headers.get("x-governor-approved") === "true",
      risk_level: headers.get("x-governor-risk-level"),
      risk_score: headers.get("x-governor-risk-score"),
      violationCount: Number(headers.get("x-governor-violations") || 0),
      audit: headers.get("x-governor-audit-id"),
    });
  }
  field("model", headers.get("x-regpilot-model") || undefined);
  field("cache", headers.get("x-cache-status") || undefined);
  if (headers.get("x-credits-remaining")) field("remaining", credits(headers.get("x-credits-remaining")));
}

function showHeadersUnavailable(text) {
  ui.headers.tBodies[0].replaceChildren(el("tr", {}, el("td", { class: "muted", text })));
}

function showVerdict(result) {
  if (!result) {
    ui.verdict.className = "verdict";
    ui.verdict.textContent = "not checked";
    return;
  }
  const level = result.risk_level || "unknown";
  ui.verdict.className = `verdict ${result.approved ? "approved" : "rejected"} level-${level}`;
  const score = result.risk_score !== undefined && result.risk_score !== null ? ` · score ${result.risk_score}` : "";
  ui.verdict.textContent = `${result.approved ? "Approved" : "Rejected"} · risk ${level}${score}`;
  ui.violations.replaceChildren();
  for (const v of result.violations || []) {
    ui.violations.append(
      el("li", { class: `sev-${v.severity}` },
        el("strong", { text: v.rule }),
        el("span", { class: "muted", text: ` ${v.severity} · ${v.points} pts` }),
        el("div", { text: v.explanation || "" })),
    );
  }
  if (!result.violations && result.violationCount) {
    ui.violations.append(el("li", { class: "muted", text: `${result.violationCount} violation(s); details are in the audit record${result.audit ? ` ${result.audit}` : ""}.` }));
  }
  if (result.violations && !result.violations.length) ui.violations.append(el("li", { class: "muted", text: "no violations" }));
  if (!result.violations && !result.violationCount) ui.violations.append(el("li", { class: "muted", text: "no violations" }));
}

// One row per tool call, updated as its events arrive: `argsDelta` appends streamed
// argument text, `args` and `result` replace what was shown.
const toolCalls = new Map();

function showTool(call) {
  ui.tools.querySelector(".none")?.remove();
  const id = call.id || `${call.name}-${toolCalls.size}`;
  let known = toolCalls.get(id);
  if (!known) {
    const row = el("li", {}, el("strong"), el("span", { class: "muted" }), el("pre"));
    known = { row, args: "", result: undefined };
    toolCalls.set(id, known);
    ui.tools.append(row);
  }
  const text = (value) => (typeof value === "string" ? value : JSON.stringify(value));
  if (call.argsDelta !== undefined) known.args += call.argsDelta;
  if (call.args !== undefined) known.args = text(call.args);
  if (call.result !== undefined) known.result = text(call.result);
  const [name, state, body] = known.row.children;
  if (call.name) name.textContent = call.name;
  if (call.state) state.textContent = ` ${call.state}`;
  body.textContent = [known.args && `args: ${known.args}`, known.result !== undefined && `result: ${known.result}`]
    .filter(Boolean)
    .join("\n");
}

function logRaw(source, data) {
  const elapsed = running ? Math.round(performance.now() - running.startedAt) : 0;
  const text = typeof data === "string" ? data : JSON.stringify(data);
  ui.raw.append(el("li", {}, el("span", { class: "t", text: `${elapsed} ms` }), el("span", { class: "src", text: source }), el("code", { text })));
  ui.raw.scrollTop = ui.raw.scrollHeight;
}

function bubble(role, text = "") {
  ui.transcript.querySelector(".empty")?.remove();
  const body = el("div", { class: "text", text });
  const item = el("li", { class: `msg ${role}` }, el("div", { class: "who", text: role }), body);
  ui.transcript.append(item);
  ui.transcript.scrollTop = ui.transcript.scrollHeight;
  return {
    item,
    append(token) {
      body.textContent += token;
      ui.transcript.scrollTop = ui.transcript.scrollHeight;
    },
    set(content) {
      body.textContent = content;
    },
    fail(message) {
      item.classList.add("failed");
      item.append(el("div", { class: "error", text: message }));
    },
    text: () => body.textContent,
  };
}

// --- Request options ---------------------------------------------------------------------

class InputError extends Error {}

function options() {
  const key = ui.key.value.trim();
  if (!key) throw new InputError("Paste a tenant API key first.");
  const [kind, name] = ui.model.value.split(/:(.*)/s);
  let governorMetadata;
  if (ui.governor.value.trim()) {
    try {
      governorMetadata = JSON.parse(ui.governor.value);
    } catch (error) {
      throw new InputError(`governorMetadata is not valid JSON: ${error.message}`);
    }
  }
  return {
    key,
    quality: kind === "tier" ? name : undefined,
    model: kind === "model" ? name : undefined,
    modelName: name, // a tier or a model: what /v1 and /api/chat take as `model`
    temperature: Number(ui.temperature.value),
    governorMetadata,
    project: ui.project.value.trim() || undefined,
    userId: ui.userId.value.trim() || "playground",
  };
}

// --- Reading server-sent events from fetch ----------------------------------------------

async function* sseEvents(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let event = { event: "message", data: [] };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let newline;
    while ((newline = buffer.search(/\r?\n/)) >= 0) {
      const line = buffer.slice(0, newline);
      buffer = buffer.slice(buffer[newline] === "\r" ? newline + 2 : newline + 1);
      if (line === "") {
        if (event.data.length) yield { event: event.event, data: event.data.join("\n") };
        event = { event: "message", data: [] };
      } else if (line.startsWith(":")) {
        yield { event: "comment", data: line };
      } else {
        const colon = line.indexOf(":");
        const name = colon < 0 ? line : line.slice(0, colon);
        const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (name === "data") event.data.push(value);
        else if (name === "event") event.event = value;
      }
    }
  }
}

async function postJson(path, body, headers, signal) {
  const response = await fetch(path, {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: JSON.stringify(body),
    signal,
  });
  showHeaders(response.headers);
  logRaw("http", `${response.status} ${response.statusText || ""} ${path}`.trim());
  if (!response.ok) {
    const text = await response.text();
    logRaw("body", text);
    throw new ServerError(response.status, text);
  }
  return response;
}

class ServerError extends Error {
  constructor(status, text) {
    let error;
    try {
      error = JSON.parse(text).error;
    } catch {
      error = undefined;
    }
    const code = error?.code || error?.type || `HTTP ${status}`;
    super(`${code}: ${error?.message || text || "request failed"}`);
    this.error = error;
  }
}

function governorFromError(error) {
  const details = error?.details;
  if (error?.code === "GOVERNOR_REJECTED" && details) showVerdict(details);
}

// --- The five formats ------------------------------------------------------------------

const formats = {
  async ws(text, opts, answer, signal) {
    const socket = await openSocket(opts);
    return new Promise((resolve, reject) => {
      const onMessage = (message) => {
        const event = JSON.parse(message.data);
        switch (event.type) {
          case "message_stream_started":
            field("model", event.model);
            field("cache", event.cache_status);
            showVerdict(event.governor);
            break;
          case "message_stream_token":
            answer.append(event.token);
            break;
          case "tool_call_started":
          case "tool_call_ended":
            showTool({
              id: event.tool_call_id,
              name: event.name,
              state: event.type === "tool_call_started" ? "running" : event.status || "done",
              args: event.arguments,
              result: event.result ?? event.error,
            });
            break;
          case "message_stream_ended":
            finish();
            answer.set(event.content);
            field("tokens", usageText(event.usage));
            field("charged", credits(event.credits_charged));
            field("remaining", credits(event.credits_remaining));
            field("finish", `${event.finish_reason} (${event.status})`);
            resolve();
            break;
          case "error":
            finish();
            governorFromError(event);
            reject(new Error(`${event.code}: ${event.message}`));
            break;
          default:
        }
      };
      const onClose = (close) => {
        finish();
        reject(new Error(`The socket closed (${close.code}${close.reason ? `: ${close.reason}` : ""}).`));
      };
      const finish = () => {
        socket.removeEventListener("message", onMessage);
        socket.removeEventListener("close", onClose);
      };
      socket.addEventListener("message", onMessage);
      socket.addEventListener("close", onClose);
      signal.addEventListener("abort", () => socket.send(JSON.stringify({ type: "cancel" })), { once: true });
      const message = { content: text, temperature: opts.temperature };
      if (opts.quality) message.quality = opts.quality;
      if (opts.model) message.model = opts.model;
      if (opts.governorMetadata !== undefined) message.governorMetadata = opts.governorMetadata;
      logRaw("send", message);
      socket.send(JSON.stringify(message));
    });
  },

  async regpilot(text, opts, answer, signal) {
    conversation.messages.push({ role: "user", content: text });
    const body = { messages: conversation.messages, temperature: opts.temperature };
    if (opts.quality) body.quality = opts.quality;
    if (opts.model) body.model = opts.model;
    if (opts.governorMetadata !== undefined) body.governorMetadata = opts.governorMetadata;
    const response = await postJson("/api/ai/chat", body, { "x-api-key": opts.key }, signal);
    let failure;
    for await (const event of sseEvents(response)) {
      logRaw(event.event, event.data);
      if (event.event === "usage") {
        const usage = JSON.parse(event.data);
        field("model", usage.model);
        field("cache", usage.cache_status);
        field("tokens", usageText(usage));
        field("charged", credits(usage.credits_charged));
        field("remaining", credits(usage.credits_remaining));
        field("finish", usage.finish_reason);
      } else if (event.event === "error") {
        const error = JSON.parse(event.data);
        failure = new Error(`${error.code}: ${error.message}`);
      } else if (event.event === "message" && event.data !== "[DONE]") {
        answer.append(JSON.parse(event.data).content ?? "");
      }
    }
    conversation.messages.push({ role: "assistant", content: answer.text() });
    if (failure) throw failure;
  },

  async docgen(text, opts, answer, signal) {
    const body = {
      message: text,
      conversation_id: conversation.chatId,
      history: conversation.messages.slice(-100),
      metadata: {},
    };
    if (opts.project) body.project_id = opts.project;
    const response = await postJson("/api/v1/chat/stream", body, { "x-api-key": opts.key }, signal);
    let failure;
    for await (const event of sseEvents(response)) {
      logRaw(event.event, event.data);
      const data = event.event === "comment" ? null : JSON.parse(event.data);
      if (event.event === "message") {
        answer.append(data.token);
      } else if (event.event === "done") {
        const meta = data.metadata || {};
        answer.set(data.full_response);
        field("model", meta.model);
        field("tokens", usageText(meta.usage));
        field("charged", credits(meta.credits_charged));
        field("remaining", credits(meta.credits_remaining));
        const sources = (meta.sources || []).length ? ` · sources: ${meta.sources.join(", ")}` : "";
        const notes = (meta.warnings || []).length ? ` · ${meta.warnings.join(" ")}` : "";
        field("finish", `${meta.finish_reason || "stop"}${sources}${notes}`);
      } else if (event.event === "error") {
        failure = new Error(`${data.code}: ${data.error}`);
      }
    }
    conversation.messages.push({ role: "user", content: text }, { role: "assistant", content: answer.text() });
    if (failure) throw failure;
  },

  // The AI SDK's own client code: the transport useChat posts with, and its stream reader.
  async aisdk(text, opts, answer, signal) {
    conversation.uiMessages.push({ id: crypto.randomUUID(), role: "user", parts: [{ type: "text", text }] });
    const transport = new DefaultChatTransport({
      api: "/api/chat",
      headers: { "x-api-key": opts.key },
      body: { model: opts.modelName },
      fetch: async (url, init) => {
        const response = await fetch(url, init);
        showHeaders(response.headers);
        logRaw("http", `${response.status} /api/chat`);
        if (!response.ok) {
          const body = await response.clone().text();
          logRaw("body", body);
          governorFromError(new ServerError(response.status, body).error);
        }
        return response;
      },
    });
    const chunks = await transport.sendMessages({
      chatId: conversation.chatId,
      trigger: "submit-message",
      messageId: undefined,
      messages: conversation.uiMessages,
      abortSignal: signal,
    });
    let failure;
    const logged = chunks.pipeThrough(
      new TransformStream({
        transform(chunk, controller) {
          logRaw(chunk.type, chunk);
          if (chunk.type === "error") failure = new Error(chunk.errorText);
          if (chunk.type === "finish") field("finish", chunk.finishReason);
          if (chunk.type.startsWith("tool-")) {
            showTool({
              id: chunk.toolCallId,
              name: chunk.toolName,
              state: chunk.type.replace(/^tool-/, ""),
              argsDelta: chunk.inputTextDelta,
              args: chunk.input,
              result: chunk.output ?? chunk.errorText,
            });
          }
          controller.enqueue(chunk);
        },
      }),
    );
    let last;
    // Without onError the reader would stop quietly on a chunk it cannot apply.
    const onError = (error) => (failure ??= error);
    for await (const message of readUIMessageStream({ stream: logged, onError })) {
      last = message;
      answer.set(message.parts.filter((p) => p.type === "text").map((p) => p.text).join(""));
      const meta = message.metadata || {};
      if (meta.model) field("model", meta.model);
      if (meta.cacheStatus) field("cache", meta.cacheStatus);
      if (meta.usage) field("tokens", `${meta.usage.inputTokens} in · ${meta.usage.outputTokens} out`);
      if (meta.creditsCharged !== undefined) field("charged", credits(meta.creditsCharged));
      if (meta.creditsRemaining !== undefined) field("remaining", credits(meta.creditsRemaining));
    }
    if (last) conversation.uiMessages.push(last);
    if (failure) throw failure;
  },

  async openai(text, opts, answer, signal) {
    conversation.messages.push({ role: "user", content: text });
    const body = {
      model: opts.modelName,
      messages: conversation.messages,
      temperature: opts.temperature,
      stream: true,
      stream_options: { include_usage: true },
    };
    const response = await postJson("/v1/chat/completions", body, { authorization: `Bearer ${opts.key}` }, signal);
    field("charged", "not in this format's stream");
    field("remaining", response.headers.get("x-credits-remaining") ? credits(response.headers.get("x-credits-remaining")) : "not in this format's stream");
    const calls = new Map();
    let failure;
    for await (const event of sseEvents(response)) {
      logRaw(event.event === "message" ? "data" : event.event, event.data);
      if (event.event !== "message" || event.data === "[DONE]") continue;
      const chunk = JSON.parse(event.data);
      if (chunk.error) {
        failure = new Error(`${chunk.error.code || chunk.error.type}: ${chunk.error.message}`);
        continue;
      }
      field("model", chunk.model);
      if (chunk.usage) field("tokens", usageText(chunk.usage));
      for (const choice of chunk.choices || []) {
        if (choice.delta?.content) answer.append(choice.delta.content);
        for (const call of choice.delta?.tool_calls || []) {
          // OpenAI streams a call's id and name once, then its arguments in pieces.
          if (call.id) calls.set(call.index, call.id);
          showTool({
            id: calls.get(call.index),
            name: call.function?.name,
            state: "requested",
            argsDelta: call.function?.arguments || "",
          });
        }
        if (choice.finish_reason) field("finish", choice.finish_reason);
      }
    }
    conversation.messages.push({ role: "assistant", content: answer.text() });
    if (failure) throw failure;
  },
};

function usageText(usage) {
  if (!usage) return "—";
  return `${usage.prompt_tokens} in · ${usage.completion_tokens} out`;
}

async function openSocket(opts) {
  const identity = `${opts.key}\n${opts.userId}`;
  const open = conversation.socket;
  if (open && conversation.socketKey === identity && open.readyState === WebSocket.OPEN) return open;
  open?.close();
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const params = new URLSearchParams({ api_key: opts.key, user_id: opts.userId });
  if (conversation.wsChatId) params.set("chat_id", conversation.wsChatId);
  const socket = new WebSocket(`${scheme}//${location.host}/ws/chat?${params}`);
  conversation.socket = socket;
  conversation.socketKey = identity;
  showHeadersUnavailable("A WebSocket has no response headers a page can read; see the raw events.");
  socket.addEventListener("message", (message) => {
    const event = JSON.parse(message.data);
    if (event.type === "connection_established") conversation.wsChatId = event.chat_id;
    if (event.type !== "message_stream_token" || ui.raw.children.length < 2000) logRaw(event.type, event);
  });
  return new Promise((resolve, reject) => {
    socket.addEventListener("message", function first(message) {
      const event = JSON.parse(message.data);
      if (event.type === "connection_established") {
        socket.removeEventListener("message", first);
        resolve(socket);
      } else if (event.type === "error") {
        reject(new Error(`${event.code}: ${event.message}`));
      }
    });
    socket.addEventListener("close", (close) => reject(new Error(`The socket closed (${close.code}).`)), { once: true });
  });
}

// --- Sending -----------------------------------------------------------------------------

async function send(text) {
  let opts;
  try {
    opts = options();
  } catch (error) {
    if (!(error instanceof InputError)) throw error;
    setStatus(error.message, "error");
    return;
  }
  const controller = new AbortController();
  running = { startedAt: performance.now(), abort: () => controller.abort() };
  ui.send.disabled = true;
  ui.stop.disabled = false;
  setStatus("streaming…", "busy");
  resetInspector();
  logRaw("—", `${ui.format.value}: new request`);
  bubble("user", text);
  const answer = bubble("assistant");
  answer.item.classList.add("streaming");
  try {
    await formats[ui.format.value](text, opts, answer, controller.signal);
    setStatus(controller.signal.aborted ? "stopped" : "done", "ok");
  } catch (error) {
    if (controller.signal.aborted) {
      setStatus("stopped", "ok");
    } else {
      answer.fail(error.message);
      setStatus("failed", "error");
      field("finish", "error");
    }
  } finally {
    settleInspector();
    answer.item.classList.remove("streaming");
    ui.send.disabled = false;
    ui.stop.disabled = true;
    running = null;
  }
}

// --- Wiring ------------------------------------------------------------------------------

function describeFormat() {
  ui.formatAbout.textContent = ui.format.selectedOptions[0]?.dataset.about || "";
}

// The catalog models this key may use, from /v1/models (the tiers are always there).
let listedFor = null;
async function listModels() {
  const key = ui.key.value.trim();
  if (!key || key === listedFor) return;
  listedFor = key;
  const group = $("catalog-models");
  try {
    const response = await fetch("/v1/models", { headers: { authorization: `Bearer ${key}` } });
    if (!response.ok || key !== ui.key.value.trim()) return;
    const { data } = await response.json();
    const chosen = ui.model.value;
    group.replaceChildren(
      ...data
        .filter((model) => model.owned_by !== "router") // the tiers, listed above
        .map((model) => el("option", { value: `model:${model.id}`, text: model.id })),
    );
    if ([...ui.model.options].some((option) => option.value === chosen)) ui.model.value = chosen;
  } catch {
    listedFor = null; // try again on the next change
  }
}

ui.key.value = sessionStorage.getItem(KEY_STORAGE) || "";
ui.key.addEventListener("input", () => sessionStorage.setItem(KEY_STORAGE, ui.key.value.trim()));
ui.key.addEventListener("change", listModels);
listModels();
ui.temperature.addEventListener("input", () => {
  ui.temperatureValue.textContent = Number(ui.temperature.value).toFixed(1);
});
ui.format.addEventListener("change", () => {
  describeFormat();
  startOver();
});
describeFormat();

function startOver() {
  conversation.socket?.close();
  conversation = newConversation();
  ui.transcript.replaceChildren(el("li", { class: "empty", text: "A new conversation: say something." }));
  setStatus("idle", "idle");
}

$("new-chat").addEventListener("click", startOver);
$("clear-raw").addEventListener("click", () => ui.raw.replaceChildren());
ui.stop.addEventListener("click", () => running?.abort());
ui.composer.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = ui.message.value.trim();
  if (!text || running) return;
  ui.message.value = "";
  send(text);
});
ui.message.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) {
    event.preventDefault();
    ui.composer.requestSubmit();
  }
});
document.body.dataset.ready = "true";
