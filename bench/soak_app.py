#!/usr/bin/env python3
"""Upstream app for bench/soak.sh: HTTP/1.1 keep-alive and a WebSocket echo on one port.

GET /login?user=NAME  -> 200 with X-Session-Set-User: NAME (cloakroom logs the session in)
GET /logout           -> 200 with X-Session-Logout: 1
GET /ws (Upgrade)     -> 101, then every text/binary message is echoed back
any other request     -> 200 "ok PORT USER" (USER from cloakroom's X-Session-User)

Usage: soak_app.py PORT   (127.0.0.1 only; runs until SIGTERM)
"""
import asyncio
import base64
import hashlib
import signal
import struct
import sys

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


async def read_head(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    return method, target, headers


async def websocket(reader, writer, headers):
    accept = base64.b64encode(hashlib.sha1(headers["sec-websocket-key"].encode() + GUID).digest())
    writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
    await writer.drain()
    while True:
        b0, b1 = await reader.readexactly(2)
        opcode, length = b0 & 0x0F, b1 & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", await reader.readexactly(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", await reader.readexactly(8))
        mask = await reader.readexactly(4) if b1 & 0x80 else b"\0\0\0\0"
        data = bytearray(await reader.readexactly(length))
        for i in range(length):
            data[i] ^= mask[i % 4]
        if opcode == 0x8:  # close: answer it and stop
            writer.write(bytes([0x88, len(data[:2])]) + bytes(data[:2]))
            await writer.drain()
            return
        if opcode == 0x9:  # ping -> pong
            opcode = 0xA
        elif opcode == 0xA:
            continue
        if length < 126:
            frame = bytes([0x80 | opcode, length])
        elif length < 65536:
            frame = bytes([0x80 | opcode, 126]) + struct.pack("!H", length)
        else:
            frame = bytes([0x80 | opcode, 127]) + struct.pack("!Q", length)
        writer.write(frame + bytes(data))
        await writer.drain()


async def serve(reader, writer, port):
    try:
        while True:
            method, target, headers = await read_head(reader)
            length = int(headers.get("content-length", "0") or 0)
            if length:
                await reader.readexactly(length)
            if headers.get("upgrade", "").lower() == "websocket":
                await websocket(reader, writer, headers)
                return
            extra = ""
            path, _, query = target.partition("?")
            if path == "/login":
                user = query.partition("user=")[2].split("&")[0] or "soak"
                extra = f"X-Session-Set-User: {user}\r\n"
            elif path == "/logout":
                extra = "X-Session-Logout: 1\r\n"
            body = f"ok {port} {headers.get('x-session-user', '-')}\n".encode()
            writer.write((f"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
                          f"{extra}\r\n").encode() + (body if method != "HEAD" else b""))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError, ValueError, KeyError):
        pass
    finally:
        writer.close()


async def main(port):
    server = await asyncio.start_server(lambda r, w: serve(r, w, port), "127.0.0.1", port,
                                        reuse_address=True, backlog=1024)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
