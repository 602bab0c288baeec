//! The credentials store's scripts: save (with its ttl) and get (sliding the ttl).

use super::Script;

/// `cred_save` — KEYS: the session's credentials hash. ARGV: ttl (ms, 0: none), n, then n
/// pairs (verifier field, verifier) of the caller's secrets (the active one first), then the
/// credential's field and envelope, then stale fields (the same credential under retired
/// secrets) to delete. A verifier present with another value means the caller's secret is not
/// the one the store was made with: nothing is written, `WRONGSECRET`.
pub static CRED_SAVE: Script = Script {
    name: "cred_save",
    source: r#"
local n = tonumber(ARGV[2])
for i = 3, 2 + 2 * n, 2 do
  local cur = redis.call('HGET', KEYS[1], ARGV[i])
  if cur and cur ~= ARGV[i + 1] then
    return redis.error_reply('WRONGSECRET the credentials store was made with another secret')
  end
end
local f = 3 + 2 * n
redis.call('HSET', KEYS[1], ARGV[3], ARGV[4], ARGV[f], ARGV[f + 1])
for i = f + 2, #ARGV do
  redis.call('HDEL', KEYS[1], ARGV[i])
end
local ttl = tonumber(ARGV[1])
if ttl > 0 then
  redis.call('PEXPIRE', KEYS[1], ttl)
else
  redis.call('PERSIST', KEYS[1])
end
return 1
"#,
};

/// `cred_get` — KEYS: the session's credentials hash. ARGV: ttl (ms, 0: none), then the
/// fields to read. Returns HMGET's reply and, in the same atomic step, slides the expiry.
pub static CRED_GET: Script = Script {
    name: "cred_get",
    source: r#"
local out = redis.call('HMGET', KEYS[1], unpack(ARGV, 2))
local ttl = tonumber(ARGV[1])
if ttl > 0 then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return out
"#,
};
