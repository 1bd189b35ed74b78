//! Matchmaking on one node (`POST /matchmake`): places a player in the fullest lobby of a
//! pool that still has room, or opens the pool's next lobby (`{pool}-{n}`). A lobby's count
//! is its players plus the seats promised to players on their way (each promise lasts
//! `promise_ttl`); counts come from the running lobbies each time, so seats freed by players
//! who left, or promised to players who never came, open up again by themselves. Sans-I/O:
//! the seats and the time are passed in. A fleet applies the same rule in one Redis script
//! (`fleet/store.rs`, MATCHMAKE), shared by every node.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Where a player was placed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct Placement {
    pub(crate) lobby: String,
    /// The lobby's count with this player's promise: players in it plus seats promised.
    pub(crate) seats: usize,
    /// Whether this placement opened the lobby.
    pub(crate) opened: bool,
}

/// A placement, and in a fleet the node that runs (or will run) the lobby: its id and URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Matched {
    pub(crate) placement: Placement,
    pub(crate) node: Option<(String, String)>,
}

/// Why a player could not be placed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum MatchError {
    #[error("too many lobbies open or promised on this node ({0}); retry shortly")]
    Full(usize),
    /// A fleet's directory could not place it (Redis unreachable, no live node).
    #[error("{reason}")]
    Unavailable { reason: String, retry: Duration },
}

impl MatchError {
    /// When to try again.
    pub(crate) fn retry_after(&self) -> Duration {
        match self {
            Self::Full(_) => Duration::from_secs(1),
            Self::Unavailable { retry, .. } => *retry,
        }
    }
}

/// Every pool of this node, with the promises still running.
pub(crate) struct Pools {
    pools: HashMap<String, Pool>,
    promise_ttl: Duration,
    /// Lobbies tracked at most (running or promised): a flood of placements in made-up pools
    /// must not grow this without bound.
    max_lobbies: usize,
}

#[derive(Default)]
struct Pool {
    /// The number the pool's next lobby gets.
    next: u64,
    /// Lobbies by number, with the expiry of each promise on them, oldest first.
    lobbies: BTreeMap<u64, VecDeque<Instant>>,
}

impl Pools {
    pub(crate) fn new(promise_ttl: Duration, max_lobbies: usize) -> Self {
        Self {
            pools: HashMap::new(),
            promise_ttl,
            max_lobbies,
        }
    }

    /// Places one player in `pool`, whose lobbies hold `size` players; `players(name)` is the
    /// players in lobby `name` if it runs. The fullest lobby with room wins (the oldest of
    /// equals), so lobbies fill up before new ones open.
    pub(crate) fn place(
        &mut self,
        pool: &str,
        size: usize,
        now: Instant,
        players: impl Fn(&str) -> Option<usize>,
    ) -> Result<Placement, MatchError> {
        if self.tracked() >= self.max_lobbies {
            // At the limit: what expired anywhere makes room first.
            for pool in self.pools.values_mut() {
                for promises in pool.lobbies.values_mut() {
                    promises.retain(|&expiry| expiry > now);
                }
            }
            for (name, pool) in &mut self.pools {
                pool.lobbies.retain(|&number, promises| {
                    !promises.is_empty() || players(&lobby_name(name, number)).is_some()
                });
            }
        }
        let tracked = self.tracked();
        let entry = self.pools.entry(pool.to_owned()).or_default();
        let mut best: Option<(u64, usize)> = None;
        entry.lobbies.retain(|&number, promises| {
            while promises.front().is_some_and(|&expiry| expiry <= now) {
                promises.pop_front();
            }
            let running = players(&lobby_name(pool, number));
            if running.is_none() && promises.is_empty() {
                // Gone, and nobody on the way: forgotten.
                return false;
            }
            let count = running.unwrap_or(0) + promises.len();
            if count < size && best.is_none_or(|(_, fullest)| count > fullest) {
                best = Some((number, count));
            }
            true
        });
        let expiry = now + self.promise_ttl;
        let placement = match best {
            Some((number, count)) => {
                if let Some(promises) = entry.lobbies.get_mut(&number) {
                    promises.push_back(expiry);
                }
                Placement {
                    lobby: lobby_name(pool, number),
                    seats: count + 1,
                    opened: false,
                }
            }
            None => {
                if tracked >= self.max_lobbies {
                    return Err(MatchError::Full(self.max_lobbies));
                }
                entry.next += 1;
                let number = entry.next;
                entry.lobbies.insert(number, VecDeque::from([expiry]));
                Placement {
                    lobby: lobby_name(pool, number),
                    seats: 1,
                    opened: true,
                }
            }
        };
        self.pools.retain(|_, pool| !pool.lobbies.is_empty());
        Ok(placement)
    }
}

impl Pools {
    fn tracked(&self) -> usize {
        self.pools.values().map(|pool| pool.lobbies.len()).sum()
    }
}

/// The name of lobby `number` of `pool`.
pub(crate) fn lobby_name(pool: &str, number: u64) -> String {
    format!("{pool}-{number}")
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    const TTL: Duration = Duration::from_secs(10);

    #[test]
    fn lobbies_fill_up_to_the_size_before_the_next_opens() {
        let mut pools = Pools::new(TTL, 100);
        let now = Instant::now();
        let none = |_: &str| None;
        let placed: Vec<_> = (0..7)
            .map(|_| pools.place("duel", 3, now, none).unwrap())
            .collect();
        let lobbies: Vec<_> = placed.iter().map(|p| p.lobby.as_str()).collect();
        assert_eq!(
            lobbies,
            [
                "duel-1", "duel-1", "duel-1", "duel-2", "duel-2", "duel-2", "duel-3"
            ]
        );
        assert_eq!(
            placed.iter().filter(|p| p.opened).count(),
            3,
            "each lobby opened once"
        );
        assert_eq!(placed[2].seats, 3);
    }

    #[test]
    fn players_who_left_or_never_came_free_their_seats() {
        let mut pools = Pools::new(TTL, 100);
        let start = Instant::now();
        for _ in 0..4 {
            pools.place("p", 4, start, |_| None).unwrap();
        }
        // p-1 runs with 2 players: the other two promises are still running, so it is full.
        let running = HashMap::from([("p-1".to_owned(), 2usize)]);
        let players = |name: &str| running.get(name).copied();
        let next = pools.place("p", 4, start, players).unwrap();
        assert_eq!(next.lobby, "p-2");
        // The promises expired: p-1 counts its 2 players only, and is the fullest with room.
        let later = start + TTL;
        let back = pools.place("p", 4, later, players).unwrap();
        assert_eq!((back.lobby.as_str(), back.seats), ("p-1", 3));
    }

    #[test]
    fn a_lobby_gone_with_nobody_on_the_way_is_forgotten() {
        let mut pools = Pools::new(TTL, 1);
        let start = Instant::now();
        pools.place("p", 2, start, |_| None).unwrap();
        // One lobby tracked: no room for a second while the first is promised.
        pools.place("p", 2, start, |_| None).unwrap();
        assert_eq!(
            pools.place("p", 2, start, |_| None),
            Err(MatchError::Full(1))
        );
        let later = start + TTL;
        let fresh = pools.place("q", 2, later, |_| None).unwrap();
        assert_eq!(fresh.lobby, "q-1", "p-1 expired and was forgotten");
    }
}
