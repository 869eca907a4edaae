#!/usr/bin/python3
"""Real WebSocket peers for tests/tunnels.rs (Debian's python3-websockets and python3-h2).

  ws_tools.py server
      A WebSocket echo server on 127.0.0.1:0; prints "PORT <n>" and serves until killed.
  ws_tools.py client URL CA EVERY_S FOR_S [QUIET_S]
      Connects (TLS, trusting CA, ALPN http/1.1), stays silent QUIET_S seconds, then sends a
      message every EVERY_S seconds for FOR_S seconds and checks each echo.
  ws_tools.py h2client HOST PORT CA PATH COUNT
      RFC 8441: checks SETTINGS_ENABLE_CONNECT_PROTOCOL, opens a WebSocket with an
      extended CONNECT over HTTP/2, sends COUNT messages and checks each echo.
Each client prints "OK <n> messages" and exits 0, or prints what failed and exits 1.
"""

import asyncio
import os
import socket
import ssl
import struct
import sys
import time


def tls_context(ca, alpn):
    context = ssl.create_default_context(cafile=ca)
    context.set_alpn_protocols(alpn)
    return context


async def server():
    import websockets

    async def echo(websocket, path=None):
        try:
            async for message in websocket:
                await websocket.send(message)
        except websockets.ConnectionClosed:
            pass

    async with websockets.serve(echo, "127.0.0.1", 0, ping_interval=None) as running:
        port = running.sockets[0].getsockname()[1]
        print(f"PORT {port}", flush=True)
        await asyncio.Future()


async def client(url, ca, every, duration, quiet):
    import websockets

    async with websockets.connect(
        url,
        ssl=tls_context(ca, ["http/1.1"]),
        server_hostname="localhost",
        ping_interval=None,
        open_timeout=10,
    ) as websocket:
        await asyncio.sleep(quiet)
        sent = 0
        deadline = time.monotonic() + duration
        while time.monotonic() < deadline:
            message = f"message {sent} " + "x" * (sent * 37 % 3000)
            await websocket.send(message)
            echoed = await asyncio.wait_for(websocket.recv(), timeout=5)
            if echoed != message:
                print(f"message {sent} came back changed", flush=True)
                return 1
            sent += 1
            await asyncio.sleep(every)
    print(f"OK {sent} messages", flush=True)
    return 0


def ws_frame(payload):
    """One masked text frame, as a client sends it (RFC 6455 §5.2)."""
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    if len(payload) < 126:
        head = struct.pack("!BB", 0x81, 0x80 | len(payload))
    else:
        head = struct.pack("!BBH", 0x81, 0x80 | 126, len(payload))
    return head + mask + masked


def ws_parse(buffer):
    """(payload, rest) of the first whole unmasked server frame in buffer, or None."""
    if len(buffer) < 2:
        return None
    length = buffer[1] & 0x7F
    offset = 2
    if length == 126:
        if len(buffer) < 4:
            return None
        length = struct.unpack("!H", buffer[2:4])[0]
        offset = 4
    elif length == 127:
        if len(buffer) < 10:
            return None
        length = struct.unpack("!Q", buffer[2:10])[0]
        offset = 10
    if len(buffer) < offset + length:
        return None
    return buffer[offset : offset + length], buffer[offset + length :]


def h2client(host, port, ca, path, count):
    import h2.config
    import h2.connection
    import h2.events
    import h2.settings

    raw = socket.create_connection((host, port), timeout=10)
    sock = tls_context(ca, ["h2"]).wrap_socket(raw, server_hostname="localhost")
    if sock.selected_alpn_protocol() != "h2":
        print("the server did not choose h2", flush=True)
        return 1
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())

    stream_id = None
    status = None
    settings_seen = False
    buffer = b""
    sent = 0
    echoed = 0

    def send_next():
        nonlocal sent
        payload = f"h2 message {sent} ".encode() + b"y" * (sent * 97 % 500)
        conn.send_data(stream_id, ws_frame(payload))
        sock.sendall(conn.data_to_send())
        sent += 1
        return payload

    expected = None
    while True:
        data = sock.recv(65536)
        if not data:
            print(f"connection closed (status {status}, {echoed} echoed)", flush=True)
            return 1
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.RemoteSettingsChanged):
                setting = event.changed_settings.get(
                    h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL
                )
                if setting is not None and setting.new_value == 1:
                    settings_seen = True
                if stream_id is None:
                    if not settings_seen:
                        print("no SETTINGS_ENABLE_CONNECT_PROTOCOL from the server", flush=True)
                        return 1
                    stream_id = conn.get_next_available_stream_id()
                    conn.send_headers(
                        stream_id,
                        [
                            (":method", "CONNECT"),
                            (":protocol", "websocket"),
                            (":scheme", "https"),
                            (":path", path),
                            (":authority", f"localhost:{port}"),
                            ("sec-websocket-version", "13"),
                        ],
                    )
            elif isinstance(event, h2.events.ResponseReceived):
                status = dict(event.headers).get(b":status")
                if status != b"200":
                    print(f"extended CONNECT answered {status}", flush=True)
                    return 1
                expected = send_next()
            elif isinstance(event, h2.events.DataReceived):
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                buffer += event.data
                while True:
                    parsed = ws_parse(buffer)
                    if parsed is None:
                        break
                    payload, buffer = parsed
                    if payload != expected:
                        print(f"echo {echoed} came back changed", flush=True)
                        return 1
                    echoed += 1
                    if echoed == count:
                        print(f"OK {echoed} messages", flush=True)
                        return 0
                    expected = send_next()
            elif isinstance(event, (h2.events.StreamReset, h2.events.StreamEnded)):
                print(f"stream ended after {echoed} echoes", flush=True)
                return 1
        sock.sendall(conn.data_to_send())


def main():
    mode = sys.argv[1]
    if mode == "server":
        asyncio.run(server())
        return 0
    if mode == "client":
        url, ca, every, duration = sys.argv[2], sys.argv[3], float(sys.argv[4]), float(sys.argv[5])
        quiet = float(sys.argv[6]) if len(sys.argv) > 6 else 0.0
        return asyncio.run(client(url, ca, every, duration, quiet))
    if mode == "h2client":
        host, port, ca, path, count = sys.argv[2:7]
        return h2client(host, int(port), ca, path, int(count))
    print(f"unknown mode {mode}", flush=True)
    return 2


if __name__ == "__main__":
    sys.exit(main())
