"""[server] cpu_affinity: each worker process, with every thread it runs, on one CPU of its
own; left to the operating system by default."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import CHALLENGE, RunningServer, name
from cryptography.hazmat.primitives.asymmetric import rsa

from scepd.client import ScepClient
from scepd.protocol import PkiStatus
from scepd.registry.instance import create_instance
from scepd.registry.server_config import ServerConfig, parse_cpu_list


def _allowed(task: Path) -> set[int]:
    for line in (task / "status").read_text().splitlines():
        if line.startswith("Cpus_allowed_list:"):
            return set(parse_cpu_list(line.split(":", 1)[1].strip()))
    raise AssertionError(f"no Cpus_allowed_list in {task}")


def _threads_cpus(pid: int) -> list[set[int]]:
    return [_allowed(task) for task in Path(f"/proc/{pid}/task").iterdir()]


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
        except (OSError, ValueError):
            continue
    return found


def _enroll(url: str, cn: str) -> None:
    with ScepClient(url) as client:
        assert client.enroll(rsa.generate_private_key(65537, 2048), name(cn), challenge=CHALLENGE).status is PkiStatus.SUCCESS


def test_the_cpu_list_is_read_as_linux_writes_it():
    assert parse_cpu_list("0,2-3, 5") == [0, 2, 3, 5]
    assert parse_cpu_list("1,1,0-1") == [1, 0]
    for wrong in ("x", "3-1", "-1", "0,,1", "1-"):
        with pytest.raises(ValueError, match="cpu_affinity"):
            ServerConfig(cpu_affinity=wrong)
    assert ServerConfig().worker_cpus() is None
    assert ServerConfig(cpu_affinity="auto").worker_cpus() == sorted(os.sched_getaffinity(0))


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to tell pinned from not")
def test_workers_are_pinned_one_cpu_each_with_all_their_threads(tmp_path):
    allowed = sorted(os.sched_getaffinity(0))
    create_instance(tmp_path, key_spec="rsa:2048", static_challenge=CHALLENGE)
    server = RunningServer(tmp_path, env={"SCEPD_SERVER_CPU_AFFINITY": "auto", "SCEPD_SERVER_WORKERS": "2"})
    try:
        for i in range(4):  # enrollment threads exist once a worker has answered one
            _enroll(server.url, f"pinned-{i}")
        workers = [pid for pid in _children(server.process.pid) if len(_threads_cpus(pid)) > 2]
        assert len(workers) == 2
        pinned = []
        for pid in workers:
            cpus = _threads_cpus(pid)
            assert all(c == cpus[0] for c in cpus) and len(cpus[0]) == 1, cpus  # every thread, one CPU
            pinned.append(next(iter(cpus[0])))
        assert sorted(pinned) == allowed[:2]  # one CPU each, in turn
    finally:
        server.stop()

    server = RunningServer(tmp_path, env={"SCEPD_SERVER_CPU_AFFINITY": "auto"})  # one worker: the serving process
    try:
        _enroll(server.url, "pinned-alone")
        assert all(c == {allowed[0]} for c in _threads_cpus(server.process.pid))
    finally:
        server.stop()

    server = RunningServer(tmp_path)  # the default: the operating system's choice
    try:
        _enroll(server.url, "unpinned")
        assert all(c == set(allowed) for c in _threads_cpus(server.process.pid))
    finally:
        server.stop()
