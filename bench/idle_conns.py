#!/usr/bin/env python3
"""Idle TLS keep-alive connections for bench/compare.sh (the RSS-per-connection row).

Opens N TLS connections to 127.0.0.1:PORT (HTTP/1.1 by ALPN, full handshakes, no
certificate check: the bench certificate is self-signed), sends one GET on each with the
given Cookie and no User-Agent, reads the whole response, and keeps every connection
open and idle. When all are open it writes "open=N errors=E" to the ready file, then
holds until the stop file appears (or --hold seconds pass) and closes them all.

Errors are connections that failed, and responses whose status is >= 400; the caller
treats any as a failed row. Only the standard library: asyncio and ssl.
"""

import argparse
import asyncio
import os
import ssl
import sys
import time


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--conns", type=int, required=True)
    p.add_argument("--cookie", default="", help="name=value sent on each request")
    p.add_argument("--parallel", type=int, default=64, help="handshakes in flight at once")
    p.add_argument("--ready-file", required=True)
    p.add_argument("--stop-file", required=True)
    p.add_argument("--hold", type=float, default=120.0, help="longest hold, seconds")
    return p.parse_args()


def tls_context():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


async def read_response(reader):
    """Reads one response (Content-Length body); returns the status code."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    if length:
        await reader.readexactly(length)
    return status


async def open_one(ctx, args, request, gate, conns, errors):
    async with gate:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", args.port, ssl=ctx,
                                        server_hostname="localhost"), 20)
            writer.write(request)
            status = await asyncio.wait_for(read_response(reader), 20)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError,
                IndexError) as err:
            errors.append(repr(err))
            return
        if status >= 400:
            errors.append(f"status {status}")
        conns.append(writer)


async def main():
    args = parse_args()
    ctx = tls_context()
    cookie = f"Cookie: {args.cookie}\r\n" if args.cookie else ""
    request = f"GET / HTTP/1.1\r\nHost: localhost\r\n{cookie}\r\n".encode()
    gate = asyncio.Semaphore(args.parallel)
    conns, errors = [], []
    await asyncio.gather(*(open_one(ctx, args, request, gate, conns, errors)
                           for _ in range(args.conns)))
    with open(args.ready_file + ".tmp", "w") as f:
        f.write(f"open={len(conns)} errors={len(errors)}\n")
    os.replace(args.ready_file + ".tmp", args.ready_file)
    if errors:
        print(f"idle_conns: {len(errors)} errors, first: {errors[0]}", file=sys.stderr)
    deadline = time.monotonic() + args.hold
    while not os.path.exists(args.stop_file) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    for writer in conns:
        writer.transport.abort()


if __name__ == "__main__":
    asyncio.run(main())
