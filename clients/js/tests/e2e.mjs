#!/usr/bin/env node
// End-to-end tests of the browser side in real Chromium: the client library (JSON and
// MessagePack), the demo lobby (two players, key presses, server restart) and the monitor.
//
// Runs the real server binary itself on a free loopback port. Started by `cargo test`
// (server/tests/it/browser.rs), or by hand:
//
//   cargo build -p tickrelay-server
//   TICKRELAY_SERVER_BIN=target/debug/tickrelay-server node clients/js/tests/e2e.mjs
//
// Environment: TICKRELAY_SERVER_BIN (required), TICKRELAY_CHROMIUM (default /usr/bin/chromium),
// TICKRELAY_E2E_OUT (screenshots; default target/browser-e2e), TICKRELAY_E2E_TLS_CERT and
// TICKRELAY_E2E_TLS_KEY (a certificate for localhost and its key, PEM: the https test). Exit status 0 means every
// test passed. Everything is bounded in time, and the server is killed on every exit path.

import { execFileSync, spawn } from "node:child_process";
import { mkdirSync, readFileSync, existsSync, writeFileSync } from "node:fs";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";
import zlib from "node:zlib";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const JS_ROOT = path.resolve(HERE, "..");
const SERVER_BIN = process.env.TICKRELAY_SERVER_BIN;
const CHROMIUM = process.env.TICKRELAY_CHROMIUM || "/usr/bin/chromium";
const OUT_DIR = path.resolve(process.env.TICKRELAY_E2E_OUT || path.join(JS_ROOT, "../../target/browser-e2e"));
const TICK_HZ = 30;
/** The whole run, whatever happens. */
const RUN_TIMEOUT_MS = 180_000;
/** Any single wait inside a test. */
const WAIT_MS = 15_000;

const CHROMIUM_ARGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--no-first-run",
  "--disable-quic",
];

let server = null;
/** A second server that requires tickets. */
let ticketServer = null;
/** A third one serving https and wss. */
let tlsServer = null;
/** The fleet test's Redis and its two nodes. */
let fleetProcesses = [];
let browser = null;
const pageErrors = [];
/** Recent console lines of every page, printed when a test fails. */
const consoleLines = [];

const watchdog = setTimeout(() => {
  console.error(`\nFAIL: the run exceeded ${RUN_TIMEOUT_MS / 1000} s`);
  finish(1);
}, RUN_TIMEOUT_MS);

main().then(
  (code) => finish(code),
  (err) => {
    console.error(`\nFAIL: ${err && err.stack ? err.stack : err}`);
    finish(1);
  },
);

for (const signal of ["SIGINT", "SIGTERM"]) process.on(signal, () => finish(130));
// Last resort: never leave the server running, whatever ends this process.
process.on("exit", () => {
  server?.kill();
  ticketServer?.kill();
  tlsServer?.kill();
  for (const child of fleetProcesses) child.kill();
});

async function main() {
  if (!SERVER_BIN || !existsSync(SERVER_BIN)) {
    throw new Error(`TICKRELAY_SERVER_BIN must name the built server binary (got ${SERVER_BIN ?? "nothing"})`);
  }
  if (!existsSync(CHROMIUM)) throw new Error(`no Chromium at ${CHROMIUM}`);
  const { chromium } = await import("playwright-core");
  mkdirSync(OUT_DIR, { recursive: true });

  const port = await freePort();
  server = new Server(SERVER_BIN, port);
  await server.start();
  const base = `http://127.0.0.1:${port}`;
  console.log(`server ${SERVER_BIN} on ${base}, screenshots in ${OUT_DIR}`);

  // Playwright gives the browser a fresh temporary profile (--user-data-dir) on every launch.
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS, timeout: 30_000 });

  await test("library: JSON and MessagePack clients in one lobby", () => libraryTest(base, port));
  await test("library: safe sends while disconnected, bounded event queue", () => offlineTest(base));
  await test("library: tickets, one seat per identity, spectators", () => ticketTest());
  await test("demo over https: two tabs on wss see each other", () => tlsTest());
  await test("library: a dropped socket resumes its seat and gets the events sent meanwhile", () => resumeTest(base, port));
  await test("library: in a fleet, wrong_node is followed and a dead node left behind", () => fleetTest(base));
  await test("library: a drained node's lobby moves and its players follow the redirect", () => drainTest(base));
  await test("library: events the lobby never echoed are sent again after a redirect", () => resendTest(base));
  const demo = await test("demo: a key press in one tab moves the dot in the other", () => demoMoveTest(base));
  await test("demo: both tabs reconnect after a server restart and see each other", () => restartTest(demo));
  await test("screenshots: demo and monitor are rendered", () => screenshotTest(base, demo));
  await test("pages raised no uncaught exception", () => {
    if (pageErrors.length) throw new Error(pageErrors.join("\n"));
  });
  console.log(`\nall browser tests passed`);
  return 0;
}

// ---- tests -----------------------------------------------------------------------------

async function libraryTest(base, port) {
  const page = await blankPage(base);
  const results = await page.evaluate(async ({ wsUrl }) => {
    const { connect, decodeJSON, SUBPROTOCOL_MSGPACK } = await import("/tickrelay.js");
    const msgpack = await import("/__e2e__/msgpack/index.mjs");
    const until = window.e2eUntil;
    const record = (client) => {
      const log = { events: [], joined: [], left: [], errors: [] };
      client.on("event", (e) => log.events.push(e));
      client.on("member_joined", (m) => log.joined.push(m));
      client.on("member_left", (m) => log.left.push(m));
      client.on("error", (e) => log.errors.push(e));
      return log;
    };
    const lobby = `lib-${Math.random().toString(36).slice(2, 8)}`;
    const ann = connect(wsUrl, { lobby, name: "ann" });
    const annLog = record(ann);
    await until("ann's welcome", () => ann.readyState === "open");
    const bob = connect(wsUrl, { lobby, name: "bob", codec: { encode: msgpack.encode, decode: msgpack.decode } });
    const bobLog = record(bob);
    await until("bob's welcome", () => bob.readyState === "open");
    await until("ann hears of bob", () => annLog.joined.some((m) => m.id === bob.playerId));

    // An object state from the MessagePack client reaches the JSON client as JSON bytes.
    const bobState = { x: 1.5, list: [2, 3], text: "héllo ✓" };
    const bobSeq = bob.sendState(bobState);
    await until("bob's state at ann", () => ann.players.has(bob.playerId));
    const bobAtAnn = ann.players.get(bob.playerId);
    // Raw bytes from the JSON client (base64 on its wire) reach the MessagePack client (bin).
    ann.sendState(new Uint8Array([0, 255, 7, 128]));
    await until("ann's state at bob", () => bob.players.has(ann.playerId));
    const annAtBob = bob.players.get(ann.playerId);

    ann.sendEvent({ hello: "world" });
    bob.sendEvent(new Uint8Array([9, 8, 7]));
    await until("events everywhere", () => annLog.events.length >= 2 && bobLog.events.length >= 2);

    await until("clock probes", () => ann.rtt !== null && bob.rtt !== null && ann.clockOffset !== null);

    // Sent before the welcome: queued, then delivered once joined.
    const dee = connect(wsUrl, { lobby, name: "dee" });
    dee.sendEvent({ early: true });
    dee.sendState({ early: "state" });
    await until("dee's early event at ann", () => annLog.events.some((e) => e.from === dee.playerId));
    await until("dee's early state at ann", () => ann.players.has(dee.playerId));
    const deeState = decodeJSON(ann.players.get(dee.playerId).data);

    // Leaving: the others drop the player from members and from the view.
    bob.close();
    await until("bob left at ann", () => annLog.left.some((m) => m.id === bob.playerId));
    await until("bob out of ann's view", () => !ann.players.has(bob.playerId));

    // A refused join (empty lobby name) is reported and not retried.
    const bad = connect(wsUrl, { lobby: "", name: "x" });
    const badLog = record(bad);
    await until("invalid join closes", () => bad.readyState === "closed");

    const result = {
      annProtocol: ann.protocol,
      bobProtocol: bob.protocol,
      msgpackName: SUBPROTOCOL_MSGPACK,
      bobSeq,
      bobAtAnn: { seq: bobAtAnn.seq, isBytes: bobAtAnn.data instanceof Uint8Array, value: decodeJSON(bobAtAnn.data) },
      annAtBob: { isBytes: annAtBob.data instanceof Uint8Array, bytes: [...annAtBob.data] },
      annEvents: annLog.events.map((e) => ({ from: e.from, bytes: [...e.data] })),
      bobEvents: bobLog.events.map((e) => ({ from: e.from, bytes: [...e.data] })),
      ids: { ann: ann.playerId, bob: bob.playerId, dee: dee.playerId },
      annMembers: [...ann.members.values()].map((m) => m.name).sort(),
      rtt: [ann.rtt, bob.rtt],
      clockOffset: ann.clockOffset,
      serverNowSkew: ann.serverNow() - Date.now(),
      deeState,
      bobState: bob.readyState,
      badErrors: badLog.errors.map((e) => e.code),
      errors: [...annLog.errors, ...bobLog.errors].map((e) => e.code),
    };
    ann.close();
    dee.close();
    return result;
  }, { wsUrl: `ws://127.0.0.1:${port}/ws` });

  const json = (value) => [...new TextEncoder().encode(JSON.stringify(value))];
  assertEqual(results.annProtocol, "tickrelay.v1.json", "default codec");
  assertEqual(results.bobProtocol, results.msgpackName, "MessagePack codec when encode/decode are given");
  assertEqual(results.bobAtAnn.seq, results.bobSeq, "snapshot echoes the state's seq");
  assert(results.bobAtAnn.isBytes && results.annAtBob.isBytes, "payloads reach the app as Uint8Array");
  assertEqual(results.bobAtAnn.value, { x: 1.5, list: [2, 3], text: "héllo ✓" }, "object state round trip");
  assertEqual(results.annAtBob.bytes, [0, 255, 7, 128], "byte state round trip (JSON base64 -> msgpack bin)");
  const expectedEvents = [
    { from: results.ids.ann, bytes: json({ hello: "world" }) },
    { from: results.ids.bob, bytes: [9, 8, 7] },
  ];
  // Both members see the lobby's events in the same order; each sees its own.
  assertEqual(sortEvents(results.annEvents.slice(0, 2)), sortEvents(expectedEvents), "ann's events");
  assertEqual(results.bobEvents.slice(0, 2), results.annEvents.slice(0, 2), "same event order for every member");
  assert(results.rtt.every((rtt) => rtt > 0 && rtt < 1000), `rtt measured: ${results.rtt}`);
  assert(Math.abs(results.clockOffset) < 1000, `clock offset on one machine is small: ${results.clockOffset}`);
  assert(Math.abs(results.serverNowSkew) < 1000, `serverNow() is close to Date.now(): ${results.serverNowSkew}`);
  assertEqual(results.deeState, { early: "state" }, "state sent before welcome arrives after it");
  assertEqual(results.bobState, "closed", "closed client");
  assert(results.badErrors.includes("invalid_join"), `invalid join reported: ${results.badErrors}`);
  assertEqual(results.errors, [], "no errors on healthy clients");
  await page.close();
  return `rtt ${results.rtt.map((r) => r.toFixed(2)).join("/")} ms, offset ${results.clockOffset.toFixed(2)} ms`;
}

async function resumeTest(base, port) {
  // Ann reaches the server through a TCP proxy of the test's own: cutting it drops her socket
  // (no server restart, no close frame), and while it is cut her reconnections are refused.
  const proxy = await cuttableProxy(port);
  const page = await blankPage(base);
  await page.exposeFunction("cutAnn", () => proxy.cut());
  await page.exposeFunction("healAnn", () => proxy.heal());
  const results = await page.evaluate(async ({ proxied, direct }) => {
    const { connect, decodeJSON } = await import("/tickrelay.js");
    const until = window.e2eUntil;
    const lobby = `resume-${Math.random().toString(36).slice(2, 8)}`;
    const ann = connect(proxied, { lobby, name: "ann", reconnect: { baseMs: 50, maxMs: 200 } });
    const welcomes = [];
    ann.on("welcome", (w) => welcomes.push(w));
    const annEvents = [];
    ann.on("event", (e) => annEvents.push(decodeJSON(e.data)));
    await until("ann's welcome", () => ann.readyState === "open");
    const bob = connect(direct, { lobby, name: "bob" });
    const away = [], back = [], left = [];
    bob.on("member_away", (m) => away.push(m.id));
    bob.on("member_back", (m) => back.push(m.id));
    bob.on("member_left", (m) => left.push(m.id));
    const bobEvents = [];
    bob.on("event", (e) => bobEvents.push(decodeJSON(e.data)));
    await until("bob's welcome", () => bob.readyState === "open");
    ann.sendState({ x: 1 });
    await until("ann's state at bob", () => bob.players.has(ann.playerId));
    const annId = ann.playerId;

    await window.cutAnn();
    await until("bob sees ann away", () => away.includes(annId));
    const awayShown = bob.members.get(annId)?.away === true;
    for (const n of [1, 2, 3]) bob.sendEvent({ n });
    await until("bob's own events", () => bobEvents.length === 3);
    await window.healAnn();
    await until("ann is back", () => welcomes.length === 2 && ann.readyState === "open", 15000);
    await until("the events sent meanwhile reach ann", () => annEvents.length === 3);
    await until("bob sees ann back", () => back.includes(annId));
    const result = {
      annId,
      resumedId: ann.playerId,
      resumed: welcomes[1].resumed,
      lost: welcomes[1].lost,
      annEvents,
      left,
      awayShown,
      stillInView: bob.players.has(annId),
    };
    ann.close();
    bob.close();
    return result;
  }, { proxied: `ws://127.0.0.1:${proxy.port}/ws`, direct: `ws://127.0.0.1:${port}/ws` });
  await page.close();
  await proxy.close();
  assertEqual(results.resumedId, results.annId, "the same seat, the same player id");
  assert(results.resumed, "welcome says resumed");
  assertEqual(results.lost, 0, "nothing lost");
  assertEqual(results.annEvents, [{ n: 1 }, { n: 2 }, { n: 3 }], "the events sent while she was away, in order");
  assertEqual(results.left, [], "no member_left for a resumed seat");
  assert(results.awayShown, "members mark the away player");
  assert(results.stillInView, "an away player stays in the view with its last state");
  return `player ${results.annId} back`;
}

/**
 * Two nodes "a" and "b" sharing a Redis of the test's own (redis-server from apt), with one
 * resume secret and a 1 s lease.
 */
async function startFleet() {
  const redisPort = await freePort();
  const redis = spawn("redis-server", ["--port", String(redisPort), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], { stdio: "ignore" });
  fleetProcesses.push({ kill: () => redis.kill("SIGKILL") });
  await until("redis-server to listen", () => canConnect(redisPort));
  const nodes = {};
  for (const id of ["a", "b"]) {
    const port = await freePort();
    nodes[id] = new Server(SERVER_BIN, port, {
      TICKRELAY_REDIS: `redis://127.0.0.1:${redisPort}`,
      TICKRELAY_NODE_ID: id,
      TICKRELAY_LEASE: "1s",
      TICKRELAY_RESUME_SECRET: "a fleet secret both nodes share, 32 bytes or more",
    });
    await nodes[id].start();
    fleetProcesses.push(nodes[id]);
  }
  const url = (id) => `ws://127.0.0.1:${nodes[id].port}/ws`;
  const stop = async () => {
    for (const node of Object.values(nodes)) await node.stop();
    redis.kill("SIGKILL");
    fleetProcesses = [];
  };
  return { nodes, url, stop };
}

async function fleetTest(base) {
  // The lobby is created on "a"; the page connects to "b" and is sent on; then "a" is killed
  // and the client, starting over from "b", gets the lobby there once a's lease ran out.
  const { nodes, url, stop } = await startFleet();
  const page = await blankPage(`http://127.0.0.1:${nodes.b.port}`);
  await page.exposeFunction("killNodeA", () => nodes.a.kill());
  const results = await page.evaluate(async ({ a, b }) => {
    const { connect } = await import("/tickrelay.js");
    const until = window.e2eUntil;
    const lobby = `fleet-${Math.random().toString(36).slice(2, 8)}`;
    const host = connect(a, { lobby, name: "host", reconnect: false });
    await until("the host's welcome on a", () => host.readyState === "open");
    const guest = connect(b, { lobby, name: "guest", reconnect: { baseMs: 100, maxMs: 400 } });
    const welcomes = [];
    guest.on("welcome", (w) => welcomes.push(w));
    const errors = [];
    guest.on("error", (e) => errors.push(e.code));
    await until("the guest's welcome", () => guest.readyState === "open");
    const sentTo = guest.url;
    await until("the guest sees the host", () => guest.members.has(host.playerId));
    const followed = guest.stats.wrongNodeFollowed;
    await window.killNodeA();
    await until("the guest is back, on b", () => welcomes.length === 2 && guest.readyState === "open", 15000);
    const result = { sentTo, followed, endedOn: guest.url, errors, rejoined: welcomes[1].rejoined };
    guest.close();
    return result;
  }, { a: url("a"), b: url("b") });
  await page.close();
  await stop();
  assertEqual(results.sentTo, url("a"), "wrong_node sent the guest to the node running the lobby");
  assertEqual(results.followed, 1, "one hop");
  assertEqual(results.endedOn, url("b"), "after a died, the lobby came back on b");
  assert(results.rejoined, "the second welcome is a rejoin");
  assert(!results.errors.includes("wrong_node"), `no wrong_node surfaced as an error: ${results.errors}`);
  return `hopped to a, back on b after a's death`;
}

async function drainTest(base) {
  // Two players in a lobby on "a"; "a" is drained (POST /drain): both follow the redirect to
  // "b" and keep their ids, their view of each other, and the lobby's events.
  const { nodes, url, stop } = await startFleet();
  // The monitor of a fleet node shows the fleet: both nodes, then a after its drain.
  const monitor = await (await newContext()).newPage();
  await monitor.goto(`http://127.0.0.1:${nodes.a.port}/monitor`);
  const fleetRows = () => document.querySelectorAll("#fleet tbody tr").length;
  await waitFor(monitor, "the monitor's fleet table with both nodes", (n) => document.querySelectorAll("#fleet tbody tr").length === n, 2);
  const page = await blankPage(`http://127.0.0.1:${nodes.b.port}`);
  await page.exposeFunction("drainNodeA", async () => {
    const response = await fetch(`http://127.0.0.1:${nodes.a.port}/drain`, { method: "POST" });
    return response.json();
  });
  const results = await page.evaluate(async ({ a }) => {
    const { connect } = await import("/tickrelay.js");
    const until = window.e2eUntil;
    const lobby = `drain-${Math.random().toString(36).slice(2, 8)}`;
    const watch = (client) => {
      const seen = { welcomes: [], left: [], events: [], redirects: [] };
      client.on("welcome", (w) => seen.welcomes.push(w));
      client.on("member_left", (m) => seen.left.push(m.id));
      client.on("event", (e) => seen.events.push(JSON.parse(new TextDecoder().decode(e.data))));
      client.on("redirect", (r) => seen.redirects.push(r.url));
      return seen;
    };
    const host = connect(a, { lobby, name: "host" });
    const hostSeen = watch(host);
    await until("the host's welcome on a", () => host.readyState === "open");
    const guest = connect(a, { lobby, name: "guest" });
    const guestSeen = watch(guest);
    await until("the guest sees the host", () => guest.readyState === "open" && guest.members.has(host.playerId));
    const ids = [host.playerId, guest.playerId];
    host.sendEvent(new TextEncoder().encode(JSON.stringify({ n: 1 })));
    await until("the first event", () => guestSeen.events.length === 1);
    const report = await window.drainNodeA();
    await until("both back after the redirect", () =>
      [host, guest].every((c) => c.readyState === "open" && c.stats.redirects === 1 && c.url !== a), 15000);
    host.sendEvent(new TextEncoder().encode(JSON.stringify({ n: 2 })));
    await until("the second event, there", () => guestSeen.events.length === 2);
    const result = {
      report,
      ids,
      idsAfter: [host.playerId, guest.playerId],
      urls: [host.url, guest.url],
      redirects: guestSeen.redirects,
      resumed: [hostSeen, guestSeen].map((seen) => seen.welcomes.at(-1)),
      guestSeesHost: guest.members.has(host.playerId),
      left: guestSeen.left.concat(hostSeen.left),
      events: guestSeen.events,
    };
    host.close();
    guest.close();
    return result;
  }, { a: url("a") });
  await page.close();
  await waitFor(monitor, "the drained node noted on its monitor", () => document.querySelector("#fleet-note").textContent.includes("draining"));
  assertEqual(await monitor.evaluate(fleetRows), 1, "the drained node is out of placement");
  await monitor.close();
  await stop();
  assertEqual(results.report.moved.length, 1, "the drain moved the lobby");
  assertEqual(results.urls, [url("b"), url("b")], "both followed the redirect to b");
  assertEqual(results.redirects, [url("b")], "one redirect event, naming b");
  assertEqual(results.idsAfter, results.ids, "same player ids");
  for (const welcome of results.resumed) {
    assert(welcome.resumed && welcome.lost === 0, `resumed without loss: ${JSON.stringify(welcome)}`);
  }
  assert(results.guestSeesHost, "the guest still sees the host");
  assertEqual(results.left, [], "nobody left");
  assertEqual(results.events, [{ n: 1 }, { n: 2 }], "the events before and after the move");
  return `moved in ${results.report.moved[0].frozen_ms.toFixed(1)} ms`;
}

async function resendTest(base) {
  // Which own events to send again after a redirect depends on a race no real server can be
  // made to lose on cue (an event written to the old node while its lobby was frozen), so
  // this test plays the server's side itself, through the client's `WebSocket` option: the
  // client must resend exactly the events the replay does not echo, before newer ones.
  const page = await blankPage(base);
  const results = await page.evaluate(async () => {
    const { connect, decodeJSON } = await import("/tickrelay.js");
    const until = window.e2eUntil;
    const sockets = [];
    class ScriptedSocket {
      constructor(url, protocols) {
        this.url = url;
        this.protocol = protocols[0];
        this.readyState = 0;
        this.sent = [];
        sockets.push(this);
        setTimeout(() => { this.readyState = 1; this.onopen?.(); }, 0);
      }
      send(frame) { this.sent.push(JSON.parse(frame)); }
      close() { this.readyState = 3; }
      serve(message) { this.onmessage?.({ data: JSON.stringify(message) }); }
    }
    const event = (n) => new TextEncoder().encode(JSON.stringify({ n }));
    const b64 = (n) => btoa(String.fromCharCode(...event(n)));
    const events = (socket) => socket.sent.filter((m) => m.t === "event").map((m) => decodeJSON(Uint8Array.from(atob(m.data), (c) => c.charCodeAt(0))).n);
    const client = connect("ws://a.test/ws", { lobby: "scripted", name: "ann", WebSocket: ScriptedSocket });
    await until("the join on a", () => sockets[0]?.sent.some((m) => m.t === "join"));
    const welcome = { t: "welcome", player_id: 5, lobby: "scripted", tick_hz: 30, members: [{ id: 5, name: "ann" }], offset: 0, resume: "token-1" };
    sockets[0].serve(welcome);
    for (const n of [1, 2, 3]) client.sendEvent(event(n));
    sockets[0].serve({ t: "event", from: 5, data: b64(1), offset: 1 });
    // The lobby moves; 2 and 3 were written to a, only 2 reached the lobby before it froze.
    sockets[0].serve({ t: "redirect", url: "ws://b.test/ws", resume: "token-2" });
    await until("the resume on b", () => sockets[1]?.sent.some((m) => m.t === "join"));
    const join = sockets[1].sent.find((m) => m.t === "join");
    sockets[1].serve({ ...welcome, offset: 1, resume: "token-3", resumed: true, lost: 0 });
    client.sendEvent(event(4)); // during the replay: waits
    const duringReplay = events(sockets[1]);
    sockets[1].serve({ t: "event", from: 5, data: b64(2), offset: 2 });
    sockets[1].serve({ t: "snapshot", tick: 9, server_time_us: Date.now() * 1000, keyframe: true, players: [], removed: [] });
    const result = { join, duringReplay, after: events(sockets[1]), url: client.url, stats: { ...client.stats } };
    client.close();
    return result;
  });
  await page.close();
  assertEqual(results.join.resume, "token-2", "resumed with the redirect's token");
  assertEqual(results.join.offset, 1, "from the last offset received");
  assertEqual(results.url, "ws://b.test/ws", "on the node the redirect named");
  assertEqual(results.duringReplay, [], "nothing sent before the replay ended");
  assertEqual(results.after, [3, 4], "the unechoed event again, then the newer one");
  assertEqual([results.stats.eventsResent, results.stats.redirects], [1, 1], "counted");
  return "event 3 resent after the replay, before event 4";
}

/** Whether something listens on a loopback port. */
function canConnect(port) {
  return new Promise((resolve) => {
    const socket = net.connect(port, "127.0.0.1");
    socket.once("connect", () => {
      socket.destroy();
      resolve(true);
    });
    socket.once("error", () => resolve(false));
  });
}

/** Polls `predicate` (sync or async) every 50 ms until it holds, at most `timeout` ms. */
async function until(what, predicate, timeout = WAIT_MS) {
  const deadline = Date.now() + timeout;
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

/** A loopback TCP proxy to `target` whose connections the test can cut (and refuse) at will. */
async function cuttableProxy(target) {
  const sockets = new Set();
  let cut = false;
  const server = net.createServer((client) => {
    if (cut) {
      client.resetAndDestroy();
      return;
    }
    const upstream = net.connect(target, "127.0.0.1");
    for (const socket of [client, upstream]) {
      sockets.add(socket);
      socket.on("error", () => {});
      socket.on("close", () => {
        sockets.delete(socket);
        client.destroy();
        upstream.destroy();
      });
    }
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    port: server.address().port,
    cut() {
      cut = true;
      // RST both ways: neither end gets a close frame.
      for (const socket of sockets) socket.resetAndDestroy();
    },
    heal() {
      cut = false;
    },
    close: () => new Promise((resolve) => server.close(resolve)),
  };
}

async function tlsTest() {
  // The certificate is made by browser.rs (rcgen); Chromium is told to accept it, as a
  // browser would once a real CA signed it.
  const cert = process.env.TICKRELAY_E2E_TLS_CERT;
  const key = process.env.TICKRELAY_E2E_TLS_KEY;
  if (!cert || !key) throw new Error("TICKRELAY_E2E_TLS_CERT and TICKRELAY_E2E_TLS_KEY must name a certificate and its key");
  const port = await freePort();
  const adminPort = await freePort();
  // The admin listener stays plain: the health check goes there.
  tlsServer = new Server(SERVER_BIN, port, {
    TICKRELAY_TLS_CERT: cert,
    TICKRELAY_TLS_KEY: key,
    TICKRELAY_ADMIN_LISTEN: `127.0.0.1:${adminPort}`,
  }, adminPort);
  await tlsServer.start();
  const base = `https://localhost:${port}`;
  const lobby = `tls-${Date.now().toString(36)}`;
  const ann = await demoPage(base, lobby, "Ann", { ignoreHTTPSErrors: true });
  const bob = await demoPage(base, lobby, "Bob", { ignoreHTTPSErrors: true });
  await seeEachOther(ann, bob);
  const scheme = await ann.evaluate(() => location.protocol);
  assert(scheme === "https:", `the demo came over ${scheme}`);
  const metrics = await (await fetch(`http://127.0.0.1:${adminPort}/metrics`)).text();
  const handshakes = Number(/^tickrelay_tls_handshakes_total\{result="ok"\} (\S+)/m.exec(metrics)?.[1] ?? 0);
  const direct = Number(/^tickrelay_snapshots_written_direct_total (\S+)/m.exec(metrics)?.[1] ?? 0);
  assert(handshakes >= 2, `TLS handshakes: ${handshakes}`);
  assert(direct > 0, "snapshots written directly over TLS");
  await ann.close();
  await bob.close();
  await tlsServer.stop();
  tlsServer = null;
}

async function ticketTest() {
  // A server that requires tickets; the page gets them from the real `ticket` subcommand.
  const secret = "browser-test-secret-0123456789abcdef";
  const port = await freePort();
  // Three connections at most: the last step sees the server shed a fourth.
  ticketServer = new Server(SERVER_BIN, port, { TICKRELAY_TICKET_SECRET: secret, TICKRELAY_MAX_CONNECTIONS: "3" });
  await ticketServer.start();
  const base = `http://127.0.0.1:${port}`;
  const page = await blankPage(base);
  let minted = 0;
  await page.exposeFunction("mintTicket", (lobby, sub, role) => {
    minted += 1;
    const args = ["ticket", "--lobby", lobby, "--sub", sub, "--name", `N-${sub}`, "--role", role];
    return execFileSync(SERVER_BIN, args, { env: { ...process.env, TICKRELAY_TICKET_SECRET: secret } }).toString().trim();
  });
  const results = await page.evaluate(async ({ wsUrl }) => {
    const { connect } = await import("/tickrelay.js");
    const until = window.e2eUntil;
    const errorsOf = (client) => {
      const codes = [];
      client.on("error", (e) => codes.push(e.code));
      return codes;
    };
    const lobby = `tix-${Math.random().toString(36).slice(2, 8)}`;
    // No ticket: refused for good (a fixed ticket cannot get better), no reconnect loop.
    const anon = connect(wsUrl, { lobby, name: "anon" });
    const anonErrors = errorsOf(anon);
    await until("the anonymous join is refused", () => anon.readyState === "closed");

    const ticket = (sub, role = "player") => () => window.mintTicket(lobby, sub, role);
    const ann = connect(wsUrl, { lobby, name: "ignored", ticket: ticket("ann") });
    const annErrors = errorsOf(ann);
    await until("ann's welcome", () => ann.readyState === "open");
    const eve = connect(wsUrl, { lobby, name: "ignored", ticket: ticket("eve", "spectator") });
    await until("eve's welcome", () => eve.readyState === "open");
    await until("ann sees the spectator", () => ann.members.has(eve.playerId));
    ann.sendState({ x: 1 });
    await until("eve watches ann", () => eve.players.has(ann.playerId));

    // Ann opens a second tab: it takes her seat over, the first tab stops for good.
    const annToo = connect(wsUrl, { lobby, name: "ignored", ticket: ticket("ann") });
    await until("the second tab's welcome", () => annToo.readyState === "open");
    await until("the first tab is closed", () => ann.readyState === "closed");
    // Ann's first tab is gone; annToo and eve hold two of the three connections. A fourth
    // client is shed after the upgrade (error overloaded with retry_after_ms, close 1013) and
    // waits at least that long before trying again, then gets in once a place frees.
    const third = connect(wsUrl, { lobby, name: "x", ticket: ticket("third") });
    await until("the third connection's welcome", () => third.readyState === "open");
    const fourth = connect(wsUrl, { lobby, name: "x", ticket: ticket("fourth"), reconnect: { baseMs: 50, maxMs: 100 } });
    const fourthErrors = [];
    fourth.on("error", (e) => fourthErrors.push(e));
    const delays = [];
    fourth.on("reconnecting", (r) => delays.push(r.delayMs));
    await until("the fourth is shed", () => delays.length > 0);
    third.close();
    await until("the fourth gets in once a place is free", () => fourth.readyState === "open", 15000);
    const overloaded = fourthErrors.find((e) => e.code === "overloaded");
    fourth.close();
    const result = {
      overloadedHint: overloaded?.retryAfterMs ?? null,
      firstDelay: delays[0],
      anonErrors,
      annErrors,
      sameSeat: annToo.playerId === ann.playerId,
      annName: annToo.members.get(annToo.playerId).name,
      eveRole: annToo.members.get(eve.playerId).role,
      evePlayers: [...eve.players.keys()],
      eveId: eve.playerId,
    };
    annToo.close();
    eve.close();
    return result;
  }, { wsUrl: `ws://127.0.0.1:${port}/ws` });
  assert(results.anonErrors.includes("unauthorized"), `no ticket: ${results.anonErrors}`);
  assert(results.annErrors.includes("replaced"), `the first tab learns why: ${results.annErrors}`);
  assert(results.sameSeat, "the second tab has the same player id");
  assertEqual(results.annName, "N-ann", "the name comes from the ticket");
  assertEqual(results.eveRole, "spectator", "members carry their role");
  assert(!results.evePlayers.includes(results.eveId), "a spectator is never in the players");
  assert(minted >= 5, `one ticket per join: ${minted}`);
  assert(results.overloadedHint > 0, `overloaded carries retry_after_ms: ${results.overloadedHint}`);
  assert(results.firstDelay >= results.overloadedHint, `the backoff honours the hint: ${results.firstDelay} ms`);
  await page.close();
  await ticketServer.stop();
  ticketServer = null;
  return `${minted} tickets minted`;
}

async function offlineTest(base) {
  const deadPort = await freePort();
  const page = await blankPage(base);
  const results = await page.evaluate(async ({ wsUrl }) => {
    const { connect } = await import("/tickrelay.js");
    const errors = [];
    const reconnecting = [];
    const client = connect(wsUrl, {
      lobby: "nowhere",
      name: "nobody",
      maxQueuedEvents: 2,
      reconnect: { baseMs: 20, maxMs: 40, maxAttempts: 3 },
    });
    client.on("error", (e) => errors.push(e.code));
    client.on("reconnecting", (r) => reconnecting.push(r));
    const sent = [client.sendEvent("one"), client.sendEvent("two"), client.sendEvent("three")];
    let threw = false;
    try {
      client.sendState({ a: 1 });
      client.sendState(new Uint8Array(3));
    } catch {
      threw = true;
    }
    const deadline = performance.now() + 10000;
    while (client.readyState !== "closed" && performance.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    const afterClose = client.sendEvent("four");
    return {
      sent, threw, afterClose, errors, readyState: client.readyState,
      attempts: reconnecting.map((r) => r.attempt),
      delaysCapped: reconnecting.every((r) => r.delayMs >= 0 && r.delayMs <= 40),
    };
  }, { wsUrl: `ws://127.0.0.1:${deadPort}/ws` });
  assertEqual(results.sent, [true, true, false], "third event over the bound is dropped");
  assert(!results.threw, "sendState never throws while disconnected");
  assertEqual(results.readyState, "closed", "gives up after maxAttempts");
  assertEqual(results.attempts, [1, 2, 3], "reconnection attempts");
  assert(results.delaysCapped, "backoff delays within [0, maxMs]");
  assertEqual(results.afterClose, false, "sending after the end reports a drop");
  assertEqual(results.errors, ["event_dropped", "reconnect_exhausted", "event_dropped"], "reported errors");
  await page.close();
}

async function demoMoveTest(base) {
  const lobby = `e2e-${Date.now().toString(36)}`;
  const ann = await demoPage(base, lobby, "Ann");
  const bob = await demoPage(base, lobby, "Bob");
  await seeEachOther(ann, bob);
  const annId = await ann.evaluate(() => window.tickrelayDemo.client.playerId);
  const bobId = await bob.evaluate(() => window.tickrelayDemo.client.playerId);

  // Ann walks sideways with the arrow keys: her dot moves on her page, and on Bob's.
  const startAtBob = await positionOf(bob, annId);
  const { moved } = await walk(ann, "x", ["ArrowLeft", "ArrowRight"], 700);
  assert(Math.abs(moved) > 100, `Ann moved on her own page by ${moved}`);
  const annEnd = await ann.evaluate(() => ({ ...window.tickrelayDemo.me }));
  await seesAt(bob, annId, annEnd, "Bob sees Ann's dot arrive");
  const endAtBob = await positionOf(bob, annId);
  assert(Math.abs(endAtBob.x - startAtBob.x) > 100, `Ann's dot moved on Bob's page: ${startAtBob.x} -> ${endAtBob.x}`);

  // Bob walks vertically with WASD: Ann sees it.
  const bobAtAnn = await positionOf(ann, bobId);
  const bobWalk = await walk(bob, "y", ["KeyW", "KeyS"], 400);
  assert(Math.abs(bobWalk.moved) > 50, `Bob moved on his own page by ${bobWalk.moved}`);
  const bobEnd = await bob.evaluate(() => ({ ...window.tickrelayDemo.me }));
  await seesAt(ann, bobId, bobEnd, "Ann sees Bob's dot arrive");
  const bobSeen = await positionOf(ann, bobId);
  assert(Math.abs(bobSeen.y - bobAtAnn.y) > 50, `Bob's dot moved on Ann's page: ${bobAtAnn.y} -> ${bobSeen.y}`);
  return { ann, bob, lobby };
}

async function restartTest({ ann, bob }) {
  const welcomes = async (page) => page.evaluate(() => window.tickrelayDemo.client.stats.welcomes);
  const before = [await welcomes(ann), await welcomes(bob)];
  await server.stop();
  await waitFor(ann, "Ann notices the server is gone", () => window.tickrelayDemo.client.readyState !== "open");
  await server.start();
  for (const [page, count] of [[ann, before[0]], [bob, before[1]]]) {
    await waitFor(page, "a new welcome", (n) => window.tickrelayDemo.client.stats.welcomes > n, count);
  }
  await seeEachOther(ann, bob);
  // And the relay works again: Ann moves, Bob sees it.
  const annId = await ann.evaluate(() => window.tickrelayDemo.client.playerId);
  const start = await positionOf(bob, annId);
  const { moved } = await walk(ann, "y", ["ArrowUp", "ArrowDown"], 400);
  assert(Math.abs(moved) > 50, `Ann moved after the restart by ${moved}`);
  const annEnd = await ann.evaluate(() => ({ ...window.tickrelayDemo.me }));
  await seesAt(bob, annId, annEnd, "Bob sees Ann move after the restart");
  const seen = await positionOf(bob, annId);
  assert(Math.abs(seen.y - start.y) > 50, `Ann's dot moved on Bob's page after the restart: ${start.y} -> ${seen.y}`);
}

async function screenshotTest(base, { ann, bob }) {
  // Some movement so the demo shows two players apart, then the demo screenshot.
  await hold(bob, "ArrowLeft", 300);
  await hold(ann, "ArrowDown", 250);
  await ann.waitForTimeout(400);
  const demoPath = path.join(OUT_DIR, "demo.png");
  await ann.screenshot({ path: demoPath });

  const context = await newContext();
  const monitor = await context.newPage();
  await monitor.goto(`${base}/monitor`);
  // Traffic while the monitor collects a few seconds of history.
  const walking = (async () => {
    for (let i = 0; i < 6; i++) {
      await hold(ann, i % 2 ? "ArrowLeft" : "ArrowRight", 300);
      await hold(bob, i % 2 ? "ArrowUp" : "ArrowDown", 300);
    }
  })();
  await waitFor(monitor, "six monitor polls", () => (window.tickrelayMonitor?.history.length ?? 0) >= 6, undefined, 20_000);
  await walking;
  await waitFor(monitor, "the demo lobby listed with its traffic", (lobby) => {
    const row = [...document.querySelectorAll("#lobbies tbody tr")].find((tr) => tr.textContent.includes(lobby));
    return row && !row.textContent.includes("–");
  }, ann.lobbyName);
  const shown = await monitor.evaluate(() => ({
    connections: document.getElementById("k-connections").textContent,
    lobbies: document.getElementById("k-lobbies").textContent,
    messagesOut: window.tickrelayMonitor.history.at(-1).messagesOut,
  }));
  assertEqual(shown.connections, "2", "monitor shows the two demo connections");
  assertEqual(shown.lobbies, "1", "monitor shows one lobby");
  assert(shown.messagesOut >= TICK_HZ, `monitor shows snapshots flowing: ${shown.messagesOut} messages/s`);
  const monitorPath = path.join(OUT_DIR, "monitor.png");
  await monitor.screenshot({ path: monitorPath, fullPage: true });

  const summaries = [];
  for (const file of [demoPath, monitorPath]) {
    const image = pngColours(readFileSync(file));
    assert(image.colours >= 64, `${path.basename(file)} has ${image.colours} colours: blank?`);
    assert(image.dominantShare < 0.95, `${path.basename(file)} is ${(image.dominantShare * 100).toFixed(0)}% one colour: blank?`);
    summaries.push(`${path.basename(file)} ${image.width}x${image.height}, ${image.colours} colours`);
  }
  writeFileSync(path.join(OUT_DIR, "README.txt"), "Screenshots taken by clients/js/tests/e2e.mjs (cargo test).\n");
  await context.close();
  return summaries.join("; ");
}

// ---- pages -----------------------------------------------------------------------------

async function newContext(options = {}) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 760 }, deviceScaleFactor: 1, ...options });
  context.setDefaultTimeout(WAIT_MS);
  // The MessagePack codec from node_modules, at the server's origin, served by Playwright
  // (never by the server) for the library tests.
  await context.route("**/__e2e__/msgpack/**", (route) => {
    const url = new URL(route.request().url());
    const file = url.pathname.replace("/__e2e__/msgpack/", "");
    const full = path.join(JS_ROOT, "node_modules/@msgpack/msgpack/dist.esm", file);
    if (!file || file.includes("..") || !existsSync(full)) return route.fulfill({ status: 404, body: "not found" });
    return route.fulfill({ contentType: "text/javascript", body: readFileSync(full) });
  });
  return context;
}

async function track(page, label) {
  page.on("pageerror", (err) => pageErrors.push(`${label}: ${err.message}`));
  page.on("console", (message) => {
    consoleLines.push(`${label} ${message.type()}: ${message.text()}`);
    if (consoleLines.length > 100) consoleLines.shift();
  });
  return page;
}

async function blankPage(base) {
  const context = await newContext();
  const page = await track(await context.newPage(), "library page");
  // The wait helper the tests' page scripts share: polls `predicate` until it holds.
  await page.addInitScript(() => {
    window.e2eUntil = async (what, predicate, ms = 10000) => {
      const deadline = performance.now() + ms;
      while (!predicate()) {
        if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}`);
        await new Promise((r) => setTimeout(r, 15));
      }
    };
  });
  // A page the server itself serves: Chromium's local network access checks block a page
  // that did not come from a loopback address (a Playwright-fulfilled one) from opening
  // WebSockets to loopback.
  await page.goto(`${base}/healthz`);
  page.once("close", () => context.close().catch(() => {}));
  return page;
}

async function demoPage(base, lobby, name, contextOptions = {}) {
  // One context (window) per player, as two people on two machines would be.
  const context = await newContext(contextOptions);
  const page = await track(await context.newPage(), `demo ${name}`);
  await page.goto(`${base}/?lobby=${encodeURIComponent(lobby)}&name=${encodeURIComponent(name)}`);
  await waitFor(page, `${name} joined`, () => window.tickrelayDemo?.client.readyState === "open");
  page.lobbyName = lobby;
  return page;
}

async function seeEachOther(a, b) {
  for (const [page, other] of [[a, b], [b, a]]) {
    const id = await other.evaluate(() => window.tickrelayDemo.client.playerId);
    await waitFor(page, `member ${id} visible`, (id) => {
      const demo = window.tickrelayDemo;
      return demo.client.readyState === "open" && demo.client.members.has(id) && demo.others.has(id);
    }, id);
  }
}

async function positionOf(page, id) {
  return page.evaluate((id) => {
    const other = window.tickrelayDemo.others.get(id);
    return { x: other.x, y: other.y };
  }, id);
}

/**
 * Holds the key that moves the player along `axis` towards the roomier side (`keys` is
 * [towards 0, away from 0]), so a random start position near a wall cannot stop it.
 */
async function walk(page, axis, keys, ms) {
  const { before, middle } = await page.evaluate((axis) => {
    const { me, world } = window.tickrelayDemo;
    return { before: me[axis], middle: (axis === "x" ? world.width : world.height) / 2 };
  }, axis);
  await hold(page, before > middle ? keys[0] : keys[1], ms);
  const after = await page.evaluate((axis) => window.tickrelayDemo.me[axis], axis);
  return { moved: after - before };
}

/** Waits until `page` draws player `id` where that player's own page has it. */
async function seesAt(page, id, position, what) {
  await waitFor(page, what, ({ id, x, y }) => {
    const other = window.tickrelayDemo.others.get(id);
    return other && Math.abs(other.x - x) < 1 && Math.abs(other.y - y) < 1;
  }, { id, ...position });
}

async function hold(page, key, ms) {
  await page.keyboard.down(key);
  await page.waitForTimeout(ms);
  await page.keyboard.up(key);
}

async function waitFor(page, what, predicate, arg, timeout = WAIT_MS) {
  try {
    await page.waitForFunction(predicate, arg, { timeout, polling: 20 });
  } catch (err) {
    throw new Error(`timed out after ${timeout} ms waiting for: ${what}`);
  }
}

// ---- the server process ----------------------------------------------------------------

class Server {
  constructor(bin, port, env = {}, healthPort = port) {
    this.bin = bin;
    this.port = port;
    this.healthPort = healthPort;
    this.env = env;
    this.child = null;
    this.log = [];
  }

  async start() {
    const child = spawn(this.bin, [
      "--listen", `127.0.0.1:${this.port}`,
      "--tick-hz", String(TICK_HZ),
      "--shutdown-timeout", "2s",
    ], { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, RUST_LOG: process.env.RUST_LOG || "info", ...this.env } });
    this.child = child;
    const keep = (chunk) => {
      this.log.push(...chunk.toString().split("\n").filter(Boolean));
      if (this.log.length > 200) this.log.splice(0, this.log.length - 200);
    };
    child.stdout.on("data", keep);
    child.stderr.on("data", keep);
    const exited = new Promise((resolve) => child.once("exit", (code, signal) => resolve({ code, signal })));
    this.exited = exited;
    const deadline = Date.now() + 10_000;
    while (Date.now() < deadline) {
      const early = await Promise.race([exited, sleep(50).then(() => null)]);
      if (early) throw new Error(`server exited at start (${JSON.stringify(early)}):\n${this.log.join("\n")}`);
      try {
        const response = await fetch(`http://127.0.0.1:${this.healthPort}/healthz`);
        if (response.ok) return;
      } catch {
        // Not listening yet.
      }
    }
    throw new Error(`server not healthy within 10 s:\n${this.log.join("\n")}`);
  }

  /** SIGTERM (graceful: close 1001 to every client), SIGKILL if it lingers. */
  async stop() {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    child.kill("SIGTERM");
    const done = await Promise.race([this.exited, sleep(8_000).then(() => null)]);
    if (!done) {
      child.kill("SIGKILL");
      await this.exited;
    }
    this.child = null;
  }

  kill() {
    if (this.child && this.child.exitCode === null && this.child.signalCode === null) this.child.kill("SIGKILL");
  }
}

// ---- helpers ---------------------------------------------------------------------------

async function test(name, body) {
  const started = Date.now();
  try {
    const result = await body();
    const note = typeof result === "string" ? ` (${result})` : "";
    console.log(`ok   ${name} [${Date.now() - started} ms]${note}`);
    return result;
  } catch (err) {
    console.log(`FAIL ${name} [${Date.now() - started} ms]`);
    throw err;
  }
}

let finishing = false;
async function finish(code) {
  if (finishing) return;
  finishing = true;
  clearTimeout(watchdog);
  if (code !== 0 && consoleLines.length) {
    console.error(`\n--- browser console (last lines) ---\n${consoleLines.slice(-40).join("\n")}`);
  }
  if (code !== 0 && server) {
    console.error(`\n--- server log (last lines) ---\n${server.log.slice(-40).join("\n")}`);
  }
  server?.kill();
  ticketServer?.kill();
  tlsServer?.kill();
  try {
    await Promise.race([browser?.close(), sleep(5_000)]);
  } catch {
    // The browser may already be gone.
  }
  process.exit(code);
}

function freePort() {
  return new Promise((resolve, reject) => {
    const probe = net.createServer();
    probe.once("error", reject);
    probe.listen(0, "127.0.0.1", () => {
      const { port } = probe.address();
      probe.close(() => resolve(port));
    });
  });
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function assert(condition, message) {
  if (!condition) throw new Error(`assertion failed: ${message}`);
}

function assertEqual(actual, expected, message) {
  const a = JSON.stringify(actual), e = JSON.stringify(expected);
  if (a !== e) throw new Error(`assertion failed: ${message}\n  expected ${e}\n  actual   ${a}`);
}

function sortEvents(events) {
  return [...events].sort((a, b) => a.from - b.from);
}

/**
 * Decodes an 8-bit RGB or RGBA PNG (what Chromium writes) and counts its distinct colours and
 * the share of the most common one: a blank page has a handful of colours, one dominant.
 */
function pngColours(png) {
  const signature = "89504e470d0a1a0a";
  if (png.subarray(0, 8).toString("hex") !== signature) throw new Error("not a PNG");
  let offset = 8, width = 0, height = 0, channels = 0;
  const idat = [];
  while (offset < png.length) {
    const length = png.readUInt32BE(offset);
    const type = png.toString("ascii", offset + 4, offset + 8);
    const data = png.subarray(offset + 8, offset + 8 + length);
    if (type === "IHDR") {
      width = data.readUInt32BE(0);
      height = data.readUInt32BE(4);
      const bitDepth = data[8], colourType = data[9], interlace = data[12];
      channels = { 2: 3, 6: 4 }[colourType];
      if (bitDepth !== 8 || !channels || interlace !== 0) throw new Error(`unsupported PNG (depth ${bitDepth}, colour type ${colourType})`);
    } else if (type === "IDAT") {
      idat.push(data);
    } else if (type === "IEND") {
      break;
    }
    offset += 12 + length;
  }
  const raw = zlib.inflateSync(Buffer.concat(idat));
  const stride = width * channels;
  let previous = new Uint8Array(stride);
  const counts = new Map();
  for (let y = 0; y < height; y++) {
    const filter = raw[y * (stride + 1)];
    const line = raw.subarray(y * (stride + 1) + 1, (y + 1) * (stride + 1));
    const current = new Uint8Array(stride);
    for (let i = 0; i < stride; i++) {
      const left = i >= channels ? current[i - channels] : 0;
      const up = previous[i];
      const upLeft = i >= channels ? previous[i - channels] : 0;
      let predictor = 0;
      if (filter === 1) predictor = left;
      else if (filter === 2) predictor = up;
      else if (filter === 3) predictor = (left + up) >> 1;
      else if (filter === 4) {
        const p = left + up - upLeft;
        const pa = Math.abs(p - left), pb = Math.abs(p - up), pc = Math.abs(p - upLeft);
        predictor = pa <= pb && pa <= pc ? left : pb <= pc ? up : upLeft;
      }
      current[i] = (line[i] + predictor) & 0xff;
    }
    for (let i = 0; i < stride; i += channels) {
      const colour = (current[i] << 16) | (current[i + 1] << 8) | current[i + 2];
      counts.set(colour, (counts.get(colour) ?? 0) + 1);
    }
    previous = current;
  }
  let dominant = 0;
  for (const n of counts.values()) dominant = Math.max(dominant, n);
  return { width, height, colours: counts.size, dominantShare: dominant / (width * height) };
}
