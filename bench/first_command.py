"""The README's first command, timed, and the size of each install: fresh venvs, real `pip install`s
(pip's cache as it is on this machine), side by side in one run.

    python bench/first_command.py            # light (the first command) + CPU training stack
    python bench/first_command.py --cuda     # also PyPI's default (CUDA) torch, for comparison (~6 GB)

Prints, per variant: install seconds, venv size, and for the light one the demo's seconds.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rakuten_stream.embedded_broker import free_port  # noqa: E402

#: name -> the pip installs, in order (the torch build first where the variant chooses one);
#: this checkout is installed editable, as the README says
VARIANTS = {
    "light: .[train] (the first command)": [f"{ROOT}[train]"],
    "CPU training: torch==2.13.0, then .[training,dev]": ["torch==2.13.0", f"{ROOT}[training,dev]"],
    "CUDA training: .[training,dev] (PyPI's torch)": [f"{ROOT}[training,dev]"],
}


def size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink()) / 1e6


def install(venv: Path, requirements: list[str], env: dict) -> float:
    start = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    for requirement in requirements:
        editable = ["-e"] if requirement.startswith(str(ROOT)) else []
        subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", *editable, requirement], check=True,
                       env=env, stderr=subprocess.DEVNULL)
    return time.monotonic() - start


def demo(venv: Path, cwd: Path, env: dict) -> float:
    port = free_port()
    env = env | {"RAKUTEN_BROKER_PORT": str(port), "RAKUTEN_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}"}
    start = time.monotonic()
    subprocess.run([str(venv / "bin" / "rakuten-stream"), "demo"], check=True, env=env, cwd=cwd,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cuda", action="store_true", help="also measure PyPI's default CUDA torch")
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    rows = []
    with tempfile.TemporaryDirectory(prefix="first-command-") as tmp:
        for i, (name, requirements) in enumerate(VARIANTS.items()):
            if name.startswith("CUDA") and not args.cuda:
                continue
            venv = Path(tmp) / f"venv{i}"
            seconds = install(venv, requirements, env)
            extra = ""
            if i == 0:
                (Path(tmp) / "demo").mkdir()
                demo_s = demo(venv, Path(tmp) / "demo", env)
                extra = f"; demo {demo_s:.0f} s; install + demo {seconds + demo_s:.0f} s"
            rows.append((name, seconds, size_mb(venv)))
            print(f"{name}: install {seconds:.0f} s, venv {size_mb(venv) / 1000:.2f} GB{extra}", flush=True)
            subprocess.run(["rm", "-rf", str(venv)], check=True)
    light = rows[0][2]
    for name, _, size in rows[1:]:
        print(f"{name}: {size / light:.1f}x the light venv")


if __name__ == "__main__":
    main()
