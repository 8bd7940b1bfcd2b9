"""Tidy result rows with provenance, written atomically, with resume by key columns."""
from __future__ import annotations

import datetime as dt
import math
import os
import platform
import subprocess
import tempfile
from pathlib import Path

import pandas as pd
import torch

PROVENANCE = ["device", "device_name", "dtype", "threads", "seed", "torch_version", "git_commit",
              "host", "timestamp"]


def git_commit(cwd: Path | None = None) -> str:
    """HEAD of the checkout this code runs from, '+dirty' when it has uncommitted changes.

    The ``SUITE_GIT_COMMIT`` environment variable, when set, takes its place: a copy of the
    tree sent to another machine may carry no .git or a stale one. 'unknown' outside git."""
    if os.environ.get("SUITE_GIT_COMMIT"):
        return os.environ["SUITE_GIT_COMMIT"]
    cwd = cwd or Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=cwd, text=True,
                              capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=cwd, text=True, capture_output=True, check=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def pin_commit() -> str:
    """Fix this process's ``git_commit`` at its start: a command that rewrites a committed
    results file would otherwise mark its own later rows '+dirty'."""
    os.environ["SUITE_GIT_COMMIT"] = git_commit()
    return os.environ["SUITE_GIT_COMMIT"]


def device_name(device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:   # the CPU's model name where Linux tells it, else the architecture
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def provenance(*, device, dtype, threads: int, seed: int) -> dict:
    return {"device": str(device), "device_name": device_name(device),
            "dtype": str(dtype).replace("torch.", ""), "threads": threads, "seed": seed,
            "torch_version": torch.__version__, "git_commit": git_commit(),
            "host": platform.node(),
            "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}


def _norm(value) -> str:
    """Key cells compared as text: numbers by their float value, empty/None/NaN as ''."""
    if value is None:
        return ""
    if isinstance(value, str):
        try:
            value = float(value) if value.strip() else ""
        except ValueError:
            return value
        if value == "":
            return ""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return "" if math.isnan(value) else repr(float(value))
    return str(value)


def write_csv_atomic(frame: pd.DataFrame, path: Path) -> None:
    """Write through a temporary file in the same folder and rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="") as f:
            frame.to_csv(f, index=False)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)   # mkstemp creates 0600; results are for sharing
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class ResultsStore:
    """Rows of one CSV file. ``key`` columns identify a configuration: ``done`` tells
    whether a finished row exists (any status but 'error'), ``add`` rewrites the file
    atomically after each row so that an interrupted sweep loses nothing it finished."""

    def __init__(self, path, key: list[str], result_columns: list[str]):
        self.path, self.key, self.result_columns = Path(path), list(key), list(result_columns)
        if self.path.exists():
            self.frame = pd.read_csv(self.path, dtype=str, keep_default_na=False)
            missing = set(self.key) - set(self.frame.columns)
            if missing:
                raise ValueError(f"{self.path} lacks key columns {sorted(missing)}; "
                                 "it was written by another sweep (choose another --out)")
        else:
            self.frame = pd.DataFrame(columns=self.key)
        self._done = {self._key_of(r) for r in self.frame.to_dict("records")
                      if r.get("status", "") != "error"}

    def _key_of(self, row: dict) -> tuple:
        return tuple(_norm(row.get(k)) for k in self.key)

    def done(self, config: dict) -> bool:
        return self._key_of(config) in self._done

    def add(self, row: dict) -> None:
        if row.get("status") == "ok":
            for c in self.result_columns:
                v = row.get(c)
                if isinstance(v, float) and not math.isfinite(v):
                    raise ValueError(f"refusing to write a non-finite {c}={v} as an ok result")
        key = self._key_of(row)
        keep = [r for r in self.frame.to_dict("records") if self._key_of(r) != key]
        new = pd.DataFrame(keep + [{k: ("" if v is None else v) for k, v in row.items()}])
        self.frame = new.astype(str).replace({"nan": "", "None": ""})
        write_csv_atomic(self.frame, self.path)
        if row.get("status") != "error":
            self._done.add(key)

    def read(self) -> pd.DataFrame:
        """The rows with numbers parsed (empty cells become NaN: 'not measured')."""
        return pd.read_csv(self.path) if self.path.exists() else pd.DataFrame()
