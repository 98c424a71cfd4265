// What the scripts beside this file share: the two AI SDK generations that package.json pins side
// by side (npm aliases), the gateway provider built from the command line, and JSON output.
// Each script prints exactly one JSON document on stdout: the result, or {"error": ...} with exit
// status 1. The pytest tests in this folder run them (test_ai_sdk.py).
import { findPackageJSON } from "node:module";
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";

// `ai` re-exports createGateway from its own @ai-sdk/gateway; the pinned alias is that same
// release (test_ai_sdk.py checks), and gives the error classes to name a failure by.
export const GENERATIONS = {
  6: { ai: "ai-v6", gateway: "gateway-v3" },
  7: { ai: "ai-v7", gateway: "gateway-v4" },
};

const COMMON_OPTIONS = {
  sdk: { type: "string", default: "7" },
  "base-url": { type: "string" },
  "api-key": { type: "string" },
  team: { type: "string" },
  "drop-authorization": { type: "boolean", default: false },
};

/** The command line: the common options plus the script's own. */
export function options(own) {
  const { values } = parseArgs({ options: { ...COMMON_OPTIONS, ...own }, strict: true });
  if (!(values.sdk in GENERATIONS)) {
    fail(`--sdk must be one of ${Object.keys(GENERATIONS).join(", ")}, not ${values.sdk}`);
  }
  if (values.team !== undefined && values.sdk === "6") {
    fail("--team needs --sdk 7: @ai-sdk/gateway 3 has no teamIdOrSlug setting");
  }
  return values;
}

/** The generation's `ai` and `@ai-sdk/gateway` modules. */
export async function load(generation) {
  const names = GENERATIONS[generation];
  return { ai: await import(names.ai), gateway: await import(names.gateway) };
}

/**
 * The gateway provider as a user creates it: createGateway({ baseURL, apiKey }) from `ai`.
 * --drop-authorization sends no bearer header at all, through a custom fetch: with an empty key
 * the SDK fails before any request (it looks for an OIDC token instead).
 */
export function provider(ai, values) {
  const settings = { baseURL: values["base-url"], apiKey: values["api-key"] };
  if (values.team !== undefined) settings.teamIdOrSlug = values.team;
  if (values["drop-authorization"]) {
    settings.fetch = (url, init = {}) => {
      const headers = new Headers(init.headers);
      headers.delete("authorization");
      return fetch(url, { ...init, headers });
    };
  }
  return ai.createGateway(settings);
}

// Most specific first: every gateway error is also a GatewayError.
const GATEWAY_ERRORS = [
  "GatewayAuthenticationError",
  "GatewayInvalidRequestError",
  "GatewayForbiddenError",
  "GatewayModelNotFoundError",
  "GatewayNotFoundError",
  "GatewayFailedDependencyError",
  "GatewayRateLimitError",
  "GatewayInternalServerError",
  "GatewayResponseError",
  "GatewayError",
];

/** A thrown error as JSON: which SDK class it is (by the classes' own isInstance), and why. */
export function describe(error, { ai, gateway }) {
  if (ai.RetryError.isInstance(error)) {
    return {
      class: "RetryError",
      message: error.message,
      reason: error.reason,
      attempts: error.errors.length,
      lastError: describe(error.lastError, { ai, gateway }),
    };
  }
  const known = GATEWAY_ERRORS.find((name) => gateway[name]?.isInstance(error));
  return {
    class: known ?? (ai.APICallError.isInstance(error) ? "APICallError" : error?.name),
    message: error?.message,
    statusCode: error?.statusCode,
    type: error?.type,
    modelId: error?.modelId,
    isRetryable: error?.isRetryable,
  };
}

/** The versions installed for a generation, and the gateway release its `ai` itself imports. */
export function versions(generation) {
  const names = GENERATIONS[generation];
  const version = (path) => JSON.parse(readFileSync(path, "utf8")).version;
  const aiPackage = findPackageJSON(names.ai, import.meta.url);
  return {
    ai: version(aiPackage),
    gateway: version(findPackageJSON(names.gateway, import.meta.url)),
    aiImportsGateway: version(findPackageJSON("@ai-sdk/gateway", aiPackage)),
  };
}

export function print(value) {
  process.stdout.write(JSON.stringify(value) + "\n");
}

export function fail(message) {
  process.stderr.write(`${process.argv[1]}: ${message}\n`);
  process.exit(2);
}
