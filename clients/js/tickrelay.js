// @ts-check
/**
 * tickrelay.js: the browser client for tickrelay protocol v1 (see protocol/PROTOCOL.md).
 *
 * One dependency-free ES module. The server serves it at `GET /tickrelay.js`.
 *
 * ```js
 * import { connect, decodeJSON } from "/tickrelay.js";
 *
 * const client = connect("ws://127.0.0.1:8080/ws", { lobby: "arena", name: "ann" });
 * client.on("welcome", (w) => console.log("I am player", w.player_id));
 * client.on("snapshot", () => {
 *   for (const [id, p] of client.players) draw(id, decodeJSON(p.data));
 * });
 * client.sendState({ x: 10, y: 20 });        // objects go out as UTF-8 JSON bytes
 * client.sendEvent(new Uint8Array([1, 2]));  // bytes go out as they are
 * ```
 *
 * Codecs. The JSON codec (`tickrelay.v1.json`) is the default and needs nothing. For
 * MessagePack (`tickrelay.v1.msgpack`, smaller and faster) pass an encoder and a decoder,
 * for example those of @msgpack/msgpack:
 *
 * ```js
 * import { encode, decode } from "@msgpack/msgpack";
 * const client = connect(url, { lobby, name, codec: { encode, decode } });
 * ```
 *
 * `encode(object)` must return a Uint8Array holding one MessagePack map, writing Uint8Array
 * values as `bin`; `decode(Uint8Array)` must return the map, with `bin` values as Uint8Array.
 *
 * Payloads. State and event bodies are opaque bytes to the server: `bin` in MessagePack,
 * base64 strings in JSON. This library hides the difference: whatever the codec, the app
 * always receives `Uint8Array`s (`client.players`, `snapshot` and `event` handlers), and may
 * send a Uint8Array / ArrayBuffer / typed array (sent as is) or any other value (sent as its
 * UTF-8 JSON text, which `decodeJSON(bytes)` turns back into the value).
 *
 * Connection life. `connect` returns at once; the client opens the socket, sends `join`, and
 * after `welcome` flushes what was sent meanwhile. When the connection drops (server restart,
 * network loss, silence for `staleMs`) it reconnects with exponential backoff and full jitter,
 * then takes its seat back: it sends the `resume` token of its last `welcome` and the offset of
 * the last reliable message it got, and the server answers with the same player id
 * (`welcome.resumed`), replays the events and member changes missed (`welcome.lost` counts
 * those it could not), then a keyframe. If the seat is gone (`seat_expired`: the server's
 * grace ran out, or it restarted) the client joins afresh on the same connection, as a new
 * player (and with a fresh ticket, when `ticket` is a function). Events the app sent that
 * were written to the dropped socket but never came back (every event is echoed to its
 * sender) are sent again after a resume, once the replay shows which the lobby did get; after
 * a fresh join they cannot be told apart and are counted in `stats.eventsUnconfirmed`. With tickets the seat belongs to
 * the ticket's identity: a newer connection of the same identity takes it over, and the older
 * client closes for good (close code 4006, `replaced`).
 *
 * Fleets. Against nodes sharing a lobby directory (`--redis`), `url` may be any node: a join
 * that reaches a node not running the lobby is answered `wrong_node` with the owner's URL,
 * and the client goes there at once (`client.url` says where it is; up to three hops in a
 * row). Every reconnection starts from the `url` given to `connect` again, so a node that
 * died or lost the lobby (close 4007) is left behind: the directory sends the client on. When
 * a node drains, its lobbies move to other nodes and each member gets `redirect`: the client
 * resumes its seat there at once (a `redirect` event, then `welcome` with `resumed`).
 *
 * Sending never throws. While not joined, `sendState` keeps only the latest state (sent right
 * after the next `welcome`) and `sendEvent` queues up to `maxQueuedEvents` events; an event
 * that does not fit is dropped and reported to the `error` handlers (code `event_dropped`).
 * States are also held back to at most `maxStateHz` per second (default: the lobby's tick
 * rate, as the server relays only the newest state per tick anyway); the newest one wins.
 */

export const SUBPROTOCOL_JSON = "tickrelay.v1.json";
/** `wrong_node` answers followed in a row before the client falls back to its backoff. */
const MAX_HOPS = 3;
export const SUBPROTOCOL_MSGPACK = "tickrelay.v1.msgpack";

/**
 * @typedef {object} ReconnectOptions
 * @property {number} [baseMs] First backoff ceiling in ms (default 250); doubles per attempt.
 * @property {number} [maxMs] Cap of the backoff ceiling in ms (default 5000).
 * @property {number} [maxAttempts] Failed attempts in a row before giving up (default Infinity).
 */

/**
 * @typedef {object} MessagePackCodec
 * @property {(message: object) => Uint8Array} encode
 * @property {(bytes: Uint8Array) => unknown} decode
 */

/**
 * @typedef {object} ConnectOptions
 * @property {string} lobby Lobby to join (1 to 64 bytes of UTF-8, no control characters).
 * @property {string} name Display name (1 to 64 bytes of UTF-8, no control characters).
 * @property {string | (() => string | Promise<string>)} [ticket] A signed join ticket from
 *   the game's backend, sent as `join.ticket`; required when the server verifies tickets. A
 *   function is called before every join (tickets expire: reconnections need fresh ones).
 * @property {string} [token] Old name of `ticket` (protocol v1 reserved `join.token`).
 * @property {"player" | "spectator"} [role] Join as a spectator: receive snapshots and events,
 *   send neither. With tickets the ticket decides; a player may still choose to watch.
 * @property {"json" | MessagePackCodec} [codec] Default "json"; an encoder/decoder pair selects MessagePack.
 * @property {ReconnectOptions | false} [reconnect] Backoff settings, or false to never reconnect.
 * @property {number} [pingIntervalMs] Time between clock probes once the clock is measured (default 2000).
 * @property {number} [maxQueuedEvents] Events kept while not joined (default 64).
 * @property {number} [maxStateHz] Most states sent per second (default: the lobby's tick rate).
 * @property {number} [staleMs] Reconnect when nothing arrived for this long, or the socket did
 *   not open within it (default 10000).
 * @property {typeof WebSocket} [WebSocket] WebSocket implementation (default: globalThis.WebSocket).
 */

/**
 * @typedef {object} Member
 * @property {number} id
 * @property {string} name
 * @property {"player" | "spectator"} role
 * @property {boolean} away Its connection dropped; its seat waits for it (it stays in `players`).
 */

/**
 * @typedef {object} PlayerView
 * @property {number} id
 * @property {number} seq The `seq` of the state message this data came from.
 * @property {Uint8Array} data The player's latest state (see `decodeJSON`).
 * @property {number} tick The tick of the snapshot that brought it.
 */

/**
 * @typedef {object} Snapshot
 * @property {"snapshot"} t
 * @property {number} tick
 * @property {number} server_time_us Server clock when the tick was sent (Unix microseconds).
 * @property {boolean} keyframe
 * @property {PlayerView[]} players
 * @property {number[]} removed
 * @property {number} missed Ticks skipped since the previous snapshot (0 normally).
 */

/**
 * @typedef {object} Welcome
 * @property {"welcome"} t
 * @property {number} player_id
 * @property {string} lobby
 * @property {number} tick_hz
 * @property {Member[]} members
 * @property {boolean} rejoined True when this welcome follows a reconnection.
 * @property {boolean} resumed True when the seat was taken back: same `player_id`, and the
 *   events missed follow.
 * @property {number} lost Events and member changes missed that could not be replayed.
 */

/**
 * @typedef {object} ClientError
 * @property {string} code A server error code (`lobby_full`, `unauthorized`, ...) or one of
 *   this library's: `event_dropped`, `reconnect_exhausted`, `bad_server_message`,
 *   `socket_error`, `ticket_failed` (the `ticket` function threw), `replaced`.
 * @property {string} message
 * @property {number} [retryAfterMs] With `overloaded`: the wait the server asked for.
 */

/**
 * @typedef {object} CloseInfo
 * @property {number} code WebSocket close code (1006: dropped without a close frame).
 * @property {string} reason
 * @property {boolean} wasClean
 * @property {boolean} willReconnect
 */

/**
 * @typedef {object} TickrelayEvents
 * @property {{ protocol: string }} open The socket opened (join not answered yet).
 * @property {Welcome} welcome Joined: the id, tick rate and members are known.
 * @property {Snapshot} snapshot A tick; `client.players` is already updated.
 * @property {{ from: number, data: Uint8Array }} event A lobby event (possibly our own).
 * @property {Member} member_joined
 * @property {Member} member_left
 * @property {Member} member_away A member's connection dropped (it may come back).
 * @property {Member} member_back An away member took its seat back.
 * @property {ClientError} error
 * @property {CloseInfo} close The socket closed.
 * @property {{ attempt: number, delayMs: number }} reconnecting A reconnection is scheduled.
 * @property {{ url: string }} redirect The lobby moved to the node at `url` (a drain); the
 *   client resumes its seat there at once.
 * @property {Record<string, unknown>} message Every decoded server message, payloads as Uint8Array.
 */

/** @typedef {"connecting" | "open" | "reconnecting" | "closed"} ReadyState */

/**
 * Opens a client: connects, joins `options.lobby` and stays joined until `close()`.
 * @param {string} url WebSocket URL of the server's `/ws`, e.g. `ws://127.0.0.1:8080/ws`.
 * @param {ConnectOptions} options
 * @returns {TickrelayClient}
 */
export function connect(url, options) {
  return new TickrelayClient(url, options);
}

export class TickrelayClient {
  /** @type {ReadyState} "open" means joined: `welcome` received. */
  readyState = "connecting";
  /** @type {number | null} Latest round-trip time in ms (protocol ping/pong), null until measured. */
  rtt = null;
  /** @type {number | null} Server clock minus local clock in ms, from the fastest recent probe. */
  clockOffset = null;
  /** @type {number | null} This player's id in the current lobby membership. */
  playerId = null;
  /** @type {number | null} The lobby's tick rate, from `welcome`. */
  tickHz = null;
  /** @type {number | null} Tick of the latest snapshot. */
  tick = null;
  /** @type {Map<number, Member>} Current lobby members, this player included. */
  members = new Map();
  /** @type {Map<number, PlayerView>} The lobby view: every player's latest state by id. */
  players = new Map();
  /** Counters since `connect`, for status displays. */
  stats = {
    snapshots: 0,
    keyframes: 0,
    eventsReceived: 0,
    messagesIn: 0,
    messagesOut: 0,
    bytesIn: 0,
    bytesOut: 0,
    welcomes: 0,
    reconnects: 0,
    eventsDropped: 0,
    wrongNodeFollowed: 0,
    redirects: 0,
    eventsResent: 0,
    eventsUnconfirmed: 0,
  };

  /** @type {Required<Omit<ConnectOptions, "ticket" | "token" | "role" | "codec" | "reconnect" | "maxStateHz" | "WebSocket">> & ConnectOptions} */
  #options;
  /** The URL given to `connect`: where every reconnection starts. */
  #homeUrl;
  /** Where the current connection goes (another node after `wrong_node`). */
  #url;
  /** `wrong_node` hops in a row (reset by `welcome` and by each reconnection). */
  #hops = 0;
  /** @type {Codec} */
  #codec;
  /** @type {{ baseMs: number, maxMs: number, maxAttempts: number } | null} */
  #reconnect;
  /** @type {typeof WebSocket} */
  #WebSocket;
  /** @type {WebSocket | null} */
  #ws = null;
  /** @type {Map<string, Set<Function>>} */
  #handlers = new Map();
  #closedByUser = false;
  /** Failed connection attempts in a row (reset by `welcome`). */
  #attempt = 0;
  #everJoined = false;
  /** @type {ReturnType<typeof setTimeout> | null} */
  #reconnectTimer = null;
  /** @type {ReturnType<typeof setTimeout> | null} */
  #pingTimer = null;
  /** @type {ReturnType<typeof setInterval> | null} */
  #staleTimer = null;
  #lastReceiveAt = 0;
  /** Recent clock probes, newest last. @type {{ rtt: number, offset: number }[]} */
  #probes = [];
  #nextSeq = 1;
  /** The newest state not sent yet. @type {{ seq: number, data: Uint8Array } | null} */
  #pendingState = null;
  #lastStateSentAt = -Infinity;
  /** @type {ReturnType<typeof setTimeout> | null} */
  #stateTimer = null;
  /** The wait the server asked for before the next attempt (`overloaded`), in ms. */
  #retryAfterMs = 0;
  /** Events sent while not joined, in order. @type {Uint8Array[]} */
  #queuedEvents = [];
  /** Events written to a socket whose echo has not come back yet, oldest first. */
  #unechoed = [];
  /** A resumed welcome came with events unechoed: until its replay ends (the first
   * snapshot), events wait, then the unechoed ones go again. */
  #replaying = false;
  /** The `resume` token of the last `welcome`, sent on reconnection. @type {string | null} */
  #resumeToken = null;
  /** The offset of the last reliable message received (welcome, events, member changes). */
  #offset = 0;

  /**
   * @param {string} url
   * @param {ConnectOptions} options
   */
  constructor(url, options) {
    if (!options || typeof options.lobby !== "string" || typeof options.name !== "string") {
      throw new TypeError("connect(url, {lobby, name}): lobby and name are required strings");
    }
    this.#homeUrl = url;
    this.#url = url;
    this.#options = {
      pingIntervalMs: 2000,
      maxQueuedEvents: 64,
      staleMs: 10000,
      ...options,
    };
    this.#codec = makeCodec(options.codec ?? "json");
    this.#reconnect =
      options.reconnect === false
        ? null
        : { baseMs: 250, maxMs: 5000, maxAttempts: Infinity, ...(options.reconnect ?? {}) };
    const Impl = options.WebSocket ?? globalThis.WebSocket;
    if (typeof Impl !== "function") {
      throw new TypeError("no WebSocket implementation: pass options.WebSocket");
    }
    this.#WebSocket = Impl;
    this.#open();
  }

  /** The lobby this client joins. */
  /** The WebSocket URL of the node this client is (or is being) connected to. */
  get url() {
    return this.#url;
  }

  get lobby() {
    return this.#options.lobby;
  }

  /** The display name this client joins with. */
  get name() {
    return this.#options.name;
  }

  /** The negotiated subprotocol name of the codec in use. */
  get protocol() {
    return this.#codec.subprotocol;
  }

  /** The server's clock now, in Unix milliseconds (local clock + `clockOffset`). */
  serverNow() {
    return performance.timeOrigin + performance.now() + (this.clockOffset ?? 0);
  }

  /**
   * Registers a handler; returns a function that removes it. Exceptions thrown by handlers
   * are reported (`reportError`) and never break the client.
   * @template {keyof TickrelayEvents} K
   * @param {K} type
   * @param {(event: TickrelayEvents[K]) => void} handler
   * @returns {() => void}
   */
  on(type, handler) {
    let set = this.#handlers.get(type);
    if (!set) {
      set = new Set();
      this.#handlers.set(type, set);
    }
    set.add(handler);
    return () => this.off(type, handler);
  }

  /**
   * Removes a handler registered with `on`.
   * @template {keyof TickrelayEvents} K
   * @param {K} type
   * @param {(event: TickrelayEvents[K]) => void} handler
   */
  off(type, handler) {
    this.#handlers.get(type)?.delete(handler);
  }

  /**
   * Sends this player's state (latest wins). Bytes go as they are; any other value as UTF-8
   * JSON. Never throws: while not joined, or faster than `maxStateHz`, only the newest state
   * is kept and sent as soon as allowed.
   * @param {Uint8Array | ArrayBuffer | ArrayBufferView | unknown} state
   * @returns {number} The `seq` this state carries (echoed in snapshots).
   */
  sendState(state) {
    const seq = this.#nextSeq++;
    if (this.readyState === "closed") return seq;
    this.#pendingState = { seq, data: toPayload(state) };
    this.#flushState();
    return seq;
  }

  /**
   * Sends an event to every lobby member (this player included), reliably and in order.
   * Bytes go as they are; any other value as UTF-8 JSON. Never throws: while not joined the
   * event is queued (up to `maxQueuedEvents`; beyond, it is dropped and reported as an
   * `error` with code `event_dropped`).
   * @param {Uint8Array | ArrayBuffer | ArrayBufferView | unknown} event
   * @returns {boolean} False when the event was dropped.
   */
  sendEvent(event) {
    const data = toPayload(event);
    if (this.readyState === "open" && !this.#replaying && this.#sendEvent(data)) {
      return true;
    }
    if (this.readyState !== "closed" && this.#queuedEvents.length < this.#options.maxQueuedEvents) {
      this.#queuedEvents.push(data);
      return true;
    }
    this.stats.eventsDropped += 1;
    this.#emit("error", {
      code: "event_dropped",
      message:
        this.readyState === "closed"
          ? "event dropped: the client is closed"
          : `event dropped: ${this.#queuedEvents.length} events already wait for the connection`,
    });
    return false;
  }

  /** Leaves the lobby and closes the connection for good (no reconnection). */
  close() {
    if (this.#closedByUser) return;
    this.#closedByUser = true;
    this.#clearTimers();
    this.#pendingState = null;
    this.#queuedEvents = [];
    this.#unechoed = [];
    this.#replaying = false;
    const ws = this.#ws;
    this.#ws = null;
    this.readyState = "closed";
    if (ws) {
      detach(ws);
      safeClose(ws, 1000, "bye");
      this.#emit("close", { code: 1000, reason: "closed by client", wasClean: true, willReconnect: false });
    }
  }

  // ---- connection ----------------------------------------------------------------------

  #open() {
    this.readyState = "connecting";
    /** @type {WebSocket} */
    let ws;
    try {
      ws = new this.#WebSocket(this.#url, [this.#codec.subprotocol]);
    } catch (err) {
      // A malformed URL throws synchronously; retrying cannot fix it.
      this.readyState = "closed";
      this.#emit("error", { code: "socket_error", message: `cannot open ${this.#url}: ${err}` });
      return;
    }
    ws.binaryType = "arraybuffer";
    this.#ws = ws;
    // The same silence limit covers a connection attempt that neither opens nor fails.
    this.#lastReceiveAt = performance.now();
    this.#staleTimer = setInterval(() => this.#checkStale(), 1000);
    ws.onopen = () => {
      this.#lastReceiveAt = performance.now();
      this.#emit("open", { protocol: ws.protocol });
      this.#sendJoin(ws, true);
      this.#probeClock();
    };
    ws.onmessage = (message) => this.#onFrame(message.data);
    ws.onclose = (closed) => this.#onSocketClosed(closed.code, closed.reason, closed.wasClean);
    // An error is always followed by a close event, which does the work.
    ws.onerror = () => {};
  }

  /**
   * Sends `join` on `ws`: a resume of the last seat when there is one (and `resume` allows),
   * else a fresh join with the ticket (fetched anew when it is a function).
   * @param {WebSocket} ws
   * @param {boolean} resume
   */
  #sendJoin(ws, resume) {
    this.#joinMessage(resume).then(
      (join) => {
        // The socket may have closed (or been replaced) while a ticket was fetched.
        if (this.#ws === ws) this.#send(join);
      },
      (err) => {
        if (this.#ws !== ws) return;
        this.#emit("error", { code: "ticket_failed", message: `the ticket function failed: ${err}` });
        this.#drop(1000, "no ticket");
      },
    );
  }

  /**
   * The `join` message: lobby, name, then either the seat to resume or the ticket and role.
   * @param {boolean} resume
   */
  async #joinMessage(resume) {
    /** @type {Record<string, unknown>} */
    const join = { t: "join", lobby: this.#options.lobby, name: this.#options.name };
    if (resume && this.#resumeToken !== null) {
      join.resume = this.#resumeToken;
      join.offset = this.#offset;
      return join;
    }
    const source = this.#options.ticket ?? this.#options.token;
    const ticket = typeof source === "function" ? await source() : source;
    if (ticket !== undefined && ticket !== null) join.ticket = String(ticket);
    if (this.#options.role !== undefined) join.role = this.#options.role;
    return join;
  }

  /**
   * @param {number} code
   * @param {string} reason
   * @param {boolean} wasClean
   */
  #onSocketClosed(code, reason, wasClean) {
    const ws = this.#ws;
    if (ws) detach(ws);
    this.#ws = null;
    this.#clearTimers();
    if (this.#closedByUser) return;
    if (code === 4006) {
      // Another connection of this identity (another tab, another device) took the seat:
      // reconnecting would take it back, and the two would evict each other forever.
      this.#reconnect = null;
      this.#emit("error", { code: "replaced", message: "a newer connection took this seat over" });
    }
    const willReconnect = this.#reconnect !== null && this.#attempt < this.#reconnect.maxAttempts;
    this.readyState = willReconnect ? "reconnecting" : "closed";
    if (!willReconnect) {
      this.#pendingState = null;
      this.#queuedEvents = [];
      this.stats.eventsUnconfirmed += this.#unechoed.length;
      this.#unechoed = [];
      this.#replaying = false;
    }
    this.#emit("close", { code, reason, wasClean, willReconnect });
    if (willReconnect) {
      this.#scheduleReconnect();
    } else if (this.#reconnect !== null) {
      this.#emit("error", {
        code: "reconnect_exhausted",
        message: `gave up after ${this.#attempt} failed connection attempts`,
      });
    }
  }

  /**
   * Drops a connection that is dead or unusable, without waiting for a close handshake.
   * @param {number} code
   * @param {string} reason
   */
  #drop(code, reason) {
    const ws = this.#ws;
    if (!ws) return;
    detach(ws);
    // 4000, not 1000: a normal close gives the seat up, and this client means to resume it.
    safeClose(ws, 4000, reason);
    this.#onSocketClosed(code, reason, false);
  }

  /**
   * Leaves the current socket for `url` at once, without a reconnection's backoff.
   * @param {string} url
   * @param {string} reason
   */
  #hop(url, reason) {
    // An app may close the client from the handler of what sent it here (`redirect`).
    if (this.#closedByUser) return;
    const ws = this.#ws;
    if (ws) {
      detach(ws);
      // 4000: keep the seat (it waits on the node `url` names).
      safeClose(ws, 4000, reason);
    }
    this.#ws = null;
    this.#clearTimers();
    this.#url = url;
    this.#open();
  }

  #scheduleReconnect() {
    const reconnect = this.#reconnect;
    if (reconnect === null) return;
    // Exponential backoff with full jitter: uniform in [0, min(cap, base * 2^attempt)], on top
    // of the wait the server asked for (`overloaded`), so a crowd told the same time spreads.
    const ceiling = Math.min(reconnect.maxMs, reconnect.baseMs * 2 ** Math.min(this.#attempt, 30));
    const delayMs = this.#retryAfterMs + Math.round(Math.random() * ceiling);
    this.#retryAfterMs = 0;
    this.#attempt += 1;
    this.stats.reconnects += 1;
    this.#emit("reconnecting", { attempt: this.#attempt, delayMs });
    this.#reconnectTimer = setTimeout(() => {
      this.#reconnectTimer = null;
      // From the start again: the node this client was sent to may be the one that failed.
      // A new start is a new chain of hops: only `wrong_node` answers in a row count.
      this.#url = this.#homeUrl;
      this.#hops = 0;
      if (!this.#closedByUser) this.#open();
    }, delayMs);
  }

  #checkStale() {
    if (performance.now() - this.#lastReceiveAt > this.#options.staleMs) {
      this.#drop(4000, "no message from the server");
    }
  }

  #clearTimers() {
    for (const timer of [this.#reconnectTimer, this.#pingTimer, this.#stateTimer]) {
      if (timer !== null) clearTimeout(timer);
    }
    if (this.#staleTimer !== null) clearInterval(this.#staleTimer);
    this.#reconnectTimer = this.#pingTimer = this.#stateTimer = this.#staleTimer = null;
  }

  // ---- sending -------------------------------------------------------------------------

  /**
   * Encodes and sends one message if the socket is open. Never throws.
   * @param {Record<string, unknown>} message
   * @returns {boolean} Whether it was handed to the socket.
   */
  #send(message) {
    const ws = this.#ws;
    if (!ws || ws.readyState !== 1) return false;
    try {
      const frame = this.#codec.encode(message);
      ws.send(frame);
      this.stats.messagesOut += 1;
      this.stats.bytesOut += typeof frame === "string" ? frame.length : frame.byteLength;
      return true;
    } catch (err) {
      this.#emit("error", { code: "socket_error", message: `send failed: ${err}` });
      return false;
    }
  }

  #flushState() {
    if (this.readyState !== "open" || this.#pendingState === null || this.#stateTimer !== null) {
      return;
    }
    const hz = this.#options.maxStateHz ?? this.tickHz ?? 30;
    const wait = this.#lastStateSentAt + 1000 / hz - performance.now();
    if (wait > 0) {
      this.#stateTimer = setTimeout(() => {
        this.#stateTimer = null;
        this.#flushState();
      }, wait);
      return;
    }
    const { seq, data } = this.#pendingState;
    if (this.#send({ t: "state", seq, data })) {
      this.#pendingState = null;
      this.#lastStateSentAt = performance.now();
    }
  }

  #probeClock() {
    this.#send({ t: "ping", client_time: performance.now() });
    // A few quick probes first, so that RTT and clock offset are known within a second.
    const delay = this.#probes.length < 4 ? 250 : this.#options.pingIntervalMs;
    this.#pingTimer = setTimeout(() => this.#probeClock(), delay);
  }

  // ---- receiving -----------------------------------------------------------------------

  /** @param {unknown} frame */
  #onFrame(frame) {
    this.#lastReceiveAt = performance.now();
    /** @type {any} */
    let message;
    try {
      message = this.#codec.decode(frame);
    } catch (err) {
      this.#emit("error", { code: "bad_server_message", message: `undecodable message: ${err}` });
      return;
    }
    if (!message || typeof message !== "object" || typeof message.t !== "string") {
      this.#emit("error", { code: "bad_server_message", message: "message without a type" });
      return;
    }
    this.stats.messagesIn += 1;
    this.stats.bytesIn += typeof frame === "string" ? frame.length : /** @type {ArrayBuffer} */ (frame).byteLength;
    switch (message.t) {
      case "welcome":
        this.#onWelcome(message);
        break;
      case "snapshot":
        this.#onSnapshot(message);
        break;
      case "event":
        this.#sawOffset(message.offset);
        message.from = Number(message.from);
        message.data = toBytes(message.data);
        if (message.from === this.playerId) this.#echoed(message.data);
        this.stats.eventsReceived += 1;
        this.#emit("event", { from: message.from, data: message.data });
        break;
      case "member_joined": {
        this.#sawOffset(message.offset);
        const member = toMember(message);
        this.members.set(member.id, member);
        this.#emit("member_joined", member);
        break;
      }
      case "member_away":
      case "member_back": {
        this.#sawOffset(message.offset);
        const id = Number(message.id);
        const member = this.members.get(id);
        if (member) {
          member.away = message.t === "member_away";
          this.#emit(message.t, member);
        }
        break;
      }
      case "member_left": {
        this.#sawOffset(message.offset);
        const id = Number(message.id);
        const member = this.members.get(id) ?? { id, name: "", role: "player", away: false };
        this.members.delete(id);
        this.players.delete(id);
        this.#emit("member_left", member);
        break;
      }
      case "redirect":
        this.#onRedirect(message);
        break;
      case "pong":
        this.#onPong(Number(message.client_time), Number(message.server_time_us));
        break;
      case "error":
        this.#onServerError(
          String(message.code),
          String(message.message ?? ""),
          Number(message.retry_after_ms ?? 0),
          typeof message.url === "string" ? message.url : "",
        );
        break;
      default:
        // Newer servers may add message types: ignore them (protocol: compatibility).
        break;
    }
    this.#emit("message", message);
  }

  /** @param {unknown} offset A reliable message's offset (absent from older servers). */
  #sawOffset(offset) {
    if (offset !== undefined && offset !== null) this.#offset = Math.max(this.#offset, Number(offset));
  }

  /** @param {any} message */
  #onWelcome(message) {
    this.readyState = "open";
    this.#attempt = 0;
    this.#hops = 0;
    const resumed = message.resumed === true;
    this.playerId = Number(message.player_id);
    this.tickHz = Number(message.tick_hz);
    this.tick = null;
    this.#resumeToken = typeof message.resume === "string" ? message.resume : null;
    // Everything up to the welcome's offset is known now: replayed right after it (resumed),
    // counted in `lost`, or before this membership (fresh).
    this.#offset = Number(message.offset ?? 0);
    this.members = new Map(
      (message.members ?? []).map((/** @type {any} */ m) => [Number(m.id), toMember(m)]),
    );
    // A fresh membership has seen nobody's state until its first snapshot, a keyframe; a
    // resumed one keeps its view until that keyframe replaces it.
    if (!resumed) this.players = new Map();
    this.stats.welcomes += 1;
    const rejoined = this.#everJoined;
    this.#everJoined = true;
    const lost = Number(message.lost ?? 0);
    if (resumed && lost === 0 && this.#unechoed.length > 0) {
      // The replay that follows echoes what the lobby got of them; the rest go again at the
      // first snapshot, which comes after the whole replay, and the app's events after them.
      this.#replaying = true;
    } else {
      // A replay cut short by another drop ends here too.
      this.#replaying = false;
      this.stats.eventsUnconfirmed += this.#unechoed.length;
      this.#unechoed = [];
      // What the app sent while disconnected goes out first, in order.
      this.#flushEvents([]);
    }
    this.#lastStateSentAt = -Infinity;
    this.#flushState();
    this.#emit("welcome", {
      t: "welcome",
      player_id: this.playerId,
      lobby: String(message.lobby),
      tick_hz: this.tickHz,
      members: [...this.members.values()],
      rejoined,
      resumed,
      lost,
    });
  }

  /**
   * Sends `again` (events the lobby never echoed), then the events queued while not joined.
   * @param {Uint8Array[]} again
   */
  #flushEvents(again) {
    this.stats.eventsResent += again.length;
    const queued = again.concat(this.#queuedEvents);
    this.#queuedEvents = [];
    for (const data of queued) {
      if (!this.#sendEvent(data)) this.#queuedEvents.push(data);
    }
  }

  /**
   * Our own event came back. Echoes come in the order sent, so the events before it that
   * never came back were refused (`event_too_large`, `overloaded`): none is sent again.
   * @param {Uint8Array} data
   */
  #echoed(data) {
    const at = this.#unechoed.findIndex((sent) => sameBytes(sent, data));
    if (at >= 0) this.#unechoed.splice(0, at + 1);
  }

  /**
   * Writes an event to the socket, remembering it until its echo comes back.
   * @param {Uint8Array} data
   */
  #sendEvent(data) {
    if (!this.#send({ t: "event", data })) return false;
    this.#unechoed.push(data);
    // Bounded: refused events are never echoed.
    if (this.#unechoed.length > this.#options.maxQueuedEvents) {
      this.#unechoed.shift();
      this.stats.eventsUnconfirmed += 1;
    }
    return true;
  }

  /** @param {any} message */
  #onSnapshot(message) {
    if (this.#replaying) {
      this.#replaying = false;
      const again = this.#unechoed;
      this.#unechoed = [];
      this.#flushEvents(again);
    }
    const tick = Number(message.tick);
    const missed = this.tick === null ? 0 : Math.max(0, tick - this.tick - 1);
    this.tick = tick;
    /** @type {PlayerView[]} */
    const players = (message.players ?? []).map((/** @type {any} */ p) => ({
      id: Number(p.id),
      seq: Number(p.seq),
      data: toBytes(p.data),
      tick,
    }));
    const removed = (message.removed ?? []).map(Number);
    if (message.keyframe) this.players = new Map();
    for (const player of players) this.players.set(player.id, player);
    for (const id of removed) this.players.delete(id);
    this.stats.snapshots += 1;
    if (message.keyframe) this.stats.keyframes += 1;
    message.tick = tick;
    message.server_time_us = Number(message.server_time_us);
    message.players = players;
    message.removed = removed;
    message.missed = missed;
    this.#emit("snapshot", message);
  }

  /**
   * NTP-style clock estimate: the server stamped the pong at about the midpoint of the round
   * trip. The offset of the fastest of the recent probes is the least distorted by queueing.
   * @param {number} sentAt `client_time` echoed: our `performance.now()` at the ping.
   * @param {number} serverTimeUs
   */
  #onPong(sentAt, serverTimeUs) {
    const now = performance.now();
    const rtt = now - sentAt;
    if (!Number.isFinite(rtt) || rtt < 0 || rtt > 60000 || !Number.isFinite(serverTimeUs)) return;
    const midpoint = performance.timeOrigin + (sentAt + now) / 2;
    this.#probes.push({ rtt, offset: serverTimeUs / 1000 - midpoint });
    if (this.#probes.length > 16) this.#probes.shift();
    this.rtt = rtt;
    let best = this.#probes[0];
    for (const probe of this.#probes) if (probe.rtt < best.rtt) best = probe;
    this.clockOffset = best.offset;
  }

  /**
   * The lobby moved to another node (a drain): take the seat back there at once, with the
   * token the redirect carries (same player id; the reliable messages not received yet are
   * replayed there).
   * @param {any} message
   */
  #onRedirect(message) {
    const url = typeof message.url === "string" ? message.url : "";
    if (url === "") return;
    this.#resumeToken = typeof message.resume === "string" ? message.resume : null;
    this.stats.redirects += 1;
    this.#emit("redirect", { url });
    this.#hops = 0;
    this.#hop(url, "lobby moved");
  }

  /**
   * @param {string} code
   * @param {string} message
   * @param {number} retryAfterMs The server's hint with `overloaded` (0: none).
   * @param {string} url The owner's URL with `wrong_node` ("": none).
   */
  #onServerError(code, message, retryAfterMs, url) {
    if (code === "wrong_node" && url !== "" && this.#hops < MAX_HOPS && this.readyState !== "open") {
      // The lobby runs on another node: go there now, seat and all (not an error).
      this.#hops += 1;
      this.stats.wrongNodeFollowed += 1;
      this.#hop(url, "wrong node");
      return;
    }
    this.#emit("error", retryAfterMs > 0 ? { code, message, retryAfterMs } : { code, message });
    // Once joined, `overloaded` is about a message (an event over the lobby's budget), not
    // about this connection: it says nothing of when to reconnect.
    if (this.readyState === "open") return;
    if (code === "overloaded" && Number.isFinite(retryAfterMs) && retryAfterMs > 0) {
      // Shed: the next reconnection waits at least this long (the server closes with 1013).
      this.#retryAfterMs = Math.min(retryAfterMs, 60_000);
    }
    if (code === "seat_expired") {
      // The seat is gone; the connection stays: join afresh on it, as a new player.
      this.#resumeToken = null;
      if (this.#ws) this.#sendJoin(this.#ws, false);
      return;
    }
    // A refused join. An invalid name or lobby, or a role the ticket does not allow, cannot
    // succeed later: stop for good. So does a refused ticket, unless `ticket` is a function
    // that can fetch a fresh one. A full lobby or server might accept a later attempt:
    // reconnect with backoff.
    const freshTicket = typeof (this.#options.ticket ?? this.#options.token) === "function";
    if (code === "invalid_join" || code === "forbidden" || (code === "unauthorized" && !freshTicket)) {
      this.#reconnect = null;
      this.#drop(1000, "join refused");
    } else if (
      code === "lobby_full" || code === "too_many_lobbies" || code === "unauthorized" ||
      code === "overloaded" || code === "wrong_node"
    ) {
      this.#drop(1000, "join refused");
    }
  }

  /**
   * @param {string} type
   * @param {unknown} event
   */
  #emit(type, event) {
    const handlers = this.#handlers.get(type);
    if (!handlers) return;
    for (const handler of [...handlers]) {
      try {
        handler(event);
      } catch (err) {
        if (typeof globalThis.reportError === "function") globalThis.reportError(err);
        else setTimeout(() => { throw err; });
      }
    }
  }
}

/**
 * A member as `welcome` and `member_joined` describe it (older servers send no role).
 * @param {any} m
 * @returns {Member}
 */
function toMember(m) {
  return {
    id: Number(m.id),
    name: String(m.name),
    role: m.role === "spectator" ? "spectator" : "player",
    away: m.away === true,
  };
}

// ---- payload helpers -------------------------------------------------------------------

const textEncoder = new TextEncoder();
const textDecoder = new TextDecoder();

/**
 * The bytes that carry `value`: binary values as they are, anything else as UTF-8 JSON.
 * @param {unknown} value
 * @returns {Uint8Array}
 */
export function toPayload(value) {
  if (value instanceof Uint8Array) return value;
  if (value instanceof ArrayBuffer) return new Uint8Array(value);
  if (ArrayBuffer.isView(value)) return new Uint8Array(value.buffer, value.byteOffset, value.byteLength);
  return encodeJSON(value);
}

/**
 * UTF-8 JSON bytes of a value (what `sendState(object)` sends).
 * @param {unknown} value
 * @returns {Uint8Array}
 */
export function encodeJSON(value) {
  return textEncoder.encode(JSON.stringify(value ?? null));
}

/**
 * The value in UTF-8 JSON bytes (a state or event sent as an object), or `undefined` when
 * the bytes are not JSON (another client sent something else: never trust peers' data).
 * @param {Uint8Array} bytes
 * @returns {any}
 */
export function decodeJSON(bytes) {
  try {
    return JSON.parse(textDecoder.decode(bytes));
  } catch {
    return undefined;
  }
}

/**
 * Standard base64 (RFC 4648, padded) of bytes: the JSON codec's payload encoding.
 * @param {Uint8Array} bytes
 * @returns {string}
 */
export function bytesToBase64(bytes) {
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode.apply(null, /** @type {any} */ (bytes.subarray(i, i + 0x8000)));
  }
  return btoa(binary);
}

/**
 * Bytes of a standard base64 string.
 * @param {string} base64
 * @returns {Uint8Array}
 */
export function base64ToBytes(base64) {
  const binary = atob(base64);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

/**
 * @param {Uint8Array} a
 * @param {Uint8Array} b
 */
function sameBytes(a, b) {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/**
 * A payload as received, whatever the codec delivered it as.
 * @param {unknown} data
 * @returns {Uint8Array}
 */
function toBytes(data) {
  if (data instanceof Uint8Array) return data;
  if (typeof data === "string") return base64ToBytes(data);
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  if (Array.isArray(data)) return Uint8Array.from(data);
  return new Uint8Array(0);
}

// ---- codecs ----------------------------------------------------------------------------

/**
 * @typedef {object} Codec
 * @property {string} subprotocol
 * @property {(message: Record<string, unknown>) => string | Uint8Array} encode
 * @property {(frame: unknown) => any} decode
 */

/**
 * @param {"json" | MessagePackCodec} choice
 * @returns {Codec}
 */
function makeCodec(choice) {
  if (choice === "json") {
    return {
      subprotocol: SUBPROTOCOL_JSON,
      encode: (message) =>
        JSON.stringify(message, (key, value) => (key === "data" && value instanceof Uint8Array ? bytesToBase64(value) : value)),
      decode: (frame) => {
        if (typeof frame !== "string") throw new TypeError("binary frame on a JSON connection");
        return JSON.parse(frame);
      },
    };
  }
  if (choice && typeof choice.encode === "function" && typeof choice.decode === "function") {
    const { encode, decode } = choice;
    return {
      subprotocol: SUBPROTOCOL_MSGPACK,
      encode: (message) => encode(message),
      decode: (frame) => {
        if (typeof frame === "string") throw new TypeError("text frame on a MessagePack connection");
        return decode(new Uint8Array(/** @type {ArrayBuffer} */ (frame)));
      },
    };
  }
  throw new TypeError('codec must be "json" or an object with encode and decode functions (MessagePack)');
}

/** @param {WebSocket} ws */
function detach(ws) {
  ws.onopen = ws.onmessage = ws.onclose = null;
  ws.onerror = () => {};
}

/**
 * @param {WebSocket} ws
 * @param {number} code
 * @param {string} reason
 */
function safeClose(ws, code, reason) {
  try {
    ws.close(code, reason);
  } catch {
    // Already closing or closed.
  }
}
