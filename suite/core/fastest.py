"""The fastest exact Hessian-vector product and BatchNorm per device type, as measured.

``imaml-suite sweeps hvp-cost`` times every curvature product with every BatchNorm on the
20-way 5-shot CNN; ``choose(rows)`` reads the choice off those rows (the BatchNorm whose iMAML
meta-gradient is fastest, then the faster of the two exact products with it), and
``--record-fastest`` writes it for the device type into ``results/fastest.json``, which
``hvp.FASTEST_HVP`` and ``conv4.FASTEST_BATCHNORM`` read at import. The committed
choices come from ``results/hvp_cost_cpu.csv`` (2 CPU threads) and
``results/gpu/hvp_cost_h200_rerun.csv`` (an H200); ``tests/test_hvp_products.py`` checks that
the JSON is what those rows say. A device type never measured gets the reverse product and the
native BatchNorm.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[2]
RECORD = CHECKOUT / "results" / "fastest.json"
UNMEASURED = {"hvp": "reverse", "batchnorm": "native"}
EXACT_PRODUCTS = {"reverse HVP": "reverse", "forward HVP": "forward"}


def choose(rows) -> dict:
    """``{"hvp": ..., "batchnorm": ...}`` from one device's hvp-cost rows (a DataFrame with
    ``batchnorm``, ``what`` and ``seconds``)."""
    imaml = rows[rows.what == "imaml"].set_index("batchnorm").seconds
    batchnorm = str(imaml.idxmin())
    mine = rows[(rows.batchnorm == batchnorm) & rows.what.isin(list(EXACT_PRODUCTS))]
    hvp = EXACT_PRODUCTS[str(mine.set_index("what").seconds.idxmin())]
    return {"hvp": hvp, "batchnorm": batchnorm}


def load(path: Path = RECORD) -> dict:
    """Device type -> ``{"hvp", "batchnorm", "source"}``; empty when nothing was recorded."""
    return json.loads(path.read_text())["devices"] if path.exists() else {}


def fastest(what: str) -> dict:
    """Device type -> the fastest ``what`` ("hvp" or "batchnorm") recorded for it."""
    return {device: choice[what] for device, choice in load().items()}


def record(rows, device_type: str, source: str, path: Path = RECORD) -> dict:
    """Write ``choose(rows)`` for ``device_type`` into ``path`` (atomically), keeping the
    other device types' choices. ``source``, the rows' file, is kept relative to the checkout
    when it lies inside it (the record is committed; an absolute path would name one machine)."""
    where = Path(source).resolve()
    source = (where.relative_to(CHECKOUT).as_posix() if where.is_relative_to(CHECKOUT)
              else str(where))
    devices = load(path)
    devices[device_type] = {**choose(rows), "source": source}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"devices": dict(sorted(devices.items()))}, indent=2) + "\n")
    os.replace(tmp, path)
    return devices[device_type]
