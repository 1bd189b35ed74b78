//! Matchmaking on one node (`POST /matchmake`): places a player in the fullest lobby of a
//! pool that still has room, or opens the pool's next lobby (`{pool}-{n}`). A pool's lobby
//! size is fixed by the request that opened it. A lobby's count is [`count`]: its players
//! plus the seats promised to players on their way (each promise lasts `promise_ttl`), less
//! the players who most likely used one of those promises. Counts come from the running
//! lobbies each time, so seats freed by players who left, or promised to players who never
//! came, open up again by themselves. Sans-I/O: the seats and the time are passed in. A fleet
//! applies the same rule in one Redis script (`fleet/store.rs`, MATCHMAKE).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// Where a player was placed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct Placement {
    pub(crate) lobby: String,
    /// The lobby's count with this player's promise.
    pub(crate) seats: usize,
    /// The pool's lobby size.
    pub(crate) size: usize,
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
    /// The pool's lobbies have another size than the one asked for.
    #[error("pool {pool:?} fills lobbies of {size}: ask with that size (or none)")]
    OtherSize { pool: String, size: usize },
    /// A fleet's directory could not place it (Redis unreachable, no live node).
    #[error("{reason}")]
    Unavailable { reason: String, retry: Duration },
}

impl MatchError {
    /// When to try again; `None` when waiting does not help.
    pub(crate) fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Full(_) => Some(Duration::from_secs(1)),
            Self::OtherSize { .. } => None,
            Self::Unavailable { retry, .. } => Some(*retry),
        }
    }
}

/// What a running lobby says of its players.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Seats {
    pub(crate) players: usize,
    /// Players who joined afresh within the last promise's life.
    pub(crate) recent: usize,
}

/// A lobby's count: its players, plus the promises still running, less the players who
/// most likely came with one of them (fresh joins within a promise's life; a join carries no
/// promise of its own). So a lobby can look fuller than it is for a promise's life (a player
/// who came without a promise and one on the way who never comes), never emptier.
pub(crate) fn count(seats: Seats, promises: usize) -> usize {
    seats.players + promises - promises.min(seats.recent).min(seats.players)
}

/// Every pool of this node, with the promises still running.
pub(crate) struct Pools {
    pools: HashMap<String, Pool>,
    promise_ttl: Duration,
    /// Lobbies tracked at most (running or promised): a flood of placements in made-up pools
    /// must not grow this without bound.
    max_lobbies: usize,
}

struct Pool {
    size: usize,
    /// The number the pool's next lobby gets.
    next: u64,
    /// Lobbies by number, with each promise on them: the player, and when it ends.
    lobbies: BTreeMap<u64, Vec<(String, Instant)>>,
}

impl Pools {
    pub(crate) fn new(promise_ttl: Duration, max_lobbies: usize) -> Self {
        Self {
            pools: HashMap::new(),
            promise_ttl,
            max_lobbies,
        }
    }

    /// Places `player` in `pool`, whose lobbies hold `size` players (fixed when the pool
    /// opens; `None`: the pool's, or `default` for a new pool); `seats(name)` is what lobby
    /// `name` says of its players if it runs. The fullest lobby with room wins (the oldest
    /// of equals), so lobbies fill up before new ones open; a player asking again while its
    /// promise runs gets the same lobby.
    pub(crate) fn place(
        &mut self,
        pool: &str,
        size: Option<usize>,
        default: usize,
        player: &str,
        now: Instant,
        seats: impl Fn(&str) -> Option<Seats>,
    ) -> Result<Placement, MatchError> {
        if self.tracked() >= self.max_lobbies {
            // At the limit: what expired anywhere makes room first.
            for (name, pool) in &mut self.pools {
                forget_gone(name, pool, now, &seats);
            }
            self.pools.retain(|_, pool| !pool.lobbies.is_empty());
        }
        let tracked = self.tracked();
        let expiry = now + self.promise_ttl;
        let entry = match self.pools.get_mut(pool) {
            Some(entry) => {
                if size.is_some_and(|asked| asked != entry.size) {
                    return Err(MatchError::OtherSize {
                        pool: pool.to_owned(),
                        size: entry.size,
                    });
                }
                entry
            }
            None if tracked >= self.max_lobbies => return Err(MatchError::Full(self.max_lobbies)),
            None => self.pools.entry(pool.to_owned()).or_insert(Pool {
                size: size.unwrap_or(default),
                next: 0,
                lobbies: BTreeMap::new(),
            }),
        };
        forget_gone(pool, entry, now, &seats);
        let size = entry.size;
        let mut best: Option<(u64, usize)> = None;
        for (&number, promises) in &mut entry.lobbies {
            let name = lobby_name(pool, number);
            let here = seats(&name).unwrap_or_default();
            if let Some(mine) = promises.iter_mut().find(|(who, _)| who == player) {
                // Asked again: the same seat, for longer.
                mine.1 = expiry;
                return Ok(Placement {
                    seats: count(here, promises.len()),
                    lobby: name,
                    size,
                    opened: false,
                });
            }
            let count = count(here, promises.len());
            if count < size && best.is_none_or(|(_, fullest)| count > fullest) {
                best = Some((number, count));
            }
        }
        let placement = match best {
            Some((number, count)) => {
                if let Some(promises) = entry.lobbies.get_mut(&number) {
                    promises.push((player.to_owned(), expiry));
                }
                Placement {
                    lobby: lobby_name(pool, number),
                    seats: count + 1,
                    size,
                    opened: false,
                }
            }
            None => {
                if tracked >= self.max_lobbies {
                    return Err(MatchError::Full(self.max_lobbies));
                }
                // A lobby of the pool's name may run already (joined by name): skip it (a
                // few at most, as the fleet's script does).
                let mut number = entry.next + 1;
                for _ in 0..16 {
                    if seats(&lobby_name(pool, number)).is_none() {
                        break;
                    }
                    number += 1;
                }
                entry.next = number;
                entry
                    .lobbies
                    .insert(number, vec![(player.to_owned(), expiry)]);
                Placement {
                    lobby: lobby_name(pool, number),
                    seats: 1,
                    size,
                    opened: true,
                }
            }
        };
        Ok(placement)
    }

    fn tracked(&self) -> usize {
        self.pools.values().map(|pool| pool.lobbies.len()).sum()
    }
}

/// Drops `pool`'s expired promises, and its lobbies that do not run and have none left.
fn forget_gone(name: &str, pool: &mut Pool, now: Instant, seats: &impl Fn(&str) -> Option<Seats>) {
    pool.lobbies.retain(|&number, promises| {
        promises.retain(|&(_, expiry)| expiry > now);
        !promises.is_empty() || seats(&lobby_name(name, number)).is_some()
    });
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

    fn none(_: &str) -> Option<Seats> {
        None
    }

    fn place(pools: &mut Pools, pool: &str, size: usize, player: &str, now: Instant) -> Placement {
        pools.place(pool, Some(size), 8, player, now, none).unwrap()
    }

    #[test]
    fn lobbies_fill_up_to_the_size_before_the_next_opens() {
        let mut pools = Pools::new(TTL, 100);
        let now = Instant::now();
        let placed: Vec<_> = (0..7)
            .map(|i| place(&mut pools, "duel", 3, &format!("p{i}"), now))
            .collect();
        let lobbies: Vec<_> = placed.iter().map(|p| p.lobby.as_str()).collect();
        assert_eq!(
            lobbies,
            [
                "duel-1", "duel-1", "duel-1", "duel-2", "duel-2", "duel-2", "duel-3"
            ]
        );
        assert_eq!(placed.iter().filter(|p| p.opened).count(), 3);
        assert_eq!(placed[2].seats, 3);
    }

    #[test]
    fn a_player_who_came_with_a_promise_is_counted_once() {
        // Size 4, players arriving one by one, each joining before the next asks.
        let mut pools = Pools::new(TTL, 100);
        let now = Instant::now();
        for joined in 0..4 {
            let seats = Seats {
                players: joined,
                recent: joined,
            };
            let placed = pools
                .place("p", Some(4), 8, &format!("p{joined}"), now, |name| {
                    (name == "p-1" && joined > 0).then_some(seats)
                })
                .unwrap();
            assert_eq!(placed.lobby, "p-1", "player {joined}");
        }
        let full = Seats {
            players: 4,
            recent: 4,
        };
        let next = pools.place("p", Some(4), 8, "p4", now, |name| {
            (name == "p-1").then_some(full)
        });
        assert_eq!(next.unwrap().lobby, "p-2", "p-1 holds its 4");
    }

    #[test]
    fn players_who_left_or_never_came_free_their_seats() {
        let mut pools = Pools::new(TTL, 100);
        let start = Instant::now();
        for i in 0..4 {
            place(&mut pools, "p", 4, &format!("p{i}"), start);
        }
        // p-1 runs with 2 players, both recent: the two other promises still run: full.
        let running = HashMap::from([(
            "p-1".to_owned(),
            Seats {
                players: 2,
                recent: 2,
            },
        )]);
        let seats = |name: &str| running.get(name).copied();
        let next = pools.place("p", Some(4), 8, "p4", start, seats).unwrap();
        assert_eq!(next.lobby, "p-2");
        // The promises expired: p-1 counts its 2 players only, and is the fullest with room.
        let later = start + TTL;
        let back = pools.place("p", Some(4), 8, "p5", later, seats).unwrap();
        assert_eq!((back.lobby.as_str(), back.seats), ("p-1", 3));
    }

    #[test]
    fn asking_again_keeps_the_seat_and_the_size_is_the_pools() {
        let mut pools = Pools::new(TTL, 100);
        let now = Instant::now();
        let first = place(&mut pools, "p", 2, "ann", now);
        place(&mut pools, "p", 2, "bob", now);
        let again = place(&mut pools, "p", 2, "ann", now);
        assert_eq!((again.lobby, again.seats), (first.lobby, 2));
        assert_eq!(
            pools.place("p", Some(3), 8, "cat", now, none),
            Err(MatchError::OtherSize {
                pool: "p".into(),
                size: 2
            })
        );
        let any_size = pools.place("p", None, 8, "cat", now, none).unwrap();
        assert_eq!((any_size.lobby.as_str(), any_size.size), ("p-2", 2));
    }

    #[test]
    fn a_full_node_forgets_what_expired_and_keeps_no_empty_pool() {
        let mut pools = Pools::new(TTL, 1);
        let start = Instant::now();
        place(&mut pools, "p", 2, "a", start);
        place(&mut pools, "p", 2, "b", start);
        assert_eq!(
            pools.place("p", Some(2), 8, "c", start, none),
            Err(MatchError::Full(1))
        );
        assert_eq!(
            pools.place("q", Some(2), 8, "c", start, none),
            Err(MatchError::Full(1))
        );
        assert_eq!(pools.pools.len(), 1, "no pool left behind by a refusal");
        let fresh = place(&mut pools, "q", 2, "d", start + TTL);
        assert_eq!(fresh.lobby, "q-1", "p-1 expired and was forgotten");
    }

    #[test]
    fn a_lobby_of_the_pools_name_running_already_is_skipped() {
        let mut pools = Pools::new(TTL, 100);
        let taken = |name: &str| (name == "p-1").then_some(Seats::default());
        let placed = pools
            .place("p", Some(2), 8, "a", Instant::now(), taken)
            .unwrap();
        assert_eq!(placed.lobby, "p-2");
    }
}
