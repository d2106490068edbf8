// check.mjs - drives `seqboat serve` with the official openai client (its
// completions API, chat streaming, the error classes) and checks what comes
// back. Run by tests/e2e-serve-openai.sh:
//   node check.mjs BASE_URL API_KEY MODEL_ID GREEDY_PROMPT GREEDY_TEXT
// (GREEDY_TEXT: what `seqboat complete --temp 0 -n 16` gives for the prompt).
import assert from "node:assert/strict";
import OpenAI from "openai";

const [baseURL, apiKey, model, prompt, greedy] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0, timeout: 60_000 });
const noEos = { 2: -100 };

async function main() {
	// models.list
	const models = await client.models.list();
	assert.deepEqual(models.data.map((m) => m.id), [model]);

	// completions: greedy text equals `seqboat complete --temp 0`
	const c = await client.completions.create({ model, prompt, max_tokens: 16, temperature: 0 });
	assert.equal(c.object, "text_completion");
	assert.equal(c.choices[0].text, greedy);
	assert.equal(c.usage.completion_tokens, 16);
	assert.equal(c.usage.total_tokens, c.usage.prompt_tokens + 16);

	// completions, streamed: the same text
	const cs = await client.completions.create({
		model, prompt, max_tokens: 16, temperature: 0, stream: true,
	});
	let streamed = "";
	for await (const chunk of cs) streamed += chunk.choices[0]?.text ?? "";
	assert.equal(streamed, greedy);

	// chat streaming, with usage at the end
	const messages = [
		{ role: "system", content: "w4 w5" },
		{ role: "user", content: "w6 w7 w8" },
	];
	const stream = await client.chat.completions.create({
		model, messages, max_tokens: 12, seed: 11, logit_bias: noEos, stream: true,
		stream_options: { include_usage: true },
	});
	let text = "", finish = null, usage = null, role = null;
	for await (const chunk of stream) {
		if (chunk.usage) usage = chunk.usage;
		const ch = chunk.choices[0];
		if (!ch) continue;
		if (ch.delta.role) role = ch.delta.role;
		text += ch.delta.content ?? "";
		if (ch.finish_reason) finish = ch.finish_reason;
	}
	assert.equal(role, "assistant");
	assert.ok(text.length > 0, "empty streamed reply");
	assert.ok(finish === "length" || finish === "stop", `finish_reason ${finish}`);
	assert.ok(usage && usage.completion_tokens > 0, "no usage chunk");

	// the same request without streaming: the same reply
	const whole = await client.chat.completions.create({
		model, messages, max_tokens: 12, seed: 11, logit_bias: noEos,
	});
	assert.equal(whole.choices[0].message.content, text);

	// the next turn resumes from the cached state: every token of turn 1
	const turn2 = await client.chat.completions.create({
		model, max_tokens: 12, seed: 11, logit_bias: noEos,
		messages: [...messages, whole.choices[0].message, { role: "user", content: "w9" }],
	});
	assert.equal(turn2.usage.prompt_tokens_details.cached_tokens, whole.usage.total_tokens);

	// errors arrive as the client's error classes, with OpenAI's fields
	await assert.rejects(
		client.completions.create({ model, prompt, max_tokens: -1 }),
		(e) => e instanceof OpenAI.BadRequestError && e.status === 400 && e.param === "max_tokens",
	);
	await assert.rejects(
		client.chat.completions.create({ model: "no-such-model", messages }),
		(e) => e instanceof OpenAI.BadRequestError && e.param === "model",
	);
	const wrongKey = new OpenAI({ baseURL, apiKey: apiKey + "x", maxRetries: 0 });
	await assert.rejects(
		wrongKey.models.list(),
		(e) => e instanceof OpenAI.AuthenticationError && e.status === 401,
	);
	console.log("openai client: all checks passed");
}

main().catch((e) => {
	console.error(e);
	process.exit(1);
});
