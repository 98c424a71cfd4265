// Calls rerank.v1.RerankService from Node with the stubs `make stubs` generates (Connect-ES v2),
// over the gRPC protocol, and prints the AI SDK-style JSON result.
//
//   node --import tsx src/rerank.ts --target 127.0.0.1:50051
//
// With no other argument it runs the seed example; `--query`, `--model`, `--top-n`,
// `--provider-options` and documents as arguments override it. `--no-documents` asks the server
// not to send the documents back (`returnDocuments: false`): the answer is indices and scores,
// and the documents are filled in from the ones sent, as the Python client does. A non-OK status
// prints `CODE: message` on stderr and exits 2 for INVALID_ARGUMENT, 1 for anything else (as the
// Python `rerank` command does).
//
//   node --import tsx src/rerank.ts --target 127.0.0.1:50051 --batch queries.jsonl
//
// `--batch FILE` sends every line of FILE (JSON: `{"query", "documents"[, "model", "topN",
// "providerOptions", "bypassCache"]}`, `--model` when a line names none) in one BatchRerank call
// and prints one JSON line per query, in order: the result, or `{"error": {"code", "message",
// "details"}}` for a query that failed (`details`: the type names of its google.rpc details).
// `--no-documents` applies to every query. Exit 1 when any query failed, as the Python
// `rerank --batch` does.

import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { create, type JsonObject, type MessageInitShape } from "@bufbuild/protobuf";
import { type Client, type Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { type Status, StatusSchema } from "./gen/google/rpc/status_pb.js";
import {
  type Document,
  type RerankRequestSchema,
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
    "no-documents": { type: "boolean", default: false },
    // JSON lines, one query with its documents each: sent as one BatchRerank call.
    batch: { type: "string" },
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

/** The AI SDK's `rerank()` result shape, as the Python client prints it. A ranked entry the
 * server sent without its document (`returnDocuments: false`) gets it from `sent`. */
function resultJson(response: RerankResponse, sent: readonly unknown[]) {
  const ranking = response.ranking.map((entry) => ({
    originalIndex: entry.originalIndex,
    score: entry.score,
    document: entry.document ? documentJson(entry.document) : sent[entry.originalIndex],
  }));
  return {
    ranking,
    rerankedDocuments: ranking.map((entry) => entry.document),
    model: response.model,
    id: response.id,
    warnings: response.warnings.map(warningJson),
    providerMetadata: response.providerMetadata ?? null,
    cached: response.cached,
    // What the call spent: `cost` a decimal string in USD ("" when the gateway reported none:
    // unknown, not free), `upstreamCalls` every window and retried attempt.
    usage: response.usage
      ? { cost: response.usage.cost || null, upstreamCalls: response.usage.upstreamCalls }
      : null,
  };
}

/** One line of a `--batch` file. */
interface BatchLine {
  query: string;
  documents: (string | JsonObject)[];
  model?: string;
  topN?: number;
  providerOptions?: JsonObject;
  bypassCache?: boolean;
}

/** A `--batch` file that cannot be read: reported in one line, exit 2. */
class InputError extends Error {}

function parseLine(line: string, where: string): BatchLine {
  try {
    return JSON.parse(line) as BatchLine;
  } catch (error) {
    throw new InputError(`${where}: invalid JSON: ${(error as Error).message}`);
  }
}

function readBatch(path: string): string {
  try {
    return readFileSync(path, "utf8");
  } catch (error) {
    throw new InputError(`cannot read ${path}: ${(error as Error).message}`);
  }
}

/** The `--batch` file's lines, each with its request. */
function batchLines(
  path: string,
): { line: BatchLine; request: MessageInitShape<typeof RerankRequestSchema> }[] {
  return readBatch(path)
    .split("\n")
    .map((line, index) => ({ line, where: `${path}:${index + 1}` }))
    .filter(({ line }) => line.trim() !== "")
    .map(({ line, where }) => {
      const parsed = parseLine(line, where);
      const { query, documents, model, topN, providerOptions, bypassCache } = parsed;
      const request: MessageInitShape<typeof RerankRequestSchema> = {
        query,
        model: model ?? values.model,
        documents: documents.map((document) =>
          typeof document === "string"
            ? { content: { case: "text", value: document } }
            : { content: { case: "object", value: document } },
        ),
        topN,
        providerOptions,
        bypassCache,
        returnDocuments: values["no-documents"] ? false : undefined,
      };
      return { line: parsed, request };
    });
}

/**
 * The error a Rerank of this request alone would have thrown: a `google.rpc.Status` is what a
 * failed call carries in `grpc-status-details-bin`, so this is the ConnectError Connect builds
 * from one, its details still packed (`findDetails` decodes them given their schemas).
 */
function statusError(status: Status): ConnectError {
  const error = new ConnectError(status.message, status.code as Code);
  error.details = status.details.map((detail) => ({
    type: detail.typeUrl.slice(detail.typeUrl.lastIndexOf("/") + 1),
    value: detail.value,
  }));
  return error;
}

/** The `--batch` call: one JSON line per query on stdout; the exit status. */
async function batch(client: Client<typeof RerankService>, path: string): Promise<number> {
  const lines = batchLines(path);
  const { results } = await client.batchRerank(
    { requests: lines.map(({ request }) => request) },
    { timeoutMs: Number(values["timeout-ms"]) },
  );
  const failures: string[] = [];
  results.forEach((item, position) => {
    if (item.result.case === "response") {
      const sent = lines[position]?.line.documents ?? [];
      process.stdout.write(`${JSON.stringify(resultJson(item.result.value, sent))}\n`);
      return;
    }
    // Neither set: a newer server's kind of result, or a broken one; this answer is unknown.
    const unknown = { code: 2, message: "the server sent neither a response nor an error" };
    const error = statusError(
      item.result.case === "error" ? item.result.value : create(StatusSchema, unknown),
    );
    const code = statusName(error.code);
    const details = error.details.map((detail) => ("type" in detail ? detail.type : ""));
    process.stdout.write(
      `${JSON.stringify({ error: { code, message: error.rawMessage, details } })}\n`,
    );
    failures.push(`requests[${position}]: ${code}: ${error.rawMessage}`);
  });
  if (failures.length === 0) return 0;
  process.stderr.write(
    `rerank-example: ${failures.length} of ${results.length} requests failed: ${failures.join("; ")}\n`,
  );
  return 1;
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
    if (values.batch !== undefined) return await batch(client, values.batch);
    const response = await client.rerank(
      {
        model: values.model,
        query: values.query,
        documents: documents.map((text) => ({ content: { case: "text", value: text } })),
        topN: Number(values["top-n"]),
        providerOptions: values["provider-options"]
          ? (JSON.parse(values["provider-options"]) as JsonObject)
          : undefined,
        // Unset (undefined) echoes the documents, as before the field existed.
        returnDocuments: values["no-documents"] ? false : undefined,
      },
      { timeoutMs: Number(values["timeout-ms"]) },
    );
    process.stdout.write(`${JSON.stringify(resultJson(response, documents))}\n`);
    return 0;
  } catch (error) {
    if (error instanceof InputError) {
      process.stderr.write(`rerank-example: error: ${(error as Error).message}\n`);
      return 2;
    }
    const err = ConnectError.from(error);
    process.stderr.write(`rerank-example: ${statusName(err.code)}: ${err.rawMessage}\n`);
    return statusName(err.code) === "INVALID_ARGUMENT" ? 2 : 1;
  }
}

process.exitCode = await main();
