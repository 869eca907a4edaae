#!/usr/bin/env python3
"""WebSocket clients for bench/soak.sh: COUNT connections through the proxy, each sending a
message every second and expecting its echo within 5 s, for SECONDS; a connection that
fails or closes is reported (with the reason) and reopened a second later.

Usage: soak_ws.py URL COUNT SECONDS OUT   (the `websockets` package; TLS not verified:
the soak's certificate is self-signed). OUT gets one line per event:
  <second> fail <reason>     a connection failed or was closed
  <second> ok <n>            echoes received in that second (one line per second)
"""
import asyncio
import ssl
import sys
import time

import websockets

URL, COUNT, SECONDS, OUT = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
START = time.monotonic()
echoes = {}
events = []


def now():
    return int(time.monotonic() - START)


def fail(reason):
    events.append(f"{now()} fail {reason}")


async def client(index, ctx, deadline):
    await asyncio.sleep(index * 1.0 / COUNT * 5)  # ramp up over 5 s
    while time.monotonic() < deadline:
        try:
            async with websockets.connect(URL, ssl=ctx, server_hostname="localhost",
                                          ping_interval=None, open_timeout=10,
                                          close_timeout=2) as ws:
                n = 0
                while time.monotonic() < deadline:
                    n += 1
                    message = f"{index}:{n}"
                    await ws.send(message)
                    reply = await asyncio.wait_for(ws.recv(), 5)
                    if reply != message:
                        fail(f"wrong echo {reply!r} for {message!r}")
                    else:
                        echoes[now()] = echoes.get(now(), 0) + 1
                    await asyncio.sleep(1)
                return
        except websockets.ConnectionClosed as e:
            if e.rcvd is None:
                fail("connection cut without a close frame")
            else:
                fail(f"closed by the server: code={e.rcvd.code} reason={e.rcvd.reason or '-'}")
        except asyncio.TimeoutError:
            fail("no echo within 5 s (or open timed out)")
        except Exception as e:  # noqa: BLE001 - every failure is reported with its reason
            fail(f"{type(e).__name__}: {e}")
        await asyncio.sleep(1)


async def main():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    deadline = START + SECONDS
    await asyncio.gather(*(client(i, ctx, deadline) for i in range(COUNT)))


try:
    asyncio.run(main())
finally:
    with open(OUT, "w") as out:
        for second in sorted(echoes):
            out.write(f"{second} ok {echoes[second]}\n")
        for line in events:
            out.write(line + "\n")
