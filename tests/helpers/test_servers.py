"""The throwaway PostgreSQL and Redis servers the test run starts."""

from __future__ import annotations

import os
import socket
import subprocess

import asyncpg

from tests.helpers.servers import PostgresServer, RedisServer, find_pg_bin, free_port, ping


def _accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def test_find_pg_bin_finds_the_server_programs() -> None:
    for name in ("initdb", "pg_ctl", "postgres", "createdb"):
        path = find_pg_bin(name)
        assert os.access(path, os.X_OK), path
    version = subprocess.run(
        [find_pg_bin("postgres"), "--version"], capture_output=True, text=True, check=True
    )
    assert "PostgreSQL" in version.stdout


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


async def test_postgres_server_serves_databases_and_cleans_up() -> None:
    with PostgresServer() as server:
        assert server.url.startswith("postgresql+asyncpg://postgres@127.0.0.1:")
        url = server.create_database("warta_probe")
        assert url == server.url_for("warta_probe")

        conn = await asyncpg.connect(server.dsn.rsplit("/", 1)[0] + "/warta_probe")
        try:
            assert await conn.fetchval("select 1") == 1
            assert await conn.fetchval("select current_database()") == "warta_probe"
            await conn.execute("create table t (x int)")
        finally:
            await conn.close()

        server.create_database("warta_copy", template="warta_probe")
        conn = await asyncpg.connect(server.dsn.rsplit("/", 1)[0] + "/warta_copy")
        try:
            assert await conn.fetchval("select count(*) from t") == 0
        finally:
            await conn.close()
        server.drop_database("warta_copy")

        port, data_dir = server.port, server._tmp
        assert data_dir is not None and data_dir.is_dir()

    assert not data_dir.exists()
    assert not _accepts_connections(port)


def test_postgres_server_stops_when_the_block_fails() -> None:
    try:
        with PostgresServer() as server:
            port, data_dir = server.port, server._tmp
            raise KeyError("boom")
    except KeyError:
        pass
    assert data_dir is not None and not data_dir.exists()
    assert not _accepts_connections(port)


def test_redis_server_answers_ping_and_stops() -> None:
    with RedisServer() as server:
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        with socket.create_connection(("127.0.0.1", server.port), timeout=2) as sock:
            sock.sendall(b"PING\r\n")
            assert sock.recv(64) == b"+PONG\r\n"
            sock.sendall(b"SET k v\r\nGET k\r\n")
            reply = b""
            while reply.count(b"\r\n") < 3:
                reply += sock.recv(64)
            assert reply == b"+OK\r\n$1\r\nv\r\n"
        port, process = server.port, server._process
        assert process is not None

    assert process.returncode is not None
    assert not ping(port)
