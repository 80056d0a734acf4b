// LibreChat's own web-search reranker client (npm @librechat/agents, installed by perf/load/librechat_bench.py),
// driven as LibreChat drives it: per search, one rerank call per source page, all of them at once.
//
//   node perf/load/librechat_rerank.mjs JOB.json
//
// JOB.json: {"agents_dir": ".cache/librechat-agents", "timeout_ms": null, "top_n": 5,
//            "searches": [{"query": "...", "pages": [["chunk", ...], ...]}, ...]}
// The client reads JINA_API_URL and JINA_API_KEY from the environment, as in LibreChat. timeout_ms null
// keeps the client's own default (10 s). Searches run one after another.
//
// Prints one JSON line per call on stdout: search, page, documents, latency_ms, fell_back and reason (from
// the client's own metrics hook: it falls back to page order with score 0 on a timeout or any error and
// says why there), status and the X-Rerank-Scored header (read by an interceptor on the axios instance the
// client posts with), tokens (usage.total_tokens), results, top_score.
import { readdirSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join, resolve } from "node:path";
import { performance } from "node:perf_hooks";

const SEARCH_DIR = "node_modules/@librechat/agents/dist/cjs/tools/search";

/** The installed file that exports createReranker (rerankers.cjs in 3.9.2). */
function rerankerModule(agentsDir) {
  const dir = resolve(agentsDir, SEARCH_DIR);
  const file = readdirSync(dir).filter((name) => name.endsWith(".cjs")).sort()
    .find((name) => readFileSync(join(dir, name), "utf8").includes("exports.createReranker ="));
  if (!file) throw new Error(`no module exporting createReranker in ${dir}`);
  return join(dir, file);
}

const quiet = { debug() {}, info() {}, warn() {}, error() {} };

async function main(jobPath) {
  const job = JSON.parse(readFileSync(jobPath, "utf8"));
  const modulePath = rerankerModule(job.agents_dir);
  const load = createRequire(modulePath);
  const { createReranker } = load(modulePath);
  const axios = load("axios"); // the same instance the client's axios.post goes through

  // In-flight calls by their documents (axios copies the request body into its config, so by content), then by
  // the request's config, which the response carries.
  const byDocuments = new Map();
  const byConfig = new WeakMap();
  axios.interceptors.request.use((config) => {
    const record = byDocuments.get(JSON.stringify(config.data?.documents));
    if (record) byConfig.set(config, record);
    return config;
  });
  const note = (response) => {
    const record = response && byConfig.get(response.config);
    if (record) {
      record.status = response.status;
      record.scored_header = response.headers?.["x-rerank-scored"] ?? null;
    }
  };
  axios.interceptors.response.use((response) => { note(response); return response; },
    (error) => { note(error?.response); return Promise.reject(error); });

  const reranker = createReranker({
    rerankerType: "jina", jinaApiKey: process.env.JINA_API_KEY, jinaApiUrl: process.env.JINA_API_URL,
    rerankerTimeout: job.timeout_ms ?? undefined, logger: quiet,
  });
  const topN = job.top_n ?? 5;

  async function call(search, page, query, documents) {
    const record = { search, page, documents: documents.length, latency_ms: null, fell_back: false, reason: null,
                     error: null, status: null, scored_header: null, tokens: null, results: 0, top_score: null };
    const key = JSON.stringify(documents);
    byDocuments.set(key, record);
    const metrics = {
      recordRerank(event) {
        record.fell_back = event.reason != null;
        record.reason = event.reason ?? null;
        record.error = event.error ?? null;
        record.tokens = event.units ?? null;
      },
    };
    const started = performance.now();
    const highlights = await reranker.rerank(query, documents, topN, metrics);
    record.latency_ms = Math.round((performance.now() - started) * 10) / 10;
    record.results = highlights?.length ?? 0;
    record.top_score = highlights?.[0]?.score ?? null;
    byDocuments.delete(key);
    process.stdout.write(`${JSON.stringify(record)}\n`);
  }

  for (const [s, { query, pages }] of job.searches.entries()) {
    await Promise.all(pages.map((documents, page) => call(s, page, query, documents)));
  }
}

await main(process.argv[2]);
