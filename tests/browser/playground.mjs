// The playground in Chromium: for each wire format named in FORMATS, type a message, wait
// for the streamed answer and the credits, and print one RESULT line per format.
import { screenshot, withPage } from "./chromium.mjs";

const { BASE_URL, API_KEY } = process.env;
const formats = (process.env.FORMATS || "ws,aisdk").split(",");

await withPage(async (page) => {
  await page.goto(`${BASE_URL}/playground/`);
  await page.waitForSelector("body[data-ready=true]");
  await page.fill("#api-key", API_KEY);
  await page.press("#api-key", "Tab"); // the key's models are listed once it is entered
  await page.waitForSelector('#catalog-models option[value="model:demo/frontier"]', { state: "attached" });
  for (const format of formats) {
    await page.selectOption("#format", format);
    await page.click("#clear-raw");
    // The OpenAI format asks for a catalog model by name; the others for the default tier.
    await page.selectOption("#model", format === "openai" ? "model:demo/frontier" : "tier:balanced");
    const said = `Hello from the ${format} playground ${process.env.NONCE || ""}`.trim();
    await page.fill("#message", said);
    await page.press("#message", "Enter");
    await page.waitForSelector("#status.ok, #status.error", { timeout: 30_000 });
    const status = await page.textContent("#status");
    const answer = await page.$$eval(".msg.assistant .text", (nodes) => nodes.at(-1).textContent);
    const tokens = await page.evaluate(
      () => [...document.querySelectorAll("#raw .src")].filter((s) => /token|delta|message$|data/.test(s.textContent)).length,
    );
    const field = (name) => page.textContent(`#summary [data-field="${name}"]`);
    const result = {
      format,
      status,
      answer,
      tokens,
      model: await field("model"),
      charged: await field("charged"),
      remaining: await field("remaining"),
      verdict: await page.textContent("#governor-verdict"),
      storedKey: await page.evaluate(() => sessionStorage.getItem("playground.apiKey")),
      localKeys: await page.evaluate(() => localStorage.length),
      cookies: (await page.context().cookies()).map((c) => c.name),
    };
    console.log(`RESULT ${JSON.stringify(result)}`);
    await screenshot(page, `playground-${format}`);
  }

  // A key the server does not know: the page says why, in the answer's place.
  await page.selectOption("#format", "ws");
  await page.fill("#api-key", "sk_live_not_a_key_of_this_server");
  await page.fill("#message", "Anyone there?");
  await page.press("#message", "Enter");
  await page.waitForSelector("#status.error", { timeout: 30_000 });
  const refusal = await page.$$eval(".msg.assistant .error", (nodes) => nodes.at(-1).textContent);
  console.log(`RESULT ${JSON.stringify({ format: "bad-key", refusal })}`);
  await screenshot(page, "playground-bad-key");

  // Tool chunks as the AI SDK streams them, answered by the browser itself: the panel
  // shows each call, its streamed arguments and its output.
  const chunks = [
    { type: "start", messageId: "m1" },
    { type: "start-step" },
    { type: "tool-input-start", toolCallId: "call-1", toolName: "search_knowledge", providerExecuted: true },
    { type: "tool-input-delta", toolCallId: "call-1", inputTextDelta: '{"query": ' },
    { type: "tool-input-delta", toolCallId: "call-1", inputTextDelta: '"bikes"}' },
    { type: "tool-input-available", toolCallId: "call-1", toolName: "search_knowledge", input: { query: "bikes" }, providerExecuted: true },
    { type: "tool-output-available", toolCallId: "call-1", output: "2 sources", providerExecuted: true },
    { type: "finish-step" },
    { type: "start-step" },
    { type: "text-start", id: "t1" },
    { type: "text-delta", id: "t1", delta: "Found two." },
    { type: "text-end", id: "t1" },
    { type: "finish-step" },
    { type: "finish", finishReason: "stop" },
  ];
  await page.route("**/api/chat", (route) =>
    route.fulfill({
      status: 200,
      headers: { "content-type": "text/event-stream", "x-vercel-ai-ui-message-stream": "v1" },
      body: `${chunks.map((c) => `data: ${JSON.stringify(c)}\n\n`).join("")}data: [DONE]\n\n`,
    }),
  );
  await page.fill("#api-key", API_KEY);
  await page.selectOption("#format", "aisdk");
  await page.fill("#message", "Search the knowledge base");
  await page.press("#message", "Enter");
  await page.waitForSelector("#status.ok, #status.error", { timeout: 30_000 });
  const tools = await page.$$eval("#tools li", (rows) => rows.map((row) => row.innerText));
  const toolAnswer = await page.$$eval(".msg.assistant .text", (nodes) => nodes.at(-1).textContent);
  console.log(`RESULT ${JSON.stringify({ format: "tools", status: await page.textContent("#status"), tools, answer: toolAnswer })}`);
  await screenshot(page, "playground-tools");
});
