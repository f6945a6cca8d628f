"""Build the demo SQLite database: customers, products, orders, order_items (with personal data).

Usage: python examples/make_demo_db.py [PATH]   (default: examples/demo.db next to this script)
Deterministic: the same file every time, so examples and tests can rely on its rows.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import sqlite_utils

FIRST = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Radia", "Leslie", "Margaret", "Niklaus"]
LAST = ["Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson", "Perlman", "Lamport", "Hamilton", "Wirth"]
CITIES = ["Lisbon", "Oslo", "Austin", "Pune", "Lagos", "Osaka", "Quito", "Tartu"]
PRODUCTS = [("Mechanical keyboard", "hardware", 129.0), ("USB-C dock", "hardware", 89.5), ("4K monitor", "hardware", 349.0),
            ("Standing desk", "furniture", 499.0), ("Desk lamp", "furniture", 39.9), ("Noise-cancelling headphones", "audio", 249.0),
            ("Webcam", "hardware", 69.0), ("Ergonomic chair", "furniture", 389.0), ("Laptop stand", "furniture", 45.0),
            ("Microphone", "audio", 119.0)]
STATUSES = ["pending", "paid", "shipped", "delivered", "refunded"]


def build(path: Path) -> Path:
    if path.exists():
        path.unlink()
    rng = random.Random(42)
    db = sqlite_utils.Database(path)
    db["customers"].insert_all(
        ({"id": i, "name": f"{rng.choice(FIRST)} {rng.choice(LAST)}", "email": f"user{i}@example.com",
          "phone": f"+1-555-{rng.randint(100, 999)}-{rng.randint(1000, 9999)}",
          "city": rng.choice(CITIES), "created_at": f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"}
         for i in range(1, 201)), pk="id")
    db["products"].insert_all(
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
    db["orders"].insert_all(orders, pk="id", foreign_keys=[("customer_id", "customers", "id")])
    db["order_items"].insert_all(items, foreign_keys=[("order_id", "orders", "id"), ("product_id", "products", "id")])
    db.create_view("order_totals", """
        SELECT o.id AS order_id, o.customer_id, o.status, sum(i.quantity * i.unit_price) AS total
        FROM orders o JOIN order_items i ON i.order_id = o.id GROUP BY o.id""")
    db.conn.close()
    return path


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "demo.db"
    print(f"demo database written to {build(target)}")
