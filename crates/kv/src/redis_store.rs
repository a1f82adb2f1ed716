//! Redis backend. Keys are stored as they are, without a prefix, as Spin
//! stores them, so an app moving between the two keeps its data. Every
//! request shares one multiplexed connection that reconnects after a failure.

use std::time::Duration;

use redis::AsyncCommands as _;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::{Error, KeyPage, LIST_PAGE_KEYS, Result};

/// A connection attempt, and then each command, waits at most this long; a
/// store that is down makes the guest's call fail, not hang.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Compare-and-swap as one atomic step on the server. ARGV: whether a value is
/// expected ("1") or absence ("0"), the expected value, the new value.
const COMPARE_AND_SWAP: &str = r"
local current = redis.call('GET', KEYS[1])
if ARGV[1] == '1' then
  if current ~= ARGV[2] then return 0 end
elseif current then
  return 0
end
redis.call('SET', KEYS[1], ARGV[3])
return 1
";

pub struct RedisStore {
    connection: ConnectionManager,
    location: String,
    compare_and_swap: redis::Script,
}

fn failed(error: redis::RedisError) -> Error {
    Error::Redis(error.to_string())
}

impl RedisStore {
    pub fn new(url: &str) -> Result<RedisStore> {
        let location = format!("Redis `{}`", without_password(url));
        let client = redis::Client::open(url).map_err(|error| Error::Redis(format!("{location}: {error}")))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT))
            .set_number_of_retries(1);
        let connection = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|error| Error::Redis(format!("{location}: {error}")))?;
        Ok(RedisStore { connection, location, compare_and_swap: redis::Script::new(COMPARE_AND_SWAP) })
    }

    pub fn describe(&self) -> String {
        self.location.clone()
    }

    fn connection(&self) -> ConnectionManager {
        // A handle to the one shared connection: cloning is a reference count.
        self.connection.clone()
    }

    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.connection().get(key).await.map_err(failed)
    }

    pub async fn set(&self, key: &str, value: Vec<u8>) -> Result<()> {
        self.connection().set(key, value).await.map_err(failed)
    }

    pub async fn exists(&self, key: &str) -> Result<bool> {
        self.connection().exists(key).await.map_err(failed)
    }

    pub async fn get_many(&self, keys: Vec<String>) -> Result<Vec<Option<Vec<u8>>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        // MGET answers a list even for one key.
        redis::cmd("MGET").arg(&keys).query_async(&mut self.connection()).await.map_err(failed)
    }

    pub async fn set_many(&self, pairs: Vec<(String, Vec<u8>)>) -> Result<()> {
        if pairs.is_empty() {
            return Ok(());
        }
        self.connection().mset(&pairs).await.map_err(failed)
    }

    pub async fn delete_many(&self, keys: Vec<String>) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        self.connection().del(keys).await.map_err(failed)
    }

    pub async fn list_keys(&self, cursor: u64) -> Result<KeyPage> {
        let mut connection = self.connection();
        let mut keys = Vec::new();
        let mut cursor = cursor;
        loop {
            let (next, mut batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut connection)
                .await
                .map_err(failed)?;
            keys.append(&mut batch);
            cursor = next;
            if cursor == 0 {
                return Ok(KeyPage { keys, cursor: None });
            }
            if keys.len() >= LIST_PAGE_KEYS {
                return Ok(KeyPage { keys, cursor: Some(cursor) });
            }
        }
    }

    pub async fn increment(&self, key: &str, delta: i64) -> Result<i64> {
        self.connection().incr(key, delta).await.map_err(|error| {
            let text = error.to_string();
            if text.contains("overflow") {
                Error::Overflow(key.to_owned())
            } else if text.contains("not an integer") {
                Error::NotAnInteger(key.to_owned())
            } else {
                failed(error)
            }
        })
    }

    pub async fn compare_and_swap(&self, key: &str, expected: Option<Vec<u8>>, value: Vec<u8>) -> Result<bool> {
        let (flag, expected) = match expected {
            Some(expected) => ("1", expected),
            None => ("0", Vec::new()),
        };
        let swapped: i64 = self
            .compare_and_swap
            .key(key)
            .arg(flag)
            .arg(expected)
            .arg(value)
            .invoke_async(&mut self.connection())
            .await
            .map_err(failed)?;
        Ok(swapped == 1)
    }
}

/// The URL with any password replaced, for logs.
fn without_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    match rest.split_once('@') {
        Some((userinfo, host)) if !host.contains('@') => {
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            format!("{scheme}://{user}:***@{host}")
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_stay_out_of_descriptions() {
        assert_eq!(super::without_password("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(super::without_password("redis://app:hunter2@db:6379/1"), "redis://app:***@db:6379/1");
    }
}
