"""Per-caller limits and spend, and the result cache's entries, in Redis shared by replicas
(docs/callers.md#shared-by-replicas-redis). `admit` and `finish` are one Lua script each: one round
trip, atomic. A concurrency slot is a lease that expires, so a dead replica frees its slots.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal

from rerank.server._errors import LimitsUnavailable
from rerank.server._limits import (
    CallerLimits,
    DailyUsage,
    Granted,
    InMemoryLimitStore,
    Refused,
    bucket_size,
    charged_nanos,
    from_nanos,
    refusal,
    to_nanos,
    utc_day,
)
from rerank.server._redis_client import RedisClient, RedisError, Script

logger = logging.getLogger(__name__)

KEY_PREFIX = "rerank:limits"
#: A day's usage is kept this long after its last change: today's and yesterday's stay.
DAY_SECONDS_KEPT = 2 * 86_400

# KEYS: bucket, leases, today's usage. ARGV: now (ms), rate per second, bucket size, slots,
# budget in nano-dollars ("" = none, for each limit), lease id, lease lifetime (ms), seconds a
# day's usage is kept. Returns {"granted" or the limit met, retry after (ms), today's spend}.
# Every check runs before anything is taken; a replica whose clock is behind refills nothing.
_ADMIT = Script("""
local now, rate, size = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local slots, budget = tonumber(ARGV[4]), tonumber(ARGV[5])
local spent = redis.call('HGET', KEYS[3], 'spent') or '0'
local function counted(field, decision, wait)
  redis.call('HINCRBY', KEYS[3], field, 1)
  redis.call('EXPIRE', KEYS[3], ARGV[8])
  return {decision, wait, spent}
end
if budget and tonumber(spent) >= budget then
  return counted('refused', 'budget', 0)
end
if slots then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  if redis.call('ZCARD', KEYS[2]) >= slots then
    return counted('refused', 'slots', 0)
  end
end
if rate then
  local bucket = redis.call('HMGET', KEYS[1], 'tokens', 'at')
  local tokens, at = tonumber(bucket[1]) or size, tonumber(bucket[2]) or now
  if now > at then
    tokens, at = math.min(size, tokens + (now - at) * rate / 1000), now
  end
  if tokens < 1 then
    return counted('refused', 'rate', math.ceil((1 - tokens) * 1000 / rate))
  end
  tokens = tokens - 1
  redis.call('HSET', KEYS[1], 'tokens', tokens, 'at', at)
  redis.call('PEXPIRE', KEYS[1], math.ceil((size - tokens) * 1000 / rate) + 1000)
end
if slots then
  local lifetime = tonumber(ARGV[7])
  redis.call('ZADD', KEYS[2], now + lifetime, ARGV[6])
  redis.call('PEXPIRE', KEYS[2], lifetime)
end
return counted('calls', 'granted', 0)
""")

# KEYS: leases, the day's usage. ARGV: lease id ("" = none), nano-dollars spent, calls and
# refusals to add (counts made during an outage), seconds a day's usage is kept.
_FINISH = Script("""
if ARGV[1] ~= '' then
  redis.call('ZREM', KEYS[1], ARGV[1])
end
for i, name in ipairs({'spent', 'calls', 'refused'}) do
  if ARGV[i + 1] ~= '0' then
    redis.call('HINCRBY', KEYS[2], name, ARGV[i + 1])
    redis.call('EXPIRE', KEYS[2], ARGV[5])
  end
end
return 1
""")


def _key(caller: str, what: str) -> str:
    return f"{KEY_PREFIX}:{{{caller}}}:{what}"


# The caller hears that the limits are away, not where they live.
_UNAVAILABLE = "per-caller limits cannot be checked now; retry later"


class RedisLimitStore:
    """A `limits.LimitStore` in Redis; raises `LimitsUnavailable` when Redis cannot answer."""

    def __init__(self, client: RedisClient, *, lease_seconds: float) -> None:
        self._client = client
        self._lease_ms = max(1, round(lease_seconds * 1000))
        # Lease ids unique across replicas: this process's random prefix, then a count.
        self._lease_prefix = secrets.token_hex(6)
        self._lease_ids = itertools.count(1)

    async def admit(self, caller: str, limits: CallerLimits, *, now: float) -> Granted | Refused:
        return (await self.admit_seeing_spend(caller, limits, now=now))[0]

    async def admit_seeing_spend(
        self, caller: str, limits: CallerLimits, *, now: float
    ) -> tuple[Granted | Refused, int]:
        """`admit`'s decision, and the caller's spend today (nano-dollars) as Redis holds it."""
        rate, slots = limits.requests_per_second, limits.max_concurrent_calls
        budget = limits.daily_budget_usd
        lease = f"{self._lease_prefix}.{next(self._lease_ids)}" if slots is not None else ""
        try:
            decision, wait_ms, spent = await self._client.run(
                _ADMIT,
                (
                    _key(caller, "bucket"),
                    _key(caller, "leases"),
                    _key(caller, f"day:{utc_day(now)}"),
                ),
                (
                    round(now * 1000),
                    "" if rate is None else rate,
                    "" if rate is None else bucket_size(limits),
                    "" if slots is None else slots,
                    "" if budget is None else to_nanos(budget),
                    lease,
                    self._lease_ms,
                    DAY_SECONDS_KEPT,
                ),
            )
        except RedisError as error:
            raise LimitsUnavailable(_UNAVAILABLE) from error
        if decision == b"granted":
            return Granted(lease=lease), int(spent)
        return refusal(decision.decode(), now, wait_ms / 1000), int(spent)

    async def finish(self, caller: str, lease: str, cost: Decimal | None, *, now: float) -> None:
        await self.add(caller, utc_day(now), lease=lease, spent_nanos=charged_nanos(cost))

    async def add(
        self,
        caller: str,
        day: str,
        *,
        lease: str = "",
        spent_nanos: int = 0,
        calls: int = 0,
        refused: int = 0,
    ) -> None:
        """Release `lease` and add to `day`'s usage, in one round trip (if there is any)."""
        if not lease and not (spent_nanos or calls or refused):
            return
        try:
            await self._client.run(
                _FINISH,
                (_key(caller, "leases"), _key(caller, f"day:{day}")),
                (lease, spent_nanos, calls, refused, DAY_SECONDS_KEPT),
            )
        except RedisError as error:
            raise LimitsUnavailable(_UNAVAILABLE) from error

    async def usage(self, caller: str, *, now: float) -> DailyUsage:
        day = utc_day(now)
        try:
            spent, calls, refused = await self._client.call(
                "HMGET", _key(caller, f"day:{day}"), "spent", "calls", "refused"
            )
        except RedisError as error:
            raise LimitsUnavailable(_UNAVAILABLE) from error
        return DailyUsage(day, from_nanos(int(spent or 0)), int(calls or 0), int(refused or 0))

    async def aclose(self) -> None:
        await self._client.aclose()


#: Prefix of the leases `FailOpenLimitStore` grants from its in-process store.
_LOCAL = "local:"


@dataclass
class _Outage:
    """What was decided here while Redis was away, to hand back once it returns: `counts` are
    [nano-dollars, calls, refusals] by (caller, day); `number` names the outage in its leases,
    so that one outliving it is not released in the next outage's `store`."""

    number: int
    store: InMemoryLimitStore = field(default_factory=InMemoryLimitStore)
    counts: dict[tuple[str, str], list[int]] = field(default_factory=dict)

    def count(
        self, caller: str, day: str, *, spent: int = 0, calls: int = 0, refused: int = 0
    ) -> None:
        counted = self.counts.setdefault((caller, day), [0, 0, 0])
        for i, n in enumerate((spent, calls, refused)):
            counted[i] += n


class FailOpenLimitStore:
    """Limits in Redis that do not take the service down with it (docs/callers.md): while
    Redis cannot answer, an in-process store decides, the budget against the spend Redis last
    reported plus what was charged here since; counted meanwhile, then handed back."""

    def __init__(
        self,
        primary: RedisLimitStore,
        on_local_decision: Callable[[], None] | None = None,
    ) -> None:
        self._primary = primary
        self._on_local_decision = on_local_decision
        self._outage: _Outage | None = None
        self._outages = itertools.count(1)
        self._spent_seen: dict[str, tuple[str, int]] = {}

    async def admit(self, caller: str, limits: CallerLimits, *, now: float) -> Granted | Refused:
        try:
            await self._hand_back()
            decision, spent = await self._primary.admit_seeing_spend(caller, limits, now=now)
        except LimitsUnavailable:
            return await self._admit_here(caller, limits, now)
        self._spent_seen[caller] = (utc_day(now), spent)
        return decision

    async def _admit_here(self, caller: str, limits: CallerLimits, now: float) -> Granted | Refused:
        outage = self._outage_now()
        if self._on_local_decision is not None:
            self._on_local_decision()
        day = utc_day(now)
        budget = limits.daily_budget_usd
        if budget is not None:
            seen_day, seen = self._spent_seen.get(caller, (day, 0))
            counted = outage.counts.get((caller, day), [0, 0, 0])
            spent = (seen if seen_day == day else 0) + counted[0]
            limits = dataclasses.replace(limits, daily_budget_usd=budget - from_nanos(spent))
        decision = await outage.store.admit(caller, limits, now=now)
        if isinstance(decision, Refused):
            outage.count(caller, day, refused=1)
            return decision
        outage.count(caller, day, calls=1)
        return Granted(lease=f"{_LOCAL}{outage.number}:{decision.lease}")

    async def finish(self, caller: str, lease: str, cost: Decimal | None, *, now: float) -> None:
        if lease.startswith(_LOCAL):
            number, _, local_lease = lease[len(_LOCAL) :].partition(":")
            if self._outage is not None and str(self._outage.number) == number:
                await self._outage.store.finish(caller, local_lease, None, now=now)
            lease = ""
        day = utc_day(now)
        spent = charged_nanos(cost)
        try:
            await self._primary.add(caller, day, lease=lease, spent_nanos=spent)
        except LimitsUnavailable:
            # A Redis lease expires there by itself; the cost is kept here, to hand back.
            if spent:
                self._outage_now().count(caller, day, spent=spent)
            return
        self._saw_spent(caller, day, spent)

    async def usage(self, caller: str, *, now: float) -> DailyUsage:
        """Today's usage as Redis holds it; `LimitsUnavailable` while it is away (one process's
        figure would be wrong, not merely late)."""
        await self._hand_back()
        return await self._primary.usage(caller, now=now)

    def _outage_now(self) -> _Outage:
        if self._outage is None:
            self._outage = _Outage(next(self._outages))
        return self._outage

    async def _hand_back(self) -> None:
        """Hand what was counted here to Redis and end the outage, or `LimitsUnavailable`."""
        outage = self._outage
        if outage is None:
            return
        while outage.counts:
            (caller, day), (spent, calls, refused) = outage.counts.popitem()
            try:
                await self._primary.add(
                    caller, day, spent_nanos=spent, calls=calls, refused=refused
                )
            except LimitsUnavailable:
                self._outage_now().count(caller, day, spent=spent, calls=calls, refused=refused)
                raise
            self._saw_spent(caller, day, spent)
        if self._outage is outage:
            self._outage = None

    def _saw_spent(self, caller: str, day: str, nanos: int) -> None:
        seen_day, seen = self._spent_seen.get(caller, (day, 0))
        if seen_day == day:
            self._spent_seen[caller] = (day, seen + nanos)

    async def aclose(self) -> None:
        await self._primary.aclose()


CACHE_KEY_PREFIX = "rerank:cache:"


class RedisCacheEntries:
    """`CacheEntries` in Redis, each expiring after `ttl`; a Redis that cannot answer is a
    miss. `shares_limits`: that Redis holds limits too, which must never be evicted for answers,
    so the cache keeps nothing in one that may evict (docs/callers.md, "Eviction")."""

    def __init__(self, client: RedisClient, *, ttl: float, shares_limits: bool) -> None:
        self._client = client
        self._ttl_ms = max(1, round(ttl * 1000))
        self._allowed: bool | None = None if shares_limits else True

    async def get(self, key: bytes) -> bytes | None:
        if not await self._may_use():
            return None
        try:
            blob: bytes | None = await self._client.call("GET", CACHE_KEY_PREFIX + key.hex())
        except RedisError:
            return None
        return blob

    async def put(self, key: bytes, blob: bytes) -> None:
        if not await self._may_use():
            return
        try:
            await self._client.call("SET", CACHE_KEY_PREFIX + key.hex(), blob, "PX", self._ttl_ms)
        except RedisError:
            return

    async def clear(self) -> None:
        cursor = b"0"
        with contextlib.suppress(RedisError):
            while True:
                cursor, keys = await self._client.call(
                    "SCAN", cursor, "MATCH", CACHE_KEY_PREFIX + "*", "COUNT", 1000
                )
                if keys:
                    await self._client.call("UNLINK", *keys)
                if cursor == b"0":
                    return

    async def _may_use(self) -> bool:
        if self._allowed is None:
            try:
                info: bytes = await self._client.call("INFO", "memory")
            except RedisError:
                return False  # asked again on the next call
            memory = dict(line.split(":", 1) for line in info.decode().splitlines() if ":" in line)
            policy = memory.get("maxmemory_policy", "unknown").strip()
            limit = memory.get("maxmemory", "").strip()
            self._allowed = limit == "0" or policy == "noeviction"
            if not self._allowed:
                logger.error(
                    "the result cache keeps nothing in Redis at %s: it holds callers' limits "
                    "and spend and may evict keys (maxmemory %s, maxmemory-policy %s); give "
                    "the cache a Redis of its own (RERANK_CACHE_REDIS_URL), or set "
                    "maxmemory-policy noeviction",
                    self._client.url,
                    limit or "unknown",
                    policy,
                )
        return self._allowed

    async def aclose(self) -> None:
        await self._client.aclose()
