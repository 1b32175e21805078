"""The Lua scripts of the Redis store (:mod:`rollout._store.redis`), one per operation that
reads and then writes, so that each is atomic in Redis. ``ARGV[1]`` of every script is the
key prefix; times are Redis's own (``TIME``), in milliseconds."""

from __future__ import annotations

__all__ = ["SOURCES"]

# Shared Lua: the current Redis time in ms, and whether a phase is unfinished.
_LUA_HEAD = """
local P = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function unfinished(phase) return phase == 'queued' or phase == 'running' end
"""

_CLAIM = (
    _LUA_HEAD
    + """
-- ARGV: prefix, id, digest, key, server_url, api_key, has_key(0/1), owner, messages
local id, key, owner = ARGV[2], ARGV[4], ARGV[8]
if key ~= '' then
    local other = redis.call('GET', P .. 'k:' .. key)
    if other then
        local digest = redis.call('HGET', P .. 'r:' .. other, 'digest')
        if digest then return {other, digest, 0} end
    end
end
local digest = redis.call('HGET', P .. 'r:' .. id, 'digest')
if digest then return {id, digest, 0} end
redis.call('HSET', P .. 'r:' .. id, 'digest', ARGV[3], 'key', key, 'server_url', ARGV[5],
    'owner', owner, 'phase', 'queued', 'turns', 0, 'prompt_tokens', 0,
    'completion_tokens', 0, 'messages', ARGV[9], 'cancel', 0, 'created', now, 'updated', now)
if ARGV[7] == '1' then redis.call('HSET', P .. 'r:' .. id, 'api_key', ARGV[6]) end
if key ~= '' then redis.call('SET', P .. 'k:' .. key, id) end
redis.call('SADD', P .. 'owned:' .. owner, id)
redis.call('ZADD', P .. 'active', now, id)
return {id, ARGV[3], 1}
"""
)

_SAVE_PROGRESS = (
    _LUA_HEAD
    + """
-- ARGV: prefix, owner, then per snapshot: id, phase, turns, ptok, ctok, has_messages, messages
local owner = ARGV[2]
for i = 3, #ARGV, 7 do
    local r = P .. 'r:' .. ARGV[i]
    local fields = redis.call('HMGET', r, 'owner', 'phase')
    if fields[1] == owner and unfinished(fields[2]) then
        redis.call('HSET', r, 'phase', ARGV[i + 1], 'turns', ARGV[i + 2],
            'prompt_tokens', ARGV[i + 3], 'completion_tokens', ARGV[i + 4], 'updated', now)
        if ARGV[i + 5] == '1' then redis.call('HSET', r, 'messages', ARGV[i + 6]) end
    end
end
return 0
"""
)

_KEEP_RESULT = (
    _LUA_HEAD
    + """
-- ARGV: prefix, id, owner, result, outcome, has_progress, turns, ptok, ctok
local r = P .. 'r:' .. ARGV[2]
local fields = redis.call('HMGET', r, 'owner', 'phase')
if fields[1] ~= ARGV[3] or not unfinished(fields[2]) then return 0 end
redis.call('HSET', r, 'phase', 'delivering', 'result', ARGV[4], 'outcome', ARGV[5],
    'updated', now)
if ARGV[6] == '1' then
    redis.call('HSET', r, 'turns', ARGV[7], 'prompt_tokens', ARGV[8],
        'completion_tokens', ARGV[9])
end
redis.call('SREM', P .. 'cancels:' .. ARGV[3], ARGV[2])
return 1
"""
)

_FINISH = (
    _LUA_HEAD
    + """
-- ARGV: prefix, id, phase, ttl_ms, outcome ('' keeps it)
local id = ARGV[2]
local r = P .. 'r:' .. id
local fields = redis.call('HMGET', r, 'owner', 'key')
if not fields[1] then return 0 end
redis.call('HDEL', r, 'api_key', 'messages', 'result')
redis.call('HSET', r, 'phase', ARGV[3], 'cancel', 0, 'updated', now)
if ARGV[5] ~= '' then redis.call('HSET', r, 'outcome', ARGV[5]) end
redis.call('PEXPIRE', r, ARGV[4])
if fields[2] ~= '' then redis.call('PEXPIRE', P .. 'k:' .. fields[2], ARGV[4]) end
redis.call('ZREM', P .. 'active', id)
redis.call('SREM', P .. 'owned:' .. fields[1], id)
redis.call('SREM', P .. 'cancels:' .. fields[1], id)
return 1
"""
)

_RELEASE_RESULT = (
    _LUA_HEAD
    + """
-- ARGV: prefix, id, owner
local r = P .. 'r:' .. ARGV[2]
if redis.call('HGET', r, 'owner') ~= ARGV[3] then return 0 end
redis.call('HSET', r, 'owner', '', 'updated', now)
redis.call('SMOVE', P .. 'owned:' .. ARGV[3], P .. 'owned:', ARGV[2])
return 1
"""
)

_RENEW = (
    _LUA_HEAD
    + """
-- ARGV: prefix, owner, ttl_ms
redis.call('ZADD', P .. 'workers', now + tonumber(ARGV[3]), ARGV[2])
return redis.call('SMEMBERS', P .. 'cancels:' .. ARGV[2])
"""
)

_TAKE_ORPHANS = (
    _LUA_HEAD
    + """
-- ARGV: prefix, owner, limit. Returns flat groups of 12 fields per orphan.
local me, limit = ARGV[2], tonumber(ARGV[3])
local dead = redis.call('ZRANGEBYSCORE', P .. 'workers', '-inf', now)
table.insert(dead, '')
local out, taken = {}, 0
for _, lost in ipairs(dead) do
    if lost ~= me then
        local ids = redis.call('SRANDMEMBER', P .. 'owned:' .. lost, limit - taken)
        for _, id in ipairs(ids) do
            local r = P .. 'r:' .. id
            redis.call('SMOVE', P .. 'owned:' .. lost, P .. 'owned:' .. me, id)
            if redis.call('HGET', r, 'owner') == lost then
                redis.call('HSET', r, 'owner', me, 'updated', now)
                redis.call('SREM', P .. 'cancels:' .. lost, id)
                local f = redis.call('HMGET', r, 'server_url', 'api_key', 'digest', 'key',
                    'result', 'messages', 'turns', 'prompt_tokens', 'completion_tokens', 'created')
                table.insert(out, id)
                table.insert(out, lost)
                for j = 1, 10 do table.insert(out, f[j] or false) end
                taken = taken + 1
            end
        end
        if lost ~= '' and redis.call('SCARD', P .. 'owned:' .. lost) == 0 then
            redis.call('ZREM', P .. 'workers', lost)
            redis.call('DEL', P .. 'cancels:' .. lost)
        end
        if taken >= limit then break end
    end
end
return out
"""
)

_REQUEST_CANCEL = (
    _LUA_HEAD
    + """
-- ARGV: prefix, mode ('ids', 'prefix', 'all'), then ids or the prefix
local ids = {}
if ARGV[2] == 'ids' then
    for i = 3, #ARGV do table.insert(ids, ARGV[i]) end
else
    local want = ARGV[3] or ''
    for _, id in ipairs(redis.call('ZRANGE', P .. 'active', 0, -1)) do
        if ARGV[2] == 'all' or string.sub(id, 1, #want) == want then table.insert(ids, id) end
    end
end
local marked = {}
for _, id in ipairs(ids) do
    local r = P .. 'r:' .. id
    local f = redis.call('HMGET', r, 'owner', 'phase', 'cancel')
    if f[1] and unfinished(f[2]) and f[3] ~= '1' then
        redis.call('HSET', r, 'cancel', 1, 'updated', now)
        redis.call('SADD', P .. 'cancels:' .. f[1], id)
        table.insert(marked, id)
    end
end
return marked
"""
)


SOURCES = {
    "claim": _CLAIM,
    "save_progress": _SAVE_PROGRESS,
    "keep_result": _KEEP_RESULT,
    "finish": _FINISH,
    "release_result": _RELEASE_RESULT,
    "renew": _RENEW,
    "take_orphans": _TAKE_ORPHANS,
    "request_cancel": _REQUEST_CANCEL,
}
