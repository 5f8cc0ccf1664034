"""Faults: a build killed at any stage leaves nothing that is used and a re-run gives the unkilled run's bytes;
two processes build one artifact once; a damaged artifact is found, moved aside and rebuilt; an unwritable
cache or a full disk is one clear error with nothing half-written."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sdxl_qdq.cache import ArtifactCache, CacheError
from sdxl_qdq.components import COMPONENTS
from sdxl_qdq.convert.stages import build
from sdxl_qdq.manifest import MANIFEST

VARIABLE = {"build.log", "build.json"}  # what a stage writes about itself (times, third-party output)


def _digests(folder: Path) -> dict[str, str]:
    """The artifact's files and digests, from its manifest, without the per-run log and timings."""
    files = json.loads((folder / MANIFEST).read_text())["files"]
    return {rel: e["sha256"] for rel, e in files.items() if Path(rel).name not in VARIABLE}


def _source_key(qdq_artifacts) -> str:
    return qdq_artifacts.pipeline_dir.parent.name


def _seed(root: Path, session: Path, qdq_artifacts, stages: dict[str, list[str]]) -> None:
    """Copy the named artifacts of the session's tiny build into the cache at ``root`` (their keys are the same)."""
    for stage, keys in stages.items():
        for key in keys:
            shutil.copytree(session / stage / key, root / stage / key)


def _kill_when_started(proc: subprocess.Popen, stage_dir: Path, timeout: float = 300, pattern: str = ".*") -> None:
    """SIGKILL ``proc`` once a build of ``stage_dir``'s stage is under way (its temporary folder, ``pattern`` there,
    holds a file)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if any(p.is_dir() and any(p.rglob("*")) for p in stage_dir.glob(pattern)):
            time.sleep(0.2)
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    code = proc.wait(timeout=60)
    assert code == -signal.SIGKILL, f"the build finished (exit {code}) before it could be killed in {stage_dir.name}"


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "sdxl_qdq", *args]


@pytest.mark.parametrize(
    "stage",
    [pytest.param("export", marks=pytest.mark.long), pytest.param("calibration", marks=pytest.mark.long), "qdq"],
)
def test_a_build_killed_during_a_stage_rebuilds_the_same_bytes(
    qdq_artifacts, qdq_cache, tmp_path: Path, stage: str
) -> None:
    root, keys = tmp_path / "cache", qdq_artifacts.keys
    seeded = {"source": [_source_key(qdq_artifacts)]}
    if stage in ("calibration", "qdq"):
        seeded["export"] = [keys["export"]]
    if stage == "qdq":  # the decoder quantizes in seconds: the kill lands in its build
        seeded["calibration"] = [keys["calibration"]]
        seeded["qdq"] = [keys["qdq"][c] for c in COMPONENTS if c != "vae_decoder"]
    _seed(root, qdq_cache.root, qdq_artifacts, seeded)
    proc = subprocess.Popen(
        _cli("build", "--model", "tiny", "--cache-dir", str(root)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    _kill_when_started(proc, root / stage)
    assert any(p.name.startswith(".") for p in (root / stage).iterdir()), "the killed build's temporary folder"
    again = build("tiny", cache=ArtifactCache(root))
    # everything after the kill was built again: byte for byte what the unkilled build wrote (the export case is a
    # whole cold rebuild: every float and QDQ model)
    rebuilt = {
        "export": {"export": [keys["export"]], "calibration": [keys["calibration"]], "qdq": list(keys["qdq"].values())},
        "calibration": {"calibration": [keys["calibration"]], "qdq": list(keys["qdq"].values())},
        "qdq": {"qdq": [keys["qdq"]["vae_decoder"]]},
    }[stage]
    for folder, stage_keys in rebuilt.items():
        for key in stage_keys:
            assert _digests(root / folder / key) == _digests(qdq_cache.root / folder / key), f"{folder}/{key}"
    assert again.keys["qdq"] == keys["qdq"]
    assert not [p for p in (root / stage).iterdir() if p.name.startswith(".")], "a killed build's leftovers were kept"


@pytest.mark.long
def test_image_generation_killed_draws_the_same_images(qdq_artifacts, qdq_cache, tmp_path: Path) -> None:
    from sdxl_qdq.flows import draw
    from sdxl_qdq.models.prompts import load_prompts
    from sdxl_qdq.run.generate import Variant

    root = tmp_path / "cache"
    keys = qdq_artifacts.keys
    _seed(
        root,
        qdq_cache.root,
        qdq_artifacts,
        {
            "source": [_source_key(qdq_artifacts)],
            "export": [keys["export"]],
            "calibration": [keys["calibration"]],
            "qdq": list(keys["qdq"].values()),
        },
    )
    script = (
        "import sys; from pathlib import Path; from sdxl_qdq.convert.stages import build;"
        "from sdxl_qdq.cache import ArtifactCache; from sdxl_qdq.flows import draw;"
        "from sdxl_qdq.models.prompts import load_prompts; from sdxl_qdq.run.generate import Variant;"
        "c = ArtifactCache(Path(sys.argv[1]));"
        "draw(build('tiny', cache=c), Variant('qdq', 2), load_prompts('all'), cache=c)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(root)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    _kill_when_started(proc, root / ".scratch", pattern="drawing.*")  # images are drawn there, then moved in
    assert list((root / ".scratch").glob("drawing.*")), "the killed run's drawings"
    again = draw(
        build("tiny", cache=ArtifactCache(root)), Variant("qdq", 2), load_prompts("all"), cache=ArtifactCache(root)
    )
    reference = draw(qdq_artifacts, Variant("qdq", 2), load_prompts("all"), cache=qdq_cache)
    assert _digests(again) == _digests(reference) and len(_digests(again)) == 101  # 100 images and key.json
    assert not list((root / ".scratch").iterdir()), "a killed run's drawings were kept"


def test_a_killed_baseline_write_leaves_the_previous_file(tmp_path: Path) -> None:
    from sdxl_qdq.judge.baseline import write_baseline

    path = tmp_path / "baseline.json"
    write_baseline({"version": 1}, path)
    before = path.read_bytes()
    big = json.dumps({"values": list(range(4_000_000))})
    script = (
        "import json, sys; from pathlib import Path; from sdxl_qdq.judge.baseline import write_baseline;"
        f"write_baseline(json.loads(sys.stdin.read()), Path({str(path)!r}))"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    proc.stdin.write(big.encode())
    proc.stdin.close()
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline and not list(tmp_path.glob(".baseline.json.tmp-*")):
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the write finished before it could be killed"
    assert path.read_bytes() == before  # the previous baseline, whole
    write_baseline({"version": 2}, path)
    assert json.loads(path.read_text()) == {"version": 2} and not list(tmp_path.glob(".baseline.json.tmp-*"))


def test_two_processes_build_one_artifact(tmp_path: Path) -> None:
    script = (
        "import sys, time, os; from pathlib import Path; from sdxl_qdq.cache import ArtifactCache\n"
        "def make(out):\n"
        "    open(Path(sys.argv[1]) / 'builds.log', 'a').write(f'{os.getpid()}\\n'); time.sleep(1.5)\n"
        "    (out / 'x').write_text('x')\n"
        "print(ArtifactCache(Path(sys.argv[1])).get_or_build('demo', {'k': 1}, make))"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0] and outs[0] == outs[1]
    assert len((tmp_path / "builds.log").read_text().splitlines()) == 1


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_damaged_artifact_is_moved_aside_and_rebuilt(qdq_artifacts, qdq_cache, tmp_path: Path, damage: str) -> None:
    root, keys = tmp_path / "cache", qdq_artifacts.keys
    _seed(
        root,
        qdq_cache.root,
        qdq_artifacts,
        {
            "source": [_source_key(qdq_artifacts)],
            "export": [keys["export"]],
            "calibration": [keys["calibration"]],
            "qdq": list(keys["qdq"].values()),
        },
    )
    key = keys["qdq"]["vae_decoder"]
    data = root / "qdq" / key / "model.onnx.data"
    raw = bytearray(data.read_bytes())
    if damage == "truncate":
        data.write_bytes(bytes(raw[: len(raw) // 3]))
    else:
        raw[len(raw) // 2] ^= 0xFF
        data.write_bytes(bytes(raw))
    notices: list[str] = []
    build("tiny", cache=ArtifactCache(root, notice=notices.append))
    assert len(notices) == 1 and f"qdq/{key} is bad" in notices[0] and "model.onnx.data" in notices[0], notices
    assert "moved aside" in notices[0] and "\n" not in notices[0]
    assert _digests(root / "qdq" / key) == _digests(qdq_cache.root / "qdq" / key)
    assert len(list((root / "qdq").glob(f"{key}.bad-*"))) == 1


def test_a_change_that_keeps_size_and_mtime_is_found_by_full_verification(
    qdq_artifacts, qdq_cache, tmp_path: Path
) -> None:
    """A hit re-hashes a file whose size, mtime or inode changed since it was verified; `--verify-cache` and
    `sdxl-qdq verify` hash everything, so even an edit that restores the mtime is found."""
    root = tmp_path / "cache"
    key = qdq_artifacts.keys["qdq"]["vae_decoder"]
    _seed(root, qdq_cache.root, qdq_artifacts, {"qdq": [key]})
    folder = root / "qdq" / key
    auto = ArtifactCache(root)
    assert auto.check(folder) is None and folder.with_name(f"{key}.verified.json").is_file()
    data = folder / "model.onnx.data"
    st = data.stat()
    raw = bytearray(data.read_bytes())
    raw[-100] ^= 0x01
    with open(data, "r+b") as f:  # in place: same inode
        f.write(bytes(raw))
    os.utime(data, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert auto.check(folder) is None  # untouched to the stamp: not hashed again
    problem = ArtifactCache(root, verify="full").check(folder)
    assert problem and "model.onnx.data does not match its sha256" in problem
    done = subprocess.run(_cli("verify", "--cache-dir", str(root)), capture_output=True, text=True)
    assert done.returncode == 1 and "1 bad" in done.stdout and f"qdq/{key} is bad" in done.stderr


def _mount_tmpfs(path: Path, options: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    return (
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True).returncode == 0
    )


def test_an_unwritable_cache_is_one_clear_error(tmp_path: Path, capsys) -> None:
    """A read-only filesystem where one can be mounted (root), and always a cache path under a regular file."""
    from sdxl_qdq.cli import main

    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    roots = [blocked / "cache"]
    readonly = tmp_path / "ro"
    if _mount_tmpfs(readonly, "ro,size=1m"):
        roots.append(readonly / "cache")
    try:
        for root in roots:
            with pytest.raises(CacheError, match=r"cannot be written .*--cache-dir DIR"):
                ArtifactCache(root).get_or_build("demo", {"k": 1}, lambda out: (out / "x").write_text("x"))
            capsys.readouterr()
            assert main(["build", "--model", "tiny", "--cache-dir", str(root)]) == 2
            err = capsys.readouterr().err
            assert err.startswith("error: the artifact cache") and "--cache-dir DIR" in err and err.count("\n") == 1
    finally:
        subprocess.run(["umount", str(readonly)], capture_output=True)


def test_a_full_disk_is_one_clear_error_with_nothing_half_written(tmp_path: Path, monkeypatch) -> None:
    """On a 1 MiB filesystem where one can be mounted (root); elsewhere the write fails as a full disk does."""
    tiny = tmp_path / "tiny"
    mounted = _mount_tmpfs(tiny, "size=1m")
    root = tiny / "cache" if mounted else tmp_path / "cache"

    def make(out: Path) -> None:
        with open(out / "big.bin", "wb") as f:
            if mounted:
                f.write(os.urandom(4 << 20))  # more than the filesystem holds
            else:
                f.write(b"x" * 1024)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out / "big.bin"))

    try:
        with pytest.raises(CacheError, match=r"no space left in the artifact cache .* nothing was left half-written"):
            ArtifactCache(root).get_or_build("demo", {"k": 1}, make)
        stage = root / "demo"
        assert not [p for p in stage.iterdir() if p.is_dir()], "a partial artifact was left"
        assert ArtifactCache(root).get_or_build("demo", {"k": 2}, lambda out: (out / "small").write_text("ok")).is_dir()
    finally:
        subprocess.run(["umount", str(tiny)], capture_output=True)
