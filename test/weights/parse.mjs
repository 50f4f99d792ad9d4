// parse.mjs FILE...: prints, as one JSON line per file, what parsers we did not write see
// in it — Hugging Face's @huggingface/gguf for *.gguf and @huggingface/hub's safetensors
// header parser for *.safetensors (served from the local file through its fetch hook).
// Run by internal/fingerprint's TestOutsideParsers, which compares it with our reader.
import { open, stat } from "node:fs/promises";
import { gguf } from "@huggingface/gguf";
import { parseSafetensorsMetadata } from "@huggingface/hub";

// localFetch answers the hub's requests (HEAD, ranged GET) for any path from one file.
function localFetch(file) {
  return async (url, init = {}) => {
    const size = (await stat(file)).size;
    const headers = new Headers(init.headers);
    const base = { "accept-ranges": "bytes", etag: '"local"', "content-type": "application/octet-stream" };
    if ((init.method ?? "GET") === "HEAD") {
      return new Response(null, { status: 200, headers: { ...base, "content-length": String(size) } });
    }
    let start = 0, end = size - 1, status = 200;
    const m = /bytes=(\d+)-(\d*)/.exec(headers.get("range") ?? "");
    if (m) {
      start = Number(m[1]);
      end = m[2] === "" ? size - 1 : Math.min(Number(m[2]), size - 1);
      status = 206;
    }
    const fh = await open(file);
    const buf = Buffer.alloc(Math.max(0, end - start + 1));
    await fh.read(buf, 0, buf.length, start);
    await fh.close();
    return new Response(buf, {
      status,
      headers: { ...base, "content-length": String(buf.length), "content-range": `bytes ${start}-${end}/${size}` },
    });
  };
}

const big = (_, v) => (typeof v === "bigint" ? Number(v) : v);
for (const file of process.argv.slice(2)) {
  if (file.endsWith(".gguf")) {
    const { metadata, tensorInfos, tensorDataOffset } = await gguf(file, { allowLocalFile: true });
    console.log(JSON.stringify({
      file, version: metadata.version, tensor_count: metadata.tensor_count, kv_count: metadata.kv_count,
      architecture: metadata["general.architecture"], alignment: metadata["general.alignment"],
      data_offset: tensorDataOffset,
      tensors: tensorInfos.map((t) => ({ name: t.name, dims: t.shape, type: t.dtype, offset: t.offset })),
    }, big));
  } else {
    const r = await parseSafetensorsMetadata({ repo: "strongroom/local", path: "model.safetensors", fetch: localFetch(file) });
    const tensors = Object.entries(r.header).filter(([k]) => k !== "__metadata__")
      .map(([name, t]) => ({ name, dtype: t.dtype, shape: t.shape, data_offsets: t.data_offsets }));
    console.log(JSON.stringify({ file, metadata: r.header.__metadata__ ?? null, tensors }, big));
  }
}
