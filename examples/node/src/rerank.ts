// Calls rerank.v1.RerankService from Node with the stubs `make stubs` generates (Connect-ES v2),
// over the gRPC protocol, and prints the AI SDK-style JSON result.
//
//   node --import tsx src/rerank.ts --target 127.0.0.1:50051
//
// With no other argument it runs the seed example; `--query`, `--model`, `--top-n`,
// `--provider-options` and documents as arguments override it. A non-OK status prints `CODE: message` on stderr and
// exits 2 for INVALID_ARGUMENT, 1 for anything else (as the Python `rerank` command does).

import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import type { JsonObject } from "@bufbuild/protobuf";
import { ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import {
  type Document,
  RerankService,
  type RerankResponse,
  Warning_Type,
} from "./gen/rerank/v1/rerank_service_pb.js";
import { loadServiceConfig, retryInterceptor, statusName } from "./retry.js";

const SEED_QUERY = "What is the capital of France?";
const SEED_DOCUMENTS = [
  "Paris is the capital of France.",
  "Berlin is the capital of Germany.",
  "Madrid is the capital of Spain.",
];
const SEED_MODEL = "cohere/rerank-v3.5";
// The project's default client service config: retry UNAVAILABLE, round-robin.
const DEFAULT_SERVICE_CONFIG = fileURLToPath(
  new URL("../../../protos/rerank/v1/service_config.json", import.meta.url),
);

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    target: { type: "string", default: "127.0.0.1:50051" },
    query: { type: "string", default: SEED_QUERY },
    model: { type: "string", default: SEED_MODEL },
    "top-n": { type: "string", default: "2" },
    "timeout-ms": { type: "string", default: "30000" },
    "service-config": { type: "string", default: DEFAULT_SERVICE_CONFIG },
    // A JSON object forwarded as `providerOptions`, e.g. '{"cohere": {"maxTokensPerDoc": 512}}'.
    "provider-options": { type: "string" },
  },
});

function documentJson(document: Document | undefined): unknown {
  const content = document?.content;
  return content?.case === undefined ? null : content.value;
}

const WARNING_TYPES: Record<Warning_Type, string> = {
  [Warning_Type.UNSPECIFIED]: "other",
  [Warning_Type.UNSUPPORTED]: "unsupported",
  [Warning_Type.COMPATIBILITY]: "compatibility",
  [Warning_Type.OTHER]: "other",
  [Warning_Type.DEPRECATED]: "deprecated",
};

/** One warning as the AI SDK shows it (and the Python client prints it). */
function warningJson(warning: RerankResponse["warnings"][number]) {
  const type = WARNING_TYPES[warning.type] ?? "other";
  if (type === "other") return { type, message: warning.message };
  if (type === "deprecated") return { type, setting: warning.setting, message: warning.message };
  return {
    type,
    feature: warning.feature,
    ...(warning.details ? { details: warning.details } : {}),
  };
}

/** The AI SDK's `rerank()` result shape, as the Python client prints it. */
function resultJson(response: RerankResponse) {
  const ranking = response.ranking.map((entry) => ({
    originalIndex: entry.originalIndex,
    score: entry.score,
    document: documentJson(entry.document),
  }));
  return {
    ranking,
    rerankedDocuments: ranking.map((entry) => entry.document),
    model: response.model,
    id: response.id,
    warnings: response.warnings.map(warningJson),
    providerMetadata: response.providerMetadata ?? null,
  };
}

async function main(): Promise<number> {
  const target = values.target;
  const transport = createGrpcTransport({
    baseUrl: /^https?:\/\//.test(target) ? target : `http://${target}`,
    interceptors: [retryInterceptor(loadServiceConfig(values["service-config"]))],
  });
  const client = createClient(RerankService, transport);
  const documents = positionals.length > 0 ? positionals : SEED_DOCUMENTS;
  try {
    const response = await client.rerank(
      {
        model: values.model,
        query: values.query,
        documents: documents.map((text) => ({ content: { case: "text", value: text } })),
        topN: Number(values["top-n"]),
        providerOptions: values["provider-options"]
          ? (JSON.parse(values["provider-options"]) as JsonObject)
          : undefined,
      },
      { timeoutMs: Number(values["timeout-ms"]) },
    );
    process.stdout.write(`${JSON.stringify(resultJson(response))}\n`);
    return 0;
  } catch (error) {
    const err = ConnectError.from(error);
    process.stderr.write(`rerank-example: ${statusName(err.code)}: ${err.rawMessage}\n`);
    return statusName(err.code) === "INVALID_ARGUMENT" ? 2 : 1;
  }
}

process.exitCode = await main();
