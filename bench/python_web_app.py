# SPDX-License-Identifier: Apache-2.0
# The JSON request handler that bench/python_objects_workload.py (WORKLOAD=web, in process) and
# bench/python_web_server.py (behind a real HTTP server) both run, so that the two benchmarks
# measure the same application code: a JSON body parsed, a price table looked up, dicts, floats
# and strs built, the response serialized.
import json

PRICES = {f"sku-{n}": 1.5 + n * 0.25 for n in range(64)}


def request_body(n):
    items = [{"sku": f"sku-{(n * 7 + k) % 64}", "qty": 1 + (n + k) % 4} for k in range(1 + n % 5)]
    return json.dumps({"user": 1000 + n, "name": f"customer {n}", "items": items,
                       "note": "leave at the door" if n % 3 == 0 else ""}).encode()


BODIES = [request_body(n) for n in range(64)]


def respond(body):
    """The response body (JSON, encoded) to one request body."""
    request = json.loads(body)
    lines = []
    total = 0.0
    for item in request["items"]:
        cost = PRICES[item["sku"]] * item["qty"]
        total += cost
        lines.append({"sku": item["sku"], "qty": item["qty"], "cost": round(cost, 2)})
    response = {"user": request["user"], "lines": lines, "total": round(total, 2),
                "message": f"Thanks {request['name']}, {len(lines)} items"}
    if request["note"]:
        response["note"] = request["note"].upper()
    return json.dumps(response).encode()
