"""Measure the event protocol's throughput: text messages over /ws, each stored with its
events and fanned out to two subscribers, with an instant stand-in for the language model.

    .venv/bin/python -m bench.events [--llm instant|ollama-standin] [--conversations N]
        [--messages N] [--window N]

It starts its own `parley serve` on 127.0.0.1 with the embedded PostgreSQL. With
`--llm instant` (the default) the server runs through bench.instant_llm_server, whose
language model yields the reply at once in-process, so only the event path is measured.
With `--llm ollama-standin` the server uses the real `ollama` client against the Ollama
stand-in from the tests in a child process: one local HTTP request per reply, no
inference. Every conversation has two WebSockets: the sender,
which creates the conversation (so it is subscribed) and sends `message:send` with
`speak: false`, and a watcher that subscribes with `conversation:load`. Each message makes
5 stored events: the user's message:received, the reply's memory:context-updated, one
chunk:generated per sentence of the two-sentence reply, and the assistant's
message:received.

Counting:
- stored events: distinct seqs per conversation that the two sockets received during the
  measured phase (warm-up messages excluded);
- deliveries: events with a seq received, summed over both sockets;
- a core: one CPU-second per wall-second. "Per server core" divides events/s by the
  `parley serve` process's CPU-seconds (user + system, all threads, read with psutil)
  over the wall time of the measured phase. The embedded PostgreSQL is a separate process
  tree; a second line adds its CPU to the server's.

The clients and the stand-in run on the same machine and compete with the server for
CPU, so their CPU use is printed too. The exit code does not depend on the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import multiprocessing
import os
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from bench.latency_report import percentile_ms
from bench.local_server import LocalServer, fetch_health, local_server
from tests.ollama_standin import MODEL, OllamaStandIn, ScriptedReply

logger = logging.getLogger(__name__)

Event = dict[str, Any]

TARGET_EVENTS_PER_CORE_S = 2000.0
# The chunker cuts this into two chunks, one per sentence.
REPLY_PIECES = ("[happy] Good", " answer.", " [curious] What", " comes next?")
# A step (a response to a request, a reply) that takes longer than this fails the run.
STEP_TIMEOUT_S = 30.0
STANDIN_START_TIMEOUT_S = 30.0
# Rate limits far above what the benchmark sends, so they never drop or reject an event.
UNLIMITED_RATE = "1000000"


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    failed = False
    try:
        asyncio.run(_run(args))
    except* (RuntimeError, TimeoutError, aiohttp.ClientError) as group:
        for error in group.exceptions:
            print(f"benchmark failed: {error}", file=sys.stderr)
        failed = True
    return 1 if failed else 0


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.events",
        description="Measure stored and delivered events per second on /ws.",
    )
    parser.add_argument(
        "--conversations", type=int, default=8, help="conversations in parallel (default 8)"
    )
    parser.add_argument(
        "--messages", type=int, default=100, help="measured messages per conversation (default 100)"
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=5,
        help="messages per conversation sent before measuring (default 5)",
    )
    parser.add_argument(
        "--window",
        type=int,
        default=1,
        help="messages per conversation sent without waiting for their reply (default 1)",
    )
    parser.add_argument(
        "--llm",
        choices=("instant", "ollama-standin"),
        default="instant",
        help="instant: an in-process stand-in that yields the reply at once, so only the "
        "event path is measured (default); ollama-standin: the real ollama client against "
        "a stand-in Ollama server in another process",
    )
    args = parser.parse_args(argv)
    for name in ("conversations", "messages", "window"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} {getattr(args, name)} is invalid: use 1 or more")
    if args.warmup < 0:
        parser.error(f"--warmup {args.warmup} is invalid: use 0 or more")
    return args


async def _run(args: argparse.Namespace) -> None:
    limits = {
        "PARLEY_CLIENT_EVENTS_PER_S": UNLIMITED_RATE,
        "PARLEY_CLIENT_EVENT_BURST": UNLIMITED_RATE,
        "PARLEY_MAX_WAITING_REPLIES": str(max(64, args.window)),
    }
    if args.llm == "instant":
        async with local_server(limits, module="bench.instant_llm_server") as server:
            health = await fetch_health(server.url)
            load_before = os.getloadavg()
            try:
                result = await _measure(server, None, args)
            except Exception:
                print(f"server log ends:\n{server.log_tail()}", file=sys.stderr)
                raise
        _print_report(args, health, result, (load_before, os.getloadavg()))
        return
    async with _standin() as standin_process:
        extra_env = {
            "PARLEY_LLM_BACKEND": "ollama",
            "OLLAMA_HOST": standin_process.url,
            "PARLEY_OLLAMA_MODEL": MODEL,
            **limits,
        }
        async with local_server(extra_env) as server:
            health = await fetch_health(server.url)
            if health.get("llm") != f"ollama:{MODEL}":
                raise RuntimeError(
                    f"the server uses language model {health.get('llm')!r}, not the Ollama "
                    f"stand-in at {standin_process.url}; its log ends:\n{server.log_tail()}"
                )
            load_before = os.getloadavg()
            try:
                result = await _measure(server, standin_process.pid, args)
            except Exception:
                print(f"server log ends:\n{server.log_tail()}", file=sys.stderr)
                raise
    _print_report(args, health, result, (load_before, os.getloadavg()))


# -- the Ollama stand-in, in its own process so its CPU time is measured apart from the clients'


@dataclass
class StandInProcess:
    url: str
    pid: int


@contextlib.asynccontextmanager
async def _standin() -> AsyncIterator[StandInProcess]:
    context = multiprocessing.get_context("spawn")
    parent_end, child_end = context.Pipe()
    process = context.Process(
        target=_serve_standin, args=(child_end,), name="ollama-standin", daemon=True
    )
    process.start()
    # With the parent's copy of the child's end closed, recv() raises EOFError once the
    # child exits.
    child_end.close()
    try:
        if not await asyncio.to_thread(parent_end.poll, STANDIN_START_TIMEOUT_S):
            raise TimeoutError(
                f"the Ollama stand-in did not start within {STANDIN_START_TIMEOUT_S:.0f} s"
            )
        try:
            url: str = parent_end.recv()
        except EOFError:
            raise RuntimeError(
                f"the Ollama stand-in exited with code {process.exitcode} before it started; "
                "its traceback is above"
            ) from None
        assert process.pid is not None  # start() has set it
        yield StandInProcess(url, process.pid)
    finally:
        with contextlib.suppress(OSError):
            parent_end.send("stop")
        await asyncio.to_thread(process.join, 10)
        if process.is_alive():
            logger.warning("the Ollama stand-in (pid %s) did not stop; killing it", process.pid)
            process.kill()


def _serve_standin(connection: Connection) -> None:
    asyncio.run(_run_standin(connection))


async def _run_standin(connection: Connection) -> None:
    standin = OllamaStandIn(default_reply=ScriptedReply(list(REPLY_PIECES), delay_s=0))
    connection.send(await standin.start())
    try:
        # Any message, or the parent's end closing, stops the stand-in.
        with contextlib.suppress(EOFError):
            await asyncio.to_thread(connection.recv)
    finally:
        await standin.stop()


# -- the clients


class EventSocket:
    """One WebSocket on /ws that passes every event it receives to on_event."""

    def __init__(
        self,
        name: str,
        http: aiohttp.ClientSession,
        socket: aiohttp.ClientWebSocketResponse,
    ) -> None:
        self.name = name
        self._http = http
        self._socket = socket
        self._answers: dict[str, asyncio.Future[Event]] = {}
        self._request_count = 0
        self._closing = False
        self.on_event: Callable[[EventSocket, Event, float], None] = lambda *_: None
        # Seqs of the logged events received, in arrival order.
        self.seqs: list[int] = []

    @classmethod
    async def connect(cls, name: str, server: LocalServer) -> EventSocket:
        http = aiohttp.ClientSession()
        try:
            socket = await http.ws_connect(f"{server.url}/ws?token={server.token}")
            ready = json.loads(await socket.receive_str(timeout=STEP_TIMEOUT_S))
        except BaseException:
            await http.close()
            raise
        if ready.get("type") != "connection:ready":
            await http.close()
            raise RuntimeError(f"{name}: expected connection:ready first, got {ready}")
        return cls(name, http, socket)

    async def close(self) -> None:
        self._closing = True
        await self._socket.close()
        await self._http.close()

    async def send(self, event_type: str, data: dict[str, Any]) -> str:
        """Send an event with a new requestId; return that id."""
        self._request_count += 1
        request_id = f"{self.name}-{self._request_count}"
        event = {"type": event_type, "requestId": request_id, "data": data}
        await self._socket.send_str(json.dumps(event))
        return request_id

    async def request(self, event_type: str, data: dict[str, Any]) -> Event:
        """Send an event and return the first event that carries its requestId."""
        answer: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        request_id = await self.send(event_type, data)
        self._answers[request_id] = answer
        return await asyncio.wait_for(answer, STEP_TIMEOUT_S)

    async def read(self) -> None:
        """Receive events until close(); raise on a conversation:error or a closed socket."""
        async for message in self._socket:
            if message.type != aiohttp.WSMsgType.TEXT:
                continue
            arrived_at = time.monotonic()
            event: Event = json.loads(message.data)
            if event["type"] == "conversation:error":
                raise RuntimeError(f"{self.name}: the server sent an error: {event['data']}")
            if "seq" in event:
                self.seqs.append(event["seq"])
            answer = self._answers.pop(event.get("requestId", ""), None)
            if answer is not None and not answer.done():
                answer.set_result(event)
            self.on_event(self, event, arrived_at)
        if not self._closing:
            raise RuntimeError(
                f"{self.name}: the server closed the WebSocket (code {self._socket.close_code})"
            )


@dataclass
class Phase:
    """Progress and timings of one round of messages in one conversation."""

    messages: int
    in_flight: asyncio.Semaphore
    # Send times of the messages whose reply has not reached the watcher, oldest first.
    unanswered: deque[float] = field(default_factory=deque)
    sent_at: dict[str, float] = field(default_factory=dict)
    user_rtt_s: list[float] = field(default_factory=list)
    reply_rtt_s: list[float] = field(default_factory=list)
    replies_at_sender: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)


class BenchConversation:
    """A conversation with its sender and watcher sockets."""

    def __init__(self, conversation_id: str, sender: EventSocket, watcher: EventSocket) -> None:
        self.conversation_id = conversation_id
        self.sender = sender
        self.watcher = watcher
        self.phase = Phase(0, asyncio.Semaphore(1))
        sender.on_event = watcher.on_event = self._on_event

    async def send_messages(self, messages: int, window: int) -> Phase:
        """Send messages, at most window of them waiting for their reply at a time, and
        return once both sockets have every reply."""
        phase = self.phase = Phase(messages, asyncio.Semaphore(window))
        for number in range(1, messages + 1):
            await self._wait(phase.in_flight.acquire(), "a reply")
            content = f"Benchmark message {number} of {messages}."
            data = {"conversationId": self.conversation_id, "content": content, "speak": False}
            sent_at = time.monotonic()
            phase.unanswered.append(sent_at)
            request_id = await self.sender.send("message:send", data)
            phase.sent_at[request_id] = sent_at
        await self._wait(phase.done.wait(), "the last replies")
        return phase

    async def _wait(self, step: Awaitable[Any], step_name: str) -> None:
        try:
            await asyncio.wait_for(step, STEP_TIMEOUT_S)
        except TimeoutError:
            phase = self.phase
            raise TimeoutError(
                f"conversation {self.conversation_id}: no {step_name} within "
                f"{STEP_TIMEOUT_S:.0f} s ({len(phase.reply_rtt_s)} of {phase.messages} "
                "replies at the watcher)"
            ) from None

    def _on_event(self, socket: EventSocket, event: Event, arrived_at: float) -> None:
        if event["type"] != "message:received":
            return
        phase = self.phase
        role = event["data"]["role"]
        if role == "user":
            sent_at = phase.sent_at.pop(event.get("requestId", ""), None)
            if sent_at is not None:
                phase.user_rtt_s.append(arrived_at - sent_at)
            return
        if role != "assistant":
            return
        if socket is self.watcher:
            phase.reply_rtt_s.append(arrived_at - phase.unanswered.popleft())
            phase.in_flight.release()
        else:
            phase.replies_at_sender += 1
        if len(phase.reply_rtt_s) == phase.messages == phase.replies_at_sender:
            phase.done.set()


# -- measuring


@dataclass
class CpuSeconds:
    """CPU-seconds (user + system) used so far by each process of the benchmark."""

    server_user: float
    server_system: float
    # Per PostgreSQL process, since backends can start and stop during a run.
    postgres: dict[int, float]
    standin: float
    clients: float


@dataclass
class Result:
    wall_s: float
    messages: int
    stored_events: int
    deliveries: int
    seq_errors: list[str]
    user_rtt_s: list[float]
    reply_rtt_s: list[float]
    server_cpu_s: float
    server_system_s: float
    postgres_cpu_s: float | None
    standin_cpu_s: float
    clients_cpu_s: float


async def _measure(
    server: LocalServer, standin_pid: int | None, args: argparse.Namespace
) -> Result:
    processes = (
        psutil.Process(server.process.pid),
        _postmaster(server),
        psutil.Process(standin_pid) if standin_pid is not None else None,
        psutil.Process(),
    )
    conversations: list[BenchConversation] = []
    async with contextlib.AsyncExitStack() as sockets, asyncio.TaskGroup() as readers:
        for index in range(args.conversations):
            conversation = await _open_conversation(index, server, readers, sockets)
            conversations.append(conversation)

        if args.warmup:
            await _send_everywhere(conversations, args.warmup, args.window)
        first_seqs = [max(c.sender.seqs) for c in conversations]
        before = _cpu_seconds(*processes)
        started_at = time.monotonic()
        phases = await _send_everywhere(conversations, args.messages, args.window)
        wall_s = time.monotonic() - started_at
        after = _cpu_seconds(*processes)

        for conversation in conversations:
            await conversation.sender.close()
            await conversation.watcher.close()

    stored = 0
    deliveries = 0
    seq_errors: list[str] = []
    for conversation, first_seq in zip(conversations, first_seqs, strict=True):
        seen: set[int] = set()
        for socket in (conversation.sender, conversation.watcher):
            measured = [seq for seq in socket.seqs if seq > first_seq]
            deliveries += len(measured)
            seen.update(measured)
            if measured != list(range(first_seq + 1, first_seq + 1 + len(measured))):
                seq_errors.append(f"{socket.name} received seqs out of order or with gaps")
        stored += len(seen)

    return Result(
        wall_s=wall_s,
        messages=args.messages * args.conversations,
        stored_events=stored,
        deliveries=deliveries,
        seq_errors=seq_errors,
        user_rtt_s=[rtt for phase in phases for rtt in phase.user_rtt_s],
        reply_rtt_s=[rtt for phase in phases for rtt in phase.reply_rtt_s],
        server_cpu_s=(after.server_user + after.server_system)
        - (before.server_user + before.server_system),
        server_system_s=after.server_system - before.server_system,
        postgres_cpu_s=_postgres_delta(before, after) if processes[1] is not None else None,
        standin_cpu_s=after.standin - before.standin,
        clients_cpu_s=after.clients - before.clients,
    )


async def _open_conversation(
    index: int,
    server: LocalServer,
    readers: asyncio.TaskGroup,
    sockets: contextlib.AsyncExitStack,
) -> BenchConversation:
    # Each socket's reader starts before its first request, because the reader resolves
    # the response.
    sender = await EventSocket.connect(f"c{index}-sender", server)
    sockets.push_async_callback(sender.close)
    readers.create_task(sender.read(), name=f"{sender.name}-reader")
    created = await sender.request("conversation:create", {"title": f"Benchmark {index}"})
    if created["type"] != "conversation:created":
        raise RuntimeError(f"expected conversation:created in response to create, got {created}")
    conversation_id: str = created["data"]["conversationId"]

    watcher = await EventSocket.connect(f"c{index}-watcher", server)
    sockets.push_async_callback(watcher.close)
    readers.create_task(watcher.read(), name=f"{watcher.name}-reader")
    loaded = await watcher.request("conversation:load", {"conversationId": conversation_id})
    if loaded["type"] != "conversation:loaded":
        raise RuntimeError(f"expected conversation:loaded in response to load, got {loaded}")
    return BenchConversation(conversation_id, sender, watcher)


async def _send_everywhere(
    conversations: list[BenchConversation], messages: int, window: int
) -> list[Phase]:
    return await asyncio.gather(
        *(conversation.send_messages(messages, window) for conversation in conversations)
    )


def _postmaster(server: LocalServer) -> psutil.Process | None:
    """Return the embedded PostgreSQL's main process, or None when the server uses
    DATABASE_URL."""
    if server.env.get("DATABASE_URL"):
        return None
    pid_file = Path(server.env["PARLEY_DATA_DIR"]) / "postgres" / "postmaster.pid"
    try:
        # The first line of postmaster.pid is the postmaster's pid.
        return psutil.Process(int(pid_file.read_text().split()[0]))
    except (OSError, ValueError, IndexError, psutil.NoSuchProcess) as exc:
        logger.warning("PostgreSQL's CPU is not measured: reading %s failed: %s", pid_file, exc)
        return None


def _cpu_seconds(
    server: psutil.Process,
    postmaster: psutil.Process | None,
    standin: psutil.Process | None,
    clients: psutil.Process,
) -> CpuSeconds:
    postgres: dict[int, float] = {}
    if postmaster is not None:
        for process in (postmaster, *postmaster.children(recursive=True)):
            with contextlib.suppress(psutil.NoSuchProcess):
                postgres[process.pid] = _process_cpu_s(process)
    server_times = server.cpu_times()
    return CpuSeconds(
        server_user=server_times.user,
        server_system=server_times.system,
        postgres=postgres,
        standin=_process_cpu_s(standin) if standin is not None else 0.0,
        clients=_process_cpu_s(clients),
    )


def _process_cpu_s(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def _postgres_delta(before: CpuSeconds, after: CpuSeconds) -> float:
    # NOTE: a backend that exits during the measured phase takes its CPU time with it.
    # asyncpg closes an idle pool connection after 300 s by default, so a short run loses
    # none that way.
    return sum(cpu_s - before.postgres.get(pid, 0.0) for pid, cpu_s in after.postgres.items())


# -- the report


def _print_report(
    args: argparse.Namespace,
    health: dict[str, Any],
    result: Result,
    loads: tuple[tuple[float, float, float], tuple[float, float, float]],
) -> None:
    wall_s = result.wall_s
    stored_per_s = result.stored_events / wall_s
    deliveries_per_s = result.deliveries / wall_s
    print()
    print(
        f"== event throughput: {args.conversations} conversations x {args.messages} messages "
        f"(after {args.warmup} warm-up), window {args.window}, 2 subscribers each"
    )
    print(f"language model: {health.get('llm')} (--llm {args.llm}), speak: false")
    print(f"wall time                      {wall_s:10.2f} s")
    print(f"messages sent                  {result.messages:10d}")
    per_message = result.stored_events / result.messages
    print(f"events stored                  {result.stored_events:10d}")
    print(f"events stored per message      {per_message:10.1f}")
    print(f"deliveries (both subscribers)  {result.deliveries:10d}")
    print(f"events stored/s                {stored_per_s:10.0f}")
    print(f"deliveries/s                   {deliveries_per_s:10.0f}")
    print(f"messages/s                     {result.messages / wall_s:10.0f}")
    for error in result.seq_errors:
        print(f"WARNING: {error}")

    print()
    print(f"{'== round-trip time (ms)':54} {'n':>5}{'p50':>10}{'p95':>10}")
    _print_rtt_row("message:send -> user message:received (sender)", result.user_rtt_s)
    _print_rtt_row("message:send -> assistant message:received (watcher)", result.reply_rtt_s)

    print()
    print("== CPU during the measured phase (CPU-seconds per wall-second; 1.0 = one core)")
    print(f"machine cores (os.cpu_count())   {os.cpu_count()}")
    print(f"load average before, after       {loads[0][0]:.2f}, {loads[1][0]:.2f} (1 min)")
    server_cores = result.server_cpu_s / wall_s
    system_cores = result.server_system_s / wall_s
    print(f"parley serve                     {server_cores:6.2f}  (system {system_cores:.2f})")
    postgres_cores = None
    if result.postgres_cpu_s is None:
        print("embedded PostgreSQL              not measured")
    else:
        postgres_cores = result.postgres_cpu_s / wall_s
        print(f"embedded PostgreSQL (all procs)  {postgres_cores:6.2f}")
    print(f"Ollama stand-in process          {result.standin_cpu_s / wall_s:6.2f}")
    print(f"benchmark clients                {result.clients_cpu_s / wall_s:6.2f}")

    print()
    print(f"== per core, against the target of {TARGET_EVENTS_PER_CORE_S:,.0f} events/s")
    _print_target_row("events stored/s per server core", stored_per_s, server_cores)
    _print_target_row("deliveries/s per server core", deliveries_per_s, server_cores)
    if postgres_cores is not None:
        both_cores = server_cores + postgres_cores
        _print_target_row("events stored/s per server+PG core", stored_per_s, both_cores)


def _print_rtt_row(name: str, values_s: list[float]) -> None:
    values_ms = [value * 1000 for value in values_s]
    p50 = percentile_ms(values_ms, 50)
    p95 = percentile_ms(values_ms, 95)
    cells = "".join(f"{value:10.1f}" if value is not None else f"{'-':>10}" for value in (p50, p95))
    print(f"{name:54} {len(values_ms):5d}{cells}")


def _print_target_row(name: str, events_per_s: float, cores: float) -> None:
    if cores <= 0:
        print(f"{name:38} no server CPU time was measured")
        return
    per_core = events_per_s / cores
    print(f"{name:38} {per_core:8.0f}  ratio {per_core / TARGET_EVENTS_PER_CORE_S:5.2f}")


if __name__ == "__main__":
    sys.exit(main())
