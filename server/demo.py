"""The embedded demo: a shop database, an ordinary bastion.toml and a shell workspace, written into a
data directory on first run (`bastion demo`).

    DIR/bastion.toml        the config (from demo.toml beside this module); written only when missing
    DIR/demo.db             SQLite: customers (emails and phones masked), products, orders, order_items,
                            the view order_totals; deterministic, rebuilt only when missing
    DIR/bastion-audit.db    the audit log (created by the first call)
    DIR/workspace/          the shell connection's folder: a few sample files, nothing of the above

Everything ships inside the package, so a non-editable install runs the demo too.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from collections.abc import Callable
from importlib import resources
from pathlib import Path

CONFIG = "bastion.toml"
DATABASE = "demo.db"
WORKSPACE = "workspace"

# Who `bastion demo --as NAME` runs as (the config's [identity] is `agent`).
PERSONAS: dict[str, tuple[str, tuple[str, ...]]] = {
    "agent": ("demo-agent", ("developers",)),
    "approver": ("demo-approver", ("approvers",)),
    "maintainer": ("demo-maintainer", ("maintainers",)),
}

FIRST = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Radia", "Leslie", "Margaret", "Niklaus"]
LAST = ["Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson", "Perlman", "Lamport", "Hamilton", "Wirth"]
CITIES = ["Lisbon", "Oslo", "Austin", "Pune", "Lagos", "Osaka", "Quito", "Tartu"]
PRODUCTS = [("Mechanical keyboard", "hardware", 129.0), ("USB-C dock", "hardware", 89.5), ("4K monitor", "hardware", 349.0),
            ("Standing desk", "furniture", 499.0), ("Desk lamp", "furniture", 39.9), ("Noise-cancelling headphones", "audio", 249.0),
            ("Webcam", "hardware", 69.0), ("Ergonomic chair", "furniture", 389.0), ("Laptop stand", "furniture", 45.0),
            ("Microphone", "audio", 119.0)]
STATUSES = ["pending", "paid", "shipped", "delivered", "refunded"]

SAMPLE_FILES = {
    "README.md": "# Demo shop service\n\nA tiny order service. Orders live in the `demo` database; see `src/orders.py`.\n"
                 "Run the checks with `python -m pytest` (not in this demo).\n",
    "src/orders.py": 'STATUSES = ("pending", "paid", "shipped", "delivered", "refunded")\n\n\n'
                     "def total(items):\n"
                     '    """Sum of quantity * unit_price over an order\'s items."""\n'
                     '    return sum(i["quantity"] * i["unit_price"] for i in items)\n\n\n'
                     "def can_ship(order):\n"
                     '    return order["status"] == "paid"\n',
    "src/settings.py": 'DATABASE = "demo"  # the Bastion connection this service reads\nPAGE_SIZE = 50\n',
    "migrations/001_orders.sql": "CREATE TABLE orders (\n    id INTEGER PRIMARY KEY,\n    customer_id INTEGER REFERENCES customers(id),\n"
                                 "    status TEXT NOT NULL,\n    ordered_at TEXT,\n    card_last4 TEXT\n);\n",
    "logs/app.log": "".join(f"2026-10-{d:02d}T09:{m:02d}:00Z INFO order {100 + d * 7 + m} {s}\n"
                            for d in range(1, 8) for m, s in ((5, "paid"), (17, "shipped"), (42, "delivered"))),
}


def default_dir() -> Path:
    """The per-user data directory: $XDG_DATA_HOME/bastion/demo, else ~/.local/share/bastion/demo;
    for root without $XDG_DATA_HOME, /var/lib/bastion/demo (root's home is closed to the
    unprivileged user root's sandbox runs commands as, so a workspace there could not be read)."""
    base = os.environ.get("XDG_DATA_HOME")
    if not base and os.geteuid() == 0:
        return Path("/var/lib/bastion/demo")
    return Path(base or os.path.join(os.path.expanduser("~"), ".local", "share")) / "bastion" / "demo"


def others_can_read(folder: Path) -> bool:
    """Whether a user other than the owner can reach and list ``folder`` (every folder above it
    searchable by others, the folder itself readable): what root's sandbox user needs."""
    folder = folder.resolve()
    try:
        if not folder.stat().st_mode & 0o005 == 0o005:
            return False
        return all(parent.stat().st_mode & 0o001 for parent in folder.parents)
    except OSError:
        return False


def template() -> str:
    """The demo's bastion.toml, as shipped in the package."""
    return resources.files("bastion.server").joinpath("demo.toml").read_text(encoding="utf-8")


def build_database(path: Path) -> Path:
    """Write the demo database at ``path`` (replacing it). Deterministic: the same rows every time."""
    import sqlite_utils

    if path.exists():
        path.unlink()
    rng = random.Random(42)
    db = sqlite_utils.Database(path)
    db.table("customers").insert_all(
        ({"id": i, "name": f"{rng.choice(FIRST)} {rng.choice(LAST)}", "email": f"user{i}@example.com",
          "phone": f"+1-555-{rng.randint(100, 999)}-{rng.randint(1000, 9999)}",
          "city": rng.choice(CITIES), "created_at": f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"}
         for i in range(1, 201)), pk="id")
    db.table("products").insert_all(
        ({"id": i, "name": name, "category": cat, "price": price} for i, (name, cat, price) in enumerate(PRODUCTS, 1)), pk="id")
    orders, items = [], []
    for order_id in range(1, 1001):
        orders.append({"id": order_id, "customer_id": rng.randint(1, 200), "status": rng.choice(STATUSES),
                       "ordered_at": f"2026-{rng.randint(1, 10):02d}-{rng.randint(1, 28):02d}",
                       "card_last4": f"{rng.randint(0, 9999):04d}"})
        for _ in range(rng.randint(1, 3)):
            product = rng.randint(1, len(PRODUCTS))
            items.append({"order_id": order_id, "product_id": product, "quantity": rng.randint(1, 4),
                          "unit_price": PRODUCTS[product - 1][2]})
    db.table("orders").insert_all(orders, pk="id", foreign_keys=[("customer_id", "customers", "id")])
    db.table("order_items").insert_all(items, foreign_keys=[("order_id", "orders", "id"), ("product_id", "products", "id")])
    db.create_view("order_totals", """
        SELECT o.id AS order_id, o.customer_id, o.status, sum(i.quantity * i.unit_price) AS total
        FROM orders o JOIN order_items i ON i.order_id = o.id GROUP BY o.id""")
    db.conn.close()
    return path


def write(directory: Path) -> tuple[Path, list[str]]:
    """Write whatever of the demo is missing in ``directory``; returns the config's path and what
    was written. Existing files are kept (an edited config, a database the demo changed). Each part
    is built aside and moved into place, so two demos started at once (an agent's and an
    approver's) never see half a file."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    config = directory / CONFIG
    if not config.exists() and _place(directory, CONFIG, lambda aside: aside.write_text(template(), encoding="utf-8")):
        written.append(CONFIG)
    if not (directory / DATABASE).exists() and _place(directory, DATABASE, build_database):
        written.append(DATABASE)
    if not (directory / WORKSPACE).exists() and _place(directory, WORKSPACE, _write_workspace):
        written.append(WORKSPACE + "/")
    return config, written


def _write_workspace(folder: Path) -> None:
    for name, text in SAMPLE_FILES.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text, encoding="utf-8")


def _place(directory: Path, name: str, build: Callable[[Path], object]) -> bool:
    """Build ``name`` under a private name, then move it into place unless another process did
    first; True when this one placed it."""
    aside = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=directory))
    try:
        built = aside / name
        build(built)
        target = directory / name
        if target.exists():
            return False
        try:
            if built.is_dir():
                built.rename(target)  # fails if another process placed its folder meanwhile
            else:
                os.link(built, target)  # fails if the file exists: never replaces one
        except (FileExistsError, OSError):
            if target.exists():
                return False
            raise
        return True
    finally:
        shutil.rmtree(aside, ignore_errors=True)
