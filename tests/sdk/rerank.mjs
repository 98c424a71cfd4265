// One rerank() call through the AI SDK's gateway provider; prints the result as JSON.
//
//   node rerank.mjs --sdk 7 --base-url http://127.0.0.1:PORT/v4/ai --api-key KEY
//
// Without more options it runs the seed example (tests/conftest.py), top 2. --documents takes a
// JSON array (strings, or objects), --top-n a number or "none", --provider-options a JSON object;
// --team sets the SDK's teamIdOrSlug, --drop-authorization sends no bearer header (sdk.mjs).
// The warnings are what the SDK hands its warning logger (globalThis.AI_SDK_LOG_WARNINGS).
import { describe, load, options, print, provider } from "./sdk.mjs";

const values = options({
  model: { type: "string", default: "cohere/rerank-v3.5" },
  query: { type: "string", default: "What is the capital of France?" },
  documents: {
    type: "string",
    default: JSON.stringify([
      "Paris is the capital of France.",
      "Berlin is the capital of Germany.",
      "Madrid is the capital of Spain.",
    ]),
  },
  "top-n": { type: "string", default: "2" }, // "none": no topN
  "provider-options": { type: "string" },
});
const sdk = await load(values.sdk);
const warnings = [];
globalThis.AI_SDK_LOG_WARNINGS = (logged) => warnings.push(...logged.warnings);

try {
  const result = await sdk.ai.rerank({
    model: provider(sdk.ai, values).rerankingModel(values.model),
    query: values.query,
    documents: JSON.parse(values.documents),
    topN: values["top-n"] === "none" ? undefined : Number(values["top-n"]),
    providerOptions:
      values["provider-options"] === undefined ? undefined : JSON.parse(values["provider-options"]),
  });
  print({
    ranking: result.ranking,
    rerankedDocuments: result.rerankedDocuments,
    providerMetadata: result.providerMetadata,
    warnings,
    modelId: result.response.modelId,
  });
} catch (error) {
  print({ error: describe(error, sdk) });
  process.exitCode = 1;
}
