// The retry policy of a gRPC service config, as a Connect interceptor.
//
// Connect-ES has no gRPC service config, so this reads the project's default one
// (protos/rerank/v1/service_config.json) and applies its `retryPolicy` the way gRPC clients do
// (gRFC A6): at most `maxAttempts` attempts (capped at 5), only for `retryableStatusCodes`, after
// a random wait in [0, min(initialBackoff × backoffMultiplier^(n-1), maxBackoff)], or exactly
// the server's `grpc-retry-pushback-ms` when it sends one (a negative or malformed pushback
// means "do not retry"). The call's deadline (`timeoutMs`) covers every attempt and every wait.
//
// Not carried over: `loadBalancingConfig` (round_robin) has no equivalent here, since the Node
// transport keeps one HTTP/2 connection to the target's address; `waitForReady: false` is what
// Connect does anyway (fail fast). Only unary calls are retried: the service has no streams.

import { readFileSync } from "node:fs";
import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";

/** gRPC status names by code number; Connect's `Code` uses the same numbers. */
const STATUS_NAMES = [
  "OK",
  "CANCELLED",
  "UNKNOWN",
  "INVALID_ARGUMENT",
  "DEADLINE_EXCEEDED",
  "NOT_FOUND",
  "ALREADY_EXISTS",
  "PERMISSION_DENIED",
  "RESOURCE_EXHAUSTED",
  "FAILED_PRECONDITION",
  "ABORTED",
  "OUT_OF_RANGE",
  "UNIMPLEMENTED",
  "INTERNAL",
  "UNAVAILABLE",
  "DATA_LOSS",
  "UNAUTHENTICATED",
] as const;

/** The gRPC name of a status code, e.g. `INVALID_ARGUMENT`. */
export function statusName(code: Code): string {
  return STATUS_NAMES[code] ?? `CODE_${code}`;
}

/** A service config's `retryPolicy`, with durations in milliseconds. */
export interface RetryPolicy {
  maxAttempts: number;
  initialBackoffMs: number;
  maxBackoffMs: number;
  backoffMultiplier: number;
  retryableCodes: ReadonlySet<Code>;
}

interface MethodConfig {
  name?: { service?: string; method?: string }[];
  retryPolicy?: {
    maxAttempts: number;
    initialBackoff: string;
    maxBackoff: string;
    backoffMultiplier: number;
    retryableStatusCodes: (string | number)[];
  };
}

export interface ServiceConfig {
  methodConfig?: MethodConfig[];
}

/** Reads a gRPC service config JSON file. */
export function loadServiceConfig(path: string): ServiceConfig {
  return JSON.parse(readFileSync(path, "utf8")) as ServiceConfig;
}

/** "0.1s" → 100. The service config's durations are JSON `Duration`s: seconds with an `s`. */
function durationMs(value: string): number {
  const match = /^(\d+(?:\.\d+)?)s$/.exec(value);
  if (!match) throw new Error(`service config: not a duration: ${JSON.stringify(value)}`);
  return Number(match[1]) * 1000;
}

function statusCode(value: string | number): Code {
  const code = typeof value === "number" ? value : STATUS_NAMES.indexOf(value as never);
  if (code < 1 || code >= STATUS_NAMES.length) {
    throw new Error(`service config: not a retryable status: ${JSON.stringify(value)}`);
  }
  return code as Code;
}

/**
 * The retry policy for one method: the most specific `methodConfig` entry wins
 * (service + method, then service alone, then the empty name), as in gRPC.
 */
export function retryPolicyFor(
  config: ServiceConfig,
  service: string,
  method: string,
): RetryPolicy | undefined {
  const rank = (entry: MethodConfig): number => {
    let best = -1;
    for (const name of entry.name ?? []) {
      if (name.service === service && name.method === method) best = Math.max(best, 2);
      else if (name.service === service && !name.method) best = Math.max(best, 1);
      else if (!name.service && !name.method) best = Math.max(best, 0);
    }
    return best;
  };
  const entry = [...(config.methodConfig ?? [])]
    .filter((candidate) => rank(candidate) >= 0)
    .sort((a, b) => rank(b) - rank(a))[0];
  const policy = entry?.retryPolicy;
  if (!policy) return undefined;
  return {
    maxAttempts: Math.min(policy.maxAttempts, 5),
    initialBackoffMs: durationMs(policy.initialBackoff),
    maxBackoffMs: durationMs(policy.maxBackoff),
    backoffMultiplier: policy.backoffMultiplier,
    retryableCodes: new Set(policy.retryableStatusCodes.map(statusCode)),
  };
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) return reject(ConnectError.from(signal.reason));
    const onAbort = () => {
      clearTimeout(timer);
      reject(ConnectError.from(signal.reason));
    };
    const timer = setTimeout(() => {
      signal.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal.addEventListener("abort", onAbort, { once: true });
  });
}

/** An interceptor that retries unary calls as the service config's `retryPolicy` says. */
export function retryInterceptor(config: ServiceConfig): Interceptor {
  return (next) => async (req) => {
    const policy = req.stream
      ? undefined
      : retryPolicyFor(config, req.service.typeName, req.method.name);
    if (!policy) return next(req);
    let backoffMs = policy.initialBackoffMs;
    for (let attempt = 1; ; attempt++) {
      try {
        return await next(req);
      } catch (error) {
        const err = ConnectError.from(error);
        if (attempt >= policy.maxAttempts || !policy.retryableCodes.has(err.code)) throw err;
        if (req.signal.aborted) throw err;
        const pushback = err.metadata.get("grpc-retry-pushback-ms");
        let waitMs: number;
        if (pushback !== null) {
          if (!/^\d+$/.test(pushback)) throw err; // the server asks us not to retry
          waitMs = Number(pushback);
          backoffMs = policy.initialBackoffMs;
        } else {
          waitMs = Math.random() * Math.min(backoffMs, policy.maxBackoffMs);
          backoffMs = Math.min(backoffMs * policy.backoffMultiplier, policy.maxBackoffMs);
        }
        await sleep(waitMs, req.signal);
      }
    }
  };
}
