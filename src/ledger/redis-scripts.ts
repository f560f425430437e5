import { createHash } from 'node:crypto';
import type { Redis } from 'ioredis';
import { HISTORY_KEPT } from './ledger.js';

/**
 * The Lua scripts of the Redis ledger. Each one touches the keys of ONE hash slot only (the runs
 * registry, or the keys of one run, which share the run's hash tag), so they also run on Redis
 * Cluster. Amounts stay strings from end to end: Lua numbers are doubles and `tostring` prints
 * them with 14 digits, so an amount of 2^53-1 would come out as 9.007199254741e+15.
 *
 * A valid row is one field of the run's `rows` hash, its value `line|amount|currency|metadata`,
 * followed once an attempt or an outcome is recorded by
 * `|state|attempts|ambiguous|http|latency|chargeId|error|open|firstAt|budgetFrom` (text fields
 * escaped so they hold no `|`; the state is one letter, see STATE_LETTERS; rows written before
 * the last three fields existed end after `error`).
 */
export class LuaScript {
  readonly sha: string;
  constructor(readonly source: string) {
    this.sha = createHash('sha1').update(source).digest('hex');
  }

  /** Runs it by its SHA, or by its source when this Redis has not loaded it yet (NOSCRIPT). */
  async run(
    redis: Redis,
    keys: readonly string[],
    args: ReadonlyArray<string | number>,
  ): Promise<unknown> {
    try {
      return await redis.evalsha(this.sha, keys.length, ...keys, ...args);
    } catch (error) {
      if (!(error instanceof Error) || !error.message.startsWith('NOSCRIPT')) throw error;
      return await redis.eval(this.source, keys.length, ...keys, ...args);
    }
  }
}

// Where the four fixed fields of a row value end, its state letter ('p' when none is stored yet),
// and the tally moves of a state change: count per state and currency, and sum of amounts.
const ROW_HELPERS = `
local function split_row(value)
  local a = string.find(value, '|', 1, true)
  local b = string.find(value, '|', a + 1, true)
  local c = string.find(value, '|', b + 1, true)
  local d = string.find(value, '|', c + 1, true)
  local state, base = 'p', value
  if d then
    state = string.sub(value, d + 1, d + 1)
    base = string.sub(value, 1, d - 1)
  end
  return string.sub(value, 1, a - 1), string.sub(value, a + 1, b - 1),
    string.sub(value, b + 1, c - 1), state, base
end

-- Every field of a stored value: 1 line, 2 amount, 3 currency, 4 metadata, 5 state, 6 attempts,
-- 7 ambiguous, 8 http, 9 latency, 10 chargeId, 11 error, 12 open, 13 firstAt, 14 budgetFrom.
local function fields_of(value)
  local out, from = {}, 1
  while true do
    local at = string.find(value, '|', from, true)
    if not at then
      out[#out + 1] = string.sub(value, from)
      return out
    end
    out[#out + 1] = string.sub(value, from, at - 1)
    from = at + 1
  end
end

local function field(f, i, default)
  local v = f[i]
  if v == nil or v == '' then return default end
  return v
end

local function negated(amount)
  if string.sub(amount, 1, 1) == '-' then return string.sub(amount, 2) end
  return '-' .. amount
end

-- Text made safe for a row value (escapeText in redis-ledger.ts): no '|'.
local function escaped(text)
  return (string.gsub(text, '[|\\\\]', function(c) if c == '|' then return '\\\\p' end return '\\\\\\\\' end))
end

-- The refusals of a user met twice (duplicateReason in src/domain/charge.ts), escaped.
local function twice_reason(first_line)
  return 'user_id: appears twice (first on line ' .. first_line .. ')'
end
local function twin_reason(first_line, twin)
  return 'user_id: differs from line ' .. first_line .. "'s \\"" .. escaped(twin) ..
    '" only by case or Unicode normalization'
end
local function held_twin_reason(twin)
  return 'user_id: differs from "' .. escaped(twin) ..
    '", whom the run already holds, only by case or Unicode normalization'
end

-- The id of another valid row of this user's fold, or false. KEYS: rows, folds (fold -> id, for
-- the ids that are not their own fold); fold '' when the id is its own.
local function twin_of(rows, folds, user, fold)
  local twin = redis.call('HGET', folds, fold ~= '' and fold or user)
  if not twin and fold ~= '' and redis.call('HEXISTS', rows, fold) == 1 then twin = fold end
  if twin == user then return false end
  return twin
end

-- Appends an attempt to a charge's history (\`|\`-separated entries, see historyEntry in
-- redis-ledger.ts), keeping the latest ${HISTORY_KEPT}. An entry already kept is not added again:
-- a batch written again after a lost answer leaves the history as it was.
local function add_history(history, user, entry)
  local kept = redis.call('HGET', history, user)
  if not kept then
    redis.call('HSET', history, user, entry)
    return
  end
  if string.find('|' .. kept .. '|', '|' .. entry .. '|', 1, true) then return end
  local value = kept .. '|' .. entry
  local _, separators = string.gsub(value, '|', '|')
  local from = 1
  for _ = 1, separators + 1 - ${HISTORY_KEPT} do
    from = string.find(value, '|', from, true) + 1
  end
  redis.call('HSET', history, user, from > 1 and string.sub(value, from) or value)
end

local function move(tally, old, new, currency, amount)
  redis.call('HINCRBY', tally, 'n' .. old .. currency, -1)
  redis.call('HINCRBY', tally, 'n' .. new .. currency, 1)
  if amount ~= '0' then
    redis.call('HINCRBY', tally, 's' .. old .. currency, negated(amount))
    redis.call('HINCRBY', tally, 's' .. new .. currency, amount)
  end
end
`;

/**
 * Creates a run in the registry, importing, unless the id exists or (with known runs given) a run
 * was created since the caller looked: one script on one key, so two processes cannot both pass
 * the check. KEYS: runs. ARGV: runId, '1' when ARGV[4..] lists the known run ids else '0', the
 * record's JSON without its closing `"n":<order>}` (the script appends the creation order: one
 * more than any run's), then the known run ids.
 * Returns {'created', record} | {'exists', record} | {'unknown', runId, record}.
 */
export const CREATE_RUN = new LuaScript(`
local existing = redis.call('HGET', KEYS[1], ARGV[1])
if existing then return {'exists', existing} end
local known = {}
for i = 4, #ARGV do known[ARGV[i]] = true end
local newest = 0
local entries = redis.call('HGETALL', KEYS[1])
for i = 1, #entries, 2 do
  local run = cjson.decode(entries[i + 1])
  if run.n > newest then newest = run.n end
  if ARGV[2] == '1' and not known[entries[i]] then
    return {'unknown', entries[i], entries[i + 1]}
  end
end
local record = ARGV[3] .. string.format('%d', newest + 1) .. '}'
redis.call('HSET', KEYS[1], ARGV[1], record)
return {'created', record}
`);

/**
 * Compare-and-set of one hash field. KEYS: hash. ARGV: field, expected value ('' = absent), new
 * value ('' = delete). Returns 1 when it wrote, 0 when the field held something else.
 */
export const HASH_CAS = new LuaScript(`
local current = redis.call('HGET', KEYS[1], ARGV[1])
if (current or '') ~= ARGV[2] then return 0 end
if ARGV[3] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
end
return 1
`);

/** Compare-and-set of one string key; ARGV: expected ('' = absent), new ('' = delete). */
export const KEY_CAS = new LuaScript(`
local current = redis.call('GET', KEYS[1])
if (current or '') ~= ARGV[1] then return 0 end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], ARGV[2])
end
return 1
`);

// The data keys of a run: KEYS[1..4] = rows, order, invalid, tally; KEYS[5] = the import lease;
// KEYS[6] = folds (see twin_of), KEYS[7..9] = history, problems, samples (the dashboard's; only
// written once the run is published, but dropped and expired with the others all the same).

/** Starts an import: drops whatever a dead import left, takes the lease. ARGV: token, leaseMs. */
export const BEGIN_IMPORT = new LuaScript(`
redis.call('UNLINK', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[6], KEYS[7], KEYS[8], KEYS[9])
redis.call('SET', KEYS[5], ARGV[1], 'PX', ARGV[2])
return 1
`);

/**
 * Keeps an import alive: the lease and, longer, the rows written so far (an import killed with
 * kill -9 thus cleans up after itself). ARGV: token, leaseMs, dataMs. Returns 0 when the lease is
 * lost (another process took the run over).
 */
export const RENEW_IMPORT = new LuaScript(`
if redis.call('GET', KEYS[5]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[5], ARGV[2])
for _, k in ipairs({1, 2, 3, 4, 6, 7, 8, 9}) do redis.call('PEXPIRE', KEYS[k], ARGV[3]) end
return 1
`);

/**
 * Imports rows, in order. ARGV: token, seq of the first row, dataMs, n, then n pairs (tally field,
 * increment) that count the rows as pending or invalid, then quadruples (kind 'v' valid | 'i'
 * invalid, user id, value, fold: userIdFold's, '' for an invalid row). A valid row whose user id,
 * or fold, is already in \`rows\` is recorded invalid in its place and its tally moved. Returns
 * {-1} when the lease is lost, else {seq, first line, twin ('' for the same id)}* of duplicates.
 */
export const IMPORT_ROWS = new LuaScript(`${ROW_HELPERS}
if redis.call('GET', KEYS[5]) ~= ARGV[1] then return {-1} end
local seq = tonumber(ARGV[2]) - 1
local i = 5
for _ = 1, tonumber(ARGV[4]) do
  redis.call('HINCRBY', KEYS[4], ARGV[i], ARGV[i + 1])
  i = i + 2
end
local duplicates, order = {}, {}
while i <= #ARGV do
  local kind, user, value, fold = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  i = i + 4
  seq = seq + 1
  order[#order + 1] = user
  local field = string.format('%d', seq)
  if kind == 'i' then
    redis.call('HSET', KEYS[3], field, value)
    redis.call('HSETNX', KEYS[3], '=' .. user, field)
  else
    local twin = twin_of(KEYS[1], KEYS[6], user, fold)
    local reason, first_line
    if twin then
      first_line = split_row(redis.call('HGET', KEYS[1], twin))
      reason = twin_reason(first_line, twin)
    elseif redis.call('HSETNX', KEYS[1], user, value) == 0 then
      first_line = split_row(redis.call('HGET', KEYS[1], user))
      reason = twice_reason(first_line)
    elseif fold ~= '' then
      redis.call('HSET', KEYS[6], fold, user)
    end
    if reason then
      local _, amount, currency = split_row(value)
      redis.call('HSET', KEYS[3], field, value .. '|' .. reason)
      redis.call('HSETNX', KEYS[3], '=' .. user, field)
      move(KEYS[4], 'p', 'i', currency, amount)
      duplicates[#duplicates + 1] = seq
      duplicates[#duplicates + 1] = first_line
      duplicates[#duplicates + 1] = twin or ''
    end
  end
end
-- unpack() is limited by Lua's C stack (8000): push in slices.
for from = 1, #order, 1000 do
  redis.call('RPUSH', KEYS[2], unpack(order, from, math.min(from + 999, #order)))
end
for _, k in ipairs({1, 2, 3, 4, 6, 7, 8, 9}) do redis.call('PEXPIRE', KEYS[k], ARGV[3]) end
return duplicates
`);

/**
 * Seals an import before it is published: its rows become permanent, and its lease turns into
 * `<token>:sealed` (still alive, so no other process reaps the import, but no renewal or write can
 * touch the rows any more). ARGV: token, leaseMs. Returns 0 when the lease is lost.
 */
export const SEAL_IMPORT = new LuaScript(`
if redis.call('GET', KEYS[5]) ~= ARGV[1] then return 0 end
for _, k in ipairs({1, 2, 3, 4, 6, 7, 8, 9}) do redis.call('PERSIST', KEYS[k]) end
redis.call('SET', KEYS[5], ARGV[1] .. ':sealed', 'PX', ARGV[2])
return 1
`);

/**
 * Deletes what an import wrote, unless another import has taken the run over since. ARGV: the
 * token of the import to discard. Returns 1 when it deleted.
 */
export const DISCARD_IMPORT = new LuaScript(`
local lease = redis.call('GET', KEYS[5])
if lease and lease ~= ARGV[1] and lease ~= ARGV[1] .. ':sealed' then return 0 end
redis.call('UNLINK', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8],
  KEYS[9])
return 1
`);

/**
 * Applies outcomes in order. KEYS: rows, tally, attempts (see START_ATTEMPTS), history, problems.
 * ARGV: triples (user id, `state|attempts|ambiguous|http|latency|chargeId|error`, history entry or
 * ''); the row's first attempt time and budget are kept, its open attempt closed. A user id
 * without a valid row, a row turned invalid, and a row already charged or declined are left
 * alone: a late or stale outcome loses. Its attempt is still added to the history of a valid row
 * (it did happen), and a row that moves into declined, failed or unknown has its user id pushed
 * on \`problems\` (the latest last; a user may be on it more than once).
 */
export const RECORD_OUTCOMES = new LuaScript(`${ROW_HELPERS}
for i = 1, #ARGV, 3 do
  local user, outcome, entry = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local value = redis.call('HGET', KEYS[1], user)
  if value then
    local _, amount, currency, old, base = split_row(value)
    if old ~= 'i' and old ~= 'c' and old ~= 'd' then
      local f = fields_of(value)
      redis.call('HSET', KEYS[1], user,
        base .. '|' .. outcome .. '|0|' .. field(f, 13, '') .. '|' .. field(f, 14, '0'))
      local new = string.sub(outcome, 1, 1)
      if new ~= old then
        move(KEYS[2], old, new, currency, amount)
        if new == 'd' or new == 'f' or new == 'u' then redis.call('RPUSH', KEYS[5], user) end
      end
      if field(f, 12, '0') == '1' then redis.call('HINCRBY', KEYS[3], 'open', -1) end
      -- An attempt that counted, or a charge that ended: the run was billed with its credentials.
      local o = fields_of(outcome)
      if new ~= 'p' or field(o, 2, '0') ~= '0' or field(o, 3, '0') == '1' then
        redis.call('HSET', KEYS[3], 'real', '1')
      end
    end
    -- A charge charged at its first request, with nothing before, keeps no entry: its row holds
    -- that attempt whole (time, status, latency, charge id) and attemptHistory reads it there.
    -- That is most users; it spares the history's ~85 bytes each.
    local whole = old == 'p' and string.sub(outcome, 1, 1) == 'c' and string.sub(entry, 1, 2) == '1,'
      and redis.call('HEXISTS', KEYS[4], user) == 0
    if entry ~= '' and not whole then add_history(KEYS[4], user, entry) end
  end
end
return 1
`);

/**
 * Records attempts about to be sent: the row's attempts (never lowered), ambiguity, an open
 * attempt, and its first attempt's time when it has none. Only pending rows are touched, and
 * only when the run is bound to the sender's credentials (checked in the same script, so no
 * request leaves under other credentials once a run is bound). KEYS: rows, credentials,
 * attempts (hash: `open` attempts not yet recorded, `real` once one was). ARGV: the sender's credentials fingerprint ('' skips the check), then quadruples
 * (user id, attempts, ambiguous '1'|'0', epoch ms). Returns {-1} when the run is bound to other
 * credentials, else, per user, 1 when it was recorded, 0 when the row is not pending (settled
 * meanwhile) or absent.
 */
export const START_ATTEMPTS = new LuaScript(`${ROW_HELPERS}
if ARGV[1] ~= '' then
  local bound = redis.call('GET', KEYS[2])
  if bound and bound ~= ARGV[1] then return {-1} end
end
local out = {}
for i = 2, #ARGV, 4 do
  local user = ARGV[i]
  local value = redis.call('HGET', KEYS[1], user)
  local started = 0
  if value then
    local _, _, _, old, base = split_row(value)
    if old == 'p' then
      local f = fields_of(value)
      local attempts = math.max(tonumber(field(f, 6, '0')), tonumber(ARGV[i + 1]))
      local ambiguous = ARGV[i + 2]
      if field(f, 7, '0') == '1' or field(f, 12, '0') == '1' then ambiguous = '1' end
      redis.call('HSET', KEYS[1], user, base .. '|p|' .. string.format('%d', attempts) .. '|' ..
        ambiguous .. '|' .. field(f, 8, '') .. '|' .. field(f, 9, '') .. '|' .. field(f, 10, '') ..
        '|' .. field(f, 11, '') .. '|1|' .. field(f, 13, ARGV[i + 3]) .. '|' .. field(f, 14, '0'))
      if field(f, 12, '0') ~= '1' then redis.call('HINCRBY', KEYS[3], 'open', 1) end
      started = 1
    end
  end
  out[#out + 1] = started
end
return out
`);

/**
 * Charges that still need an attempt (pending; with ARGV[4] '1' failed and unknown too), in input
 * order. KEYS: rows, order, invalid. ARGV: rows to skip (= seq to read after), most charges to
 * return, most rows to look at, include ended. Rows superseded by a later input are skipped.
 * Returns {position reached, 1 when the end was reached else 0, then {seq, user id, value}*}.
 */
export const PENDING_CHARGES = new LuaScript(`
local position = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local budget = tonumber(ARGV[3])
local ended = ARGV[4] == '1'
local has_invalid = redis.call('EXISTS', KEYS[3]) == 1
local out = {0, 0}
local found = 0
while budget > 0 do
  local n = math.min(budget, 500)
  local users = redis.call('LRANGE', KEYS[2], position, position + n - 1)
  if #users == 0 then
    out[1], out[2] = position, 1
    return out
  end
  local values = redis.call('HMGET', KEYS[1], unpack(users))
  for j = 1, #users do
    local seq = position + j
    local value = values[j]
    if value and not (has_invalid and
        redis.call('HEXISTS', KEYS[3], string.format('%d', seq)) == 1) then
      local a = string.find(value, '|', 1, true)
      local b = string.find(value, '|', a + 1, true)
      local c = string.find(value, '|', b + 1, true)
      local d = string.find(value, '|', c + 1, true)
      local state = d and string.sub(value, d + 1, d + 1) or 'p'
      if state == 'p' or (ended and (state == 'f' or state == 'u')) then
        out[#out + 1] = seq
        out[#out + 1] = users[j]
        out[#out + 1] = value
        found = found + 1
        if found == limit then
          out[1] = seq
          return out
        end
      end
    end
  end
  position = position + #users
  budget = budget - #users
  if #users < n then
    out[1], out[2] = position, 1
    return out
  end
end
out[1] = position
return out
`);

/**
 * A page of every row in input order. KEYS: rows, order, invalid. ARGV: rows to skip, page size.
 * Returns {rows looked at, then {user id, 'v' | 'i', value}*}; a row superseded by a later input
 * (its invalid entry emptied) is left out.
 */
export const CHARGES_PAGE = new LuaScript(`
local start = tonumber(ARGV[1])
local users = redis.call('LRANGE', KEYS[2], start, start + tonumber(ARGV[2]) - 1)
local has_invalid = redis.call('EXISTS', KEYS[3]) == 1
local out = {#users}
for j = 1, #users do
  local invalid = has_invalid and redis.call('HGET', KEYS[3], string.format('%d', start + j))
  if invalid == '' then
    -- superseded by a later input of the run
  elseif invalid then
    out[#out + 1] = users[j]
    out[#out + 1] = 'i'
    out[#out + 1] = invalid
  else
    out[#out + 1] = users[j]
    out[#out + 1] = 'v'
    out[#out + 1] = redis.call('HGET', KEYS[1], users[j]) or ''
  end
end
return out
`);

/**
 * One user's row: the valid one, else the first invalid one. KEYS: rows, invalid. ARGV: user id.
 * Returns {'v' | 'i', value} or nil.
 */
export const ONE_CHARGE = new LuaScript(`
local value = redis.call('HGET', KEYS[1], ARGV[1])
if value then return {'v', value} end
local seq = redis.call('HGET', KEYS[2], '=' .. ARGV[1])
if seq then
  local invalid = redis.call('HGET', KEYS[2], seq)
  if invalid and invalid ~= '' then return {'i', invalid} end
end
return false
`);

/**
 * Makes failed and unknown charges pending again for a new round of attempts (`--retry-failed`):
 * attempts, ambiguity and the first attempt's time are kept, the budget starts at the attempts
 * so far. A charge in any other state (charged meanwhile by a worker, say) is left alone.
 * KEYS: rows, tally. ARGV: user ids. Returns how many were reopened.
 */
export const REOPEN_CHARGES = new LuaScript(`${ROW_HELPERS}
local reopened = 0
for i = 1, #ARGV do
  local value = redis.call('HGET', KEYS[1], ARGV[i])
  if value then
    local _, amount, currency, old, base = split_row(value)
    if old == 'f' or old == 'u' then
      local f = fields_of(value)
      local attempts = field(f, 6, '0')
      redis.call('HSET', KEYS[1], ARGV[i], base .. '|p|' .. attempts .. '|' .. field(f, 7, '0') ..
        '|' .. field(f, 8, '') .. '|' .. field(f, 9, '') .. '||' .. field(f, 11, '') .. '|0|' ..
        field(f, 13, '') .. '|' .. attempts)
      move(KEYS[2], old, 'p', currency, amount)
      reopened = reopened + 1
    end
  end
end
return reopened
`);

/**
 * Starts extending a run with a later input: takes the run's import lease, and empties (marks
 * superseded) every invalid row, moving the tally. KEYS: rows, order, invalid, tally, lease,
 * seen. ARGV: token, leaseMs. Returns 0 when another process holds the lease.
 */
export const BEGIN_EXTEND = new LuaScript(`${ROW_HELPERS}
if not redis.call('SET', KEYS[5], ARGV[1], 'NX', 'PX', ARGV[2]) then return 0 end
redis.call('DEL', KEYS[6])
local entries = redis.call('HGETALL', KEYS[3])
for i = 1, #entries, 2 do
  local key, value = entries[i], entries[i + 1]
  if string.sub(key, 1, 1) == '=' then
    redis.call('HDEL', KEYS[3], key)
  elseif value ~= '' then
    local _, amount, currency = split_row(value .. '|')
    redis.call('HINCRBY', KEYS[4], 'ni' .. currency, -1)
    if amount ~= '0' and amount ~= '' then
      redis.call('HINCRBY', KEYS[4], 'si' .. currency, negated(amount))
    end
    redis.call('HSET', KEYS[3], key, '')
  end
end
return 1
`);

/**
 * Adds rows of a later input to a run, in order, after every row it has. KEYS: rows, order,
 * invalid, tally, lease, seen (this input's users by fold: \`line:id\`), folds. ARGV: token,
 * leaseMs, then quadruples (kind 'v' valid | 'i' invalid, user id, value, fold as in IMPORT_ROWS).
 * A valid row of a user the run holds is left as it is; an invalid row of such a user is dropped;
 * a user met twice in this input (\`seen\`), or another id of the fold of one the run holds, is
 * recorded invalid. Returns {-1} when the lease is lost, else {added, then {index of the row in
 * ARGV's quadruples, first line, twin ('' for the same id), '1' when held by the run else '0'}* of
 * duplicates}.
 */
export const EXTEND_ROWS = new LuaScript(`${ROW_HELPERS}
if redis.call('GET', KEYS[5]) ~= ARGV[1] then return {-1} end
redis.call('PEXPIRE', KEYS[5], ARGV[2])
local out = {0}
local added = 0
local index = 0
local function push_invalid(user, value)
  local seq = redis.call('RPUSH', KEYS[2], user)
  local field_name = string.format('%d', seq)
  redis.call('HSET', KEYS[3], field_name, value)
  redis.call('HSETNX', KEYS[3], '=' .. user, field_name)
  local _, amount, currency = split_row(value)
  redis.call('HINCRBY', KEYS[4], 'ni' .. currency, 1)
  if amount ~= '0' and amount ~= '' then redis.call('HINCRBY', KEYS[4], 'si' .. currency, amount) end
end
local function refuse(user, value, reason, first_line, twin, held)
  push_invalid(user, value .. '|' .. reason)
  out[#out + 1] = index
  out[#out + 1] = first_line
  out[#out + 1] = twin
  out[#out + 1] = held
end
for i = 3, #ARGV, 4 do
  index = index + 1
  local kind, user, value, fold = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local line = string.sub(value, 1, string.find(value, '|', 1, true) - 1)
  local key = fold ~= '' and fold or user
  if kind == 'i' then
    if user == '' or redis.call('HEXISTS', KEYS[1], user) == 0 then push_invalid(user, value) end
  elseif redis.call('HSETNX', KEYS[6], key, line .. ':' .. user) == 0 then
    local seen = redis.call('HGET', KEYS[6], key)
    local colon = string.find(seen, ':', 1, true)
    local first_line, first_user = string.sub(seen, 1, colon - 1), string.sub(seen, colon + 1)
    if first_user == user then
      refuse(user, value, twice_reason(first_line), first_line, '', '0')
    else
      refuse(user, value, twin_reason(first_line, first_user), first_line, first_user, '0')
    end
  elseif redis.call('HEXISTS', KEYS[1], user) == 0 then
    local twin = twin_of(KEYS[1], KEYS[7], user, fold)
    if twin then
      local first_line = split_row(redis.call('HGET', KEYS[1], twin))
      refuse(user, value, held_twin_reason(twin), first_line, twin, '1')
    else
      redis.call('HSET', KEYS[1], user, value)
      if fold ~= '' then redis.call('HSET', KEYS[7], fold, user) end
      redis.call('RPUSH', KEYS[2], user)
      local _, amount, currency = split_row(value)
      redis.call('HINCRBY', KEYS[4], 'np' .. currency, 1)
      if amount ~= '0' then redis.call('HINCRBY', KEYS[4], 'sp' .. currency, amount) end
      added = added + 1
    end
  end
end
redis.call('PEXPIRE', KEYS[6], ARGV[2])
out[1] = added
return out
`);

/**
 * Binds a run to a credentials fingerprint: when it has none, or another but no charge of it was
 * ever attempted (no attempt counted or left open: a wrong token's 401s count none). KEYS:
 * credentials, attempts. ARGV: fingerprint, the value the caller read ('' none). Returns 'bound'
 * | 'same' | 'rebound' | 'other', or 'changed' when the key no longer holds what the caller read.
 */
export const BIND_CREDENTIALS = new LuaScript(`
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] then return 'same' end
if (current or '') ~= ARGV[2] then return 'changed' end
local open = tonumber(redis.call('HGET', KEYS[2], 'open') or '0')
if current and (open > 0 or redis.call('HEXISTS', KEYS[2], 'real') == 1) then return 'other' end
redis.call('SET', KEYS[1], ARGV[1])
if current then return 'rebound' end
return 'bound'
`);

/**
 * The valid rows of users, or of another id of their fold. KEYS: rows, folds. ARGV: pairs (user
 * id, fold as in IMPORT_ROWS). Returns pairs (the row's value or '', the twin's id or '').
 */
export const HELD_CHARGES = new LuaScript(`${ROW_HELPERS}
local out = {}
for i = 1, #ARGV, 2 do
  local user, fold = ARGV[i], ARGV[i + 1]
  local value = redis.call('HGET', KEYS[1], user)
  local twin = ''
  if not value then
    local other = twin_of(KEYS[1], KEYS[2], user, fold)
    if other then
      value = redis.call('HGET', KEYS[1], other)
      twin = other
    end
  end
  out[#out + 1] = value or ''
  out[#out + 1] = twin
end
return out
`);

/**
 * A slice of the run's problems list with the rows of its users, for problems(). KEYS: problems,
 * rows. ARGV: first and last index. Returns pairs (user id, row value or '' when none).
 */
export const PROBLEM_ROWS = new LuaScript(`
local users = redis.call('LRANGE', KEYS[1], ARGV[1], ARGV[2])
if #users == 0 then return {} end
local values = redis.call('HMGET', KEYS[2], unpack(users))
local out = {}
for j = 1, #users do
  out[#out + 1] = users[j]
  out[#out + 1] = values[j] or ''
end
return out
`);

/**
 * A step of a scan of the run's invalid rows, with the user id of each (from \`order\`, at its
 * seq). KEYS: invalid, order. ARGV: HSCAN cursor, count. Returns {next cursor, then {seq, user id,
 * value}*}; a superseded row (emptied) is left out. A row may come twice (HSCAN's promise).
 */
export const INVALID_ROWS = new LuaScript(`
local scan = redis.call('HSCAN', KEYS[1], ARGV[1], 'COUNT', ARGV[2])
local out = {scan[1]}
local entries = scan[2]
for i = 1, #entries, 2 do
  local key, value = entries[i], entries[i + 1]
  if string.sub(key, 1, 1) ~= '=' and value ~= '' then
    out[#out + 1] = key
    out[#out + 1] = redis.call('LINDEX', KEYS[2], string.format('%d', tonumber(key) - 1)) or ''
    out[#out + 1] = value
  end
end
return out
`);
