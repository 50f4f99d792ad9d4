// The official OpenAI Node.js SDK against a running Strongroom gateway and reference
// runtime. Run by cmd/strongroom's testscript openai_sdks.txt (scripts/test), or by hand
// against `strongroom dev`:
//
//   set -a; . strongroom-data/dev.env; set +a; (cd test/node && npm ci && node --test)
//
// STRONGROOM_URL, STRONGROOM_API_KEY and STRONGROOM_MODEL say where and what;
// STRONGROOM_LIMITED_KEY, if set, is a key that may not use STRONGROOM_MODEL.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import OpenAI from 'openai';

const { STRONGROOM_URL: baseURL, STRONGROOM_API_KEY: apiKey, STRONGROOM_MODEL: model } = process.env;
assert.ok(baseURL && apiKey && model, 'STRONGROOM_URL, STRONGROOM_API_KEY and STRONGROOM_MODEL must be set');
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0, timeout: 300_000 });
const messages = [{ role: 'user', content: 'the model weights' }];
const strict = new TextDecoder('utf-8', { fatal: true });
const utf8 = (bytes) => {
  try {
    return strict.decode(Uint8Array.from(bytes));
  } catch {
    return null;
  }
};

test('models: listed and retrieved like OpenAI; an unknown model is 404', async () => {
  const ids = [];
  for await (const m of client.models.list()) ids.push(m.id);
  assert.ok(ids.includes(model), `${model} not in ${ids}`);
  const m = await client.models.retrieve(model);
  assert.equal(m.id, model);
  assert.equal(m.object, 'model');
  await assert.rejects(client.models.retrieve('no-such-model'), (e) => {
    assert.ok(e instanceof OpenAI.NotFoundError, String(e));
    assert.equal(e.code, 'model_not_found');
    return true;
  });
});

test('models: a model the key may not use is as unknown as one that does not exist', { skip: !process.env.STRONGROOM_LIMITED_KEY }, async () => {
  const limited = new OpenAI({ baseURL, apiKey: process.env.STRONGROOM_LIMITED_KEY, maxRetries: 0 });
  const errorOf = (p) => p.then(() => assert.fail('retrieved'), (e) => e);
  const denied = await errorOf(limited.models.retrieve(model));
  const unknown = await errorOf(limited.models.retrieve('no-such-model'));
  assert.equal(denied.status, 404);
  assert.deepEqual(denied.error, unknown.error);
});

test('completions: logprobs in the legacy shape', async () => {
  const r = await client.completions.create({ model, prompt: 'the model weights', max_tokens: 6, logprobs: 2 });
  const { text, logprobs: lp } = r.choices[0];
  assert.ok(lp.tokens.length > 0);
  assert.equal(lp.tokens.join(''), text);
  assert.equal(lp.token_logprobs.length, lp.tokens.length);
  assert.equal(lp.top_logprobs.length, lp.tokens.length);
  let offset = 0;
  lp.tokens.forEach((tok, i) => {
    assert.equal(lp.text_offset[i], offset);
    assert.ok(lp.token_logprobs[i] <= 0);
    const alts = Object.keys(lp.top_logprobs[i]);
    assert.ok(alts.length >= 1 && alts.length <= 2 && alts.every((a) => a !== ''), JSON.stringify(lp.top_logprobs[i]));
    offset += [...tok].length;
  });
});

test('chat: top_logprobs name their tokens, with bytes', async () => {
  const r = await client.chat.completions.create({ model, messages, max_tokens: 4, logprobs: true, top_logprobs: 3 });
  const content = r.choices[0].logprobs.content;
  assert.ok(content.length > 0);
  for (const e of content) {
    assert.equal(e.top_logprobs.length, 3);
    for (const a of [e, ...e.top_logprobs]) {
      assert.ok(a.token !== '' && a.bytes.length > 0, JSON.stringify(a));
      const text = utf8(a.bytes);
      if (text !== null) assert.equal(a.token, text); // else a token that splits a character
      assert.ok(a.logprob <= 0);
    }
  }
});

test('n: two choices, streamed or not', async () => {
  const r = await client.chat.completions.create({ model, messages, max_tokens: 3, n: 2, temperature: 1 });
  assert.deepEqual(r.choices.map((c) => c.index), [0, 1]);
  const stream = await client.chat.completions.create({ model, messages, max_tokens: 3, n: 2, stream: true });
  const seen = new Set();
  for await (const chunk of stream) for (const c of chunk.choices) seen.add(c.index);
  assert.deepEqual([...seen].sort(), [0, 1]);
});

test('embeddings: real vectors, base64 (the SDK default) and float agree', async () => {
  // The SDK asks for base64 unless told otherwise, and decodes it.
  const b64 = await client.embeddings.create({ model, input: ['the model weights', 'a sealed vault'] });
  const flt = await client.embeddings.create({ model, input: ['the model weights', 'a sealed vault'], encoding_format: 'float' });
  const [a, b] = b64.data.map((d) => d.embedding);
  assert.ok(a.length > 0);
  const norm = Math.hypot(...a);
  assert.ok(Math.abs(norm - 1) < 1e-4, `norm ${norm}`);
  assert.notDeepEqual(a, b);
  assert.deepEqual(flt.data[0].embedding.map(Math.fround), a);
  assert.ok(b64.usage.prompt_tokens > 0);
});

test('a request without a model is a 400', async () => {
  await assert.rejects(client.chat.completions.create({ messages }), (e) => {
    assert.ok(e instanceof OpenAI.BadRequestError, String(e));
    return true;
  });
});

test('hardening says what it changed in X-Strongroom-Hardened', async () => {
  const { data, response } = await client.chat.completions
    .create({ model, messages, max_tokens: 2, n: 9, logprobs: true, top_logprobs: 20, logit_bias: { 65: 5 } })
    .withResponse();
  const h = response.headers.get('x-strongroom-hardened') ?? '';
  const fields = Object.fromEntries(h.split(',').map((kv) => kv.split('=')));
  assert.equal(fields.logit_bias, 'stripped', h);
  assert.equal(data.choices.length, Number(fields.n), h);
  assert.equal(data.choices[0].logprobs.content[0].top_logprobs.length, Number(fields.top_logprobs), h);
});
