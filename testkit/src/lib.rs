//! What tickrelay's tests and soak run beside the real thing: a fault-injecting TCP proxy
//! (this kernel has no netem) and a `redis-server` of a test's own.

mod fault_proxy;
mod redis_server;

pub use fault_proxy::{FaultProxy, Link};
pub use redis_server::RedisServer;
